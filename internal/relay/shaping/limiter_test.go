package shaping

import (
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Many goroutines acquiring connections and messages at once never hold
// more connections than the limit, never put more messages on a connection
// than its limit, and never get more messages than the buckets hold.
func TestLimitsHoldUnderConcurrentAcquirers(t *testing.T) {
	p := mustParse(t, `
default:
  maxConnections: 3
  maxMessagesPerConnection: 4
  maxMessagesPerMinute: 100
  suspension: {initial: 5m, max: 1h, resetAfter: 1h}
`)
	clock := newFakeClock()
	l := NewLimiter(p, clock)
	var (
		inUse, maxInUse, granted atomic.Int64
		wg                       sync.WaitGroup
	)
	for range 16 {
		wg.Go(func() {
			for range 200 {
				c, d := l.AcquireConn(otherSite)
				if !d.OK {
					if d.Reason != ReasonConnections && d.Reason != ReasonMessageRate {
						t.Errorf("refused for %s: %s", d.Reason, d.Detail)
						return
					}
					continue
				}
				n := inUse.Add(1)
				for {
					m := maxInUse.Load()
					if n <= m || maxInUse.CompareAndSwap(m, n) {
						break
					}
				}
				perConn := 0
				for c.AcquireMessage().OK {
					perConn++
					granted.Add(1)
				}
				if perConn > 4 {
					t.Errorf("%d messages on one connection, limit 4", perConn)
				}
				inUse.Add(-1)
				c.Release()
			}
		})
	}
	wg.Wait()
	if m := maxInUse.Load(); m > 3 {
		t.Errorf("%d connections at once, limit 3", m)
	}
	// The clock did not move: the burst of 100 per minute is 10.
	if g := granted.Load(); g != 10 {
		t.Errorf("%d messages granted with a still clock, want the burst of 10", g)
	}
	st := l.Stats()[0]
	if st.OpenConnections != 0 || st.MessagesGranted != 10 {
		t.Errorf("stats %+v", st)
	}

	// Time moving while they race: the total stays within the bucket's
	// bound (no window of a minute over 100).
	// A grant's time is read while the clock cannot move (ticking holds
	// the write lock, a grant and its record the read lock): reading it
	// after the grant without that would record a later time than the one
	// the limiter decided at, and fail on a loaded machine.
	var stop atomic.Bool
	var mu sync.Mutex
	var ticking sync.RWMutex
	var times []time.Time
	for range 8 {
		wg.Go(func() {
			for !stop.Load() {
				c, d := l.AcquireConn(otherSite)
				if !d.OK {
					runtime.Gosched()
					continue
				}
				for {
					ticking.RLock()
					ok := c.AcquireMessage().OK
					if ok {
						mu.Lock()
						times = append(times, clock.Now())
						mu.Unlock()
					}
					ticking.RUnlock()
					if !ok {
						break
					}
				}
				c.Release()
			}
		})
	}
	// Five minutes in steps of 100 ms, and on until the workers have had
	// some grants, however loaded the machine.
	for i := 0; ; i++ {
		ticking.Lock()
		clock.Add(100 * time.Millisecond)
		ticking.Unlock()
		runtime.Gosched()
		mu.Lock()
		n := len(times)
		mu.Unlock()
		if i >= 3000 && n >= 100 {
			break
		}
	}
	stop.Store(true)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	for i, g := range times {
		in := 0
		for _, h := range times[i:] {
			if h.Before(g.Add(time.Minute)) {
				in++
			}
		}
		if in > 100 {
			t.Fatalf("%d messages in the minute from %v, limit 100", in, g)
		}
	}
}

func TestConnectionLimits(t *testing.T) {
	p := mustParse(t, `
default:
  maxConnections: 2
  maxMessagesPerConnection: 2
  maxNewConnectionsPerMinute: 2
  suspension: {initial: 5m, max: 1h, resetAfter: 1h}
`)
	clock := newFakeClock()
	l := NewLimiter(p, clock)
	c1, d := l.AcquireConn(otherSite)
	if !d.OK {
		t.Fatalf("first connection: %+v", d)
	}
	// 2 per minute: a burst of 1, one more every 30 s.
	_, d = l.AcquireConn(otherSite)
	if d.OK || d.Reason != ReasonConnectionRate || !d.Until.Equal(clock.Now().Add(30*time.Second)) {
		t.Fatalf("second connection at once: %+v, want ConnectionRate until +30s", d)
	}
	clock.Set(d.Until)
	c2, d := l.AcquireConn(otherSite)
	if !d.OK {
		t.Fatalf("second connection after 30s: %+v", d)
	}
	clock.Add(time.Hour)
	_, d = l.AcquireConn(otherSite)
	if d.OK || d.Reason != ReasonConnections || !d.Until.IsZero() || !strings.Contains(d.Detail, "2 connections open") {
		t.Fatalf("third connection: %+v, want Connections", d)
	}
	released := l.Released(otherSite.Name)
	c1.Release()
	select {
	case <-released:
	default:
		t.Fatal("Released did not fire on Release")
	}
	c1.Release() // twice: harmless
	if d := c1.AcquireMessage(); d.OK || d.Reason != ReasonReleased {
		t.Fatalf("message on a released connection: %+v", d)
	}
	c3, d := l.AcquireConn(otherSite)
	if !d.OK {
		t.Fatalf("connection after a release: %+v", d)
	}
	for i := range 2 {
		if d := c2.AcquireMessage(); !d.OK {
			t.Fatalf("message %d: %+v", i+1, d)
		}
	}
	if d := c2.AcquireMessage(); d.OK || d.Reason != ReasonConnectionFull {
		t.Fatalf("third message on a connection of 2: %+v", d)
	}
	if d := c3.AcquireMessage(); !d.OK {
		t.Fatalf("another connection's message: %+v", d)
	}
	if got := l.Stats()[0].OpenConnections; got != 2 {
		t.Fatalf("open connections %d, want 2", got)
	}
}

// No connection is opened while no message could go on it.
func TestAcquireConnWaitsForMessageRate(t *testing.T) {
	p := mustParse(t, `
default:
  maxConnections: 5
  maxMessagesPerMinute: 1
  maxMessagesPerHour: 20
  suspension: {initial: 5m, max: 1h, resetAfter: 1h}
`)
	clock := newFakeClock()
	t0 := clock.Now()
	l := NewLimiter(p, clock)
	c, _ := l.AcquireConn(otherSite)
	if d := c.AcquireMessage(); !d.OK {
		t.Fatalf("first message: %+v", d)
	}
	_, d := l.AcquireConn(otherSite)
	if d.OK || d.Reason != ReasonMessageRate || !d.Until.Equal(t0.Add(time.Minute)) || !strings.Contains(d.Detail, "per minute") {
		t.Fatalf("connection with no message token: %+v", d)
	}
	clock.Set(d.Until)
	if d := c.AcquireMessage(); !d.OK {
		t.Fatalf("second message a minute later: %+v", d)
	}
	// 20 per hour is a burst of 2 and a token every ceil(1h/19): the
	// third message a minute later finds the hourly bucket empty, and it
	// decides: the token the first message took comes back at t0+interval.
	clock.Add(time.Minute)
	d = c.AcquireMessage()
	interval := (time.Hour + 18) / 19
	if want := t0.Add(interval); d.OK || d.Reason != ReasonMessageRate || !strings.Contains(d.Detail, "20 messages per hour") || !d.Until.Equal(want) {
		t.Fatalf("third message: %+v, want MessageRate per hour until %v", d, want)
	}
}

func TestSuspendAndResume(t *testing.T) {
	clock := newFakeClock()
	l := NewLimiter(DefaultPolicy(), clock)
	c, d := l.AcquireConn(googleSite)
	if !d.OK {
		t.Fatal(d)
	}
	waiting := l.Released(googleSite.Name)
	throttle := Reply{421, "4.7.28", "Our system has detected an unusual rate of unsolicited mail originating from your IP address. - gsmtp"}
	if !l.Observe(googleSite, throttle) {
		t.Fatal("421 4.7.28 not a throttle reply")
	}
	select {
	case <-waiting:
	default:
		t.Fatal("waiters not woken by the suspension")
	}
	until, reason := l.Suspended(googleSite.Name)
	if want := clock.Now().Add(5 * time.Minute); !until.Equal(want) || !strings.Contains(reason, "4.7.28") || !strings.Contains(reason, "rule google") {
		t.Fatalf("Suspended: %v %q, want until %v", until, reason, want)
	}
	// An open connection stops too, and no new one opens.
	if d := c.AcquireMessage(); d.OK || d.Reason != ReasonSuspended || !d.Until.Equal(until) {
		t.Fatalf("message on an open connection: %+v", d)
	}
	c.Release()
	if _, d := l.AcquireConn(googleSite); d.OK || d.Reason != ReasonSuspended || !d.Until.Equal(until) {
		t.Fatalf("new connection: %+v", d)
	}
	// Other sites go on.
	if _, d := l.AcquireConn(yahooSite); !d.OK {
		t.Fatalf("another site: %+v", d)
	}
	l.NoteDeferred(googleSite, 3)
	clock.Set(until)
	if until, _ := l.Suspended(googleSite.Name); !until.IsZero() {
		t.Fatal("still suspended at the end")
	}
	c, d = l.AcquireConn(googleSite)
	if !d.OK || !c.AcquireMessage().OK {
		t.Fatalf("after the suspension: %+v", d)
	}
	st := l.Stats()
	g := st[0]
	if g.Site != "google.com" || g.Suspensions != 1 || g.ThrottleReplies != 1 || g.DeferredWithoutAttempt != 3 ||
		g.Refused[ReasonSuspended] != 2 || g.ConnectionsOpened != 2 || g.MessagesGranted != 1 || g.Rule != "google" {
		t.Fatalf("stats %+v", g)
	}
}

// Back-off: 5m, doubling while throttles come within an hour of the last
// suspension's end, up to 2h; after an hour's quiet, 5m again.
func TestBackoffGrowsAndResets(t *testing.T) {
	clock := newFakeClock()
	l := NewLimiter(DefaultPolicy(), clock)
	throttle := Reply{421, "", "Too many connections"}
	suspend := func() time.Duration {
		t.Helper()
		if !l.Observe(otherSite, throttle) {
			t.Fatal("not a throttle")
		}
		until, _ := l.Suspended(otherSite.Name)
		return until.Sub(clock.Now())
	}
	for i, want := range []time.Duration{5 * time.Minute, 10 * time.Minute, 20 * time.Minute, 40 * time.Minute, 80 * time.Minute, 2 * time.Hour, 2 * time.Hour} {
		if got := suspend(); got != want {
			t.Fatalf("suspension %d: %v, want %v", i+1, got, want)
		}
		until, _ := l.Suspended(otherSite.Name)
		// Throttles while suspended (other connections' replies) change
		// nothing.
		clock.Add(time.Minute)
		if !l.Observe(otherSite, throttle) {
			t.Fatal("a throttle while suspended not recognized")
		}
		if u, _ := l.Suspended(otherSite.Name); !u.Equal(until) {
			t.Fatalf("a throttle while suspended moved the end from %v to %v", until, u)
		}
		clock.Set(until.Add(59 * time.Minute)) // within resetAfter
	}
	clock.Add(time.Minute) // an hour after the end: quiet
	if got := suspend(); got != 5*time.Minute {
		t.Fatalf("after an hour's quiet: %v, want 5m again", got)
	}
	if st := l.Stats()[0]; st.Suspensions != 8 || st.ThrottleReplies != 15 {
		t.Fatalf("stats %+v", st)
	}
}

// A 4xx that is not a throttle reply leaves the site alone: the message
// keeps its own retry.
func TestNonThrottleReplyDoesNotSuspend(t *testing.T) {
	clock := newFakeClock()
	l := NewLimiter(DefaultPolicy(), clock)
	for _, r := range []Reply{
		{450, "4.2.1", "The user you are trying to contact is receiving mail too quickly. - gsmtp"},
		{451, "4.7.1", "Greylisted, try again in 5 minutes"},
		{452, "4.2.2", "The email account that you tried to reach is over quota."},
		{421, "4.3.0", "Temporary System Problem. Try again later."},
		{250, "2.0.0", "OK, but you are being rate limited"},
	} {
		if l.Observe(googleSite, r) {
			t.Errorf("%v taken for a throttle", r)
		}
	}
	if until, _ := l.Suspended(googleSite.Name); !until.IsZero() {
		t.Fatal("suspended")
	}
	if _, d := l.AcquireConn(googleSite); !d.OK {
		t.Fatal(d)
	}
}

// Limits are per replica: divided by the live replicas, rounded down, at
// least 1; no limit stays none; messages per connection stay.
func TestScale(t *testing.T) {
	p := mustParse(t, `
default:
  maxConnections: 10
  maxMessagesPerConnection: 100
  maxMessagesPerMinute: 600
  maxMessagesPerHour: 0
  maxNewConnectionsPerMinute: 100
  suspension: {initial: 5m, max: 1h, resetAfter: 1h}
sites:
  - name: small
    match: {sites: [example.org]}
    maxConnections: 2
    maxMessagesPerMinute: 5
`)
	clock := newFakeClock()
	l := NewLimiter(p, clock)
	l.AcquireConn(googleSite)
	l.AcquireConn(otherSite)
	for _, tc := range []struct {
		replicas     int
		other, small Limits
	}{
		{1, Limits{10, 100, 600, 0, 100}, Limits{2, 100, 5, 0, 100}},
		{3, Limits{3, 100, 200, 0, 33}, Limits{1, 100, 1, 0, 33}},
		{20, Limits{1, 100, 30, 0, 5}, Limits{1, 100, 1, 0, 5}},
		{0, Limits{10, 100, 600, 0, 100}, Limits{2, 100, 5, 0, 100}},
	} {
		l.Scale(tc.replicas)
		st := l.Stats()
		if st[0].Limits != tc.small || st[1].Limits != tc.other {
			t.Errorf("%d replicas: %s %+v, %s %+v; want %+v, %+v", tc.replicas, st[0].Site, st[0].Limits, st[1].Site, st[1].Limits, tc.small, tc.other)
		}
	}
	// A site first seen after Scale gets divided limits too.
	l.Scale(2)
	l.AcquireConn(yahooSite)
	for _, s := range l.Stats() {
		if s.Site == "yahoodns.net" && s.Limits.MaxConnections != 5 {
			t.Errorf("new site after Scale(2): %+v", s.Limits)
		}
	}
}

// A new policy applies at once, to sites already known.
func TestSetPolicy(t *testing.T) {
	clock := newFakeClock()
	l := NewLimiter(DefaultPolicy(), clock)
	var conns []*Conn
	for range 3 {
		c, d := l.AcquireConn(otherSite)
		if !d.OK {
			t.Fatal(d)
		}
		conns = append(conns, c)
	}
	released := l.Released(otherSite.Name)
	l.SetPolicy(mustParse(t, `
default:
  maxConnections: 1
  suspension: {initial: 1m, max: 1h, resetAfter: 1h}
sites:
  - name: example
    match: {sites: [example.org]}
    maxConnections: 2
`))
	select {
	case <-released:
	default:
		t.Fatal("waiters not woken by a policy change")
	}
	if _, d := l.AcquireConn(otherSite); d.OK || d.Reason != ReasonConnections || !strings.Contains(d.Detail, "rule example") {
		t.Fatalf("3 open, new limit 2: %+v", d)
	}
	conns[0].Release()
	if _, d := l.AcquireConn(otherSite); d.OK {
		t.Fatal("2 open, limit 2: granted")
	}
	conns[1].Release()
	if _, d := l.AcquireConn(otherSite); !d.OK {
		t.Fatalf("1 open, limit 2: %+v", d)
	}
	// The new default's suspension applies.
	l.Observe(otherSite, Reply{421, "", "rate limited"})
	if until, _ := l.Suspended(otherSite.Name); !until.IsZero() {
		t.Fatal("the old policy's throttle pattern still applies")
	}
}

func TestPrune(t *testing.T) {
	clock := newFakeClock()
	l := NewLimiter(DefaultPolicy(), clock)
	c, _ := l.AcquireConn(googleSite)
	c.AcquireMessage()
	c2, _ := l.AcquireConn(otherSite)
	l.Observe(yahooSite, Reply{421, "4.7.0", "[TSS04] Messages from 192.0.2.1 temporarily deferred"})
	clock.Add(2 * time.Minute)
	if n := l.Prune(time.Minute); n != 0 {
		t.Fatalf("pruned %d sites in use or suspended", n)
	}
	c.Release()
	c2.Release()
	clock.Add(2 * time.Minute)
	if n := l.Prune(time.Minute); n != 2 {
		t.Fatalf("pruned %d, want the 2 idle sites", n)
	}
	if st := l.Stats(); len(st) != 1 || st[0].Site != "yahoodns.net" {
		t.Fatalf("left %+v, want the suspended site", st)
	}
	if c := l.Released("google.com"); c == nil {
		t.Fatal("nil channel")
	} else {
		<-c // closed: nothing to wait for
	}
}

// Full says a connection carried its MaxMessagesPerConnection, before the
// next AcquireMessage would refuse it.
func TestConnFull(t *testing.T) {
	l := NewLimiter(mustParse(t, `
default:
  maxConnections: 1
  maxMessagesPerConnection: 2
  suspension: {initial: 5m, max: 1h, resetAfter: 1h}
`), newFakeClock())
	c, d := l.AcquireConn(googleSite)
	if !d.OK {
		t.Fatal(d)
	}
	for i := range 2 {
		if c.Full() {
			t.Fatalf("full after %d messages of 2", i)
		}
		if d := c.AcquireMessage(); !d.OK {
			t.Fatal(d)
		}
	}
	if !c.Full() {
		t.Fatal("not full after 2 messages of 2")
	}
	if d := c.AcquireMessage(); d.Reason != ReasonConnectionFull {
		t.Fatalf("third message: %+v, want ConnectionFull", d)
	}
}
