package smtpd

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/message"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/routing"
	"github.com/postgate/postgate/internal/testenv"
)

func TestAdmittedMessageIsQueuedVerbatim(t *testing.T) {
	addr, spool, _ := testServer(t, Config{})
	c := dialFrom(t, "127.0.0.10", addr)
	c.hello()
	c.expect("MAIL FROM:<Alice@Example.com> SIZE=100\r\n", 250, "")
	c.expect("RCPT TO:<Bob.Smith+tag@Dest.TEST>\r\n", 250, "")
	c.expect("RCPT TO:<carol@dest.test>\r\n", 250, "")
	c.expect("DATA\r\n", 354, "")
	body := "Subject: hi\r\n\r\n..leading dot\r\nbye\r\n"
	c.expect(body+".\r\n", 250, "2.0.0 OK: queued as Q0001")
	msgs := spool.all()
	if len(msgs) != 1 {
		t.Fatalf("%d messages queued, want 1", len(msgs))
	}
	m := msgs[0]
	if m.env.From != "Alice@Example.com" || strings.Join(m.env.To, ",") != "Bob.Smith+tag@Dest.TEST,carol@dest.test" {
		t.Errorf("envelope rewritten: from %q to %q", m.env.From, m.env.To)
	}
	if m.env.Client.Addr() != addr4("127.0.0.10") || m.env.Helo != "client.test" || m.env.MailOptions.Size != 100 {
		t.Errorf("envelope: %+v", m.env)
	}
	// The client's bytes are kept as they were (dot-unstuffed, CRLF kept);
	// the relay only prepends its Received field and the Message-ID and
	// Date the client did not give.
	if want := "Subject: hi\r\n\r\n.leading dot\r\nbye\r\n"; !strings.HasSuffix(string(m.body), "\r\n"+want) {
		t.Errorf("body %q does not end with the client's message %q", m.body, want)
	}
	for _, prefix := range []string{"Received: from client.test ([127.0.0.10])\r\n\tby relay.test (postgate) with ESMTP", "Message-ID: <", "Date: "} {
		if !strings.Contains(string(m.body), "\n"+prefix) && !strings.HasPrefix(string(m.body), prefix) {
			t.Errorf("body lacks %q:\n%s", prefix, m.body)
		}
	}
}

func TestRelayAccessDenied(t *testing.T) {
	addr, spool, _ := testServer(t, Config{})
	for _, tc := range []struct {
		desc, client, from, reason string
	}{
		{"client in no trusted network", "127.0.0.200", "alice@example.com", "client is in no trusted network"},
		{"unknown sender domain", "127.0.0.10", "alice@unknown.test", "sender domain is not an accepted sender domain"},
		{"another namespace's domain", "127.0.0.10", "bob@other.test", "sender domain is not covered by the client's trusted networks"},
		{"AUTH required and not given", "127.0.0.70", "bob@other.test", "authentication required"},
		{"null sender from outside", "127.0.0.200", "", "client is in no trusted network"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			c := dialFrom(t, tc.client, addr)
			c.hello()
			c.expect("MAIL FROM:<"+tc.from+">\r\n", 250, "")
			c.expect("RCPT TO:<bob@dest.test>\r\n", 554, "5.7.1 Relay access denied: "+tc.reason)
			c.expect("DATA\r\n", 503, "5.5.1")
		})
	}
	if n := len(spool.all()); n != 0 {
		t.Errorf("%d messages queued, want none", n)
	}
}

