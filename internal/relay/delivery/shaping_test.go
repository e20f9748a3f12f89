package delivery

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/shaping"
	"github.com/postgate/postgate/internal/testenv"
)

// testShapingPolicy: at most 2 connections to a site, 4.7.28 a throttle
// reply that suspends the site for 10 minutes.
const testShapingPolicy = `
default:
  maxConnections: 2
  maxMessagesPerConnection: 100
  maxNewConnectionsPerMinute: 0
  maxMessagesPerMinute: 0
  maxMessagesPerHour: 0
  throttleReplies:
    - enhancedCode: 4.7.28
  suspension:
    initial: 10m
    max: 1h
    resetAfter: 1h
`

// shapedEnv is an env whose MX delivery is shaped by testShapingPolicy,
// with one MX sink for rcpt.test (site "rcpt.test").
func shapedEnv(t *testing.T, opts testenv.SMTPSinkOptions) (*env, *testenv.SMTPSink, *shaping.Limiter) {
	t.Helper()
	return shapedEnvPolicy(t, opts, testShapingPolicy)
}

func shapedEnvPolicy(t *testing.T, opts testenv.SMTPSinkOptions, policy string) (*env, *testenv.SMTPSink, *shaping.Limiter) {
	t.Helper()
	e := newEnv(t)
	sink := e.mxSink("127.0.0.3", opts)
	e.dnsAdd("rcpt.test. MX 10 mx1.rcpt.test.", "mx1.rcpt.test. A 127.0.0.3")
	p, err := shaping.Parse([]byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	lim := shaping.NewLimiter(p, e.clock)
	e.opts.Shaping = lim
	return e, sink, lim
}

// deferredWithoutAttempt reports whether the message's only recipient
// waits with a reply and no attempt counted.
func (e *env) deferredWithoutAttempt(id queue.ID, text string) bool {
	m, ok := e.message(id)
	if !ok {
		e.t.Fatalf("message %s left the queue", id)
	}
	r := m.Recipients[0]
	if r.State != queue.Pending || r.Reply == (queue.Reply{}) {
		return false
	}
	if r.Attempts != 0 || !r.LastAttempt.IsZero() {
		e.t.Fatalf("message %s: %d attempts (last %s) after a deferral by shaping, want none: %+v", id, r.Attempts, r.LastAttempt, r)
	}
	if !strings.Contains(r.Reply.Text, text) {
		e.t.Fatalf("message %s: reply %+v, want one saying %q", id, r.Reply, text)
	}
	return true
}

// drain waits until the messages have left the queue, moving the clock to
// the next due time whenever delivery has nothing to do before it (the
// site's connection limit defers the messages it refuses).
func (e *env) drain(ids []queue.ID) {
	e.t.Helper()
	for _, id := range ids {
		e.waitFor("message "+string(id)+" delivered", func() bool {
			if _, ok := e.message(id); !ok {
				return true
			}
			if next, ok := e.q.NextDue(); ok && next.After(e.clock.Now()) {
				e.clock.Advance(next.Sub(e.clock.Now()))
			}
			return false
		})
	}
}

// A throttle reply suspends the site: the throttled message and those
// queued after it wait for the suspension's end without a connection and
// without an attempt counted; then delivery resumes.
func TestShapingSuspendsOnThrottleAndResumes(t *testing.T) {
	e, sink, lim := shapedEnv(t, testenv.SMTPSinkOptions{})
	e.start()
	for range 3 {
		e.waitGone(e.enqueue("app@sender.test", "user@rcpt.test"))
	}

	// The receiver throttles after 3 messages.
	sink.SetFault(testenv.StageMail, testenv.Fault{Code: 421, Enhanced: smtp.EnhancedCode{4, 7, 28}, Text: "Our system has detected an unusual rate of unsolicited mail"})
	throttled := e.enqueue("app@sender.test", "user@rcpt.test")
	e.waitFor("the throttled message to be deferred", func() bool { return e.deferredWithoutAttempt(throttled, "unusual rate") })
	until, reason := lim.Suspended("rcpt.test")
	if want := e.clock.Now().Add(10 * time.Minute); !until.Equal(want) || !strings.Contains(reason, "4.7.28") {
		t.Fatalf("site suspended until %s (%q), want %s for the 4.7.28 reply", until, reason, want)
	}
	if a := e.attempt(4); a.Cause != CauseThrottled {
		t.Errorf("throttled attempt's cause %q, want %q", a.Cause, CauseThrottled)
	}

	e.waitFor("the throttled session to close", func() bool { return sink.Stats().Closed == sink.Stats().Connections })
	conns := sink.Stats().Connections
	var later []queue.ID
	for range 5 {
		later = append(later, e.enqueue("app@sender.test", "user@rcpt.test"))
	}
	want := fmt.Sprintf("site rcpt.test suspended until %s", until.UTC().Format(time.RFC3339))
	for _, id := range later {
		e.waitFor("a message for the suspended site to be deferred", func() bool { return e.deferredWithoutAttempt(id, want) })
		m, _ := e.message(id)
		if r := m.Recipients[0].Reply; r.Code != 451 || r.Enhanced != "4.7.0" {
			t.Errorf("reply %+v, want 451 4.7.0", r)
		}
		if next := m.Recipients[0].NextAttempt; !next.Equal(until) {
			t.Errorf("due at %s, want the suspension's end %s", next, until)
		}
	}
	if got := sink.Stats().Connections; got != conns {
		t.Fatalf("%d connections to a suspended site, want none", got-conns)
	}
	var st shaping.SiteStats
	for _, s := range lim.Stats() {
		if s.Site == "rcpt.test" {
			st = s
		}
	}
	if st.DeferredWithoutAttempt < 6 || st.Suspensions != 1 {
		t.Errorf("site stats %+v: want 6 deferrals without attempt and 1 suspension", st)
	}

	// The suspension ends: everything goes, on new connections.
	sink.ClearFaults()
	e.clock.Advance(until.Sub(e.clock.Now()))
	e.drain(append(later, throttled))
	if got := len(sink.Messages()); got != 9 {
		t.Fatalf("sink has %d messages, want 9", got)
	}
}

// The site's maxConnections is never exceeded at the receiver, however
// many messages are due at once; refused ones wait without an attempt.
func TestShapingBoundsConnections(t *testing.T) {
	// A slow DATA reply keeps sessions busy, so attempts overlap.
	e, sink, _ := shapedEnv(t, testenv.SMTPSinkOptions{})
	sink.SetFault(testenv.StageData, testenv.Fault{Delay: 20 * time.Millisecond})
	e.opts.IdleTimeout = -1 // no pooling: every message opens a connection
	e.start()
	var ids []queue.ID
	for range 20 {
		ids = append(ids, e.enqueue("app@sender.test", "user@rcpt.test"))
	}
	e.drain(ids)
	if got := len(sink.Messages()); got != 20 {
		t.Fatalf("sink has %d messages, want 20", got)
	}
	if got := e.wire.MaxOpen(); got > 2 || got < 1 {
		t.Fatalf("%d connections open at once, want at most the site's 2", got)
	}
	for _, a := range e.observer.Attempts() {
		if a.Cause != CauseNone && a.Cause != CauseThrottled {
			t.Errorf("attempt %+v: want delivered or deferred by shaping", a)
		}
	}
}

// Without shaping a throttle reply is an ordinary 4xx: the attempt counts.
func TestNoShapingThrottleCounts(t *testing.T) {
	e := newEnv(t)
	sink := e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{})
	e.dnsAdd("rcpt.test. MX 10 mx1.rcpt.test.", "mx1.rcpt.test. A 127.0.0.3")
	sink.SetFault(testenv.StageMail, testenv.Fault{Code: 421, Enhanced: smtp.EnhancedCode{4, 7, 28}, Text: "unusual rate"})
	e.start()
	id := e.enqueue("app@sender.test", "user@rcpt.test")
	if a := e.attempt(1); a.Cause == CauseThrottled {
		t.Fatalf("cause %q without shaping", a.Cause)
	}
	m, _ := e.message(id)
	if r := m.Recipients[0]; r.Attempts != 1 || r.State != queue.Pending {
		t.Fatalf("recipient %+v: want pending after 1 attempt", r)
	}
}

