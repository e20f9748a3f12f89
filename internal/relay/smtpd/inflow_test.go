package smtpd

import (
	"context"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/testenv"
)

// heldInFlow is an InFlow that holds each transaction until the test lets
// it go, and tells the test when one arrives.
type heldInFlow struct {
	entered chan struct{}
	release chan struct{}
}

func (h *heldInFlow) Wait(context.Context) (time.Duration, string) {
	h.entered <- struct{}{}
	<-h.release
	return 0, "taken"
}

// TestMailWaitsForInFlow checks where the in-flow wait sits: at MAIL FROM
// of a valid sender, before the reply (so before the client sends the
// body), and never for a MAIL that is refused anyway; the transaction then
// goes on and its message is queued.
func TestMailWaitsForInFlow(t *testing.T) {
	in := &heldInFlow{entered: make(chan struct{}, 10), release: make(chan struct{})}
	addr, spool, _ := testServer(t, Config{InFlow: in})
	c := dialFrom(t, "127.0.0.10", addr)
	c.hello()
	// A refused sender is answered at once: it does not wait.
	c.expect("MAIL FROM:<bad address@example.com>\r\n", 501, "")

	replied := make(chan string, 1)
	go func() {
		_, line := c.send("MAIL FROM:<alice@example.com>\r\n")
		replied <- line
	}()
	select {
	case <-in.entered:
	case line := <-replied:
		t.Fatalf("MAIL answered %q without waiting", line)
	case <-time.After(testenv.WaitTimeout):
		t.Fatal("MAIL never reached the in-flow wait")
	}
	// The session's goroutine is inside Wait: no reply can have gone.
	select {
	case line := <-replied:
		t.Fatalf("MAIL answered %q while waiting", line)
	default:
	}
	close(in.release)
	if line := <-replied; line[:3] != "250" {
		t.Fatalf("MAIL after the wait: %q, want 250", line)
	}
	c.expect("RCPT TO:<bob@dest.test>\r\n", 250, "")
	c.expect("DATA\r\n", 354, "")
	c.expect("Subject: x\r\n\r\nbody\r\n.\r\n", 250, "queued")
	// The next transaction waits too; a nested MAIL is refused without
	// waiting.
	c.expect("MAIL FROM:<alice@example.com>\r\n", 250, "")
	c.expect("MAIL FROM:<alice@example.com>\r\n", 503, "5.5.1")
	if n := len(in.entered); n != 1 {
		t.Errorf("%d waits after the first transaction, want 1 (the second MAIL only)", n)
	}
	if n := len(spool.all()); n != 1 {
		t.Errorf("%d messages queued, want 1", n)
	}
}