func TestAddressesRefusedForEveryClient(t *testing.T) {
	addr, _, _ := testServer(t, Config{})
	// go-smtp accepts and drops source routes ("@hop:user@domain") as RFC
	// 5321 section 4.1.1.3 asks, and unquotes "alice"@example.com to its
	// equivalent dot-atom before the backend sees either; a quoted local
	// part that hides '@', '%' or '!' still arrives with it and is refused.
	for _, a := range []string{
		"alice%dest.test@example.com", // percent hack
		"host!alice@example.com",      // UUCP bang path
		`"alice@dest.test"@example.com`,
		`"alice%dest.test"@example.com`,
		`"alice dest"@example.com`,
		"alice@[127.0.0.1]",
		"alice..b@example.com",
		"alice@localhost",
	} {
		t.Run(a, func(t *testing.T) {
			c := dialFrom(t, "127.0.0.10", addr)
			c.hello()
			code, line := c.send("MAIL FROM:<" + a + ">\r\n")
			if code != 553 && code != 501 {
				t.Errorf("MAIL FROM:<%s>: %q, want 553 5.1.7 (or 501 from the parser)", a, line)
			}
			if code == 553 && !strings.Contains(line, "5.1.7") {
				t.Errorf("MAIL FROM:<%s>: %q, want 5.1.7", a, line)
			}
			c.send("RSET\r\n")
			c.expect("MAIL FROM:<alice@example.com>\r\n", 250, "")
			code, line = c.send("RCPT TO:<" + strings.Replace(a, "example.com", "dest.test", 1) + ">\r\n")
			if code != 553 && code != 501 {
				t.Errorf("RCPT TO:<%s>: %q, want 553 5.1.3 (or 501 from the parser)", a, line)
			}
		})
	}
}

// TestMailLoopRefused (RFC 5321 section 6.3): a message that arrives with
// message.MaxReceived Received fields is a loop: 554 5.4.6, nothing
// queued, the session goes on. One field fewer is accepted.
func TestMailLoopRefused(t *testing.T) {
	addr, spool, _ := testServer(t, Config{})
	hops := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "Received: from hop%d.example.net by hop%d.example.net; Mon, 1 Dec 2026 10:00:00 +0000\r\n", i, i+1)
		}
		return b.String() + "Subject: round and round\r\n\r\nbody\r\n.\r\n"
	}
	c := dialFrom(t, "127.0.0.10", addr)
	c.hello()
	c.startData()
	c.expect(hops(message.MaxReceived), 554, "5.4.6 Message refused: mail loop: 100 Received fields")
	c.expect("NOOP\r\n", 250, "")
	if n := len(spool.all()); n != 0 {
		t.Fatalf("%d messages queued from a loop", n)
	}
	c.startData()
	c.expect(hops(message.MaxReceived-1), 250, "queued as")
}

func TestMessageBytesRefused(t *testing.T) {
	addr, spool, _ := testServer(t, Config{})
	for _, tc := range []struct{ desc, body, want string }{
		{"bare LF", "Subject: x\r\n\r\nline\nmore\r\n", "bare LF"},
		{"smuggling", "Subject: x\r\n\r\nhi\n.\r\nMAIL FROM:<evil@example.com>\r\n", "bare LF"},
		{"bare CR", "Subject: x\r\n\r\nline\rmore\r\n", "bare CR"},
		{"NUL", "Subject: x\r\n\r\nnul\x00here\r\n", "NUL byte"},
	} {
		t.Run("DATA "+tc.desc, func(t *testing.T) {
			c := dialFrom(t, "127.0.0.10", addr)
			c.hello()
			c.startData()
			c.expect(tc.body+".\r\n", 550, "5.5.2 Message refused: "+tc.want)
			// The session stays in sync: the next command is a command.
			c.expect("NOOP\r\n", 250, "")
		})
		t.Run("BDAT "+tc.desc, func(t *testing.T) {
			c := dialFrom(t, "127.0.0.10", addr)
			c.hello()
			c.expect("MAIL FROM:<alice@example.com>\r\n", 250, "")
			c.expect("RCPT TO:<bob@dest.test>\r\n", 250, "")
			c.expect(fmt.Sprintf("BDAT %d LAST\r\n%s", len(tc.body), tc.body), 550, "5.5.2 Message refused: "+tc.want)
			c.expect("NOOP\r\n", 250, "")
		})
	}
	t.Run("BDAT in two chunks, clean", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.10", addr)
		c.hello()
		c.expect("MAIL FROM:<alice@example.com>\r\n", 250, "")
		c.expect("RCPT TO:<bob@dest.test>\r\n", 250, "")
		c.expect("BDAT 14\r\nSubject: x\r\n\r\n", 250, "")
		c.expect("BDAT 6 LAST\r\nhello\n", 550, "bare LF")
		c.expect("MAIL FROM:<alice@example.com>\r\n", 250, "")
		c.expect("RCPT TO:<bob@dest.test>\r\n", 250, "")
		c.expect("BDAT 14\r\nSubject: x\r\n\r\n", 250, "")
		c.expect("BDAT 7 LAST\r\nhello\r\n", 250, "queued as")
	})
	if n := len(spool.all()); n != 1 {
		t.Errorf("%d messages queued, want only the clean one", n)
	}
}