// A session that carried maxMessagesPerConnection messages is closed after
// its transaction instead of being kept for the next message.
func TestShapingMessagesPerConnection(t *testing.T) {
	e, sink, _ := shapedEnvPolicy(t, testenv.SMTPSinkOptions{}, strings.Replace(testShapingPolicy, "maxMessagesPerConnection: 100", "maxMessagesPerConnection: 2", 1))
	e.start()
	for range 6 {
		e.waitGone(e.enqueue("app@sender.test", "user@rcpt.test"))
	}
	e.waitFor("the full sessions to close", func() bool { return sink.Stats().Closed >= 3 })
	if st := sink.Stats(); st.Connections != 3 || st.Messages != 6 {
		t.Fatalf("6 messages, 2 per connection: %d connections, %d messages", st.Connections, st.Messages)
	}
}

// The fairness test: sender A has 10,000 messages queued for a
// site that takes two connections at a time, and its delivery is under
// way; sender B sends 10 after. B's 10 reach the receiver while most of
// A's backlog still waits, not after it: the queue leases in turns
// between senders, and the site's gate gives its slots in turns.
func TestShapingSharesASiteBetweenSenders(t *testing.T) {
	e, sink, lim := shapedEnv(t, testenv.SMTPSinkOptions{})
	// Each message takes the receiver a moment: the site, not the relay,
	// is the bottleneck, as a throttled provider is.
	sink.SetFault(testenv.StageData, testenv.Fault{Delay: 2 * time.Millisecond})
	const backlog = 10000
	for range backlog {
		e.enqueue("bulk@a.test", "user@rcpt.test")
	}
	e.start()
	e.waitFor("sender A's delivery to be under way", func() bool { return len(sink.Messages()) >= 20 })
	var ids []queue.ID
	for range 10 {
		ids = append(ids, e.enqueue("reset@b.test", "user@rcpt.test"))
	}
	for _, id := range ids {
		e.waitFor("sender B's message "+string(id)+" delivered", func() bool {
			if _, ok := e.message(id); !ok {
				return true
			}
			// Time passes: messages deferred beyond their sender's share
			// of the waiters come back at their turn.
			e.clock.Advance(time.Second)
			return false
		})
	}
	msgs := sink.Messages()
	lastB, before := -1, 0
	for i, m := range msgs {
		if m.From == "reset@b.test" {
			lastB = i
		}
	}
	for _, m := range msgs[:lastB] {
		if m.From == "bulk@a.test" {
			before++
		}
	}
	t.Logf("sender B's 10 delivered after %d of sender A's %d (the receiver had %d when B sent)", before, backlog, 20)
	if before > backlog/4 {
		t.Fatalf("sender B's last message reached the receiver after %d of sender A's %d: not ahead of the backlog", before, backlog)
	}
	if got := e.wire.MaxOpen(); got > 2 {
		t.Fatalf("%d connections open at once, want at most the site's 2", got)
	}
	deferred := 0
	for _, a := range e.observer.Attempts() {
		switch a.Cause {
		case CauseThrottled:
			deferred++
		case CauseNone:
		default:
			t.Fatalf("attempt %+v: want delivered or deferred by shaping", a)
		}
	}
	st := lim.Stats()[0]
	t.Logf("%d deferrals without attempt (sender A's messages beyond its share of the site's waiters), %d messages granted", deferred, st.MessagesGranted)
}

