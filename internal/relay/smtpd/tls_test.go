package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/pires/go-proxyproto"

	"github.com/postgate/postgate/internal/testenv"
)

// tlsServer runs a server with STARTTLS and returns its address and a client
// TLS configuration that trusts it.
func tlsServer(t *testing.T, cfg Config) (string, *memSpool, *tls.Config) {
	t.Helper()
	ca := testenv.NewCA(t)
	cfg.TLS = ca.Issue(t, "relay.test").ServerConfig()
	addr, spool, _ := testServer(t, cfg)
	return addr, spool, ca.ClientConfig("relay.test")
}

func dialSMTP(t *testing.T, from, addr string, startTLS *tls.Config) *smtp.Client {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	var c *smtp.Client
	if startTLS != nil {
		c, err = smtp.NewClientStartTLS(conn, startTLS)
	} else {
		c = smtp.NewClient(conn)
		err = c.Hello("client.test")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func smtpCode(err error) (int, string) {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code, fmt.Sprintf("%d.%d.%d %s", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
	}
	if err == nil {
		return 0, ""
	}
	return -1, err.Error()
}

func TestAuthOnlyAfterSTARTTLS(t *testing.T) {
	addr, spool, clientTLS := tlsServer(t, Config{})

	plain := dialSMTP(t, "127.0.0.70", addr, nil)
	if ok, _ := plain.Extension("STARTTLS"); !ok {
		t.Error("STARTTLS not offered")
	}
	if ok, _ := plain.Extension("AUTH"); ok {
		t.Error("AUTH offered without TLS")
	}
	raw := dialFrom(t, "127.0.0.70", addr)
	raw.hello()
	if code, line := raw.send("AUTH PLAIN AG1haWxlcgBzM2NyZXQtcHc=\r\n"); code/100 != 5 {
		t.Errorf("AUTH before STARTTLS: %q, want a 5xx", line)
	}

	secure := dialSMTP(t, "127.0.0.70", addr, clientTLS)
	if ok, mechs := secure.Extension("AUTH"); !ok || mechs != "PLAIN LOGIN" {
		t.Errorf("AUTH after STARTTLS: offered %v %q, want PLAIN LOGIN", ok, mechs)
	}
	// A client whose networks take no AUTH is not offered it.
	noAuth := dialSMTP(t, "127.0.0.10", addr, clientTLS)
	if ok, _ := noAuth.Extension("AUTH"); ok {
		t.Error("AUTH offered to a client in a network without AUTH")
	}

	if err := secure.Mail("bob@other.test", nil); err != nil {
		t.Fatal(err)
	}
	if code, msg := smtpCode(secure.Rcpt("x@dest.test", nil)); code != 554 || !strings.Contains(msg, "authentication required") {
		t.Errorf("RCPT before AUTH: %d %s", code, msg)
	}
	if err := secure.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := secure.Auth(sasl.NewPlainClient("", "mailer", "s3cret-pw")); err != nil {
		t.Fatalf("AUTH PLAIN: %v", err)
	}
	if err := secure.SendMail("bob@other.test", []string{"x@dest.test"}, strings.NewReader("Subject: x\r\n\r\nhi\r\n")); err != nil {
		t.Fatalf("send after AUTH: %v", err)
	}
	msgs := spool.all()
	if len(msgs) != 1 || msgs[0].env.Identity != "other/mailer" || msgs[0].env.TLS == nil || msgs[0].env.TLS.Version < tls.VersionTLS12 {
		t.Fatalf("queued: %+v", msgs)
	}
}

func TestAuthLoginAndFailures(t *testing.T) {
	addr, _, clientTLS := tlsServer(t, Config{})
	c := dialSMTP(t, "127.0.0.70", addr, clientTLS)
	if err := c.Auth(sasl.NewLoginClient("other/mailer", "s3cret-pw")); err != nil {
		t.Fatalf("AUTH LOGIN: %v", err)
	}

	bad := dialSMTP(t, "127.0.0.70", addr, clientTLS)
	for i := range maxAuthFailures {
		code, msg := smtpCode(bad.Auth(sasl.NewPlainClient("", "mailer", "wrong")))
		if i < maxAuthFailures-1 && (code != 535 || !strings.HasPrefix(msg, "5.7.8")) {
			t.Fatalf("attempt %d with a wrong password: %d %s, want 535 5.7.8", i+1, code, msg)
		}
	}
	if err := bad.Noop(); err == nil {
		t.Errorf("connection still open after %d failed AUTH attempts", maxAuthFailures)
	}
}

func TestImplicitTLS(t *testing.T) {
	ca := testenv.NewCA(t)
	srv, err := New(Config{Hostname: "relay.test", Tables: newTables(t, testInput()), Spool: &memSpool{}, TLS: ca.Issue(t, "relay.test").ServerConfig()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln, true) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	c, err := smtp.DialTLS(ln.Addr().String(), ca.ClientConfig("relay.test"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if st, ok := c.TLSConnectionState(); !ok || st.Version < tls.VersionTLS12 {
		t.Errorf("implicit TLS: %v %v", ok, st.Version)
	}
}

func TestProxyProtocol(t *testing.T) {
	addr, spool, _ := testServer(t, Config{ProxyCIDRs: mustPrefixes("127.0.0.200/32"), ProxyHeaderTimeout: 300 * time.Millisecond})

	header := func(version byte, src string) []byte {
		h := proxyproto.HeaderProxyFromAddrs(version, &net.TCPAddr{IP: net.ParseIP(src), Port: 40000}, &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 2525})
		b, err := h.Format()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, version := range []byte{1, 2} {
		// From the load balancer, the header names the client: 127.0.0.10
		// may send as example.com, which the balancer itself may not.
		c := dialFrom(t, "127.0.0.200", addr)
		if _, err := c.conn.Write(header(version, "127.0.0.10")); err != nil {
			t.Fatal(err)
		}
		c.hello()
		c.startData()
		c.expect("Subject: x\r\n\r\nhi\r\n.\r\n", 250, "queued")
	}
	msgs := spool.all()
	if len(msgs) != 2 || msgs[0].env.Client.Addr() != addr4("127.0.0.10") || msgs[1].env.Client.Addr() != addr4("127.0.0.10") {
		t.Fatalf("queued: %+v", msgs)
	}

	// From the load balancer without a header: closed, no greeting.
	c := dialFrom(t, "127.0.0.200", addr)
	if code, line := c.reply(); code != 0 {
		t.Errorf("proxy peer without a header: %q, want the connection closed", line)
	}

	// From anyone else, a header is refused: it would choose the address
	// the client is admitted by.
	for _, version := range []byte{1, 2} {
		c := dialFrom(t, "127.0.0.10", addr)
		if code, _ := c.reply(); code != 220 {
			t.Fatal("no greeting")
		}
		if _, err := c.conn.Write(header(version, "127.0.0.11")); err != nil {
			t.Fatal(err)
		}
		if code, line := c.reply(); code != 554 || !strings.Contains(line, "5.7.0") {
			t.Errorf("v%d header from a client: %q, want 554 5.7.0", version, line)
		}
		if !c.closed() {
			t.Error("connection open after a refused PROXY header")
		}
	}
}

// TestSwaks sends through the server with swaks, a client that is not
// ours: plain, with STARTTLS and AUTH LOGIN, and refused.
func TestSwaks(t *testing.T) {
	swaks, err := exec.LookPath("swaks")
	if err != nil {
		t.Fatal("swaks is not installed (make deps installs it)")
	}
	addr, spool, _ := tlsServer(t, Config{})
	host, port, _ := net.SplitHostPort(addr)
	run := func(args ...string) string {
		base := []string{"--server", host, "--port", port, "--helo", "swaks.test", "--timeout", "10"}
		out, _ := exec.Command(swaks, append(base, args...)...).CombinedOutput()
		return string(out)
	}
	if out := run("--local-interface", "127.0.0.10", "--from", "alice@example.com", "--to", "bob@dest.test"); !strings.Contains(out, "<-  250 2.0.0 OK: queued as") {
		t.Errorf("swaks plain:\n%s", out)
	}
	if out := run("--local-interface", "127.0.0.70", "--from", "bob@other.test", "--to", "x@dest.test", "--tls", "--auth", "LOGIN", "--auth-user", "mailer", "--auth-password", "s3cret-pw"); !strings.Contains(out, "<~  250 2.0.0 OK: queued as") || !strings.Contains(out, "<~  235 2.0.0") {
		t.Errorf("swaks STARTTLS AUTH LOGIN:\n%s", out)
	}
	if out := run("--local-interface", "127.0.0.200", "--from", "alice@example.com", "--to", "bob@dest.test"); !strings.Contains(out, "<** 554 5.7.1 Relay access denied") {
		t.Errorf("swaks from an untrusted address:\n%s", out)
	}
	if n := len(spool.all()); n != 2 {
		t.Errorf("%d messages queued, want 2", n)
	}
}