func TestLimits(t *testing.T) {
	addr, spool, _ := testServer(t, Config{MaxRecipients: 3, MaxMessageBytes: 1000})
	t.Run("recipients", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.10", addr)
		c.hello()
		c.expect("MAIL FROM:<alice@example.com>\r\n", 250, "")
		for i := range 3 {
			c.expect(fmt.Sprintf("RCPT TO:<r%d@dest.test>\r\n", i), 250, "")
		}
		c.expect("RCPT TO:<r4@dest.test>\r\n", 452, "4.5.3")
	})
	t.Run("SIZE at MAIL", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.10", addr)
		c.hello()
		c.expect("MAIL FROM:<alice@example.com> SIZE=1001\r\n", 552, "5.3.4")
	})
	t.Run("too large in DATA", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.10", addr)
		c.hello()
		c.startData()
		c.expect(strings.Repeat("0123456789012345678901234567890123456789\r\n", 30)+".\r\n", 552, "5.3.4")
		c.expect("NOOP\r\n", 250, "")
	})
	t.Run("too large in BDAT", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.10", addr)
		c.hello()
		c.expect("MAIL FROM:<alice@example.com>\r\n", 250, "")
		c.expect("RCPT TO:<bob@dest.test>\r\n", 250, "")
		body := strings.Repeat("x", 1001)
		c.expect(fmt.Sprintf("BDAT %d LAST\r\n%s", len(body), body), 552, "5.3.4")
	})
	if n := len(spool.all()); n != 0 {
		t.Errorf("%d messages queued, want none", n)
	}
}

func TestLineLength(t *testing.T) {
	addr, spool, _ := testServer(t, Config{})
	c := dialFrom(t, "127.0.0.10", addr)
	c.hello()
	c.startData()
	c.expect("Subject: x\r\n\r\n"+strings.Repeat("a", 998)+"\r\n.\r\n", 250, "queued as")

	c.startData()
	code, line := c.send("Subject: x\r\n\r\n" + strings.Repeat("a", 5000) + "\r\nMAIL FROM:<evil@example.com>\r\n.\r\n")
	if code/100 != 5 {
		t.Errorf("over-long line: %q, want a 5xx", line)
	}
	if !c.closed() {
		t.Error("the connection stays open after an over-long line: the rest of the body could be read as commands")
	}
	if n := len(spool.all()); n != 1 {
		t.Errorf("%d messages queued, want 1", n)
	}

	// BDAT has no line framing: the check is on the bytes.
	c = dialFrom(t, "127.0.0.10", addr)
	c.hello()
	c.expect("MAIL FROM:<alice@example.com>\r\n", 250, "")
	c.expect("RCPT TO:<bob@dest.test>\r\n", 250, "")
	long := strings.Repeat("b", 2001) + "\r\n"
	// go-smtp's line limit may see the chunk first (when it arrives with
	// the command, 500 5.4.0 and close) or the body check does (550 5.6.0):
	// both are clear refusals, and nothing is queued.
	code, line = c.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(long), long))
	if !(code == 550 && strings.Contains(line, "5.6.0 Message refused: line longer than 2000 octets")) && !(code == 500 && strings.Contains(line, "5.4.0")) {
		t.Errorf("BDAT with an over-long line: %q", line)
	}
	if n := len(spool.all()); n != 1 {
		t.Errorf("%d messages queued, want 1", n)
	}
}

