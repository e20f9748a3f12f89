package delivery

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/testenv"
)

// The envelope's DSN parameters, SIZE and SMTPUTF8 go on to the next hop;
// an internationalized domain is looked up by its A-label while RCPT TO
// keeps the address as given.
func TestEnvelopeParametersPassedOn(t *testing.T) {
	e := newEnv(t)
	sink := e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{})
	e.dnsAdd("xn--bcher-kva.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3")
	e.start()
	id := e.enqueueEnv(queue.Envelope{
		From: "app@sender.test", SMTPUTF8: true, Ret: "HDRS", EnvID: "env-42",
		To: []queue.Rcpt{{Addr: "jörg@bücher.test", Notify: []string{"FAILURE", "DELAY"}, ORcpt: "rfc822;orig@bücher.test"}},
	}, testBody)
	e.waitGone(id)
	msgs := sink.Messages()
	if len(msgs) != 1 {
		t.Fatal("no message")
	}
	m := msgs[0]
	o := m.MailOptions
	if !o.UTF8 || o.Return != smtp.DSNReturnHeaders || o.EnvelopeID != "env-42" || o.Size != int64(len(testBody)) {
		t.Errorf("MAIL options %+v", o)
	}
	if len(m.RawRcpts) != 1 || !strings.HasPrefix(m.RawRcpts[0], "RCPT TO:<jörg@bücher.test> NOTIFY=FAILURE,DELAY ORCPT=") {
		t.Errorf("RCPT %q", m.RawRcpts)
	}
	if e.dns.Queries("xn--bcher-kva.test", dns.TypeMX) != 1 {
		t.Error("the A-label was not looked up")
	}
}

// NOTIFY=SUCCESS (RFC 3461): to a next hop that offers DSN the parameter
// goes on and the next hop reports, so the relay asks for no DSN; to one
// that does not, the parameters are left out and the relay asks for a
// "relayed" DSN (section 5.2.2) for the recipients that wanted it, and for
// no other. The null sender never gets one.
func TestRelayedDSN(t *testing.T) {
	for _, offers := range []bool{true, false} {
		t.Run(map[bool]string{true: "next hop offers DSN", false: "next hop without DSN"}[offers], func(t *testing.T) {
			e := newEnv(t)
			sink := e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{NoDSN: !offers})
			e.dnsAdd("rcpt.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3")
			e.start()
			id := e.enqueueEnv(queue.Envelope{From: "app@sender.test", To: []queue.Rcpt{
				{Addr: "a@rcpt.test", Notify: []string{"SUCCESS", "FAILURE"}},
				{Addr: "b@rcpt.test"},
				{Addr: "c@rcpt.test", Notify: []string{"FAILURE"}},
				{Addr: "d@rcpt.test", Notify: []string{"SUCCESS"}},
			}}, testBody)
			e.waitGone(id)
			bounce := e.enqueueEnv(queue.Envelope{From: "", To: []queue.Rcpt{{Addr: "e@rcpt.test", Notify: []string{"SUCCESS"}}}}, testBody)
			e.waitGone(bounce)
			m := sink.Messages()[0]
			if got := strings.Contains(m.RawRcpts[0], "NOTIFY=SUCCESS,FAILURE"); got != offers {
				t.Errorf("RCPT %q: NOTIFY passed on %v, want %v", m.RawRcpts[0], got, offers)
			}
			calls := e.bouncer.Calls()
			if offers {
				if len(calls) != 0 {
					t.Fatalf("%d DSN requests; the next hop reports", len(calls))
				}
				return
			}
			if len(calls) != 1 || calls[0].Message.ID != id || !slices.Equal(calls[0].Recipients, []int{0, 3}) {
				t.Fatalf("DSN requests %+v, want one for recipients 0 and 3 of %s", calls, id)
			}
			for _, i := range calls[0].Recipients {
				if st := calls[0].Message.Recipients[i]; st.State != queue.Delivered || st.Reply.Code != 250 {
					t.Errorf("recipient %d in the request: %+v, want delivered with the 250", i, st)
				}
			}
			if calls[0].RemoteMTA != "mx.rcpt.test" {
				t.Errorf("Remote-MTA %q", calls[0].RemoteMTA)
			}
		})
	}
}

