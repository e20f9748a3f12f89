package delivery

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/testenv"
)

// noPipelining hides PIPELINING from the EHLO replies the worker reads, as
// from a server that does not offer it (go-smtp's server always does). It
// keeps every Write the worker makes, one string each, so a test sees which
// commands went out together.
type noPipelining struct {
	hide   bool
	mu     sync.Mutex
	writes []string
	dial   DialFunc
}

func (p *noPipelining) Dial(ctx context.Context, local netip.Addr, remote netip.AddrPort) (net.Conn, error) {
	c, err := p.dial(ctx, local, remote)
	if err != nil {
		return nil, err
	}
	return &filterConn{Conn: c, p: p}, nil
}

func (p *noPipelining) Writes() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.writes)
}

type filterConn struct {
	net.Conn
	p *noPipelining
}

func (c *filterConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if c.p.hide {
		// go-smtp's server writes each reply line on its own, and
		// PIPELINING is never its last EHLO keyword.
		out := bytes.ReplaceAll(b[:n], []byte("250-PIPELINING\r\n"), nil)
		n = copy(b, out)
	}
	return n, err
}

func (c *filterConn) Write(b []byte) (int, error) {
	c.p.mu.Lock()
	c.p.writes = append(c.p.writes, string(b))
	c.p.mu.Unlock()
	return c.Conn.Write(b)
}

// Per-recipient outcomes are the same whether the commands go in one
// group (PIPELINING offered) or one by one, and the session stays usable
// after a refused MAIL, refused recipients and a refused DATA, whose
// pipelined replies are read to the end.
func TestPipelinedOutcomes(t *testing.T) {
	type want struct {
		status  []Status // per recipient a, b, c
		enhance []string
	}
	cases := []struct {
		name  string
		stage testenv.Stage
		fault testenv.Fault
		want  want
	}{
		{"all accepted", testenv.StageConnect, testenv.Fault{}, want{
			[]Status{StatusSent, StatusSent, StatusSent}, []string{"2.0.0", "2.0.0", "2.0.0"}}},
		{"first RCPT refused", testenv.StageRcpt, testenv.Fault{Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 1}, Text: "no such user", Times: 1}, want{
			[]Status{StatusBounced, StatusSent, StatusSent}, []string{"5.1.1", "2.0.0", "2.0.0"}}},
		{"every RCPT deferred", testenv.StageRcpt, testenv.Fault{Code: 450, Enhanced: smtp.EnhancedCode{4, 2, 1}, Text: "busy", Times: 3}, want{
			[]Status{StatusDeferred, StatusDeferred, StatusDeferred}, []string{"4.2.1", "4.2.1", "4.2.1"}}},
		{"MAIL refused", testenv.StageMail, testenv.Fault{Code: 553, Enhanced: smtp.EnhancedCode{5, 7, 1}, Text: "sender refused", Times: 1}, want{
			[]Status{StatusBounced, StatusBounced, StatusBounced}, []string{"5.7.1", "5.7.1", "5.7.1"}}},
		{"DATA refused", testenv.StageData, testenv.Fault{Code: 554, Enhanced: smtp.EnhancedCode{5, 6, 0}, Text: "content refused", Times: 1}, want{
			[]Status{StatusBounced, StatusBounced, StatusBounced}, []string{"5.6.0", "5.6.0", "5.6.0"}}},
	}
	for _, pipelined := range []bool{true, false} {
		for _, c := range cases {
			t.Run(fmt.Sprintf("%s/pipelining=%v", c.name, pipelined), func(t *testing.T) {
				e, sink := mxEnv(t, testenv.SMTPSinkOptions{})
				e.opts.IdleTimeout = -1 // every message on a connection of its own, for the writes below
				tap := &noPipelining{hide: !pipelined, dial: e.opts.Dial}
				e.opts.Dial = tap.Dial
				if c.fault.Code != 0 {
					sink.SetFault(c.stage, c.fault)
				}
				e.start()
				e.enqueue("app@sender.test", "a@rcpt.test", "b@rcpt.test", "c@rcpt.test")
				a := e.attempt(1)
				var got want
				for _, r := range a.Recipients {
					got.status = append(got.status, r.Status)
					got.enhance = append(got.enhance, r.Reply.Enhanced)
				}
				if !slices.Equal(got.status, c.want.status) || !slices.Equal(got.enhance, c.want.enhance) {
					t.Errorf("recipients %+v, want %+v", a.Recipients, c.want)
				}
				grouped := slices.ContainsFunc(tap.Writes(), func(w string) bool {
					return strings.HasPrefix(w, "MAIL FROM:") && strings.Contains(w, "\r\nRCPT TO:<c@rcpt.test>\r\nDATA\r\n")
				})
				if grouped != pipelined {
					t.Errorf("MAIL, RCPT and DATA in one write: %v, want %v; writes %q", grouped, pipelined, tap.Writes())
				}
			})
		}
	}
}