func TestSpoolFull(t *testing.T) {
	addr, spool, _ := testServer(t, Config{})
	spool.lowSpace.Store(true)
	c := dialFrom(t, "127.0.0.10", addr)
	c.hello()
	c.expect("MAIL FROM:<alice@example.com>\r\n", 452, "4.3.1")
	spool.lowSpace.Store(false)
	c.expect("MAIL FROM:<alice@example.com>\r\n", 250, "")
	c.expect("RCPT TO:<bob@dest.test>\r\n", 250, "")
	spool.failNext.Store(true)
	c.expect("DATA\r\n", 354, "")
	c.expect("Subject: x\r\n\r\nbody\r\n.\r\n", 451, "4.3.0")
	for _, tc := range []struct {
		err  error
		code int
		want string
	}{
		{fmt.Errorf("write queue file: %w", queue.ErrNoSpace), 452, "4.3.1"},
		{fmt.Errorf("ENVID: %w", queue.ErrInvalid), 550, "5.5.4"},
	} {
		c.expect("MAIL FROM:<alice@example.com>\r\n", 250, "")
		c.expect("RCPT TO:<bob@dest.test>\r\n", 250, "")
		spool.failWith.Store(&tc.err)
		c.expect("DATA\r\n", 354, "")
		c.expect("Subject: x\r\n\r\nbody\r\n.\r\n", tc.code, tc.want)
	}
	if n := len(spool.all()); n != 0 {
		t.Errorf("%d messages queued, want none", n)
	}
}

func TestConnectionLimits(t *testing.T) {
	addr, _, _ := testServer(t, Config{MaxConnectionsPerClient: 2, MaxConnections: 3})
	a1, a2 := dialFrom(t, "127.0.0.10", addr), dialFrom(t, "127.0.0.10", addr)
	a1.hello()
	a2.hello()
	a3 := dialFrom(t, "127.0.0.10", addr)
	if code, line := a3.reply(); code != 421 || !strings.Contains(line, "4.7.0") {
		t.Errorf("third connection from one client: %q, want 421 4.7.0", line)
	}
	b1 := dialFrom(t, "127.0.0.11", addr)
	b1.hello()
	b2 := dialFrom(t, "127.0.0.12", addr)
	if code, line := b2.reply(); code != 421 {
		t.Errorf("fourth connection in total: %q, want 421", line)
	}
	// A closed connection frees its slot.
	a1.expect("QUIT\r\n", 221, "")
	testenv.EventuallyTrue(t, "a closed connection did not free its slot", func() bool {
		c := dialFrom(t, "127.0.0.13", addr)
		code, _ := c.reply()
		return code == 220
	})
}

// TestIdleAndSlowClients: time is the subject, so the test runs in a
// testing/synctest bubble on in-memory connections: the timeouts fire on
// the bubble's clock, exactly when due.
func TestIdleAndSlowClients(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// A floor of 10 bytes/s: the slow body below sends about 50.
		ln := newPipeListener()
		_, spool, _ := serveOn(t, Config{IdleTimeout: 400 * time.Millisecond, MinDataRate: 10}, ln)
		idle := ln.dial(t, "127.0.0.10")
		idle.hello()
		start := time.Now()
		if code, line := idle.reply(); code != 421 || !strings.Contains(line, "4.4.2") {
			t.Errorf("idle client: %q, want 421 4.4.2", line)
		}
		if waited := time.Since(start); waited != 400*time.Millisecond {
			t.Errorf("the idle client was cut off after %s, want the idle timeout, 400ms", waited)
		}

		// A body that takes 3 idle timeouts to arrive, one line every 150ms,
		// is not cut off: it stays above the minimum data rate.
		slow := ln.dial(t, "127.0.0.10")
		slow.hello()
		slow.startData()
		for i := range 8 {
			if _, err := fmt.Fprintf(slow.conn, "line %d\r\n", i); err != nil {
				t.Fatal(err)
			}
			time.Sleep(150 * time.Millisecond)
		}
		slow.expect(".\r\n", 250, "queued as")
		if n := len(spool.all()); n != 1 {
			t.Errorf("%d messages queued, want 1", n)
		}
	})
}