// A session the server closed while it was idle is noticed at RSET and
// replaced: the message goes on a new connection, and nothing is deferred.
func TestStaleIdleSessionReplaced(t *testing.T) {
	e, sink := mxEnv(t, testenv.SMTPSinkOptions{})
	e.opts.IdleTimeout = time.Hour
	e.start()
	e.waitGone(e.enqueue("app@sender.test", "a@rcpt.test"))
	sink.ExpireIdle()
	if _, err := sink.WaitStats(ctx(t), func(s testenv.SinkStats) bool { return s.Closed == 1 }); err != nil {
		t.Fatal(err)
	}
	e.waitGone(e.enqueue("app@sender.test", "b@rcpt.test"))
	if st := sink.Stats(); st.Connections != 2 || st.Messages != 2 {
		t.Errorf("sink %+v", st)
	}
	for _, a := range e.waitAttempts(2) {
		if a.Status != StatusSent {
			t.Errorf("attempt %+v", a)
		}
	}
}

// Negative answers are cached for the SOA's minimum (RFC 2308).
func TestNegativeAnswerCached(t *testing.T) {
	e := newEnv(t)
	e.MXPort()
	e.start()
	e.waitGone(e.enqueue("app@sender.test", "a@missing.test"))
	e.waitGone(e.enqueue("app@sender.test", "b@missing.test"))
	if n := e.dns.Queries("missing.test", dns.TypeMX); n != 1 {
		t.Errorf("%d MX queries within the negative TTL, want 1", n)
	}
	e.clock.Advance(61 * time.Second)
	e.waitGone(e.enqueue("app@sender.test", "c@missing.test"))
	if n := e.dns.Queries("missing.test", dns.TypeMX); n != 2 {
		t.Errorf("%d MX queries after the negative TTL, want 2", n)
	}
}

// Nothing is attempted before a routing table is loaded.
func TestWaitsForFirstTable(t *testing.T) {
	e, sink := mxEnv(t, testenv.SMTPSinkOptions{})
	table := e.tables.Table()
	e.tables.p.Store(nil)
	id := e.enqueue("app@sender.test", "user@rcpt.test")
	t0 := e.clock.Now()
	e.start()
	// The worker looks for a table every tablePoll: twice without one.
	e.clock.waitArmed(t, 0, t0.Add(tablePoll))
	e.clock.Advance(tablePoll)
	e.clock.waitArmed(t, 0, t0.Add(2*tablePoll))
	if m, _ := e.message(id); m.Recipients[0].Attempts != 0 || sink.Stats().Connections != 0 {
		t.Fatal("attempted without a table")
	}
	e.tables.p.Store(table)
	e.waitFor("delivery once the table is there", func() bool {
		e.clock.Advance(tablePoll)
		_, queued := e.message(id)
		return !queued
	})
}

// Recipients are grouped per domain, one transaction each, and a recipient
// without a domain fails on its own.
func TestRecipientsGroupedByDomain(t *testing.T) {
	e := newEnv(t)
	a := e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{})
	b := e.mxSink("127.0.0.4", testenv.SMTPSinkOptions{})
	e.dnsAdd("a.test. MX 10 mx.a.test.", "mx.a.test. A 127.0.0.3", "b.test. MX 10 mx.b.test.", "mx.b.test. A 127.0.0.4")
	e.start()
	id := e.enqueue("app@sender.test", "1@a.test", "1@b.test", "2@A.test", "postmaster")
	e.waitGone(id)
	if m := a.Messages(); len(m) != 1 || !slices.Equal(m[0].Rcpts, []string{"1@a.test", "2@A.test"}) {
		t.Errorf("a.test got %+v", m)
	}
	if m := b.Messages(); len(m) != 1 || !slices.Equal(m[0].Rcpts, []string{"1@b.test"}) {
		t.Errorf("b.test got %+v", m)
	}
	calls := e.bouncer.Calls()
	if len(calls) != 1 || !slices.Equal(calls[0].Recipients, []int{3}) || calls[0].Message.Recipients[3].Reply.Enhanced != "5.1.3" {
		t.Errorf("DSNs %+v", calls)
	}
}

