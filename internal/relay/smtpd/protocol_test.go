package smtpd

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/postgate/postgate/internal/testenv"
)

// greeted connects from 127.0.0.10, reads the greeting and says EHLO; it
// returns the client and the EHLO keywords.
func greeted(t *testing.T, addr string) (*rawClient, []string) {
	t.Helper()
	c := dialFrom(t, "127.0.0.10", addr)
	if code, line := c.reply(); code != 220 {
		t.Fatalf("greeting %q", line)
	}
	return c, c.ehlo("client.test")
}

// ehlo says EHLO name and returns the reply's lines after the first: the
// keywords with their parameters.
func (c *rawClient) ehlo(name string) []string {
	c.t.Helper()
	if _, err := c.conn.Write([]byte("EHLO " + name + "\r\n")); err != nil {
		c.t.Fatal(err)
	}
	var lines []string
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatal(err)
		}
		if len(line) < 4 || line[:3] != "250" {
			c.t.Fatalf("EHLO: %q", line)
		}
		lines = append(lines, strings.TrimSpace(line[4:]))
		if line[3] == ' ' {
			break
		}
	}
	return lines[1:]
}

// startTLS says STARTTLS and continues the raw session over TLS.
func (c *rawClient) startTLS(cfg *tls.Config) {
	c.t.Helper()
	c.expect("STARTTLS\r\n", 220, "")
	tc := tls.Client(c.conn, cfg)
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.conn, c.r = tc, bufio.NewReader(tc)
}

// rawTLSServer runs the test server with STARTTLS.
type rawTLSServer struct {
	t     *testing.T
	addr  string
	spool *memSpool
	tls   *tls.Config // the client's
}

func newRawTLSServer(t *testing.T) *rawTLSServer {
	ca := testenv.NewCA(t)
	addr, spool, _ := testServer(t, Config{TLS: ca.Issue(t, "relay.test").ServerConfig()})
	return &rawTLSServer{t: t, addr: addr, spool: spool, tls: ca.ClientConfig("relay.test")}
}

// open opens a raw session from client, says EHLO, and with useTLS starts
// TLS and says EHLO again (RFC 3207 section 4.2).
func (s *rawTLSServer) open(client string, useTLS bool) *rawClient {
	c := dialFrom(s.t, client, s.addr)
	c.hello()
	if useTLS {
		c.startTLS(s.tls)
		c.expect("EHLO client.test\r\n", 250, "")
	}
	return c
}

// TestBareCRAfterLeadingDot sends a bare CR right after a leading dot in
// DATA, which go-smtp's dot-decoding would delete with the dot: the message
// is refused with 550 5.5.2, not stored changed, over plain text and TLS
// alike, and the session stays in sync.
func TestBareCRAfterLeadingDot(t *testing.T) {
	srv := newRawTLSServer(t)
	for _, useTLS := range []bool{false, true} {
		for _, body := range []string{
			"Subject: x\r\n\r\nfirst\r\n.\rSECOND\r\n",
			"Subject: x\r\n\r\nfirst\r\n.\r\r\n",
			".\rSubject: x\r\n\r\nbody\r\n",
		} {
			t.Run(fmt.Sprintf("tls=%v %q", useTLS, body), func(t *testing.T) {
				c := srv.open("127.0.0.10", useTLS)
				c.startData()
				c.expect(body+".\r\n", 550, "5.5.2 Message refused: bare CR")
				c.expect("NOOP\r\n", 250, "")
				// A leading dot that is dot-stuffing stays fine.
				c.startData()
				c.expect("Subject: x\r\n\r\n..leading dot\r\n.\r\n", 250, "queued as")
			})
		}
	}
	for _, m := range srv.spool.all() {
		if !strings.HasSuffix(string(m.body), "\r\n.leading dot\r\n") {
			t.Errorf("queued %q", m.body)
		}
	}
	if n := len(srv.spool.all()); n != 6 {
		t.Errorf("%d messages queued, want the 6 clean ones", n)
	}
}