// TestSlowLoris: a body that trickles in a byte every 100 ms never lets the
// idle timer (400 ms) fire, but falls behind MinDataRate and is cut off
// with 421 4.4.2; nothing is queued. A body at a steady rate above the
// floor passes. In a testing/synctest bubble, as TestIdleAndSlowClients.
func TestSlowLoris(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ln := newPipeListener()
		_, spool, _ := serveOn(t, Config{IdleTimeout: 400 * time.Millisecond, MinDataRate: 200}, ln)
		c := ln.dial(t, "127.0.0.10")
		c.hello()
		c.startData()
		start := time.Now()
		// The trickle runs beside the read of the reply: an in-memory
		// connection has no buffer to hold the 421 while the client writes.
		trickled := make(chan int, 1)
		go func() {
			n := 0
			for ; n < 100; n++ { // 10 s at most
				if _, err := c.conn.Write([]byte("x")); err != nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			trickled <- n
		}()
		code, line := c.reply()
		cutAfter := time.Since(start)
		if code != 421 || !strings.Contains(line, "4.4.2") {
			t.Fatalf("slow loris: %q after %s, want 421 4.4.2", line, cutAfter)
		}
		// The relay closes the connection after its 421: the trickle's
		// next write fails.
		if n := <-trickled; n >= 100 || !c.closed() {
			t.Error("the connection stays open after the timeout")
		}
		// The body may take the idle timeout plus its size at the floor
		// rate: about 0.5 s for the few bytes of a trickle at 10 bytes/s.
		if cutAfter > time.Second {
			t.Errorf("cut off after %s, want within a second", cutAfter)
		}
		t.Logf("cut off after %s", cutAfter)

		// 300 bytes every 100 ms for 1.5 s (3 kB/s) passes.
		ok := ln.dial(t, "127.0.0.10")
		ok.hello()
		ok.startData()
		line300 := strings.Repeat("y", 298) + "\r\n"
		for range 15 {
			if _, err := io.WriteString(ok.conn, line300); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		ok.expect(".\r\n", 250, "queued as")
		if n := len(spool.all()); n != 1 {
			t.Errorf("%d messages queued, want 1 (the steady one)", n)
		}
	})
}

func TestTableSwapDuringSession(t *testing.T) {
	addr, spool, ts := testServer(t, Config{})
	c := dialFrom(t, "127.0.0.10", addr)
	c.hello()
	c.expect("MAIL FROM:<alice@new.test>\r\n", 250, "")
	c.expect("RCPT TO:<bob@dest.test>\r\n", 554, "5.7.1")

	// The operator adds new.test to namespace app; the session goes on.
	in := testInput()
	sd := in.SenderDomains[0]
	sd.Name, sd.Spec.Domain = "new", "new.test"
	in.SenderDomains = append(in.SenderDomains, sd)
	ts.p.Store(routing.Compile(in, nil).Table)
	c.expect("RCPT TO:<bob@dest.test>\r\n", 250, "")

	// And removes it before DATA: refused by the table in force then.
	ts.p.Store(routing.Compile(testInput(), nil).Table)
	c.expect("DATA\r\n", 354, "")
	c.expect("Subject: x\r\n\r\nbody\r\n.\r\n", 554, "5.7.1")
	if n := len(spool.all()); n != 0 {
		t.Errorf("%d messages queued, want none", n)
	}
}

func TestNoTableYet(t *testing.T) {
	addr, spool, ts := testServer(t, Config{})
	ts.p.Store(nil)
	c := dialFrom(t, "127.0.0.10", addr)
	c.hello()
	c.expect("MAIL FROM:<alice@example.com>\r\n", 250, "")
	c.expect("RCPT TO:<bob@dest.test>\r\n", 451, "4.3.2 Relay not ready")
	if n := len(spool.all()); n != 0 {
		t.Errorf("%d messages queued, want none", n)
	}
}

// TestSignsAtAccept: a signing domain's mail is queued with its
// DKIM-Signature (docs/design.md contract 5), verified here with go-msgauth
// against the record the compiler publishes.
// signingTables is the test table with example.com signing (Ed25519,
// selector s1), and the DNS record of its key.
func signingTables(t *testing.T) (*tables, v1alpha1.DKIMRecord) {
	t.Helper()
	in := testInput()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	in.Secrets = append(in.Secrets, corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "dkim"},
		Data:       map[string][]byte{"private.key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})},
	})
	in.SenderDomains[0].Spec.Signing = &v1alpha1.DKIMSigning{Selector: "s1", Algorithm: v1alpha1.DKIMAlgorithmEd25519,
		KeySecretRef: &v1alpha1.SecretKeyReference{Name: "dkim"}}
	result := routing.Compile(in, nil)
	record := result.Verdict(routing.ObjectKey{Kind: routing.KindSenderDomain, Namespace: "app", Name: "example"}).DKIM
	ts := &tables{}
	ts.p.Store(result.Table)
	return ts, *record
}

