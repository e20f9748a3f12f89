package smtpd

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/postgate/postgate/internal/testenv"
)

// TestDrain: once the server drains, a session in a transaction finishes
// it (250) and gets 421 for its next command, an idle session is told 421
// and closed, and a new connection is greeted with 421, on a listener
// still open (RFC 5321 section 3.8).
func TestDrain(t *testing.T) {
	srv, addr, spool, _ := startServer(t, Config{})
	busy := dialFrom(t, "127.0.0.10", addr)
	busy.hello()
	busy.expect("MAIL FROM:<alice@example.com>\r\n", 250, "")
	busy.expect("RCPT TO:<bob@dest.test>\r\n", 250, "")
	idle := dialFrom(t, "127.0.0.11", addr)
	idle.hello()

	srv.Drain()
	if code, line := idle.reply(); code != 421 || line != "421 4.3.2 relay.test Service shutting down" {
		t.Errorf("idle session told %q, want 421 4.3.2", line)
	}
	if !idle.closed() {
		t.Error("idle session left open")
	}
	busy.expect("DATA\r\n", 354, "")
	busy.expect("Subject: x\r\n\r\nbody\r\n.\r\n", 250, "queued as")
	busy.expect("MAIL FROM:<alice@example.com>\r\n", 421, "4.3.2 relay.test Service shutting down")
	if !busy.closed() {
		t.Error("session left open after its transaction")
	}
	if n := len(spool.all()); n != 1 {
		t.Errorf("%d messages queued, want the one in flight", n)
	}

	late := dialFrom(t, "127.0.0.12", addr)
	if code, line := late.reply(); code != 421 || line != "421 4.3.2 relay.test Service shutting down" {
		t.Errorf("new connection greeted %q, want 421 4.3.2", line)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testenv.WaitTimeout)
	defer cancel()
	if err := srv.Idle(ctx); err != nil {
		t.Errorf("sessions left after the drain: %v", err)
	}
}

// TestDrainTLS: the same over STARTTLS; the 421 goes through TLS.
func TestDrainTLS(t *testing.T) {
	ca := testenv.NewCA(t)
	srv, addr, spool, _ := startServer(t, Config{TLS: ca.Issue(t, "relay.test").ServerConfig()})
	busy := dialSMTP(t, "127.0.0.10", addr, ca.ClientConfig("relay.test"))
	if err := busy.Mail("alice@example.com", nil); err != nil {
		t.Fatal(err)
	}
	if err := busy.Rcpt("bob@dest.test", nil); err != nil {
		t.Fatal(err)
	}
	idle := dialSMTP(t, "127.0.0.11", addr, ca.ClientConfig("relay.test"))
	if err := idle.Noop(); err != nil { // the TLS handshake and EHLO done
		t.Fatal(err)
	}

	// A client told 220 to STARTTLS that has not started its handshake:
	// no plain-text reply may cut into it; the connection just closes.
	handshaking := dialFrom(t, "127.0.0.12", addr)
	handshaking.hello()
	handshaking.expect("STARTTLS\r\n", 220, "")

	srv.Drain()
	if !handshaking.closed() {
		t.Error("connection waiting for its TLS handshake left open")
	}
	if code, msg := smtpCode(idle.Mail("alice@example.com", nil)); code != 421 || msg != "4.3.2 relay.test Service shutting down" {
		t.Errorf("idle TLS session: %d %s, want 421 4.3.2", code, msg)
	}
	w, err := busy.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, "Subject: x\r\n\r\nbody\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("the transaction in flight over TLS: %v", err)
	}
	if code, msg := smtpCode(busy.Mail("alice@example.com", nil)); code != 421 || !strings.Contains(msg, "4.3.2 relay.test Service shutting down") {
		t.Errorf("next command after the transaction: %d %s, want 421 4.3.2", code, msg)
	}
	if n := len(spool.all()); n != 1 {
		t.Errorf("%d messages queued, want the one in flight", n)
	}
}