// A connection that stays in plaintext says EHLO once: go-smtp's own EHLO
// is answered with the server's reply to the first, which still holds.
func TestPlaintextSessionSaysEHLOOnce(t *testing.T) {
	e, sink := mxEnv(t, testenv.SMTPSinkOptions{})
	e.start()
	e.waitGone(e.enqueue("app@sender.test", "a@rcpt.test"))
	if st := sink.Stats(); st.Connections != 1 || st.Messages != 1 {
		t.Fatalf("sink %+v, want 1 message over 1 connection", st)
	}
	if wire := e.wire.Written()[0]; strings.Count(wire, "EHLO ") != 1 {
		t.Errorf("EHLO %d times on one plaintext connection:\n%s", strings.Count(wire, "EHLO "), wire)
	}
	if a := e.attempt(1); a.Status != StatusSent {
		t.Fatalf("attempt %+v", a)
	}
}

// A reused session gets RSET in front of the next transaction's group,
// and no EHLO between transactions (go-smtp's client says EHLO again
// after RSET).
func TestPipelinedReuse(t *testing.T) {
	e, sink := mxEnv(t, testenv.SMTPSinkOptions{})
	// Every recipient of the first message refused, its DATA too: the
	// session must still be in step for the second message.
	sink.SetFault(testenv.StageRcpt, testenv.Fault{Code: 550, Text: "no", Times: 1})
	e.start()
	e.waitGone(e.enqueue("app@sender.test", "a@rcpt.test"))
	e.waitGone(e.enqueue("app@sender.test", "b@rcpt.test"))
	if st := sink.Stats(); st.Connections != 1 || st.Messages != 1 {
		t.Fatalf("sink %+v, want 1 message over 1 connection", st)
	}
	wire := e.wire.Written()[0]
	if strings.Contains(wire[strings.Index(wire, "MAIL FROM"):], "EHLO ") {
		t.Errorf("EHLO between transactions:\n%s", wire)
	}
	if !strings.Contains(wire, "RSET\r\nMAIL FROM:<app@sender.test>") {
		t.Errorf("no RSET in front of the second transaction:\n%s", wire)
	}
	if a := e.attempt(2); a.Status != StatusSent {
		t.Errorf("second attempt %+v", a)
	}
}

// The dot-stuffing writer sends what textproto's DotWriter sends, however
// the message is cut into writes.
func TestDotWriter(t *testing.T) {
	for _, msg := range []string{
		"",
		"a\r\n",
		".\r\n",
		"..\r\n.x\r\n",
		"Subject: dots\r\n\r\n.leading dot\r\n.\r\n..two\r\nmiddle . dot\r\n.\r\nend\r\n",
		"no final line end",
		"ends with a dot\r\n.",
		".",
	} {
		var want bytes.Buffer
		tw := bufio.NewWriter(&want)
		dw := textprotoDotWriter(tw)
		_, _ = io.WriteString(dw, msg)
		_ = dw.Close()
		_ = tw.Flush()
		for cut := range len(msg) + 1 {
			var got bytes.Buffer
			bw := bufio.NewWriter(&got)
			d := newDotWriter(bw)
			_, _ = d.Write([]byte(msg[:cut]))
			_, _ = d.Write([]byte(msg[cut:]))
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			if got.String() != want.String() {
				t.Errorf("%q cut at %d: %q, want %q", msg, cut, got.String(), want.String())
			}
		}
	}
}

// Replies are parsed as go-smtp's client parses them.
func TestReplyParsing(t *testing.T) {
	cases := []struct {
		in     string
		expect int
		text   string
		code   int // of the *smtp.SMTPError; 0: no error
		enh    smtp.EnhancedCode
		msg    string
		broken bool // a plain error
	}{
		{in: "250 2.1.0 Ok\r\n", expect: 250, text: "2.1.0 Ok"},
		{in: "250-first\r\n250-second\r\n250 last\r\n", expect: 250, text: "first\nsecond\nlast"},
		{in: "251 2.1.5 will forward\r\n", expect: 25, text: "2.1.5 will forward"},
		{in: "250\r\n", expect: 250, text: ""},
		{in: "550-5.1.1 no such\r\n550 5.1.1 user here\r\n", expect: 25, code: 550, enh: smtp.EnhancedCode{5, 1, 1}, msg: "no such\nuser here"},
		{in: "451 try later\r\n", expect: 250, code: 451, enh: smtp.EnhancedCode{}, msg: "try later"},
		{in: "354 go ahead\r\n", expect: 250, code: 354, msg: "go ahead"},
		{in: "250-a\r\n251 b\r\n", expect: 250, broken: true},
		{in: "25x ok\r\n", expect: 250, broken: true},
		{in: "250+ok\r\n", expect: 250, broken: true},
		{in: "2\r\n", expect: 250, broken: true},
		{in: "250 " + strings.Repeat("x", maxReplyLine) + "\r\n", expect: 250, broken: true},
		{in: strings.Repeat("250-"+strings.Repeat("x", 1000)+"\r\n", 70) + "250 end\r\n", expect: 250, broken: true},
		{in: "250 cut", expect: 250, broken: true},
	}
	for _, c := range cases {
		client, server := net.Pipe()
		go func() {
			_, _ = io.WriteString(server, c.in)
			_ = server.Close()
		}()
		text, err := newSMTPWire(client).reply(c.expect, testenv.WaitTimeout)
		_ = client.Close()
		e := smtpError(err)
		switch {
		case c.broken:
			if err == nil || e != nil {
				t.Errorf("%q: %q, %v; want a plain error", c.in, text, err)
			}
		case c.code != 0:
			if e == nil || e.Code != c.code || e.EnhancedCode != c.enh || e.Message != c.msg {
				t.Errorf("%q: %#v, want %d %v %q", c.in, err, c.code, c.enh, c.msg)
			}
		case err != nil || text != c.text:
			t.Errorf("%q: %q, %v; want %q", c.in, text, err, c.text)
		}
	}
}