// verifyDKIM checks that body carries a valid signature of example.com.
func verifyDKIM(t *testing.T, body []byte, record v1alpha1.DKIMRecord) {
	t.Helper()
	if !strings.HasPrefix(string(body), "DKIM-Signature:") {
		t.Fatalf("queued message does not start with its signature:\n%s", body)
	}
	verifications, err := dkim.VerifyWithOptions(bytes.NewReader(body), &dkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			if name != record.Name {
				return nil, fmt.Errorf("unexpected lookup %s", name)
			}
			return []string{record.Value}, nil
		},
	})
	if err != nil || len(verifications) != 1 || verifications[0].Err != nil || verifications[0].Domain != "example.com" {
		t.Fatalf("DKIM verification: %v %+v", err, verifications)
	}
}

func TestSignsAtAccept(t *testing.T) {
	ts, record := signingTables(t)
	addr, spool, _ := testServer(t, Config{Tables: ts, StageDir: t.TempDir()})

	c := dialFrom(t, "127.0.0.10", addr)
	c.hello()
	c.startData()
	c.expect("From: alice@example.com\r\nTo: bob@dest.test\r\nSubject: signed\r\n\r\nhello\r\n.\r\n", 250, "queued")
	verifyDKIM(t, spool.all()[0].body, record)
}

// TestNullSender: MAIL FROM:<> (auto-replies, RFC 3834; application
// bounces) is accepted from a trusted client, and decided at the end of
// the message by its From field: one address the client may send as, or
// 554 5.7.1. The message is signed by that address's domain and queued
// with the null sender unchanged.
func TestNullSender(t *testing.T) {
	ts, record := signingTables(t)
	addr, spool, _ := testServer(t, Config{Tables: ts, StageDir: t.TempDir()})
	const rest = "To: bob@dest.test\r\nSubject: Out of office\r\nAuto-Submitted: auto-replied\r\n\r\nAway.\r\n"
	for _, tc := range []struct {
		desc, client, header string
		code                 int
		want                 string
	}{
		{"a domain of the client", "127.0.0.10", "From: Alerts <alerts@example.com>\r\n", 250, "queued as"},
		{"another namespace's domain", "127.0.0.10", "From: x@other.test\r\n", 554, "5.7.1 Relay access denied: From field: sender domain is not covered"},
		{"an unknown domain", "127.0.0.10", "From: x@unknown.test\r\n", 554, "5.7.1 Relay access denied: From field: sender domain is not an accepted"},
		{"no From field", "127.0.0.10", "", 554, "5.7.1"},
		{"two From fields", "127.0.0.10", "From: alerts@example.com\r\nFrom: x@other.test\r\n", 554, "5.7.1"},
		{"two addresses", "127.0.0.10", "From: alerts@example.com, x@other.test\r\n", 554, "5.7.1"},
		{"AUTH required and not given", "127.0.0.70", "From: x@other.test\r\n", 554, "5.7.1 Relay access denied: From field: authentication required"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			c := dialFrom(t, tc.client, addr)
			c.hello()
			c.expect("MAIL FROM:<>\r\n", 250, "")
			c.expect("RCPT TO:<bob@dest.test>\r\n", 250, "")
			c.expect("DATA\r\n", 354, "")
			c.expect(tc.header+rest+".\r\n", tc.code, tc.want)
			// The same with BDAT.
			msg := tc.header + rest
			c.expect("MAIL FROM:<>\r\n", 250, "")
			c.expect("RCPT TO:<bob@dest.test>\r\n", 250, "")
			c.expect(fmt.Sprintf("BDAT %d LAST\r\n%s", len(msg), msg), tc.code, tc.want)
		})
	}
	msgs := spool.all()
	if len(msgs) != 2 {
		t.Fatalf("%d messages queued, want the 2 from the client's own domain", len(msgs))
	}
	for _, m := range msgs {
		if m.env.From != "" || m.env.HeaderFrom != "alerts@example.com" {
			t.Errorf("queued envelope %+v", m.env)
		}
		verifyDKIM(t, m.body, record)
	}
}

