package delivery

import (
	"strings"
	"testing"
	"time"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/testenv"
)

// A RelayRoute whose credentials Secret is gone holds the domain's mail,
// queued and new alike: nothing reaches the recipients' MX, no host is
// tried, and every message reaches the smart host once the Secret is back.
func TestHeldRouteNeverGoesByMX(t *testing.T) {
	ca := testenv.NewCA(t)
	e := newEnv(t)
	mx := e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{})
	smart := testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: "127.0.0.5:0",
		TLS: ca.Issue(t, "smart.relay.test").ServerConfig(), Users: map[string]string{"relay": "s3cret"}, RequireAuth: true})
	e.dnsAdd("rcpt.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3", "smart.relay.test. A 127.0.0.5")
	route := relayRoute("sender.test", "smart.relay.test", smart.Port(),
		tlsPolicy(v1alpha1.TLSPolicyVerify, v1alpha1.TLSModeSTARTTLS), caBundle(), credentials())
	resolved := []any{senderDomain("sender.test"), route, caSecret(ca), credsSecret("relay", "s3cret")}
	withoutCreds := resolved[:3]

	// Three messages are queued while the route is in force (the smart
	// host defers them), then the credentials Secret is deleted.
	smart.SetFault(testenv.StageMail, testenv.Fault{Code: 451, Text: "try later"})
	e.setTable(resolved...)
	e.start()
	var ids []queue.ID
	for range 3 {
		ids = append(ids, e.enqueue("app@sender.test", "user@rcpt.test", "other@elsewhere.test"))
	}
	e.waitAttempts(3)
	e.setTable(withoutCreds...)
	smartConns := smart.Stats().Connections

	// Three more arrive while the route is held.
	for range 3 {
		ids = append(ids, e.enqueue("app@sender.test", "user@rcpt.test"))
	}
	held := func() int {
		n := 0
		for _, id := range ids {
			if m, ok := e.message(id); ok && strings.Contains(m.Recipients[0].Reply.Text, "held:") {
				n++
			}
		}
		return n
	}
	for i := 0; held() < len(ids); i++ {
		if i > 20 {
			t.Fatalf("%d of %d messages held after %d rounds", held(), len(ids), i)
		}
		n := len(e.observer.Attempts())
		e.advanceToNext()
		e.waitAttempts(n + 1)
	}
	for _, a := range e.observer.Attempts()[3:] {
		if a.Status != StatusDeferred || a.Cause != CauseHeld || a.Reply.Enhanced != "4.4.4" || a.RelayHost != "" ||
			a.Route == nil || a.Route.Name != "route-sender-test" || a.Domain == nil {
			t.Errorf("held attempt: %+v", a)
		}
		if !strings.Contains(a.Reply.Text, `RelayRoute team/route-sender-test cannot take effect: Secret "creds" (target credentials) not found`) {
			t.Errorf("held reply %q does not name the route and the reason", a.Reply.Text)
		}
	}
	m, _ := e.message(ids[0])
	if r := m.Recipients[0].Reply; r.Enhanced != "4.4.4" || m.Recipients[0].State != queue.Pending {
		t.Errorf("queued message: %+v, want pending with the 4.4.4 hold as its last reply", m.Recipients[0])
	}
	if n := smart.Stats().Connections; n != smartConns {
		t.Errorf("the smart host got %d connections while the route was held", n-smartConns)
	}
	if n := mx.Stats().Connections; n != 0 || e.dns.Queries("rcpt.test", 0) != 0 {
		t.Fatalf("held mail went to MX: %d connections, %d MX queries", n, e.dns.Queries("rcpt.test", 0))
	}

	// The Secret is back: every message goes to the smart host, once,
	// within a second (the worker looks for a releasing table that
	// often), not at its next retry minutes later.
	smart.ClearFaults()
	e.setTable(resolved...)
	e.clock.Advance(tablePoll)
	for _, id := range ids {
		e.waitGone(id)
	}
	// The queue schedules each recipient on its own: count recipients.
	got := map[string]int{}
	for _, msg := range smart.Messages() {
		if msg.AuthUser != "relay" {
			t.Errorf("message at the smart host without AUTH: %+v", msg)
		}
		for _, r := range msg.Rcpts {
			got[r]++
		}
	}
	if got["user@rcpt.test"] != 6 || got["other@elsewhere.test"] != 3 || len(got) != 2 {
		t.Errorf("the smart host got recipients %v, want user@rcpt.test 6 times and other@elsewhere.test 3 times", got)
	}
	if n := mx.Stats().Connections; n != 0 {
		t.Errorf("the MX got %d connections", n)
	}
}

// Held mail still expires at the domain's queue lifetime, into a DSN that
// gives the hold as the reason.
func TestHeldMailExpires(t *testing.T) {
	e := newEnv(t)
	mx := e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{})
	e.dnsAdd("rcpt.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3")
	e.setTable(senderDomain("sender.test", lifetime(2*time.Hour)), relayRoute("sender.test", "smart.relay.test", 25, credentials()))
	e.start()
	id := e.enqueue("app@sender.test", "user@rcpt.test")
	for n := 1; ; n++ {
		a := e.attempt(n)
		if a.Status == StatusExpired {
			break
		}
		if a.Status != StatusDeferred || a.Cause != CauseHeld || n > 30 {
			t.Fatalf("attempt %d: %+v", n, a)
		}
		e.advanceToNext()
	}
	e.waitGone(id)
	if age := e.clock.Now().Sub(epoch); age != 2*time.Hour {
		t.Errorf("expired after %v, want the domain's 2h", age)
	}
	calls := e.bouncer.Calls()
	if len(calls) != 1 || calls[0].Message.Recipients[0].State != queue.Expired || !strings.Contains(calls[0].Message.Recipients[0].Reply.Text, "held:") {
		t.Fatalf("bounces: %+v", calls)
	}
	if mx.Stats().Connections != 0 {
		t.Error("held mail went to MX")
	}
}