// TestOutOfSequence: commands out of sequence get 503 5.5.1 (RFC 5321
// sections 4.1.4 and 4.3.2), not 502 (not implemented), over plain text and
// TLS; a BDAT chunk after a refused BDAT is still read as data.
func TestOutOfSequence(t *testing.T) {
	srv := newRawTLSServer(t)
	t.Run("before EHLO", func(t *testing.T) {
		c := dialFrom(t, "127.0.0.10", srv.addr)
		if code, line := c.reply(); code != 220 {
			t.Fatalf("greeting %q", line)
		}
		c.expect("MAIL FROM:<alice@example.com>\r\n", 503, "5.5.1")
		c.expect("RCPT TO:<bob@dest.test>\r\n", 503, "5.5.1")
		c.expect("DATA\r\n", 503, "5.5.1")
		c.expect("BDAT 5 LAST\r\nhello", 503, "5.5.1")
		c.expect("NOOP\r\n", 250, "")
	})
	t.Run("after STARTTLS, before EHLO again", func(t *testing.T) {
		// The server forgets the first EHLO and any transaction once
		// TLS starts (RFC 3207 section 4.2).
		c := srv.open("127.0.0.10", false)
		c.expect("MAIL FROM:<alice@example.com>\r\n", 250, "")
		c.expect("RCPT TO:<bob@dest.test>\r\n", 250, "")
		c.startTLS(srv.tls)
		c.expect("DATA\r\n", 503, "5.5.1")
		c.expect("MAIL FROM:<alice@example.com>\r\n", 503, "5.5.1")
		c.expect("EHLO client.test\r\n", 250, "")
		c.expect("MAIL FROM:<alice@example.com>\r\n", 250, "")
	})
	t.Run("commands pipelined after STARTTLS", func(t *testing.T) {
		// Plain text sent after STARTTLS is dropped, never taken as said
		// under TLS (command injection): the first reply under TLS is
		// the first command's.
		c := srv.open("127.0.0.10", false)
		c.expect("STARTTLS\r\nRCPT TO:<bob@dest.test>\r\n", 220, "")
		tc := tls.Client(c.conn, srv.tls)
		if err := tc.Handshake(); err != nil {
			return // the injected bytes broke the handshake: refused too
		}
		c.conn, c.r = tc, bufio.NewReader(tc)
		c.expect("NOOP\r\n", 250, "")
	})
	for _, useTLS := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", useTLS), func(t *testing.T) {
			c := srv.open("127.0.0.10", useTLS)
			c.expect("RCPT TO:<bob@dest.test>\r\n", 503, "5.5.1")
			c.expect("DATA\r\n", 503, "5.5.1")
			c.expect("BDAT 5 LAST\r\nhello", 503, "5.5.1")
			c.expect("NOOP\r\n", 250, "")
			c.expect("MAIL FROM:<alice@example.com>\r\n", 250, "")
			c.expect("MAIL FROM:<alice@example.com>\r\n", 503, "5.5.1")
			c.expect("DATA\r\n", 503, "5.5.1")
			c.expect("BDAT 5\r\nhello", 503, "5.5.1")
			c.expect("RCPT TO:<bob@dest.test>\r\n", 250, "")
			c.expect("BDAT 12\r\nSubject: x\r\n", 250, "")
			c.expect("DATA\r\n", 503, "5.5.1")
			c.expect("MAIL FROM:<alice@example.com>\r\n", 503, "5.5.1")
			c.expect("BDAT 6 LAST\r\n\r\nhi\r\n", 250, "queued as")
		})
	}
	if n := len(srv.spool.all()); n != 2 {
		t.Errorf("%d messages queued, want 2", n)
	}
}

// TestAuthInvalidBase64: invalid base64 in AUTH, as the initial response
// or as a response to a challenge, is a syntax error, 501 5.5.2 (RFC 4954
// section 4), not a temporary failure, and counts toward the failures that
// close the connection.
func TestAuthInvalidBase64(t *testing.T) {
	srv := newRawTLSServer(t)
	c := srv.open("127.0.0.70", true)
	c.expect("AUTH PLAIN !!!notbase64\r\n", 501, "5.5.2")
	c.expect("AUTH LOGIN\r\n", 334, "")
	c.expect("@@@\r\n", 501, "5.5.2")
	c.expect("AUTH PLAIN AG1haWxlcgB3cm9uZw==\r\n", 535, "5.7.8") // mailer / wrong
	if !c.closed() {
		t.Errorf("connection open after %d failed AUTH attempts", maxAuthFailures)
	}
	// A SASL response is not a command, whatever it looks like.
	c = srv.open("127.0.0.70", true)
	c.expect("AUTH LOGIN\r\n", 334, "")
	c.expect("STARTTLS\r\n", 334, "") // base64 of a user name
	c.expect("*\r\n", 501, "")
	c.expect("AUTH PLAIN AG1haWxlcgBzM2NyZXQtcHc=\r\n", 235, "")
}

