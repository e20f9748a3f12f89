package relay

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/queue/queuetest"
)

// TestTagInEnvelope: the client's X-Postgate-Tag goes into the queued
// envelope (which a power loss after the 250 keeps) and out of the
// message; a malformed one is refused with 550 5.6.0 and nothing is queued.
func TestTagInEnvelope(t *testing.T) {
	fsys := queuetest.New()
	q, err := queue.Open(context.Background(), fsys, queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := dialFrom(t, "127.0.0.10", serveQueue(t, q))
	defer func() { _ = c.Close() }()
	c.hello()
	send := func(msg string) (int, string) {
		c.send("MAIL FROM:<alice@example.com>\r\n")
		c.send("RCPT TO:<bob@dest.test>\r\n")
		c.send("DATA\r\n")
		return c.send(msg + ".\r\n")
	}
	code, line := send("From: alice@example.com\r\nX-Postgate-Tag: campaign-7/a\r\nSubject: hi\r\n\r\nhi\r\n")
	if code != 250 {
		t.Fatalf("DATA: %s", line)
	}
	id := queue.ID(queuedAs.FindStringSubmatch(line)[1])
	// The same through BDAT (RFC 3030).
	c.send("MAIL FROM:<alice@example.com>\r\n")
	c.send("RCPT TO:<bob@dest.test>\r\n")
	chunked := "X-Postgate-Tag: by-bdat\r\nFrom: alice@example.com\r\n\r\nhi\r\n"
	code, line = c.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(chunked), chunked))
	if code != 250 {
		t.Fatalf("BDAT: %s", line)
	}
	bdatID := queue.ID(queuedAs.FindStringSubmatch(line)[1])
	for _, msg := range []string{
		"X-Postgate-Tag: a\r\nX-Postgate-Tag: b\r\n\r\nhi\r\n",
		"X-Postgate-Tag: two words\r\n\r\nhi\r\n",
		"X-Postgate-Tag: " + strings.Repeat("x", 129) + "\r\n\r\nhi\r\n",
	} {
		if code, line := send(msg); code != 550 || !strings.HasPrefix(line, "550 5.6.0 ") || !strings.Contains(line, "X-Postgate-Tag") {
			t.Errorf("%q: %s, want 550 5.6.0 naming X-Postgate-Tag", msg, line)
		}
	}
	if ms, err := q.List(context.Background(), "", 10); err != nil || len(ms) != 2 {
		t.Errorf("%d messages queued, want 2 (%v)", len(ms), err)
	}
	_ = q.Close()
	fsys.Crash()

	q2, err := queue.Open(context.Background(), fsys, queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = q2.Close() }()
	m, err := q2.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if m.Envelope.Tag != "campaign-7/a" {
		t.Errorf("envelope tag %q", m.Envelope.Tag)
	}
	if m, err := q2.Get(context.Background(), bdatID); err != nil || m.Envelope.Tag != "by-bdat" {
		t.Errorf("BDAT message: tag %q, %v", m.Envelope.Tag, err)
	}
	l, err := q2.Lease(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if body := readBody(t, l); strings.Contains(strings.ToLower(body), "x-postgate-tag") || !strings.Contains(body, "\r\nFrom: alice@example.com\r\nSubject: hi\r\n\r\nhi\r\n") {
		t.Errorf("queued message:\n%s", body)
	}
}
