package delivery

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/testenv"
)

// mxEnv is a worker with one MX sink at 127.0.0.3 for rcpt.test.
func mxEnv(t *testing.T, opts testenv.SMTPSinkOptions) (*env, *testenv.SMTPSink) {
	e := newEnv(t)
	sink := e.mxSink("127.0.0.3", opts)
	e.dnsAdd("rcpt.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3")
	e.setTable(senderDomain("sender.test"))
	return e, sink
}

// A 4xx defers the recipient with a growing backoff; the next attempt
// delivers it.
func Test4xxThenSuccess(t *testing.T) {
	e, sink := mxEnv(t, testenv.SMTPSinkOptions{})
	sink.SetFault(testenv.StageRcpt, testenv.Fault{Code: 451, Enhanced: smtp.EnhancedCode{4, 7, 1}, Text: "greylisted", Times: 2})
	e.start()
	id := e.enqueue("app@sender.test", "user@rcpt.test")
	a := e.attempt(1)
	if a.Status != StatusDeferred || a.Reply.Code != 451 || a.Reply.Enhanced != "4.7.1" || a.Cause != CauseReply {
		t.Fatalf("first attempt: %+v", a)
	}
	m, _ := e.message(id)
	first := m.Recipients[0].NextAttempt.Sub(e.clock.Now())
	e.advanceToNext()
	e.attempt(2)
	m, _ = e.message(id)
	second := m.Recipients[0].NextAttempt.Sub(e.clock.Now())
	if first <= 0 || second <= first {
		t.Errorf("backoff %v then %v: not growing", first, second)
	}
	e.advanceToNext()
	e.waitGone(id)
	if a := e.attempt(3); a.Status != StatusSent || len(sink.Messages()) != 1 {
		t.Fatalf("third attempt: %+v", a)
	}
	if len(e.bouncer.Calls()) != 0 {
		t.Error("a DSN for a delivered message")
	}
}

// A 5xx fails the recipient at once and asks for a DSN; the others of the
// transaction are delivered. No DSN for the null sender, nor for NOTIFY
// without FAILURE.
func Test5xxBounces(t *testing.T) {
	e, sink := mxEnv(t, testenv.SMTPSinkOptions{})
	sink.SetRcptFault("gone@rcpt.test", testenv.Fault{Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 1}, Text: "no such user"})
	sink.SetRcptFault("quiet@rcpt.test", testenv.Fault{Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 1}, Text: "no such user"})
	e.start()
	id := e.enqueueEnv(queue.Envelope{From: "app@sender.test", To: []queue.Rcpt{
		{Addr: "gone@rcpt.test"}, {Addr: "here@rcpt.test"}, {Addr: "quiet@rcpt.test", Notify: []string{"NEVER"}},
	}}, testBody)
	e.waitGone(id)
	a := e.attempt(1)
	if a.Status != StatusBounced || len(a.Recipients) != 3 || a.Recipients[1].Status != StatusSent || a.Recipients[0].Status != StatusBounced {
		t.Fatalf("attempt: %+v", a)
	}
	if msgs := sink.Messages(); len(msgs) != 1 || strings.Join(msgs[0].Rcpts, ",") != "here@rcpt.test" {
		t.Fatalf("sink: %+v", msgs)
	}
	calls := e.bouncer.Calls()
	if len(calls) != 1 || len(calls[0].Recipients) != 1 || calls[0].Recipients[0] != 0 || calls[0].RemoteMTA != "mx.rcpt.test" {
		t.Fatalf("DSNs: %+v", calls)
	}
	r := calls[0].Message.Recipients[0]
	if r.State != queue.Failed || r.Reply.Code != 550 || r.Reply.Enhanced != "5.1.1" || r.Reply.Text != "no such user" {
		t.Errorf("bounced recipient %+v", r)
	}
	if !strings.Contains(e.logs.String(), "dsn=5.1.1 status=bounced") {
		t.Errorf("log:\n%s", e.logs.String())
	}

	// A bounce from the null sender: failed, recorded, never bounced.
	id = e.enqueue("", "gone@rcpt.test")
	e.waitGone(id)
	if a := e.attempt(2); a.Status != StatusBounced {
		t.Fatalf("null sender attempt: %+v", a)
	}
	if n := len(e.bouncer.Calls()); n != 1 {
		t.Errorf("%d DSN requests after a null-sender failure, want still 1", n)
	}
}