// A message the site's rate refuses for a moment (a token due within
// shapeWait) waits for it, holding its turn, instead of being deferred:
// one attempt, delivered, no deferral recorded.
func TestShapingWaitsForANearToken(t *testing.T) {
	// 60 a minute: a burst of 6, then a token every second or so.
	e, sink, _ := shapedEnvPolicy(t, testenv.SMTPSinkOptions{}, strings.Replace(testShapingPolicy, "maxMessagesPerMinute: 0", "maxMessagesPerMinute: 60", 1))
	e.start()
	var ids []queue.ID
	for range 7 {
		ids = append(ids, e.enqueue("app@sender.test", "user@rcpt.test"))
	}
	e.waitFor("the burst of 6 delivered", func() bool { return len(sink.Messages()) >= 6 })
	for _, id := range ids {
		e.waitFor("message "+string(id)+" delivered", func() bool {
			if _, ok := e.message(id); !ok {
				return true
			}
			e.clock.Advance(100 * time.Millisecond)
			return false
		})
	}
	for _, a := range e.observer.Attempts() {
		if a.Cause != CauseNone {
			t.Errorf("attempt %s: cause %q (%s), want every message delivered at its first attempt", a.QueueID, a.Cause, a.Reply)
		}
	}
	if got := len(e.observer.Attempts()); got != 7 {
		t.Errorf("%d attempts for 7 messages", got)
	}
}

