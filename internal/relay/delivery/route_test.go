package delivery

import (
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/testenv"
)

// A routed sender's mail goes to the target relay, never to the
// recipient's MX, even while the MX answers.
func TestSmartHostWinsOverLiveMX(t *testing.T) {
	e := newEnv(t)
	mx := e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{})
	smart := testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: "127.0.0.5:0"})
	e.dnsAdd("rcpt.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3", "smart.relay.test. A 127.0.0.5")
	e.setTable(senderDomain("sender.test"), relayRoute("sender.test", "smart.relay.test", smart.Port()))
	e.start()

	id := e.enqueue("app@sender.test", "user@rcpt.test", "other@elsewhere.test")
	e.waitGone(id)
	msgs := smart.Messages()
	if len(msgs) != 1 || len(msgs[0].Rcpts) != 2 {
		t.Fatalf("smart host got %+v, want one message with both recipients", msgs)
	}
	if n := mx.Stats().Connections; n != 0 {
		t.Errorf("the MX got %d connections, want none", n)
	}
	a := e.attempt(1)
	if a.Route == nil || a.Route.Name != "route-sender-test" || a.Domain == nil || a.Domain.Name != "sender-test" {
		t.Errorf("attempt refs: domain %v route %v", a.Domain, a.Route)
	}
	if a.Status != StatusSent || a.Reply.Code != 250 || a.RelayHost != "smart.relay.test" || a.RelayAddr.Addr().String() != "127.0.0.5" {
		t.Errorf("attempt: %+v", a)
	}
	if e.dns.Queries("rcpt.test", 0) != 0 {
		t.Error("the recipient's MX was looked up for routed mail")
	}
}

// A route that lists senders routes only those; the others of the domain
// go to MX.
func TestListedAndUnlistedSenders(t *testing.T) {
	e := newEnv(t)
	mx := e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{})
	smart := testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: "127.0.0.5:0"})
	e.dnsAdd("rcpt.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3", "smart.relay.test. A 127.0.0.5")
	e.setTable(senderDomain("sender.test"), relayRoute("sender.test", "smart.relay.test", smart.Port(), senders("listed@sender.test")))
	e.start()

	listed := e.enqueue("Listed@Sender.test", "user@rcpt.test")
	unlisted := e.enqueue("other@sender.test", "user@rcpt.test")
	e.waitGone(listed)
	e.waitGone(unlisted)
	if m := smart.Messages(); len(m) != 1 || m[0].From != "Listed@Sender.test" {
		t.Errorf("smart host got %+v, want the listed sender's message", m)
	}
	if m := mx.Messages(); len(m) != 1 || m[0].From != "other@sender.test" {
		t.Errorf("MX got %+v, want the unlisted sender's message", m)
	}
}

// The route is decided at each attempt: mail deferred at the MX takes a
// route added meanwhile, and mail of a domain removed from the table goes
// to MX with the defaults (docs/design.md contract 5).
func TestRouteChangedWhileQueued(t *testing.T) {
	e := newEnv(t)
	mx := e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{})
	smart := testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: "127.0.0.5:0"})
	e.dnsAdd("rcpt.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3", "smart.relay.test. A 127.0.0.5")
	e.setTable(senderDomain("sender.test"))
	mx.SetFault(testenv.StageConnect, testenv.Fault{Code: 421, Text: "busy"})
	e.start()

	id := e.enqueue("app@sender.test", "user@rcpt.test")
	if a := e.attempt(1); a.Status != StatusDeferred || a.Route != nil {
		t.Fatalf("first attempt: %+v", a)
	}
	e.setTable(senderDomain("sender.test"), relayRoute("sender.test", "smart.relay.test", smart.Port()))
	e.advanceToNext()
	e.waitGone(id)
	if len(smart.Messages()) != 1 {
		t.Fatalf("the new route's target got %d messages", len(smart.Messages()))
	}
	if a := e.attempt(2); a.Route == nil {
		t.Errorf("second attempt has no route: %+v", a)
	}

	// Now the target defers, and the domain leaves the table: MX.
	mx.ClearFaults()
	smart.SetFault(testenv.StageMail, testenv.Fault{Code: 451, Text: "later"})
	id = e.enqueue("app@sender.test", "user@rcpt.test")
	if a := e.attempt(3); a.Status != StatusDeferred || a.Route == nil {
		t.Fatalf("third attempt: %+v", a)
	}
	e.setTable()
	e.advanceToNext()
	e.waitGone(id)
	a := e.attempt(4)
	if a.Route != nil || a.Domain != nil || a.TLS.Requested != "Opportunistic" || len(mx.Messages()) != 1 {
		t.Errorf("after removal: attempt %+v, MX messages %d", a, len(mx.Messages()))
	}
}

// Retries never restart the lifetime, and a changed lifetime applies to
// queued mail: 48h by default, with the injected clock.
func TestExpiryAt48Hours(t *testing.T) {
	e := newEnv(t)
	mx := e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{})
	e.dnsAdd("rcpt.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3")
	mx.SetFault(testenv.StageRcpt, testenv.Fault{Code: 450, Text: "mailbox busy"})
	e.setTable(senderDomain("sender.test"))
	e.start()

	id := e.enqueue("app@sender.test", "user@rcpt.test")
	n := 1
	for ; ; n++ {
		a := e.attempt(n)
		if a.Status == StatusExpired {
			break
		}
		if a.Status != StatusDeferred || n > 60 {
			t.Fatalf("attempt %d: %+v", n, a)
		}
		e.advanceToNext()
	}
	e.waitGone(id)
	if age := e.clock.Now().Sub(epoch); age < 48*time.Hour || age > 48*time.Hour+time.Minute {
		t.Errorf("expired after %v, want 48h", age)
	}
	if n < 10 {
		t.Errorf("only %d attempts in 48h: the backoff grows too fast", n)
	}
	calls := e.bouncer.Calls()
	if len(calls) != 1 || calls[0].Message.Recipients[0].State != queue.Expired || calls[0].Message.Recipients[0].Reply.Code != 450 {
		t.Fatalf("bounces: %+v", calls)
	}
	t.Logf("%d attempts over %v", n, e.clock.Now().Sub(epoch))
}

// The lifetime comes from the table at each attempt, counted from the
// arrival: shortening it expires mail that is already older.
func TestLifetimeFromCurrentTable(t *testing.T) {
	e := newEnv(t)
	mx := e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{})
	e.dnsAdd("rcpt.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3")
	mx.SetFault(testenv.StageRcpt, testenv.Fault{Code: 450, Text: "mailbox busy"})
	e.setTable(senderDomain("sender.test", lifetime(72*time.Hour)))
	e.start()
	id := e.enqueue("app@sender.test", "user@rcpt.test")
	for n := 1; ; n++ {
		if a := e.attempt(n); a.Status != StatusDeferred {
			t.Fatalf("attempt %d: %+v", n, a)
		}
		if e.clock.Now().Sub(epoch) >= 3*time.Hour {
			break
		}
		e.advanceToNext()
	}
	e.setTable(senderDomain("sender.test", lifetime(time.Hour)))
	e.advanceToNext()
	e.waitGone(id)
	last := e.observer.Attempts()
	if a := last[len(last)-1]; a.Status != StatusExpired {
		t.Fatalf("last attempt %+v", a)
	}
	if len(e.bouncer.Calls()) != 1 {
		t.Errorf("%d DSNs, want 1", len(e.bouncer.Calls()))
	}
}