// With MaskLocalPart the log line hides who the mail was for, and keeps
// everything else an operator greps for.
func TestLogLineMasked(t *testing.T) {
	e, _ := mxEnv(t, testenv.SMTPSinkOptions{})
	e.opts.MaskLocalPart = true
	e.start()
	e.waitGone(e.enqueue("app@sender.test", "secret.person@rcpt.test"))
	e.attempt(1)
	logs := e.logs.String()
	for _, want := range []string{"to=***@rcpt.test", "relay=mx.rcpt.test[127.0.0.3]:", "delay=0s", "dsn=2.0.0", "status=sent", `reply="250 2.0.0 OK: queued as sink-1"`, "tls=none", "id="} {
		if !strings.Contains(logs, want) {
			t.Errorf("log line lacks %q:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, "secret.person") {
		t.Errorf("local part in the log:\n%s", logs)
	}
	if n := strings.Count(logs, "\n"); n != 1 {
		t.Errorf("%d log lines for one attempt, want 1", n)
	}
}

// TestSMTPUTF8NotOffered: to a next hop that does not offer SMTPUTF8 (only
// 8BITMIME and PIPELINING), a non-ASCII recipient fails with 5.6.7 and is
// never sent, while an ASCII one of the same message goes as 8-bit,
// without SMTPUTF8 (RFC 6531 section 3.2), also when the message was
// queued without the SMTPUTF8 flag; a non-ASCII sender fails every
// recipient.
func TestSMTPUTF8NotOffered(t *testing.T) {
	e := newEnv(t)
	sink := e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{NoSMTPUTF8: true})
	e.dnsAdd("rcpt.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3")
	e.start()
	const utf8Body = "From: <app@sender.test>\r\nTo: <user@rcpt.test>\r\nSubject: caf\xc3\xa9\r\n\r\nHello.\r\n"
	for n, flag := range []bool{false, true} {
		id := e.enqueueEnv(queue.Envelope{From: "app@sender.test", SMTPUTF8: flag,
			To: []queue.Rcpt{{Addr: "josé@rcpt.test"}, {Addr: "user@rcpt.test"}}}, utf8Body)
		e.waitGone(id)
		a := e.attempt(n + 1)
		if len(a.Recipients) != 2 || a.Recipients[0].Status != StatusBounced || a.Recipients[0].Reply.Enhanced != "5.6.7" || a.Recipients[1].Status != StatusSent {
			t.Fatalf("SMTPUTF8 flag %v: attempt %+v", flag, a)
		}
		msgs := sink.Messages()
		if len(msgs) != n+1 {
			t.Fatalf("sink got %d messages", len(msgs))
		}
		m := msgs[n]
		if m.MailOptions.UTF8 || strings.Join(m.RawRcpts, ",") != "RCPT TO:<user@rcpt.test>" || !strings.Contains(string(m.Data), "caf\xc3\xa9") {
			t.Errorf("SMTPUTF8 flag %v: sent %+v", flag, m)
		}
	}
	id := e.enqueueEnv(queue.Envelope{From: "jösé@sender.test", SMTPUTF8: true, To: []queue.Rcpt{{Addr: "user@rcpt.test"}}}, testBody)
	e.waitGone(id)
	if a := e.attempt(3); a.Recipients[0].Status != StatusBounced || a.Recipients[0].Reply.Enhanced != "5.6.7" {
		t.Errorf("non-ASCII sender: %+v", a)
	}
	if n := len(sink.Messages()); n != 2 {
		t.Errorf("%d messages sent, want 2", n)
	}
	if calls := e.bouncer.Calls(); len(calls) != 3 {
		t.Errorf("%d DSN requests, want one per failed message", len(calls))
	}
}