// A site's only connection, held by an idle session to one of its hosts,
// is given up for a transaction to another of its hosts: the idle one is
// closed, the new one opened, and nothing deferred.
func TestShapingClosesIdleSessionForWaitingTransaction(t *testing.T) {
	e, sink1, _ := shapedEnvPolicy(t, testenv.SMTPSinkOptions{}, strings.Replace(testShapingPolicy, "maxConnections: 2", "maxConnections: 1", 1))
	sink2 := e.mxSink("127.0.0.4", testenv.SMTPSinkOptions{})
	e.dnsAdd("two.test. MX 10 mx2.rcpt.test.", "mx2.rcpt.test. A 127.0.0.4")
	e.start()
	e.waitGone(e.enqueue("app@sender.test", "user@rcpt.test"))
	if st := sink1.Stats(); st.Connections != 1 || st.Closed != 0 {
		t.Fatalf("first host: %+v, want its session kept idle", st)
	}
	e.waitGone(e.enqueue("app@sender.test", "user@two.test"))
	if st := sink1.Stats(); st.Closed != 1 {
		t.Fatalf("first host: %+v, want its idle session closed for the second", st)
	}
	if got := len(sink2.Messages()); got != 1 {
		t.Fatalf("second host has %d messages, want 1", got)
	}
	for _, a := range e.observer.Attempts() {
		if a.Cause != CauseNone {
			t.Errorf("attempt to %s: cause %q (%s), want delivered", a.Destination, a.Cause, a.Reply)
		}
	}
}

// A 5xx that the policy names a throttle reply suspends the site and
// defers the recipient without attempt: no bounce, no DSN. A 5xx it does
// not name still bounces.
func TestShapingPermanentThrottleReplyDefers(t *testing.T) {
	policy := strings.Replace(testShapingPolicy, "    - enhancedCode: 4.7.28\n", "    - enhancedCode: 4.7.28\n    - code: 550\n      text: slow down\n", 1)
	e, sink, lim := shapedEnvPolicy(t, testenv.SMTPSinkOptions{}, policy)
	e.start()
	sink.SetFault(testenv.StageRcpt, testenv.Fault{Code: 550, Enhanced: smtp.EnhancedCode{5, 7, 1}, Text: "Too many messages from your IP, slow down"})
	id := e.enqueue("app@sender.test", "user@rcpt.test")
	e.waitFor("the recipient to be deferred without attempt", func() bool { return e.deferredWithoutAttempt(id, "slow down") })
	if until, _ := lim.Suspended("rcpt.test"); until.IsZero() {
		t.Fatal("site not suspended by the 550 the policy names")
	}
	if a := e.attempt(1); a.Cause != CauseThrottled || a.Status != StatusDeferred {
		t.Fatalf("attempt: cause %q, status %q; want Throttled, deferred", a.Cause, a.Status)
	}
	if n := len(e.bouncer.Calls()); n != 0 {
		t.Fatalf("%d DSNs for a throttled recipient", n)
	}

	// Another 5xx, at another site, is a bounce as before.
	other := e.mxSink("127.0.0.5", testenv.SMTPSinkOptions{})
	e.dnsAdd("other.test. MX 10 mx.other.test.", "mx.other.test. A 127.0.0.5")
	other.SetFault(testenv.StageRcpt, testenv.Fault{Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 1}, Text: "no such user"})
	e.waitGone(e.enqueue("app@sender.test", "nobody@other.test"))
	if a := e.attempt(2); a.Status != StatusBounced {
		t.Fatalf("attempt to other.test: status %q, want bounced", a.Status)
	}
}

// receiverArrivals delivers n messages from one sender to the site under
// the fake clock and returns the fake time at which each reached the
// receiver, as the receiver would count them. The clock moves only when no
// more can arrive at the time it reads: everything granted has arrived,
// and either the rate has no token left at that time or nothing is leased
// and nothing due. So every arrival is stamped with the time it was granted
// at, and nothing the relay does in real time (dialing, the receiver's
// replies) lets the clock run ahead of it. granted and arrived count what
// the limiter admitted and what the receiver saw; next is when the
// limiter next admits one, zero when it does now.
func receiverArrivals(e *env, lim *shaping.Limiter, n int, granted, arrived func() int, next func(shaping.SiteStats) time.Time) []time.Time {
	e.t.Helper()
	for range n {
		e.enqueue("app@sender.test", "user@rcpt.test")
	}
	var stamps []time.Time
	steps := 0
	for len(stamps) < n {
		// A wait of its own for each step: polling starts quick again.
		// Settled also means the relay waits on the clock (a timer set,
		// or a message due later): a session closing in real time may
		// still give a place back, whose taker then sets its timer.
		var to time.Time
		e.waitFor(fmt.Sprintf("the relay to settle at %s with %d of %d messages at the receiver", e.clock.Now().Sub(epoch), len(stamps), n), func() bool {
			st := siteStats(lim, "rcpt.test")
			now := e.clock.Now()
			g, exhausted := 0, false
			if st.Site != "" {
				g, exhausted = granted(), next(st).After(now)
			}
			qs := e.q.Stats()
			due, anyDue := e.q.NextDue()
			idle := qs.Leased == 0 && (!anyDue || due.After(now))
			a := arrived()
			if a != g || (!exhausted && !idle) {
				return false // in flight, or a grant may still come at now
			}
			for len(stamps) < a {
				stamps = append(stamps, now)
			}
			if a >= n {
				return true
			}
			next, ok := e.clock.nextTimer()
			if anyDue && due.After(now) && (!ok || due.Before(next)) {
				next, ok = due, true
			}
			to = next
			return ok
		})
		if len(stamps) >= n {
			break
		}
		if steps++; steps > 50*n {
			e.t.Fatalf("%d steps of the clock and %d of %d messages at the receiver", steps, len(stamps), n)
		}
		e.clock.Advance(to.Sub(e.clock.Now()))
	}
	e.t.Logf("%d steps of the clock, to %s", steps, e.clock.Now().Sub(epoch))
	return stamps
}

