package dsn

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/testenv"
)

var (
	arrival = time.Date(2026, 3, 12, 8, 0, 0, 0, time.UTC)
	last    = time.Date(2026, 3, 14, 7, 59, 0, 0, time.UTC)
	now     = time.Date(2026, 3, 14, 8, 0, 0, 0, time.UTC)
)

const original = "From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hi\r\nMessage-ID: <m1@example.com>\r\n\r\nHello Bob.\r\n"

func params() Params { return Params{Hostname: "relay.example.com", Now: now} }

// option functions build test messages.
type option func(*queue.Message)

func newMessage(opts ...option) queue.Message {
	m := queue.Message{
		ID: "01jq0000000000000000000000", Arrival: arrival,
		Envelope: queue.Envelope{From: "alice@example.com", To: []queue.Rcpt{{Addr: "bob@example.net"}}},
		Recipients: []queue.RecipientStatus{{
			State: queue.Failed, Attempts: 1, LastAttempt: last,
			Reply: queue.Reply{Code: 550, Enhanced: "5.1.1", Text: "No such user"},
		}},
	}
	for _, o := range opts {
		o(&m)
	}
	return m
}

func withRcpt(r queue.Rcpt, s queue.RecipientStatus) option {
	return func(m *queue.Message) {
		m.Envelope.To = append(m.Envelope.To, r)
		m.Recipients = append(m.Recipients, s)
	}
}

func withFirst(f func(*queue.Rcpt, *queue.RecipientStatus)) option {
	return func(m *queue.Message) { f(&m.Envelope.To[0], &m.Recipients[0]) }
}

var expired = queue.RecipientStatus{State: queue.Expired, Attempts: 30, LastAttempt: last,
	Reply: queue.Reply{Code: 451, Enhanced: "4.4.1", Text: "try again later"}}

func build(t *testing.T, m queue.Message, failed []int, orig string) *Notification {
	t.Helper()
	n, err := Build(params(), m, failed, strings.NewReader(orig))
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	if n != nil {
		checkWire(t, n.Data, !n.SMTPUTF8)
	}
	return n
}

// checkWire checks what every DSN must be on the wire.
func checkWire(t testing.TB, b []byte, ascii bool) {
	t.Helper()
	for i, line := range bytes.Split(b, []byte("\r\n")) {
		if len(line) > 998 {
			t.Errorf("line %d has %d octets", i, len(line))
		}
		if bytes.ContainsAny(line, "\r\n\x00") {
			t.Errorf("line %d has a bare CR, LF or a NUL: %q", i, line)
		}
	}
	if !bytes.HasSuffix(b, []byte("\r\n")) {
		t.Error("no final CRLF")
	}
	if !ascii {
		return
	}
	for i, c := range b {
		if c >= 0x80 {
			t.Fatalf("8bit byte at %d", i)
		}
	}
}

// part is one MIME part read back with the standard library alone.
type part struct {
	ctype, cte string
	params     map[string]string
	body       string // decoded (mime/multipart decodes quoted-printable)
}

func readBack(t *testing.T, data []byte) (*mail.Message, []part) {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("Content-Type %q: %v", m.Header.Get("Content-Type"), err)
	}
	var parts []part
	mr := multipart.NewReader(m.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		raw := p.Header.Get("Content-Transfer-Encoding") // empty when decoded
		body, err := io.ReadAll(p)
		if err != nil {
			t.Fatal(err)
		}
		ct, cp, err := mime.ParseMediaType(p.Header.Get("Content-Type"))
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, part{ct, raw, cp, string(body)})
	}
	return m, parts
}

