package testenv

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/textproto"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// dialFrom opens a TCP connection to the sink from the loopback address
// local, so the sink sees that client address.
func dialFrom(t *testing.T, s *SMTPSink, local string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	conn, err := d.DialContext(t.Context(), "tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// client returns a go-smtp client over conn with short timeouts.
func client(conn net.Conn) *smtp.Client {
	c := smtp.NewClient(conn)
	c.CommandTimeout, c.SubmissionTimeout = 10*time.Second, 10*time.Second
	return c
}

// startTLS returns a go-smtp client that said EHLO and STARTTLS over conn.
func startTLS(t *testing.T, conn net.Conn, cfg *tls.Config) *smtp.Client {
	t.Helper()
	c, err := smtp.NewClientStartTLS(conn, cfg)
	if err != nil {
		t.Fatalf("STARTTLS: %v", err)
	}
	c.CommandTimeout, c.SubmissionTimeout = 10*time.Second, 10*time.Second
	// go-smtp's client shakes hands lazily: EHLO again runs it.
	if err := c.Hello("relay.test"); err != nil {
		t.Fatalf("EHLO after STARTTLS: %v", err)
	}
	return c
}

// send runs one transaction on c.
func send(c *smtp.Client, from string, rcpts []string, body string) error {
	if err := c.Mail(from, nil); err != nil {
		return fmt.Errorf("MAIL: %w", err)
	}
	for _, rcpt := range rcpts {
		if err := c.Rcpt(rcpt, nil); err != nil {
			return fmt.Errorf("RCPT %s: %w", rcpt, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if _, err := w.Write([]byte(body)); err != nil {
		return fmt.Errorf("writing the message: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("end of data: %w", err)
	}
	return nil
}

// sendOnce connects from 127.0.0.1 and sends one message.
func sendOnce(t *testing.T, s *SMTPSink, rcpts ...string) error {
	t.Helper()
	c := client(dialFrom(t, s, "127.0.0.1"))
	defer func() { _ = c.Close() }()
	return send(c, "sender@example.test", rcpts, "Subject: test\r\n\r\nbody\r\n")
}

// sendDelayed sends one message and checks that it took at least delay.
func sendDelayed(t *testing.T, s *SMTPSink, delay time.Duration) {
	t.Helper()
	start := time.Now()
	if err := sendOnce(t, s, "a@example.test"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < delay {
		t.Errorf("a reply delayed by %v came after %v", delay, d)
	}
}

// smtpCode returns the reply code and enhanced code of err, an *smtp.SMTPError.
func smtpCode(err error) (int, smtp.EnhancedCode) {
	var e *smtp.SMTPError
	if errors.As(err, &e) {
		return e.Code, e.EnhancedCode
	}
	return 0, smtp.EnhancedCode{}
}

func wait(t *testing.T, s *SMTPSink, n int) []Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), WaitTimeout)
	defer cancel()
	msgs, err := s.WaitMessages(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

// waitClosed waits until n connections have ended.
func waitClosed(t *testing.T, s *SMTPSink, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), WaitTimeout)
	defer cancel()
	if _, err := s.WaitStats(ctx, func(st SinkStats) bool { return st.Closed >= n }); err != nil {
		t.Fatal(err)
	}
}

// raw is a line-level SMTP conversation for what go-smtp's client cannot
// say: BDAT, AUTH LOGIN with prompts, pipelining.
type raw struct {
	t  *testing.T
	tp *textproto.Conn
}

func newRaw(t *testing.T, conn net.Conn) *raw {
	return &raw{t: t, tp: textproto.NewConn(conn)}
}

// reply reads one (possibly multi-line) reply.
func (r *raw) reply() (int, string) {
	r.t.Helper()
	code, msg, err := r.tp.ReadResponse(0)
	if err != nil {
		r.t.Fatalf("reading a reply: %v", err)
	}
	return code, msg
}

// cmd sends a line and checks the reply's code.
func (r *raw) cmd(want int, line string) string {
	r.t.Helper()
	r.send(line)
	code, msg := r.reply()
	if code != want {
		r.t.Fatalf("%q: %d %s, want %d", line, code, msg, want)
	}
	return msg
}

// send writes a line.
func (r *raw) send(line string) {
	r.t.Helper()
	r.write(line + "\r\n")
}

// write writes bytes as they are.
func (r *raw) write(s string) {
	r.t.Helper()
	if _, err := r.tp.W.WriteString(s); err != nil {
		r.t.Fatal(err)
	}
	if err := r.tp.W.Flush(); err != nil {
		r.t.Fatal(err)
	}
}

func TestSinkRecordsTransaction(t *testing.T) {
	s := StartSMTPSink(t, SMTPSinkOptions{Addr: "127.0.0.1:0", Hostname: "mx.example.test"})
	c := client(dialFrom(t, s, "127.0.0.2"))
	if err := c.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("CHUNKING"); !ok {
		t.Error("CHUNKING not offered")
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Error("STARTTLS offered without a TLS config")
	}
	if err := c.Mail("Sender@Example.Test", &smtp.MailOptions{Size: 42, RequireTLS: false}); err != nil {
		t.Fatal(err)
	}
	for _, rcpt := range []string{"a@example.test", `"john doe"@Example.Test`} {
		if err := c.Rcpt(rcpt, nil); err != nil {
			t.Fatal(err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	body := "Subject: hi\r\n\r\n.leading dot\r\nend\r\n"
	if _, err := w.Write([]byte(body)); err != nil {
		t.Fatal(err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(resp.StatusText, "queued as sink-1") {
		t.Errorf("end-of-data reply %q names no queue id", resp.StatusText)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}

	msgs := wait(t, s, 1)
	m := msgs[0]
	if m.Client.Addr() != netip.MustParseAddr("127.0.0.2") {
		t.Errorf("client address %v, want 127.0.0.2", m.Client)
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"EHLO name", m.Hello, "relay.test"},
		{"MAIL FROM", m.From, "Sender@Example.Test"},
		{"raw MAIL", m.RawMail, "MAIL FROM:<Sender@Example.Test> BODY=8BITMIME SIZE=42"},
		{"SIZE", m.MailOptions.Size, int64(42)},
		{"BODY", m.MailOptions.Body, smtp.Body8BitMIME},
		{"RCPT TO", m.Rcpts, []string{"a@example.test", "john doe@Example.Test"}},
		{"raw RCPT", m.RawRcpts, []string{"RCPT TO:<a@example.test>", `RCPT TO:<"john doe"@Example.Test>`}},
		{"data", string(m.Data), body},
		{"chunked", m.Chunked, false},
		{"TLS", m.TLS == nil, true},
		{"AUTH", m.AuthUser, ""},
		{"conn", m.ConnID, 1},
	}
	for _, c := range checks {
		if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
			t.Errorf("%s = %q, want %q", c.what, c.got, c.want)
		}
	}

	waitClosed(t, s, 1)
	conns := s.Conns()
	if len(conns) != 1 || conns[0].Client != m.Client || !conns[0].Closed {
		t.Fatalf("conns = %+v", conns)
	}
	tr := conns[0].Transcript
	for _, want := range []string{
		"S: 220 mx.example.test ESMTP Service Ready",
		"C: EHLO relay.test",
		"S: 250-CHUNKING",
		`C: RCPT TO:<"john doe"@Example.Test>`,
		"S: 354 Go ahead. End your data with <CR><LF>.<CR><LF>",
		fmt.Sprintf("C: <message data, %d bytes>", len(body)+1), // the client stuffed one dot
		"C: .",
		"S: 250 2.0.0 OK: queued as sink-1",
		"C: QUIT",
		"S: 221 2.0.0 Bye",
	} {
		if !slices.Contains(tr, want) {
			t.Errorf("transcript lacks %q:\n%s", want, strings.Join(tr, "\n"))
		}
	}
	if st := s.Stats(); st != (SinkStats{Connections: 1, Closed: 1, Messages: 1}) {
		t.Errorf("stats = %+v", st)
	}
}

// TestSinkBDATAndPipelining sends chunks with bare LF and NUL, which go-smtp
// passes through, and a pipelined transaction, whose raw command lines must
// still land on the right message.
func TestSinkBDATAndPipelining(t *testing.T) {
	s := StartSMTPSink(t, SMTPSinkOptions{})
	r := newRaw(t, dialFrom(t, s, "127.0.0.1"))
	r.reply()
	r.cmd(250, "EHLO relay.test")
	r.cmd(250, "MAIL FROM:<a@example.test>")
	r.cmd(250, "RCPT TO:<b@example.test>")
	chunk1, chunk2 := "Subject: x\r\n\r\nbare\nLF", "\r\nNUL\x00 and bare\rCR\r\n"
	r.write(fmt.Sprintf("BDAT %d\r\n", len(chunk1)) + chunk1[:len(chunk1)-2])
	r.write(chunk1[len(chunk1)-2:] + fmt.Sprintf("BDAT %d LAST\r\n", len(chunk2)) + chunk2)
	if code, msg := r.reply(); code != 250 {
		t.Fatalf("first chunk: %d %s", code, msg)
	}
	if code, msg := r.reply(); code != 250 || !strings.Contains(msg, "sink-1") {
		t.Fatalf("last chunk: %d %s", code, msg)
	}

	// RFC 2920: MAIL and RCPTs in one write, then DATA.
	r.send("MAIL FROM:<c@example.test> SIZE=10\r\nRCPT TO:<d@example.test>\r\nRCPT TO:<@relay.test:e@example.test>")
	for range 3 {
		if code, msg := r.reply(); code != 250 {
			t.Fatalf("pipelined: %d %s", code, msg)
		}
	}
	r.cmd(354, "DATA")
	r.cmd(250, "RCPT TO:<in@body.test>\r\n..\r\n.")
	r.cmd(221, "QUIT")

	msgs := wait(t, s, 2)
	if got, want := string(msgs[0].Data), chunk1+chunk2; got != want || !msgs[0].Chunked {
		t.Errorf("BDAT message: chunked=%v %q, want %q", msgs[0].Chunked, got, want)
	}
	m := msgs[1]
	if m.Chunked || string(m.Data) != "RCPT TO:<in@body.test>\r\n.\r\n" {
		t.Errorf("DATA message: chunked=%v %q", m.Chunked, m.Data)
	}
	if m.RawMail != "MAIL FROM:<c@example.test> SIZE=10" || !slices.Equal(m.RawRcpts, []string{"RCPT TO:<d@example.test>", "RCPT TO:<@relay.test:e@example.test>"}) {
		t.Errorf("raw envelope %q %q", m.RawMail, m.RawRcpts)
	}
	if !slices.Equal(m.Rcpts, []string{"d@example.test", "e@example.test"}) {
		t.Errorf("parsed recipients %q", m.Rcpts)
	}
	tr := s.Conns()[0].Transcript
	for _, want := range []string{
		"C: BDAT 21", "C: <BDAT chunk, 21 bytes>", "C: BDAT 20 LAST", "C: <BDAT chunk, 20 bytes>",
		"C: <message data, 28 bytes>", "C: RCPT TO:<@relay.test:e@example.test>",
	} {
		if !slices.Contains(tr, want) {
			t.Errorf("transcript lacks %q:\n%s", want, strings.Join(tr, "\n"))
		}
	}
	if slices.ContainsFunc(tr, func(l string) bool { return strings.Contains(l, "in@body.test") }) {
		t.Errorf("message data leaked into the transcript:\n%s", strings.Join(tr, "\n"))
	}
}

func TestSinkGreetingFaults(t *testing.T) {
	s := StartSMTPSink(t, SMTPSinkOptions{})

	s.SetFault(StageConnect, Fault{Code: 421, Enhanced: smtp.EnhancedCode{4, 3, 2}, Text: "busy", Times: 1})
	err := client(dialFrom(t, s, "127.0.0.1")).Hello("relay.test")
	if code, enh := smtpCode(err); code != 421 || enh != (smtp.EnhancedCode{4, 3, 2}) {
		t.Errorf("421 greeting: %v", err)
	}
	if err := sendOnce(t, s, "a@example.test"); err != nil {
		t.Errorf("the fault applied once, then: %v", err)
	}

	s.SetFault(StageConnect, Fault{Code: 554, Text: "no service"})
	r := newRaw(t, dialFrom(t, s, "127.0.0.1"))
	if code, msg := r.reply(); code != 554 || !strings.Contains(msg, "5.0.0") {
		t.Errorf("554 greeting: %d %s", code, msg)
	}
	r.cmd(503, "EHLO relay.test")
	r.cmd(503, "MAIL FROM:<a@example.test>")
	r.cmd(221, "QUIT")

	s.SetFault(StageConnect, Fault{Drop: true})
	if err := client(dialFrom(t, s, "127.0.0.1")).Hello("relay.test"); err == nil {
		t.Error("a dropped connection greeted")
	}

	s.SetFault(StageConnect, Fault{Delay: 300 * time.Millisecond})
	sendDelayed(t, s, 300*time.Millisecond)
	if st := s.Stats(); st.Connections != 5 || st.Messages != 2 || st.Rejected != 2 || st.Dropped != 1 {
		t.Errorf("stats = %+v", st)
	}
}

func TestSinkStageFaults(t *testing.T) {
	tests := []struct {
		name      string
		set       func(*SMTPSink)
		rcpts     []string
		wantErr   string // the failing step of send; alternatives split by |
		wantCode  int
		wantEnh   smtp.EnhancedCode
		wantRcpts []string // of the accepted message, when one is
	}{
		{
			name:    "hello",
			set:     func(s *SMTPSink) { s.SetFault(StageHello, Fault{Code: 421, Enhanced: smtp.EnhancedCode{4, 7, 0}}) },
			wantErr: "MAIL", wantCode: 421, wantEnh: smtp.EnhancedCode{4, 7, 0},
		},
		{
			name: "mail",
			set: func(s *SMTPSink) {
				s.SetFault(StageMail, Fault{Code: 451, Enhanced: smtp.EnhancedCode{4, 3, 0}, Text: "later"})
			},
			wantErr: "MAIL", wantCode: 451, wantEnh: smtp.EnhancedCode{4, 3, 0},
		},
		{
			name: "one recipient",
			set: func(s *SMTPSink) {
				s.SetRcptFault("bad@example.test", Fault{Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 1}, Text: "no such user"})
			},
			rcpts:   []string{"good@example.test", "bad@example.test"},
			wantErr: "RCPT bad@example.test", wantCode: 550, wantEnh: smtp.EnhancedCode{5, 1, 1},
		},
		{
			name: "recipient fault wins over stage fault",
			set: func(s *SMTPSink) {
				s.SetFault(StageRcpt, Fault{Code: 452, Enhanced: smtp.EnhancedCode{4, 5, 3}})
				s.SetRcptFault("vip@example.test", Fault{Delay: time.Millisecond})
			},
			rcpts:     []string{"vip@example.test"},
			wantRcpts: []string{"vip@example.test"},
		},
		{
			name:    "end of data",
			set:     func(s *SMTPSink) { s.SetFault(StageData, Fault{Code: 554, Enhanced: smtp.EnhancedCode{5, 6, 0}}) },
			wantErr: "end of data", wantCode: 554, wantEnh: smtp.EnhancedCode{5, 6, 0},
		},
		{
			name:    "drop at RCPT",
			set:     func(s *SMTPSink) { s.SetFault(StageRcpt, Fault{Drop: true}) },
			wantErr: "RCPT a@example.test",
		},
		{
			name:    "drop mid-DATA",
			set:     func(s *SMTPSink) { s.SetFault(StageData, Fault{Drop: true}) },
			wantErr: "writing the message|end of data", // depending on when the reset arrives
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := StartSMTPSink(t, SMTPSinkOptions{})
			tc.set(s)
			if tc.rcpts == nil {
				tc.rcpts = []string{"a@example.test"}
			}
			c := client(dialFrom(t, s, "127.0.0.1"))
			body := "Subject: x\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 4096)
			err := send(c, "sender@example.test", tc.rcpts, body)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if m := wait(t, s, 1); !slices.Equal(m[0].Rcpts, tc.wantRcpts) {
					t.Errorf("recipients %q, want %q", m[0].Rcpts, tc.wantRcpts)
				}
				return
			}
			if err == nil || !slices.ContainsFunc(strings.Split(tc.wantErr, "|"), func(step string) bool { return strings.HasPrefix(err.Error(), step+":") }) {
				t.Fatalf("send error %v, want one at %s", err, tc.wantErr)
			}
			if code, enh := smtpCode(err); code != tc.wantCode || (tc.wantCode != 0 && enh != tc.wantEnh) {
				t.Fatalf("reply %d %v, want %d %v (%v)", code, enh, tc.wantCode, tc.wantEnh, err)
			}
			if len(s.Messages()) != 0 {
				t.Fatal("a refused message was recorded")
			}
		})
	}
}

// TestSinkFaultFlips checks faults changed while the sink runs: 4xx now,
// 250 after the test flips it, and a count-limited fault.
func TestSinkFaultFlips(t *testing.T) {
	s := StartSMTPSink(t, SMTPSinkOptions{})
	s.SetFault(StageData, Fault{Code: 451, Enhanced: smtp.EnhancedCode{4, 3, 0}})
	for range 2 {
		if code, _ := smtpCode(sendOnce(t, s, "a@example.test")); code != 451 {
			t.Fatalf("reply %d, want 451", code)
		}
	}
	s.SetFault(StageData, Fault{})
	if err := sendOnce(t, s, "a@example.test"); err != nil {
		t.Fatal(err)
	}
	s.SetFault(StageMail, Fault{Code: 452, Times: 2})
	s.SetRcptFault("x@example.test", Fault{Code: 550, Times: 1})
	var codes []int
	for range 4 {
		code, _ := smtpCode(sendOnce(t, s, "x@example.test"))
		codes = append(codes, code)
	}
	if want := []int{452, 452, 550, 0}; !slices.Equal(codes, want) {
		t.Errorf("replies %v, want %v", codes, want)
	}
	s.SetFault(StageMail, Fault{Code: 452})
	s.ClearFaults()
	if err := sendOnce(t, s, "a@example.test"); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Messages != 3 || st.Rejected != 5 {
		t.Errorf("stats = %+v", st)
	}
}

func TestSinkDelay(t *testing.T) {
	s := StartSMTPSink(t, SMTPSinkOptions{})
	s.SetFault(StageData, Fault{Delay: 300 * time.Millisecond})
	sendDelayed(t, s, 300*time.Millisecond)

	// Close does not wait for a long delay.
	s.SetFault(StageMail, Fault{Delay: time.Hour})
	c := client(dialFrom(t, s, "127.0.0.1"))
	errc := make(chan error, 1)
	go func() { errc <- c.Mail("a@example.test", nil) }()
	if _, err := s.WaitStats(t.Context(), func(st SinkStats) bool { return st.Connections == 2 }); err != nil {
		t.Fatal(err)
	}
	// The sink has read MAIL: it waits out its hour.
	Eventually(t, func() string {
		mails := 0
		for _, c := range s.Conns() {
			if slices.ContainsFunc(c.Transcript, func(l string) bool { return strings.HasPrefix(l, "C: MAIL FROM:") }) {
				mails++
			}
		}
		if mails < 2 {
			return "the sink has not read the second connection's MAIL"
		}
		return ""
	})
	// Close returns while MAIL still waits.
	closed := make(chan struct{})
	go func() {
		s.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(WaitTimeout):
		t.Fatalf("Close did not return within %s: it waits for the delay", WaitTimeout)
	}
	if err := <-errc; err == nil {
		t.Error("MAIL succeeded on a closed sink")
	}
}

func TestSinkTLS(t *testing.T) {
	ca := NewCA(t)
	cert := ca.Issue(t, "mx.example.test")

	t.Run("STARTTLS versions", func(t *testing.T) {
		for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			cfg := cert.ServerConfig()
			cfg.MinVersion, cfg.MaxVersion = version, version
			s := StartSMTPSink(t, SMTPSinkOptions{TLS: cfg})
			probe := client(dialFrom(t, s, "127.0.0.1"))
			if ok, _ := probe.Extension("STARTTLS"); !ok {
				t.Fatal("STARTTLS not offered")
			}
			_ = probe.Close()
			c := startTLS(t, dialFrom(t, s, "127.0.0.1"), ca.ClientConfig("mx.example.test"))
			if err := send(c, "a@example.test", []string{"b@example.test"}, "Subject: x\r\n\r\nx\r\n"); err != nil {
				t.Fatal(err)
			}
			if err := c.Quit(); err != nil {
				t.Fatal(err)
			}
			m := wait(t, s, 1)[0]
			if m.TLS == nil || m.TLS.Version != version || m.TLS.ServerName != "mx.example.test" || m.TLS.CipherSuite == 0 {
				t.Fatalf("TLS state %+v, want %s with SNI", m.TLS, tls.VersionName(version))
			}
			t.Logf("%s %s", tls.VersionName(m.TLS.Version), tls.CipherSuiteName(m.TLS.CipherSuite))
			waitClosed(t, s, 2)
			if tr := s.Conns()[1].Transcript; !slices.Contains(tr, "S: 220 2.0.0 Ready to start TLS") || !slices.Contains(tr, "S: 250 2.0.0 OK: queued as sink-1") || tr[len(tr)-1] != "S: 221 2.0.0 Bye" {
				t.Errorf("transcript across STARTTLS:\n%s", strings.Join(tr, "\n"))
			}
		}
	})

	t.Run("verification failures", func(t *testing.T) {
		for name, cert := range map[string]*Cert{
			"wrong name":  ca.IssueWrongName(t),
			"expired":     ca.IssueExpired(t, "mx.example.test"),
			"self-signed": SelfSigned(t, "mx.example.test"),
		} {
			s := StartSMTPSink(t, SMTPSinkOptions{TLS: cert.ServerConfig()})
			var verr *tls.CertificateVerificationError
			c, err := smtp.NewClientStartTLS(dialFrom(t, s, "127.0.0.1"), ca.ClientConfig("mx.example.test"))
			if err == nil {
				err = c.Hello("relay.test")
			}
			if !errors.As(err, &verr) {
				t.Errorf("%s: STARTTLS error %v, want a verification error", name, err)
			}
			// Opportunistic clients that do not verify still get through.
			startTLS(t, dialFrom(t, s, "127.0.0.1"), &tls.Config{InsecureSkipVerify: true, ServerName: "mx.example.test"}) //nolint:gosec // the point of the case
		}
	})

	t.Run("implicit", func(t *testing.T) {
		s := StartSMTPSink(t, SMTPSinkOptions{TLS: cert.ServerConfig(), ImplicitTLS: true})
		c := client(tls.Client(dialFrom(t, s, "127.0.0.2"), ca.ClientConfig("mx.example.test")))
		if ok, _ := c.Extension("STARTTLS"); ok {
			t.Error("STARTTLS offered inside implicit TLS")
		}
		if err := send(c, "a@example.test", []string{"b@example.test"}, "Subject: x\r\n\r\nx\r\n"); err != nil {
			t.Fatal(err)
		}
		m := wait(t, s, 1)[0]
		if m.TLS == nil || m.Client.Addr() != netip.MustParseAddr("127.0.0.2") {
			t.Errorf("TLS %v from %v", m.TLS, m.Client)
		}
		if tr := s.Conns()[0].Transcript; len(tr) == 0 || !strings.HasPrefix(tr[0], "S: 220 ") {
			t.Errorf("implicit TLS transcript:\n%s", strings.Join(tr, "\n"))
		}
		// A plaintext client reads no greeting.
		plain := client(dialFrom(t, s, "127.0.0.1"))
		plain.CommandTimeout = time.Second
		if err := plain.Hello("relay.test"); err == nil {
			t.Error("a plaintext client was greeted by an implicit TLS sink")
		}
	})

	t.Run("greeting fault over implicit TLS", func(t *testing.T) {
		s := StartSMTPSink(t, SMTPSinkOptions{TLS: cert.ServerConfig(), ImplicitTLS: true})
		s.SetFault(StageConnect, Fault{Code: 421})
		err := client(tls.Client(dialFrom(t, s, "127.0.0.1"), ca.ClientConfig("mx.example.test"))).Hello("relay.test")
		if code, _ := smtpCode(err); code != 421 {
			t.Errorf("greeting: %v", err)
		}
	})
}

func TestSinkAuth(t *testing.T) {
	ca := NewCA(t)
	s := StartSMTPSink(t, SMTPSinkOptions{
		TLS:         ca.Issue(t, "smarthost.test").ServerConfig(),
		Users:       map[string]string{"alice": "s3cret", "bob": "hunter2"},
		RequireAuth: true,
	})
	tlsClient := func() *smtp.Client {
		return startTLS(t, dialFrom(t, s, "127.0.0.1"), ca.ClientConfig("smarthost.test"))
	}

	// Before TLS: no AUTH offered, and MAIL needs it.
	c := client(dialFrom(t, s, "127.0.0.1"))
	if err := c.Hello("relay.test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("AUTH"); ok {
		t.Error("AUTH offered before TLS")
	}
	if code, enh := smtpCode(c.Mail("a@example.test", nil)); code != 530 || enh != (smtp.EnhancedCode{5, 7, 0}) {
		t.Errorf("MAIL without AUTH: %d %v, want 530 5.7.0", code, enh)
	}

	for _, tc := range []struct {
		mech   string
		client sasl.Client
	}{
		{sasl.Plain, sasl.NewPlainClient("", "alice", "s3cret")},
		{sasl.Login, sasl.NewLoginClient("bob", "hunter2")},
	} {
		c := tlsClient()
		if ok, mechs := c.Extension("AUTH"); !ok || mechs != "PLAIN LOGIN" {
			t.Errorf("after TLS: AUTH %v %q", ok, mechs)
		}
		if err := c.Auth(tc.client); err != nil {
			t.Fatalf("%s: %v", tc.mech, err)
		}
		if err := send(c, "a@example.test", []string{"b@example.test"}, "Subject: x\r\n\r\nx\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	msgs := wait(t, s, 2)
	if msgs[0].AuthUser != "alice" || msgs[0].AuthMechanism != "PLAIN" || msgs[1].AuthUser != "bob" || msgs[1].AuthMechanism != "LOGIN" {
		t.Errorf("AUTH identities: %+v", msgs)
	}

	for _, bad := range []sasl.Client{
		sasl.NewPlainClient("", "alice", "wrong"),
		sasl.NewPlainClient("", "mallory", "s3cret"),
		sasl.NewPlainClient("bob", "alice", "s3cret"), // acting for someone else
		sasl.NewLoginClient("bob", "s3cret"),
	} {
		if code, enh := smtpCode(tlsClient().Auth(bad)); code != 535 || enh != (smtp.EnhancedCode{5, 7, 8}) {
			t.Errorf("bad credentials: %d %v, want 535 5.7.8", code, enh)
		}
	}
	if got := s.Stats().AuthFailures; got != 4 {
		t.Errorf("auth failures = %d, want 4", got)
	}
	attempts := s.AuthAttempts()
	if len(attempts) != 6 || !attempts[0].OK || !attempts[0].TLS || attempts[2].OK || attempts[2].Username != "alice" {
		t.Errorf("attempts = %+v", attempts)
	}

	// LOGIN with the RFC 4954 style prompts, as swaks and older clients do.
	conn := dialFrom(t, s, "127.0.0.1")
	r := newRaw(t, conn)
	r.reply()
	r.cmd(250, "EHLO relay.test")
	r.cmd(220, "STARTTLS")
	tconn := tls.Client(conn, ca.ClientConfig("smarthost.test"))
	r = newRaw(t, tconn)
	r.cmd(250, "EHLO relay.test")
	if p := r.cmd(334, "AUTH LOGIN"); p != "VXNlcm5hbWU6" {
		t.Errorf("first prompt %q", p)
	}
	if p := r.cmd(334, base64.StdEncoding.EncodeToString([]byte("alice"))); p != "UGFzc3dvcmQ6" {
		t.Errorf("second prompt %q", p)
	}
	r.cmd(235, base64.StdEncoding.EncodeToString([]byte("s3cret")))
	r.cmd(250, "MAIL FROM:<a@example.test>")
	tr := s.Conns()[len(s.Conns())-1].Transcript
	if !slices.Contains(tr, "S: 334 VXNlcm5hbWU6") || !slices.Contains(tr, "C: YWxpY2U=") || !slices.Contains(tr, "S: 235 2.0.0 Authentication succeeded") {
		t.Errorf("AUTH LOGIN transcript:\n%s", strings.Join(tr, "\n"))
	}
}

func TestSinkInsecureAuthAndAllowedClients(t *testing.T) {
	s := StartSMTPSink(t, SMTPSinkOptions{
		Users:          map[string]string{"alice": "s3cret"},
		Mechanisms:     []string{sasl.Login},
		InsecureAuth:   true,
		AllowedClients: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")},
	})
	c := client(dialFrom(t, s, "127.0.0.2"))
	if ok, mechs := c.Extension("AUTH"); !ok || mechs != "LOGIN" {
		t.Errorf("AUTH %v %q without TLS, want LOGIN", ok, mechs)
	}
	if code, _ := smtpCode(c.Auth(sasl.NewPlainClient("", "alice", "s3cret"))); code != 504 {
		t.Errorf("PLAIN, not offered: %d, want 504", code)
	}
	if err := c.Auth(sasl.NewLoginClient("alice", "s3cret")); err != nil {
		t.Fatal(err)
	}
	if a := s.AuthAttempts(); len(a) != 1 || a[0].TLS {
		t.Errorf("attempts %+v, want one without TLS", a)
	}

	err := client(dialFrom(t, s, "127.0.0.1")).Hello("relay.test")
	if code, enh := smtpCode(err); code != 554 || enh != (smtp.EnhancedCode{5, 7, 1}) {
		t.Errorf("from 127.0.0.1: %v, want 554 5.7.1", err)
	}
}

func TestSinkWaitAndLifecycle(t *testing.T) {
	if _, err := NewSMTPSink(t.Context(), SMTPSinkOptions{Addr: "0.0.0.0:0"}); err == nil {
		t.Error("a sink bound 0.0.0.0")
	}
	if _, err := NewSMTPSink(t.Context(), SMTPSinkOptions{Addr: "192.0.2.1:25"}); err == nil {
		t.Error("a sink bound a non-loopback address")
	}
	if _, err := NewSMTPSink(t.Context(), SMTPSinkOptions{ImplicitTLS: true}); err == nil {
		t.Error("implicit TLS without a certificate")
	}

	ctx, cancel := context.WithCancel(t.Context())
	s, err := NewSMTPSink(ctx, SMTPSinkOptions{Addr: "127.0.0.3:0"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(s.Addr(), "127.0.0.3:") || s.Port() == 0 {
		t.Fatalf("Addr %s, Port %d", s.Addr(), s.Port())
	}
	short, stop := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer stop()
	if msgs, err := s.WaitMessages(short, 1); err == nil || len(msgs) != 0 {
		t.Errorf("WaitMessages on an idle sink: %v, %v", msgs, err)
	}
	done := make(chan []Message)
	go func() {
		msgs, _ := s.WaitMessages(t.Context(), 2)
		done <- msgs
	}()
	for range 2 {
		if err := sendOnce(t, s, "a@example.test"); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case msgs := <-done:
		if len(msgs) != 2 {
			t.Errorf("WaitMessages returned %d messages", len(msgs))
		}
	case <-time.After(WaitTimeout):
		t.Fatal("WaitMessages did not return")
	}

	// An idle open connection does not keep the sink alive past its context.
	idle := dialFrom(t, s, "127.0.0.1")
	cancel()
	_ = idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	for {
		if _, err := idle.Read(buf); err != nil {
			var nerr net.Error
			if errors.As(err, &nerr) && nerr.Timeout() {
				t.Fatal("the connection outlived the sink's context")
			}
			break
		}
	}
	s.Close()
}

// TestSinkSwaks drives the sink with swaks, an independent client, from
// 127.0.0.2: AUTH LOGIN with the prompts, in plaintext and after STARTTLS
// verified against the test CA.
func TestSinkSwaks(t *testing.T) {
	swaks, err := exec.LookPath("swaks")
	if err != nil {
		t.Skip("swaks is not installed (Debian package swaks): skipping the independent-client check")
	}
	ca := NewCA(t)
	for _, tc := range []struct {
		name string
		opts SMTPSinkOptions
		args []string
	}{
		{"plaintext", SMTPSinkOptions{InsecureAuth: true}, nil},
		{"STARTTLS", SMTPSinkOptions{TLS: ca.Issue(t, "mx.example.test").ServerConfig()},
			[]string{"--tls", "--tls-verify", "--tls-ca-path", ca.WriteBundle(t, ""), "--tls-sni", "mx.example.test"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.opts.TLS != nil {
				// swaks only recommends its TLS module.
				if err := exec.CommandContext(t.Context(), "perl", "-MNet::SSLeay", "-e", "1").Run(); err != nil {
					t.Skip("swaks cannot speak TLS without Net::SSLeay (Debian package libnet-ssleay-perl): skipping")
				}
			}
			tc.opts.Users, tc.opts.RequireAuth = map[string]string{"alice": "s3cret"}, true
			s := StartSMTPSink(t, tc.opts)
			host, port, _ := net.SplitHostPort(s.Addr())
			ctx, cancel := context.WithTimeout(t.Context(), WaitTimeout)
			defer cancel()
			args := append([]string{
				"--server", host, "--port", port, "--local-interface", "127.0.0.2",
				"--ehlo", "swaks.test", "--from", "a@example.test", "--to", "b@example.test,c@example.test",
				"--auth", "LOGIN", "--auth-user", "alice", "--auth-password", "s3cret",
				"--header", "Subject: from swaks", "--body", "hello\n.dot\n",
			}, tc.args...)
			out, err := exec.CommandContext(ctx, swaks, args...).CombinedOutput() //nolint:gosec // a test running a fixed tool
			if err != nil {
				t.Fatalf("swaks: %v\n%s", err, out)
			}
			m := wait(t, s, 1)[0]
			if m.Client.Addr() != netip.MustParseAddr("127.0.0.2") || m.Hello != "swaks.test" || m.AuthUser != "alice" || m.AuthMechanism != "LOGIN" || (m.TLS != nil) != (tc.opts.TLS != nil) {
				t.Errorf("message from swaks: %+v", m)
			}
			if !slices.Equal(m.Rcpts, []string{"b@example.test", "c@example.test"}) || !bytes.Contains(m.Data, []byte("\r\nhello\r\n.dot\r\n")) {
				t.Errorf("envelope %q, data %q", m.Rcpts, m.Data)
			}
			waitClosed(t, s, 1)
			if tr := s.Conns()[0].Transcript; !slices.Contains(tr, "S: 334 VXNlcm5hbWU6") {
				t.Errorf("swaks did not answer the LOGIN prompts:\n%s", strings.Join(tr, "\n"))
			}
		})
	}
}
