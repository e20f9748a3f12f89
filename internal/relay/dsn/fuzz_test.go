package dsn

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/testenv"
)

// FuzzParse: testenv.ParseDSN never panics, and what it accepts has the
// fields it promises.
func FuzzParse(f *testing.F) {
	m := newMessage(withRcpt(queue.Rcpt{Addr: "c@example.net", ORcpt: "rfc822;c@example.net"}, expired))
	for _, ret := range []string{"HDRS", "FULL"} {
		m.Envelope.Ret = ret
		for _, orig := range []string{original, "Subject: Grüße\r\n\r\n\xff\r\n", ""} {
			n, err := Build(params(), m, []int{0, 1}, strings.NewReader(orig))
			if err != nil {
				f.Fatal(err)
			}
			f.Add(n.Data)
		}
	}
	f.Add([]byte("Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\nFinal-Recipient: rfc822; a@b\r\nAction: failed\r\nStatus: 5.0.0\r\n--b--\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rep, err := testenv.ParseDSN(bytes.NewReader(data))
		if err != nil {
			return
		}
		if rep.PerMessage.Get("Reporting-MTA") == "" || len(rep.PerRecipient) == 0 {
			t.Fatalf("accepted without the required fields: %+v", rep)
		}
		for _, r := range rep.PerRecipient {
			if r.Get("Final-Recipient") == "" || r.Get("Action") == "" || r.Get("Status") == "" {
				t.Fatalf("recipient without the required fields: %v", r)
			}
		}
	})
}

// FuzzBuild builds DSNs from arbitrary envelopes, replies and originals (as
// the queue stores them: printable UTF-8 fields, CRLF-clean messages) and
// checks the wire format and that testenv.ParseDSN reads back what went in.
func FuzzBuild(f *testing.F) {
	f.Add("alice@example.com", "bob@example.net", "", "", "No such user", 550, "5.1.1", "mx.example.net", false, true, []byte(original))
	f.Add("jürgen@example.com", "ñandú@example.net", "UTF-8;ñandú@example.net", "env+1", "über", 0, "", "", true, false, []byte("Subject: Grüße\r\n\r\n\xff"))
	f.Add("a@b", "c@d", "rfc822;c@d", "x", strings.Repeat("long ", 120), 451, "4.4.1", "h (x)", true, false, []byte(strings.Repeat("X: y\r\n", 300)))
	f.Fuzz(func(t *testing.T, from, rcpt, orcpt, envid, text string, code int, enhanced, remote string, full, expire bool, orig []byte) {
		for _, s := range []string{from, rcpt, orcpt, envid, text, enhanced, remote} {
			if !storable(s) {
				return
			}
		}
		if from == "" || rcpt == "" || !crlfClean(orig) {
			return
		}
		m := newMessage()
		m.Envelope.From, m.Envelope.EnvID = from, envid
		m.Envelope.To[0] = queue.Rcpt{Addr: rcpt, ORcpt: orcpt}
		m.Recipients[0].Reply = queue.Reply{Code: code%400 + 200, Enhanced: enhanced, Text: text}
		if expire {
			m.Recipients[0].State = queue.Expired
		}
		if full {
			m.Envelope.Ret = "FULL"
		}
		p := params()
		p.MaxFull, p.RemoteMTA = 4<<10, remote
		n, err := Build(p, m, []int{0}, bytes.NewReader(orig))
		if err != nil || n == nil {
			t.Fatalf("Build: %v, %v", n, err)
		}
		checkWire(t, n.Data, !n.SMTPUTF8)
		rep, err := testenv.ParseDSN(bytes.NewReader(n.Data))
		if err != nil {
			t.Fatalf("Parse: %v\n%q", err, n.Data)
		}
		if len(rep.PerRecipient) != 1 {
			t.Fatalf("%d recipients", len(rep.PerRecipient))
		}
		if want := typedAddress(rcpt); len(want) < 900 && oneSpace(rep.PerRecipient[0].Get("Final-Recipient")) != oneSpace(want) {
			t.Errorf("Final-Recipient %q, want %q", rep.PerRecipient[0].Get("Final-Recipient"), want)
		}
		if full && len(orig) <= int(p.MaxFull) && !bytes.Equal(rep.Original, orig) {
			t.Errorf("returned message %q, want %q", rep.Original, orig)
		}
		if !full && !bytes.HasPrefix(orig, rep.Original) {
			t.Errorf("returned header %q is not a prefix of the message", rep.Original)
		}
	})
}

// storable is what the queue's envelope checks let through.
func storable(s string) bool {
	if len(s) > 1024 || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// crlfClean reports what the SMTP server guarantees of a queued message:
// CR and LF only as CRLF, no NUL.
func crlfClean(b []byte) bool {
	crlf := bytes.Count(b, []byte("\r\n"))
	return bytes.IndexByte(b, 0) < 0 && bytes.Count(b, []byte("\r")) == crlf && bytes.Count(b, []byte("\n")) == crlf
}

func oneSpace(s string) string { return strings.Join(strings.Fields(s), " ") }