// TestSMTPUTF8 (RFC 6531): SMTPUTF8 is advertised; a non-ASCII address is
// refused with 553 5.6.7 in a transaction opened without the SMTPUTF8
// parameter and accepted in one opened with it; a domain in A-label form
// is ASCII and needs nothing; invalid UTF-8 is refused.
func TestSMTPUTF8(t *testing.T) {
	srv := newRawTLSServer(t)
	c, keywords := greeted(t, srv.addr)
	if !slices.Contains(keywords, "SMTPUTF8") {
		t.Errorf("EHLO keywords %q lack SMTPUTF8", keywords)
	}
	c.expect("MAIL FROM:<alice@example.com>\r\n", 250, "")
	c.expect("RCPT TO:<josé@raw.test>\r\n", 553, "5.6.7")
	c.expect("RCPT TO:<bob@xn--bcher-kva.test>\r\n", 250, "")
	c.expect("RSET\r\n", 250, "")
	c.expect("MAIL FROM:<alïce@example.com>\r\n", 553, "5.6.7")
	c.expect("MAIL FROM:<alice@example.com> SMTPUTF8\r\n", 250, "")
	c.expect("RCPT TO:<josé@raw.test>\r\n", 250, "")
	c.expect("RCPT TO:<bob@bücher.test>\r\n", 250, "")
	c.expect("RCPT TO:<bad\xff@raw.test>\r\n", 553, "5.1.3")
	c.expect("DATA\r\n", 354, "")
	c.expect("Subject: café\r\n\r\nbody\r\n.\r\n", 250, "queued as")
	msgs := srv.spool.all()
	if len(msgs) != 1 || !msgs[0].env.MailOptions.UTF8 || msgs[0].env.To[0] != "josé@raw.test" {
		t.Fatalf("queued %+v", msgs)
	}
}

// TestDSNParameters (RFC 3461): DSN is advertised; RET and ENVID on MAIL,
// NOTIFY and ORCPT on RCPT are taken and queued with the message; bad
// values get 501 5.5.4, an ENVID past 100 characters (section 4.4) and an
// ORCPT past 500 (section 4.2) too.
func TestDSNParameters(t *testing.T) {
	srv := newRawTLSServer(t)
	c, keywords := greeted(t, srv.addr)
	if !slices.Contains(keywords, "DSN") {
		t.Errorf("EHLO keywords %q lack DSN", keywords)
	}
	c.expect("MAIL FROM:<alice@example.com> RET=MAYBE\r\n", 501, "5.5.4")
	c.expect("MAIL FROM:<alice@example.com> ENVID="+strings.Repeat("x", 101)+"\r\n", 501, "5.5.4")
	c.expect("MAIL FROM:<alice@example.com> RET=HDRS ENVID=QQ+2B42\r\n", 250, "")
	c.expect("RCPT TO:<bob@example.net> NOTIFY=NEVER,SUCCESS\r\n", 501, "5.5.4")
	c.expect("RCPT TO:<bob@example.net> ORCPT=rfc822;"+strings.Repeat("o", 500)+"@example.org\r\n", 501, "5.5.4")
	c.expect("RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+2BOld@example.org\r\n", 250, "")
	c.expect("RCPT TO:<carol@example.net> NOTIFY=NEVER\r\n", 250, "")
	c.expect("RCPT TO:<dave@example.net>\r\n", 250, "")
	c.expect("DATA\r\n", 354, "")
	c.expect("Subject: hi\r\n\r\nbody\r\n.\r\n", 250, "queued as")
	msgs := srv.spool.all()
	if len(msgs) != 1 {
		t.Fatalf("queued %d messages", len(msgs))
	}
	env := msgs[0].env
	if env.MailOptions.Return != smtp.DSNReturnHeaders || env.MailOptions.EnvelopeID != "QQ+42" {
		t.Errorf("MAIL options %+v", env.MailOptions)
	}
	want := []smtp.RcptOptions{
		{Notify: []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure}, OriginalRecipientType: smtp.DSNAddressTypeRFC822, OriginalRecipient: "Bob+Old@example.org"},
		{Notify: []smtp.DSNNotify{smtp.DSNNotifyNever}},
		{},
	}
	if len(env.RcptOptions) != len(want) {
		t.Fatalf("RCPT options %+v", env.RcptOptions)
	}
	for i, w := range want {
		got := env.RcptOptions[i]
		if !slices.Equal(got.Notify, w.Notify) || got.OriginalRecipientType != w.OriginalRecipientType || got.OriginalRecipient != w.OriginalRecipient {
			t.Errorf("RCPT %d options %+v, want %+v", i, got, w)
		}
	}
}