func TestStructure(t *testing.T) {
	m := newMessage(withRcpt(queue.Rcpt{Addr: "carol@example.net", ORcpt: "RFC822;carol@example.net"}, expired))
	m.Envelope.EnvID = "env-42"
	n := build(t, m, []int{0, 1}, original)
	if n.From != "" || len(n.To) != 1 || n.To[0] != "alice@example.com" || n.SMTPUTF8 {
		t.Fatalf("envelope %q -> %q, SMTPUTF8 %v", n.From, n.To, n.SMTPUTF8)
	}
	hdr, parts := readBack(t, n.Data)
	for name, want := range map[string]string{
		"From":           "Mail Delivery System <MAILER-DAEMON@relay.example.com>",
		"To":             "<alice@example.com>",
		"Subject":        "Undelivered Mail Returned to Sender",
		"Auto-Submitted": "auto-replied",
		"MIME-Version":   "1.0",
		"Date":           "Sat, 14 Mar 2026 08:00:00 +0000",
	} {
		if got := hdr.Header.Get(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if from, err := mail.ParseAddress(hdr.Header.Get("From")); err != nil || from.Address != "MAILER-DAEMON@relay.example.com" {
		t.Errorf("From does not parse: %v %v", from, err)
	}
	if id := hdr.Header.Get("Message-ID"); !strings.HasSuffix(id, "@relay.example.com>") {
		t.Errorf("Message-ID %q", id)
	}
	if len(parts) != 3 {
		t.Fatalf("%d parts, want 3", len(parts))
	}
	if parts[0].ctype != "text/plain" || parts[0].params["charset"] != "us-ascii" {
		t.Errorf("part 1: %s %v", parts[0].ctype, parts[0].params)
	}
	for _, want := range []string{"relay.example.com", "<bob@example.net>: 550 5.1.1 No such user", "<carol@example.net>: delivery time expired", "last reply: 451 4.4.1 try again later", string(m.ID)} {
		if !strings.Contains(parts[0].body, want) {
			t.Errorf("human text lacks %q:\n%s", want, parts[0].body)
		}
	}
	if parts[1].ctype != "message/delivery-status" {
		t.Errorf("part 2 is %s", parts[1].ctype)
	}
	wantStatus := "Reporting-MTA: dns; relay.example.com\r\n" +
		"X-Postgate-Queue-ID: 01jq0000000000000000000000\r\n" +
		"Original-Envelope-Id: env-42\r\n" +
		"Arrival-Date: Thu, 12 Mar 2026 08:00:00 +0000\r\n" +
		"\r\n" +
		"Final-Recipient: rfc822; bob@example.net\r\n" +
		"Action: failed\r\n" +
		"Status: 5.1.1\r\n" +
		"Diagnostic-Code: smtp; 550 5.1.1 No such user\r\n" +
		"Last-Attempt-Date: Sat, 14 Mar 2026 07:59:00 +0000\r\n" +
		"\r\n" +
		"Original-Recipient: rfc822; carol@example.net\r\n" +
		"Final-Recipient: rfc822; carol@example.net\r\n" +
		"Action: failed\r\n" +
		"Status: 4.4.7\r\n" +
		"Diagnostic-Code: smtp; 451 4.4.1 try again later\r\n" +
		"Last-Attempt-Date: Sat, 14 Mar 2026 07:59:00 +0000\r\n"
	if parts[1].body != wantStatus {
		t.Errorf("delivery-status:\n%s\nwant\n%s", parts[1].body, wantStatus)
	}
	if parts[2].ctype != "text/rfc822-headers" || parts[2].body != original[:strings.Index(original, "\r\n\r\n")+2] {
		t.Errorf("part 3: %s %q", parts[2].ctype, parts[2].body)
	}

	// ParseDSN agrees with the standard library.
	rep, err := testenv.ParseDSN(bytes.NewReader(n.Data))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Human != parts[0].body || rep.OriginalType != parts[2].ctype || string(rep.Original) != parts[2].body {
		t.Error("ParseDSN disagrees with mime/multipart")
	}
	if rep.PerMessage.Get("Reporting-MTA") != "dns; relay.example.com" || len(rep.PerRecipient) != 2 ||
		rep.PerRecipient[1].Get("Status") != "4.4.7" || rep.PerRecipient[0].Get("Final-Recipient") != "rfc822; bob@example.net" {
		t.Errorf("Parse: %v %v", rep.PerMessage, rep.PerRecipient)
	}
}

// TestWhoIsReported covers the null sender, NOTIFY (RFC 3461 section 4.1)
// and which indexes count.
func TestWhoIsReported(t *testing.T) {
	failed := queue.RecipientStatus{State: queue.Failed, Reply: queue.Reply{Code: 550, Enhanced: "5.7.1", Text: "refused"}}
	tests := []struct {
		name   string
		msg    queue.Message
		failed []int
		want   []int // nil: no DSN
	}{
		{"failed", newMessage(), []int{0}, []int{0}},
		{"null sender: never", newMessage(func(m *queue.Message) { m.Envelope.From = "" }), []int{0}, nil},
		{"NOTIFY=NEVER", newMessage(withFirst(func(r *queue.Rcpt, _ *queue.RecipientStatus) { r.Notify = []string{"NEVER"} })), []int{0}, nil},
		{"NOTIFY=SUCCESS,DELAY", newMessage(withFirst(func(r *queue.Rcpt, _ *queue.RecipientStatus) { r.Notify = []string{"SUCCESS", "DELAY"} })), []int{0}, nil},
		{"NOTIFY=FAILURE", newMessage(withFirst(func(r *queue.Rcpt, _ *queue.RecipientStatus) { r.Notify = []string{"FAILURE"} })), []int{0}, []int{0}},
		{"NOTIFY=DELAY,FAILURE", newMessage(withFirst(func(r *queue.Rcpt, _ *queue.RecipientStatus) { r.Notify = []string{"DELAY", "FAILURE"} })), []int{0}, []int{0}},
		{"expired, NOTIFY=FAILURE", newMessage(withFirst(func(r *queue.Rcpt, s *queue.RecipientStatus) { r.Notify, *s = []string{"FAILURE"}, expired })), []int{0}, []int{0}},
		{"one NEVER of two", newMessage(
			withFirst(func(r *queue.Rcpt, _ *queue.RecipientStatus) { r.Notify = []string{"NEVER"} }),
			withRcpt(queue.Rcpt{Addr: "c@example.net"}, failed)), []int{0, 1}, []int{1}},
		{"only the indexes given", newMessage(withRcpt(queue.Rcpt{Addr: "c@example.net"}, failed)), []int{1}, []int{1}},
		{"pending and delivered ignored", newMessage(
			withRcpt(queue.Rcpt{Addr: "p@example.net"}, queue.RecipientStatus{State: queue.Pending}),
			withRcpt(queue.Rcpt{Addr: "d@example.net"}, queue.RecipientStatus{State: queue.Delivered})), []int{2, 1, 0}, []int{0}},
		{"nothing failed", newMessage(withFirst(func(_ *queue.Rcpt, s *queue.RecipientStatus) { s.State = queue.Delivered })), []int{0}, nil},
		{"duplicates once", newMessage(withRcpt(queue.Rcpt{Addr: "c@example.net"}, failed)), []int{1, 0, 1, 0}, []int{1, 0}},
		{"no indexes", newMessage(), nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := build(t, tt.msg, tt.failed, original)
			if tt.want == nil {
				if n != nil {
					t.Fatalf("a DSN for %v", n.Recipients)
				}
				return
			}
			if n == nil {
				t.Fatal("no DSN")
			}
			if len(n.Recipients) != len(tt.want) {
				t.Fatalf("reports %v, want %v", n.Recipients, tt.want)
			}
			rep, err := testenv.ParseDSN(bytes.NewReader(n.Data))
			if err != nil {
				t.Fatal(err)
			}
			for k, i := range tt.want {
				if n.Recipients[k] != i {
					t.Errorf("reports %v, want %v", n.Recipients, tt.want)
				}
				if got, want := rep.PerRecipient[k].Get("Final-Recipient"), "rfc822; "+tt.msg.Envelope.To[i].Addr; got != want {
					t.Errorf("Final-Recipient %q, want %q", got, want)
				}
			}
		})
	}
	if _, err := Build(params(), newMessage(), []int{1}, strings.NewReader(original)); err == nil {
		t.Error("an index out of range is no error")
	}
	if _, err := Build(Params{}, newMessage(), []int{0}, strings.NewReader(original)); err == nil {
		t.Error("no hostname is no error")
	}
}

// A recipient relayed to a next hop without DSN is reported when its
// NOTIFY lists SUCCESS (RFC 3461 section 5.2.2): Action relayed, the
// acceptance's status and reply, the header only (RET concerns failures),
// a subject that says it succeeded. Delivered recipients without SUCCESS
// are not reported; a report of failures and relays together says both.
func TestRelayedReport(t *testing.T) {
	accepted := queue.Reply{Code: 250, Enhanced: "2.0.0", Text: "Ok: queued as 4XyZ"}
	delivered := func(notify ...string) (queue.Rcpt, queue.RecipientStatus) {
		return queue.Rcpt{Addr: "x@example.net", Notify: notify, ORcpt: "rfc822;orig@example.org"},
			queue.RecipientStatus{State: queue.Delivered, Attempts: 1, LastAttempt: last, Reply: accepted}
	}
	m := newMessage(func(m *queue.Message) {
		m.Envelope.Ret, m.Envelope.EnvID = "FULL", "env-42"
		m.Envelope.To, m.Recipients = nil, nil
		for k, notify := range [][]string{{"SUCCESS"}, nil, {"FAILURE"}, {"SUCCESS", "FAILURE"}, {"NEVER"}} {
			r, st := delivered(notify...)
			r.Addr = fmt.Sprintf("r%d@example.net", k)
			m.Envelope.To, m.Recipients = append(m.Envelope.To, r), append(m.Recipients, st)
		}
	})
	p := params()
	p.RemoteMTA = "mx.example.net"
	n, err := Build(p, m, []int{0, 1, 2, 3, 4}, strings.NewReader(original))
	if err != nil || n == nil {
		t.Fatalf("Build: %v, %v", n, err)
	}
	checkWire(t, n.Data, true)
	if !slices.Equal(n.Recipients, []int{0, 3}) {
		t.Fatalf("reports %v, want the two that asked for SUCCESS", n.Recipients)
	}
	rep, err := testenv.ParseDSN(bytes.NewReader(n.Data))
	if err != nil {
		t.Fatal(err)
	}
	if got := rep.Header.Get("Subject"); got != "Successful Mail Delivery Report" {
		t.Errorf("Subject %q", got)
	}
	if got := rep.PerMessage.Get("Original-Envelope-Id"); got != "env-42" {
		t.Errorf("Original-Envelope-Id %q", got)
	}
	for _, f := range rep.PerRecipient {
		for field, want := range map[string]string{
			"Action": "relayed", "Status": "2.0.0", "Remote-MTA": "dns; mx.example.net",
			"Diagnostic-Code": "smtp; 250 2.0.0 Ok: queued as 4XyZ", "Original-Recipient": "rfc822; orig@example.org",
		} {
			if got := f.Get(field); got != want {
				t.Errorf("%s: %s %q, want %q", f.Get("Final-Recipient"), field, got, want)
			}
		}
	}
	if rep.OriginalType != "text/rfc822-headers" || strings.Contains(string(rep.Original), "Hello Bob") {
		t.Errorf("returned %s %q; want the header only, RET=FULL notwithstanding", rep.OriginalType, rep.Original)
	}
	if !strings.Contains(rep.Human, "<r0@example.net>: relayed to mx.example.net, which said: 250 2.0.0 Ok: queued as 4XyZ") {
		t.Errorf("human text:\n%s", rep.Human)
	}

	// One failed, one relayed: both, under the failure's subject.
	mixed := newMessage(withRcpt(delivered("SUCCESS")))
	n = build(t, mixed, []int{0, 1}, original)
	rep, err = testenv.ParseDSN(bytes.NewReader(n.Data))
	if err != nil {
		t.Fatal(err)
	}
	if got := rep.Header.Get("Subject"); got != "Undelivered Mail Returned to Sender" {
		t.Errorf("mixed report's Subject %q", got)
	}
	if len(rep.PerRecipient) != 2 || rep.PerRecipient[0].Get("Action") != "failed" || rep.PerRecipient[1].Get("Action") != "relayed" {
		t.Errorf("mixed report's recipients: %v", rep.PerRecipient)
	}
}

func TestRecipientFields(t *testing.T) {
	tests := []struct {
		name   string
		rcpt   queue.Rcpt
		status queue.RecipientStatus
		want   map[string]string // "" means absent
	}{
		{"permanent with enhanced code", queue.Rcpt{Addr: "b@example.net"},
			queue.RecipientStatus{State: queue.Failed, Reply: queue.Reply{Code: 550, Enhanced: "5.1.1", Text: "No such user"}},
			map[string]string{"Status": "5.1.1", "Diagnostic-Code": "smtp; 550 5.1.1 No such user", "Original-Recipient": "", "Last-Attempt-Date": ""}},
		{"permanent without enhanced code", queue.Rcpt{Addr: "b@example.net"},
			queue.RecipientStatus{State: queue.Failed, Reply: queue.Reply{Code: 554, Text: "go away"}},
			map[string]string{"Status": "5.0.0", "Diagnostic-Code": "smtp; 554 go away"}},
		{"local failure without a reply code", queue.Rcpt{Addr: "b@example.net"},
			queue.RecipientStatus{State: queue.Failed, Reply: queue.Reply{Enhanced: "5.1.10", Text: "null MX"}},
			map[string]string{"Status": "5.1.10", "Diagnostic-Code": "X-Postgate; 5.1.10 null MX"}},
		{"no reply at all", queue.Rcpt{Addr: "b@example.net"}, queue.RecipientStatus{State: queue.Failed},
			map[string]string{"Status": "5.0.0", "Diagnostic-Code": ""}},
		{"expired", queue.Rcpt{Addr: "b@example.net"}, expired,
			map[string]string{"Action": "failed", "Status": "4.4.7", "Last-Attempt-Date": "Sat, 14 Mar 2026 07:59:00 +0000"}},
		{"ORCPT rfc822", queue.Rcpt{Addr: "b@example.net", ORcpt: "RFC822;B@Example.NET"}, expired,
			map[string]string{"Original-Recipient": "rfc822; B@Example.NET", "Final-Recipient": "rfc822; b@example.net"}},
		{"ORCPT UTF-8", queue.Rcpt{Addr: "b@example.net", ORcpt: "UTF-8;ñandú@example.net"}, expired,
			map[string]string{"Original-Recipient": `utf-8; \x{F1}and\x{FA}@example.net`}},
		{"ORCPT with spaces and plus", queue.Rcpt{Addr: "b@example.net", ORcpt: "rfc822;a b+c=@x"}, expired,
			map[string]string{"Original-Recipient": "rfc822; a+20b+2Bc+3D@x"}},
		{"SMTPUTF8 recipient", queue.Rcpt{Addr: "ñandú@example.net"}, expired,
			map[string]string{"Final-Recipient": `utf-8; \x{F1}and\x{FA}@example.net`}},
		{"8bit reply text kept 7bit", queue.Rcpt{Addr: "b@example.net"},
			queue.RecipientStatus{State: queue.Failed, Reply: queue.Reply{Code: 550, Text: "Benutzer unbekannt: müller"}},
			map[string]string{"Diagnostic-Code": "smtp; 550 Benutzer unbekannt: m?ller"}},
		{"long reply folded", queue.Rcpt{Addr: "b@example.net"},
			queue.RecipientStatus{State: queue.Failed, Reply: queue.Reply{Code: 550, Text: strings.Repeat("word ", 100)}},
			map[string]string{"Diagnostic-Code": "smtp; 550 " + strings.TrimSpace(strings.Repeat("word ", 100))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMessage()
			m.Envelope.To[0], m.Recipients[0] = tt.rcpt, tt.status
			n := build(t, m, []int{0}, original)
			rep, err := testenv.ParseDSN(bytes.NewReader(n.Data))
			if err != nil {
				t.Fatal(err)
			}
			got := rep.PerRecipient[0]
			for k, want := range tt.want {
				if got.Get(k) != want {
					t.Errorf("%s: %q, want %q", k, got.Get(k), want)
				}
			}
			if got.Get("Action") != "failed" {
				t.Errorf("Action %q", got.Get("Action"))
			}
			if !strings.Contains(rep.Human, "<"+tt.rcpt.Addr+">") {
				t.Errorf("human text does not name %s:\n%s", tt.rcpt.Addr, rep.Human)
			}
		})
	}
}

func TestRemoteMTAAndTime(t *testing.T) {
	attempt := time.Date(2026, 3, 14, 7, 59, 30, 0, time.UTC)
	tests := []struct {
		name       string
		remote     string
		status     queue.RecipientStatus
		wantRemote string
		wantHuman  string
	}{
		{"failed", "mx1.example.net", newMessage().Recipients[0], "dns; mx1.example.net", "<bob@example.net>: host mx1.example.net said: 550 5.1.1 No such user"},
		{"expired", "mx1.example.net", expired, "dns; mx1.example.net", "last reply from mx1.example.net: 451 4.4.1 try again later"},
		{"no remote", "", newMessage().Recipients[0], "", "<bob@example.net>: 550 5.1.1 No such user"},
		{"local reply names no host", "mx1.example.net", queue.RecipientStatus{State: queue.Failed, Reply: queue.Reply{Enhanced: "5.1.10", Text: "null MX"}},
			"dns; mx1.example.net", "<bob@example.net>: 5.1.10 null MX"},
		{"unusable host name left out", "mx1 (evil)", newMessage().Recipients[0], "", "<bob@example.net>: 550 5.1.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMessage()
			m.Recipients[0] = tt.status
			p := params()
			p.RemoteMTA, p.LastAttempt = tt.remote, attempt
			n, err := Build(p, m, []int{0}, strings.NewReader(original))
			if err != nil {
				t.Fatal(err)
			}
			rep, err := testenv.ParseDSN(bytes.NewReader(n.Data))
			if err != nil {
				t.Fatal(err)
			}
			r := rep.PerRecipient[0]
			if r.Get("Remote-MTA") != tt.wantRemote || r.Get("Last-Attempt-Date") != "Sat, 14 Mar 2026 07:59:30 +0000" {
				t.Errorf("Remote-MTA %q, Last-Attempt-Date %q", r.Get("Remote-MTA"), r.Get("Last-Attempt-Date"))
			}
			if !strings.Contains(rep.Human, tt.wantHuman) {
				t.Errorf("human text lacks %q:\n%s", tt.wantHuman, rep.Human)
			}
		})
	}
}