// A Bouncer that fails leaves the recipient deferred: the DSN is asked for
// again at the next attempt rather than lost.
func TestBouncerFailureDefers(t *testing.T) {
	e, sink := mxEnv(t, testenv.SMTPSinkOptions{})
	sink.SetFault(testenv.StageRcpt, testenv.Fault{Code: 554, Text: "no"})
	full := errors.New("queue full")
	e.bouncer.err.Store(&full)
	e.start()
	id := e.enqueue("app@sender.test", "user@rcpt.test")
	if a := e.attempt(1); a.Status != StatusDeferred {
		t.Fatalf("attempt: %+v", a)
	}
	e.bouncer.err.Store(nil)
	e.advanceToNext()
	e.waitGone(id)
	if n := len(e.bouncer.Calls()); n != 2 {
		t.Errorf("%d DSN requests, want 2", n)
	}
}

// 421 and dropped connections defer; the session is not kept.
func Test421AndDroppedConnections(t *testing.T) {
	cases := []struct {
		name  string
		stage testenv.Stage
		fault testenv.Fault
	}{
		{"421 greeting", testenv.StageConnect, testenv.Fault{Code: 421, Text: "shutting down"}},
		{"421 at MAIL", testenv.StageMail, testenv.Fault{Code: 421, Text: "shutting down"}},
		{"421 at RCPT", testenv.StageRcpt, testenv.Fault{Code: 421, Text: "shutting down"}},
		{"421 after data", testenv.StageData, testenv.Fault{Code: 421, Text: "shutting down"}},
		{"dropped at MAIL", testenv.StageMail, testenv.Fault{Drop: true}},
		{"dropped in data", testenv.StageData, testenv.Fault{Drop: true}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, sink := mxEnv(t, testenv.SMTPSinkOptions{})
			sink.SetFault(c.stage, c.fault)
			e.start()
			id := e.enqueue("app@sender.test", "user@rcpt.test")
			a := e.attempt(1)
			if a.Status != StatusDeferred || a.Cause != CauseConnect || (c.fault.Code != 0 && a.Reply.Code != 421) {
				t.Fatalf("attempt: %+v", a)
			}
			sink.ClearFaults()
			e.advanceToNext()
			e.waitGone(id)
			if st := sink.Stats(); st.Connections != 2 || st.Messages != 1 {
				t.Errorf("sink %+v: want a new connection for the retry and one message", st)
			}
		})
	}
}

// Two messages to one destination share one connection, RSET between.
func TestConnectionReuse(t *testing.T) {
	e, sink := mxEnv(t, testenv.SMTPSinkOptions{})
	e.start()
	first := e.enqueue("app@sender.test", "a@rcpt.test")
	e.waitGone(first)
	second := e.enqueue("app@sender.test", "b@rcpt.test")
	e.waitGone(second)
	if st := sink.Stats(); st.Connections != 1 || st.Messages != 2 {
		t.Fatalf("sink %+v, want 2 messages over 1 connection", st)
	}
	tr := strings.Join(sink.Conns()[0].Transcript, "\n")
	if !strings.Contains(tr, "C: RSET") {
		t.Errorf("no RSET between the transactions:\n%s", tr)
	}
	// The idle session ends after IdleTimeout (the injected clock's).
	e.clock.Advance(6 * time.Second)
	if _, err := sink.WaitStats(ctx(t), func(s testenv.SinkStats) bool { return s.Closed == 1 }); err != nil {
		t.Fatalf("idle session not closed: %v", err)
	}
	if tr := sink.Conns()[0].Transcript; tr[len(tr)-2] != "C: QUIT" {
		t.Errorf("session did not end with QUIT: %q", tr)
	}
	third := e.enqueue("app@sender.test", "c@rcpt.test")
	e.waitGone(third)
	if n := sink.Stats().Connections; n != 2 {
		t.Errorf("%d connections, want a new one after the idle timeout", n)
	}
}

// No more than MaxPerDestination transactions run to one destination.
func TestPerDestinationConcurrency(t *testing.T) {
	e, sink := mxEnv(t, testenv.SMTPSinkOptions{})
	e.opts.MaxPerDestination = 2
	sink.SetFault(testenv.StageData, testenv.Fault{Delay: 150 * time.Millisecond})
	var ids []queue.ID
	for range 6 {
		ids = append(ids, e.enqueue("app@sender.test", "user@rcpt.test"))
	}
	e.start()
	for _, id := range ids {
		e.waitGone(id)
	}
	if n := e.wire.MaxOpen(); n != 2 {
		t.Errorf("at most %d connections open at once, want 2", n)
	}
	if st := sink.Stats(); st.Messages != 6 || st.Connections != 2 {
		t.Errorf("sink %+v, want 6 messages over 2 connections", st)
	}
}