// TestSigningKeyUnavailable: a signing domain whose key Secret is gone is
// refused with 451 4.3.0 at the end of DATA and of BDAT LAST, naming the
// reason; nothing is queued unsigned. The key's return takes effect at once.
func TestSigningKeyUnavailable(t *testing.T) {
	in := testInput()
	in.SenderDomains[0].Spec.Signing = &v1alpha1.DKIMSigning{Selector: "s1", Algorithm: v1alpha1.DKIMAlgorithmEd25519,
		KeySecretRef: &v1alpha1.SecretKeyReference{Name: "dkim"}}
	ts := newTables(t, in)
	addr, spool, _ := testServer(t, Config{Tables: ts, StageDir: t.TempDir()})
	const want = `4.3.0 Not accepted for now: the DKIM key of example.com is unavailable: Secret "dkim" (DKIM key) not found`

	c := dialFrom(t, "127.0.0.10", addr)
	c.hello()
	c.startData()
	c.expect("From: alice@example.com\r\nSubject: unsigned?\r\n\r\nhello\r\n.\r\n", 451, want)
	c.expect("MAIL FROM:<alice@example.com>\r\n", 250, "")
	c.expect("RCPT TO:<bob@dest.test>\r\n", 250, "")
	c.expect("BDAT 14\r\nSubject: x\r\n\r\n", 250, "")
	c.expect("BDAT 7 LAST\r\nhello\r\n", 451, want)
	// The null sender whose From field is of the domain: the same.
	c.expect("MAIL FROM:<>\r\n", 250, "")
	c.expect("RCPT TO:<bob@dest.test>\r\n", 250, "")
	c.expect("DATA\r\n", 354, "")
	c.expect("From: alerts@example.com\r\nSubject: away\r\n\r\nhello\r\n.\r\n", 451, want)
	// Mail of the other domains is not concerned.
	c.expect("MAIL FROM:<bob@example.com>\r\n", 250, "")
	if n := len(spool.all()); n != 0 {
		t.Fatalf("%d messages queued without their signature", n)
	}

	_, key, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	in.Secrets = append(in.Secrets, corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "dkim"},
		Data:       map[string][]byte{"private.key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})},
	})
	ts.p.Store(routing.Compile(in, nil).Table)
	c.expect("RSET\r\n", 250, "")
	c.startData()
	c.expect("From: alice@example.com\r\nSubject: signed\r\n\r\nhello\r\n.\r\n", 250, "queued")
	if q := spool.all(); len(q) != 1 || !strings.HasPrefix(string(q[0].body), "DKIM-Signature:") {
		t.Fatalf("queued %d messages, want one signed", len(q))
	}
}

// TestTLSRequiredNo: a message saying "TLS-Required: No" (RFC 8689
// section 5) is queued with its envelope marked, so that delivery lets
// the recipients' DANE and MTA-STS policies pass; others are not.
func TestTLSRequiredNo(t *testing.T) {
	addr, spool, _ := testServer(t, Config{})
	c := dialFrom(t, "127.0.0.10", addr)
	c.hello()
	for _, body := range []string{"TLS-Required: No\r\nSubject: a\r\n\r\nx\r\n", "Subject: b\r\n\r\nx\r\n"} {
		c.expect("MAIL FROM:<alice@example.com>\r\n", 250, "")
		c.expect("RCPT TO:<bob@dest.test>\r\n", 250, "")
		c.expect("DATA\r\n", 354, "")
		c.expect(body+".\r\n", 250, "")
	}
	msgs := spool.all()
	if len(msgs) != 2 || !msgs[0].env.TLSOptional || msgs[1].env.TLSOptional {
		t.Fatalf("queued: %+v", msgs)
	}
}