func TestReturnedContent(t *testing.T) {
	hdrOf := func(s string) string { return s[:strings.Index(s, "\r\n\r\n")+2] }
	big := "From: a@example.com\r\nSubject: big\r\n\r\n" + strings.Repeat(strings.Repeat("z", 78)+"\r\n", 4000) // 320 KB
	eight := "From: a@example.com\r\nSubject: Grüße\r\n\r\nGrüße \xff\r\n"
	longLines := "From: a@example.com\r\nX-Long: " + strings.Repeat("l", 1500) + "\r\n\r\n" + strings.Repeat("b", 1999) + "\r\n"
	hugeHeader := strings.Repeat("X-Filler: "+strings.Repeat("f", 90)+"\r\n", 1000) + "\r\nbody\r\n" // 100 KB of header
	tests := []struct {
		name      string
		ret       string
		orig      string
		wantType  string
		want      string
		wantHuman string
	}{
		{"default is headers", "", original, "text/rfc822-headers", hdrOf(original), "header is attached"},
		{"HDRS", "HDRS", original, "text/rfc822-headers", hdrOf(original), "header is attached"},
		{"FULL", "FULL", original, "message/rfc822", original, "message is attached"},
		{"FULL too large: headers", "FULL", big, "text/rfc822-headers", hdrOf(big), "larger than 256 KiB"},
		{"HDRS of a large message", "HDRS", big, "text/rfc822-headers", hdrOf(big), "header is attached"},
		{"HDRS with 8bit headers", "HDRS", eight, "message/global-headers", hdrOf(eight), ""},
		{"FULL with 8bit content", "FULL", eight, "message/global", eight, ""},
		{"FULL with long lines", "FULL", longLines, "message/global", longLines, ""},
		{"HDRS with a long line", "HDRS", longLines, "message/global-headers", hdrOf(longLines), ""},
		{"header only, no separator", "HDRS", "From: a@example.com\r\nSubject: x\r\n", "text/rfc822-headers", "From: a@example.com\r\nSubject: x\r\n", ""},
		{"no header", "HDRS", "\r\nbody\r\n", "text/rfc822-headers", "", ""},
		{"empty original", "FULL", "", "message/rfc822", "", ""},
		{"header cut at 64 KiB at a line end", "HDRS", hugeHeader, "text/rfc822-headers", hugeHeader[:maxHeader/102*102], ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMessage()
			m.Envelope.Ret = tt.ret
			n := build(t, m, []int{0}, tt.orig)
			_, parts := readBack(t, n.Data)
			if len(parts) != 3 {
				t.Fatalf("%d parts", len(parts))
			}
			if parts[2].ctype != tt.wantType || parts[2].body != tt.want {
				t.Errorf("returned %s (%d bytes), want %s (%d bytes)", parts[2].ctype, len(parts[2].body), tt.wantType, len(tt.want))
			}
			if !strings.Contains(parts[0].body, tt.wantHuman) {
				t.Errorf("human text lacks %q:\n%s", tt.wantHuman, parts[0].body)
			}
		})
	}
}