// MAIL and RCPT carry the parameters go-smtp's client gives them.
func TestCommandFormat(t *testing.T) {
	all := func(string) (bool, string) { return true, "" }
	none := func(string) (bool, string) { return false, "" }
	mail, err := mailCommand("a@b.test", &smtp.MailOptions{Size: 1234, Return: smtp.DSNReturnHeaders, EnvelopeID: "id+1=2", UTF8: true}, all)
	if want := "MAIL FROM:<a@b.test> BODY=8BITMIME SIZE=1234 SMTPUTF8 RET=HDRS ENVID=id+2B1+3D2"; err != nil || mail != want {
		t.Errorf("MAIL: %q, %v; want %q", mail, err, want)
	}
	if mail, err := mailCommand("a@b.test", &smtp.MailOptions{Size: 1234, Return: smtp.DSNReturnFull}, none); err != nil || mail != "MAIL FROM:<a@b.test>" {
		t.Errorf("MAIL without extensions: %q, %v", mail, err)
	}
	if _, err := mailCommand("a@b.test\r\nRSET", &smtp.MailOptions{}, all); err == nil {
		t.Error("MAIL with CRLF in the address: no error")
	}
	rcpt, err := formatRcpt("ü@b.test", &smtp.RcptOptions{
		Notify:                []smtp.DSNNotify{smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed},
		OriginalRecipientType: smtp.DSNAddressTypeUTF8, OriginalRecipient: "ü x@b.test",
	}, none)
	if want := "RCPT TO:<ü@b.test>"; err != nil || rcpt != want {
		t.Errorf("RCPT without DSN: %q, %v; want %q", rcpt, err, want)
	}
	rcpt, err = formatRcpt("ü@b.test", &smtp.RcptOptions{
		Notify:                []smtp.DSNNotify{smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed},
		OriginalRecipientType: smtp.DSNAddressTypeUTF8, OriginalRecipient: "ü x@b.test",
	}, func(ext string) (bool, string) { return ext == "DSN", "" })
	if want := `RCPT TO:<ü@b.test> NOTIFY=FAILURE,DELAY ORCPT=UTF-8;\x{FC}\x{20}x@b.test`; err != nil || rcpt != want {
		t.Errorf("RCPT: %q, %v; want %q", rcpt, err, want)
	}
	rcpt, err = formatRcpt("ü@b.test", &smtp.RcptOptions{OriginalRecipientType: smtp.DSNAddressTypeUTF8, OriginalRecipient: "ü x@b.test"}, all)
	if want := `RCPT TO:<ü@b.test> ORCPT=UTF-8;ü\x{20}x@b.test`; err != nil || rcpt != want {
		t.Errorf("RCPT to a SMTPUTF8 server: %q, %v; want %q", rcpt, err, want)
	}
	if _, err := formatRcpt("a@b.test", &smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifyNever, smtp.DSNNotifyFailure}}, all); err == nil {
		t.Error("NOTIFY=NEVER,FAILURE: no error")
	}
}

// The stored message is the next hop's, byte for byte, across writes of
// every size the body reader may hand over.
func TestPipelinedLargeMessage(t *testing.T) {
	e, sink := mxEnv(t, testenv.SMTPSinkOptions{})
	e.start()
	var sb strings.Builder
	sb.WriteString("Subject: big\r\n\r\n")
	for i := 0; sb.Len() < 300<<10; i++ {
		fmt.Fprintf(&sb, "%s%d\r\n", strings.Repeat(".", i%3), i)
	}
	body := sb.String()
	id := e.enqueueEnv(queue.Envelope{From: "app@sender.test", To: []queue.Rcpt{{Addr: "user@rcpt.test"}}}, body)
	e.waitGone(id)
	if msgs := sink.Messages(); len(msgs) != 1 || string(msgs[0].Data) != body {
		t.Fatal("the next hop did not read the stored bytes")
	}
}

// textprotoDotWriter is the DATA writer go-smtp's client uses.
func textprotoDotWriter(w *bufio.Writer) io.WriteCloser { return textproto.NewWriter(w).DotWriter() }