// maxInWindow returns the most stamps (sorted) in any half-open window of
// length period.
func maxInWindow(stamps []time.Time, period time.Duration) int {
	most := 0
	for i := range stamps {
		j := i
		for j < len(stamps) && stamps[j].Sub(stamps[i]) < period {
			j++
		}
		most = max(most, j-i)
	}
	return most
}

// The measure at the receiver: however much is queued, the site
// never receives more than its maxMessagesPerMinute in any minute, and the
// relay does use the rate (a minute holds the limit, not a trickle).
func TestShapingMessageRateAtTheReceiver(t *testing.T) {
	const limit, n = 20, 45
	e, sink, lim := shapedEnvPolicy(t, testenv.SMTPSinkOptions{}, strings.Replace(testShapingPolicy, "maxMessagesPerMinute: 0", fmt.Sprintf("maxMessagesPerMinute: %d", limit), 1))
	e.start()
	stamps := receiverArrivals(e, lim, n,
		func() int { return int(siteStats(lim, "rcpt.test").MessagesGranted) },
		func() int { return sink.Stats().Messages },
		func(s shaping.SiteStats) time.Time { return s.NextMessage })
	if most := maxInWindow(stamps, time.Minute); most > limit || most < limit-1 {
		t.Fatalf("the receiver saw %d messages in one minute, want at most %d (and the rate used: at least %d); arrivals at %v", most, limit, limit-1, offsets(stamps))
	}
	if got := len(sink.Messages()); got != n {
		t.Fatalf("the receiver has %d messages, want %d", got, n)
	}
	t.Logf("arrivals at %v", offsets(stamps))
}

// The same for the rate of new connections: every message on a new
// connection (no pooling), at most maxNewConnectionsPerMinute accepted by
// the receiver in any minute.
func TestShapingConnectionRateAtTheReceiver(t *testing.T) {
	const limit, n = 10, 25
	e, sink, lim := shapedEnvPolicy(t, testenv.SMTPSinkOptions{}, strings.Replace(testShapingPolicy, "maxNewConnectionsPerMinute: 0", fmt.Sprintf("maxNewConnectionsPerMinute: %d", limit), 1))
	e.opts.IdleTimeout = -1 // no pooling: every message opens a connection
	e.start()
	stamps := receiverArrivals(e, lim, n,
		func() int { return int(siteStats(lim, "rcpt.test").ConnectionsOpened) },
		func() int { return sink.Stats().Connections },
		func(s shaping.SiteStats) time.Time { return s.NextConnection })
	if most := maxInWindow(stamps, time.Minute); most > limit || most < limit-1 {
		t.Fatalf("the receiver accepted %d connections in one minute, want at most %d (and the rate used: at least %d); at %v", most, limit, limit-1, offsets(stamps))
	}
	if got := len(sink.Messages()); got != n {
		t.Fatalf("the receiver has %d messages, want %d", got, n)
	}
}

// siteStats returns the limiter's statistics of one site.
func siteStats(lim *shaping.Limiter, site string) shaping.SiteStats {
	for _, s := range lim.Stats() {
		if s.Site == site {
			return s
		}
	}
	return shaping.SiteStats{}
}

// offsets renders stamps as offsets from the fake clock's epoch.
func offsets(stamps []time.Time) []time.Duration {
	out := make([]time.Duration, len(stamps))
	for i, s := range stamps {
		out[i] = s.Sub(epoch).Round(time.Millisecond)
	}
	return out
}