func TestUTF8Sender(t *testing.T) {
	m := newMessage(func(m *queue.Message) { m.Envelope.From, m.Envelope.SMTPUTF8 = "jürgen@example.com", true })
	n := build(t, m, []int{0}, original)
	if !n.SMTPUTF8 || n.To[0] != "jürgen@example.com" {
		t.Errorf("SMTPUTF8 %v To %q", n.SMTPUTF8, n.To)
	}
	hdr, _ := readBack(t, n.Data)
	if hdr.Header.Get("To") != "<jürgen@example.com>" {
		t.Errorf("To %q", hdr.Header.Get("To"))
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

func TestOriginalReadError(t *testing.T) {
	_, err := Build(params(), newMessage(), []int{0}, errReader{})
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("error %v", err)
	}
}

func TestParseRefuses(t *testing.T) {
	good := string(build(t, newMessage(), []int{0}, original).Data)
	tests := []struct {
		name string
		msg  string
	}{
		{"plain message", original},
		{"other report type", strings.Replace(good, "report-type=delivery-status", "report-type=disposition-notification", 1)},
		{"no status part", strings.Replace(good, "message/delivery-status", "text/plain", 1)},
		{"no Reporting-MTA", strings.Replace(good, "Reporting-MTA:", "X-Reporting-MTA:", 1)},
		{"no Status", strings.Replace(good, "Status: 5.1.1", "X-Status: 5.1.1", 1)},
		{"no recipient", good[:strings.Index(good, "\r\nFinal-Recipient")] + good[strings.Index(good, "Last-Attempt-Date"):]},
		{"truncated", good[:len(good)/2]},
		{"empty", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if rep, err := testenv.ParseDSN(strings.NewReader(tt.msg)); err == nil {
				t.Errorf("parsed: %+v", rep)
			}
		})
	}
}

func TestWriteField(t *testing.T) {
	tests := []struct {
		value string
		want  string
	}{
		{"short", "X: short\r\n"},
		{"", "X:\r\n"},
		{strings.Repeat("a ", 50), "X: " + strings.TrimSpace(strings.Repeat("a ", 38)) + "\r\n " + strings.TrimSpace(strings.Repeat("a ", 12)) + "\r\n"},
		{strings.Repeat("w", 2000), "X: " + strings.Repeat("w", 995) + "\r\n " + strings.Repeat("w", 997) + "\r\n " + strings.Repeat("w", 8) + "\r\n"},
	}
	for _, tt := range tests {
		var b bytes.Buffer
		writeField(&b, "X", tt.value)
		if b.String() != tt.want {
			t.Errorf("%.20q...: got\n%q\nwant\n%q", tt.value, b.String(), tt.want)
		}
	}
}
