package shaping

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Clock tells the time. delivery.Clock and a test's fake clock satisfy it;
// the limiter never sleeps or sets timers, so Now is all it needs.
type Clock interface {
	Now() time.Time
}

// Reason says why a Decision refuses.
type Reason string

const (
	// ReasonNone: granted.
	ReasonNone Reason = ""
	// ReasonSuspended: a throttle reply suspended the site until
	// Decision.Until. Delivery defers the site's messages without a
	// connection and without counting an attempt.
	ReasonSuspended Reason = "Suspended"
	// ReasonConnections: the site has MaxConnections open. Until is zero:
	// ask again once Released fires.
	ReasonConnections Reason = "Connections"
	// ReasonConnectionRate: MaxNewConnectionsPerMinute was used up; ask
	// again at Until.
	ReasonConnectionRate Reason = "ConnectionRate"
	// ReasonConnectionFull: the connection carried
	// MaxMessagesPerConnection messages; close it and acquire a new one.
	// Until is zero.
	ReasonConnectionFull Reason = "ConnectionFull"
	// ReasonMessageRate: MaxMessagesPerMinute or MaxMessagesPerHour was
	// used up; ask again at Until.
	ReasonMessageRate Reason = "MessageRate"
	// ReasonReleased: the connection was released already.
	ReasonReleased Reason = "Released"
)

// Decision is the answer to an admission: go (OK), or not now, why, and
// when asking again may succeed. The limiter never blocks: delivery
// decides whether to wait (until Until, or for Released) or to defer.
type Decision struct {
	OK     bool
	Reason Reason
	// Until is when the refusal ends (a suspension's end, a token's
	// arrival); zero when it ends with an event instead (a connection
	// released, a new connection).
	Until time.Time
	// Detail says it for people: the site, the limit and its value.
	Detail string
	// Released, on a Connections refusal, is closed at the next event
	// after which asking again may succeed (as Limiter.Released), taken
	// with the refusal: a release between the refusal and a later call of
	// Released would otherwise be missed.
	Released <-chan struct{}
}

// Limiter holds the shaping state of every site a relay delivers to: open
// connections, token buckets, suspensions and counters. It is safe for
// concurrent use; one mutex covers it, since every operation is a few
// comparisons.
type Limiter struct {
	clock Clock

	mu       sync.Mutex
	policy   *Policy
	replicas int
	sites    map[string]*siteState
}

// siteState is one site's state.
type siteState struct {
	site   Site
	rule   resolved
	limits Limits // rule.limits divided by the replicas

	open                      int
	newConns, perMin, perHr   *bucket
	until                     time.Time // suspended while now < until
	reason                    string
	level                     int       // doublings of the last suspension
	lastEnd                   time.Time // end of the last suspension
	released                  chan struct{}
	lastUsed                  time.Time
	connsOpened, granted      uint64
	deferred, throttleReplies uint64
	suspensions               uint64
	refused                   map[Reason]uint64
}

// NewLimiter returns a limiter for policy p (DefaultPolicy when nil) for
// one replica.
func NewLimiter(p *Policy, clock Clock) *Limiter {
	if p == nil {
		p = DefaultPolicy()
	}
	return &Limiter{clock: clock, policy: p, replicas: 1, sites: map[string]*siteState{}}
}

// SetPolicy applies a new policy at once: every site takes its new rule's
// limits, keeping its open connections, the tokens its buckets hold (no
// fresh burst) and a suspension under way. A site over a lowered
// MaxConnections opens no connection until enough are released.
func (l *Limiter) SetPolicy(p *Policy) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.policy = p
	now := l.clock.Now()
	for _, st := range l.sites {
		st.rule = p.resolve(p.RuleFor(st.site))
		l.applyLimits(st, now)
	}
}

// Scale divides the limits by the number of live replicas (at least 1), so
// that adding replicas does not multiply what a site receives. Every limit
// but MaxMessagesPerConnection (a property of one connection) is divided
// and rounded down, to at least 1: the fleet never exceeds a limit of at
// least as many as there are replicas, and a smaller limit becomes 1 per
// replica (so 3 replicas with maxConnections 2 hold up to 3). A limit of 0
// (none) stays 0.
func (l *Limiter) Scale(replicas int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.replicas = max(1, replicas)
	now := l.clock.Now()
	for _, st := range l.sites {
		l.applyLimits(st, now)
	}
}

func (l *Limiter) applyLimits(st *siteState, now time.Time) {
	div := func(v int) int {
		if v <= 0 {
			return 0
		}
		return max(1, v/l.replicas)
	}
	r := st.rule.limits
	st.limits = Limits{
		MaxConnections:             max(1, div(r.MaxConnections)),
		MaxMessagesPerConnection:   r.MaxMessagesPerConnection,
		MaxMessagesPerMinute:       div(r.MaxMessagesPerMinute),
		MaxMessagesPerHour:         div(r.MaxMessagesPerHour),
		MaxNewConnectionsPerMinute: div(r.MaxNewConnectionsPerMinute),
	}
	if st.perMin == nil { // a site seen for the first time: full buckets
		st.newConns = newBucket(st.limits.MaxNewConnectionsPerMinute, time.Minute, now)
		st.perMin = newBucket(st.limits.MaxMessagesPerMinute, time.Minute, now)
		st.perHr = newBucket(st.limits.MaxMessagesPerHour, time.Hour, now)
		return
	}
	st.newConns.setLimit(st.limits.MaxNewConnectionsPerMinute, now)
	st.perMin.setLimit(st.limits.MaxMessagesPerMinute, now)
	st.perHr.setLimit(st.limits.MaxMessagesPerHour, now)
	st.wake()
}

// state returns the state of site, made on first use. l.mu is held. The
// site's rule is chosen with the hosts it is first seen with (and again
// with them at SetPolicy): two MX sets with one name differ only where a
// rule matches a host suffix that one has and the other lacks, and one
// site must have one set of limits.
func (l *Limiter) state(site Site, now time.Time) *siteState {
	st, ok := l.sites[site.Name]
	if !ok {
		st = &siteState{
			site:     Site{Name: site.Name, Hosts: slices.Clone(site.Hosts)},
			rule:     l.policy.resolve(l.policy.RuleFor(site)),
			released: make(chan struct{}),
			refused:  map[Reason]uint64{},
		}
		l.applyLimits(st, now)
		l.sites[site.Name] = st
	}
	st.lastUsed = now
	return st
}

// wake tells whoever waits on Released to ask again.
func (st *siteState) wake() {
	close(st.released)
	st.released = make(chan struct{})
}

func (st *siteState) refuse(r Reason, until time.Time, format string, args ...any) Decision {
	st.refused[r]++
	return Decision{Reason: r, Until: until, Detail: "site " + st.site.Name + ": " + fmt.Sprintf(format, args...)}
}

// suspended returns the refusal of a suspended site, if it is.
func (st *siteState) suspended(now time.Time) (Decision, bool) {
	if now.Before(st.until) {
		return st.refuse(ReasonSuspended, st.until, "suspended until %s: %s", st.until.UTC().Format(time.RFC3339), st.reason), true
	}
	return Decision{}, false
}

// messageReady checks the message buckets without taking a token.
func (st *siteState) messageReady(now time.Time) (Decision, bool) {
	okM, atM := st.perMin.ready(now)
	okH, atH := st.perHr.ready(now)
	if okM && okH {
		return Decision{}, true
	}
	if !okH && (okM || atH.After(atM)) {
		return st.refuse(ReasonMessageRate, atH, "%d messages per hour reached (rule %s)", st.limits.MaxMessagesPerHour, st.rule.name), false
	}
	return st.refuse(ReasonMessageRate, atM, "%d messages per minute reached (rule %s)", st.limits.MaxMessagesPerMinute, st.rule.name), false
}

// Limits returns the limits in force for site on this replica (the
// rule's, divided by Scale): delivery lets at most MaxConnections
// transactions of the site run at once and queues the rest fairly.
func (l *Limiter) Limits(site Site) Limits {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state(site, l.clock.Now()).limits
}

// Conn is one admitted connection to a site. Delivery asks AcquireMessage
// before each transaction on it and calls Release when it closes it.
type Conn struct {
	l        *Limiter
	st       *siteState
	messages int
	released bool
}

// AcquireConn admits a new connection to site, to be asked before
// connecting: refused while the site is suspended, while it has
// MaxConnections open, while the connection rate is used up, and while no
// message could go (a connection would only idle). A granted connection
// counts as open until Release.
func (l *Limiter) AcquireConn(site Site) (*Conn, Decision) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	st := l.state(site, now)
	if d, ok := st.suspended(now); ok {
		return nil, d
	}
	if st.open >= st.limits.MaxConnections {
		d := st.refuse(ReasonConnections, time.Time{}, "%d connections open, the limit on this replica (rule %s, %d live replicas)", st.open, st.rule.name, l.replicas)
		d.Released = st.released
		return nil, d
	}
	if ok, at := st.newConns.ready(now); !ok {
		return nil, st.refuse(ReasonConnectionRate, at, "%d new connections per minute reached (rule %s)", st.limits.MaxNewConnectionsPerMinute, st.rule.name)
	}
	if d, ok := st.messageReady(now); !ok {
		return nil, d
	}
	st.newConns.take(now)
	st.open++
	st.connsOpened++
	return &Conn{l: l, st: st}, Decision{OK: true}
}

// AcquireMessage admits one more message (transaction) on the connection,
// to be asked before MAIL FROM: refused while the site is suspended, once
// the connection carried MaxMessagesPerConnection, and while the message
// rates are used up. A granted message takes a token whatever its outcome.
func (c *Conn) AcquireMessage() Decision {
	l := c.l
	l.mu.Lock()
	defer l.mu.Unlock()
	st := c.st
	if c.released {
		return Decision{Reason: ReasonReleased, Detail: "site " + st.site.Name + ": connection released"}
	}
	now := l.clock.Now()
	st.lastUsed = now
	if d, ok := st.suspended(now); ok {
		return d
	}
	if m := st.limits.MaxMessagesPerConnection; m > 0 && c.messages >= m {
		return st.refuse(ReasonConnectionFull, time.Time{}, "%d messages on this connection, the limit (rule %s)", c.messages, st.rule.name)
	}
	if d, ok := st.messageReady(now); !ok {
		return d
	}
	st.perMin.take(now)
	st.perHr.take(now)
	c.messages++
	st.granted++
	return Decision{OK: true}
}

// Release gives the connection's place back. Releasing twice is harmless.
func (c *Conn) Release() {
	l := c.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if c.released {
		return
	}
	c.released = true
	c.st.open--
	c.st.lastUsed = l.clock.Now()
	c.st.wake()
}

// Full reports whether the connection carried MaxMessagesPerConnection
// messages, so that delivery closes it after its transaction rather than
// keeping it idle for a message AcquireMessage would refuse.
func (c *Conn) Full() bool {
	l := c.l
	l.mu.Lock()
	defer l.mu.Unlock()
	m := c.st.limits.MaxMessagesPerConnection
	return m > 0 && c.messages >= m
}

// Site returns the name of the connection's site.
func (c *Conn) Site() string { return c.st.site.Name }

// Released returns a channel closed at the next event after which an
// admission to the site may succeed where it was refused: a connection
// released, a suspension begun (so waiters learn they should defer), a
// policy or replica change. A site never seen has nothing to wait for: the
// channel is closed.
func (l *Limiter) Released(site string) <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	st, ok := l.sites[site]
	if !ok {
		c := make(chan struct{})
		close(c)
		return c
	}
	return st.released
}

// Observe looks at a reply from one of site's hosts (to any command: the
// greeting, EHLO, MAIL, RCPT, DATA) and reports whether it is a throttle
// reply, one of the site's rule's throttleReplies (or the default's). The
// first one suspends the site: for the rule's initial suspension, doubled
// for each suspension that begins less than resetAfter after the last one
// ended, up to its max. Throttle replies that arrive while the site is
// suspended (other connections' answers to the same event) neither extend
// nor deepen it. A reply that is not a throttle reply changes nothing: a
// 4xx keeps its per-message retry. A success (2xx, 3xx) never is one, and
// costs nothing to observe.
func (l *Limiter) Observe(site Site, r Reply) bool {
	if r.Code != 0 && r.Code < 400 {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	st := l.state(site, now)
	var hit *ReplyPattern
	for _, p := range st.rule.patterns {
		if p.matches(r) {
			hit = p
			break
		}
	}
	if hit == nil {
		return false
	}
	st.throttleReplies++
	if now.Before(st.until) {
		return true
	}
	s := st.rule.suspension
	if !st.lastEnd.IsZero() && now.Sub(st.lastEnd) < s.resetAfter {
		if s.initial<<st.level < s.max {
			st.level++
		}
	} else {
		st.level = 0
	}
	d := min(s.initial<<st.level, s.max)
	st.until = now.Add(d)
	st.lastEnd = st.until
	st.reason = fmt.Sprintf("%q matched throttle reply %s of rule %s (suspension %s)", replyString(r), hit, st.rule.name, d)
	st.suspensions++
	st.wake()
	return true
}

func replyString(r Reply) string {
	var parts []string
	if r.Code != 0 {
		parts = append(parts, fmt.Sprint(r.Code))
	}
	for _, s := range []string{r.Enhanced, r.Text} {
		if s != "" {
			parts = append(parts, s)
		}
	}
	s := strings.Join(parts, " ")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// Suspended reports until when site is suspended and why; the zero time
// when it is not.
func (l *Limiter) Suspended(site string) (until time.Time, reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st, ok := l.sites[site]
	if !ok || !l.clock.Now().Before(st.until) {
		return time.Time{}, ""
	}
	return st.until, st.reason
}

// NoteDeferred counts n messages that delivery deferred without an attempt
// because of a refusal for site (a suspension, above all), for Stats.
func (l *Limiter) NoteDeferred(site Site, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.state(site, l.clock.Now())
	st.deferred += uint64(max(n, 0))
}

// SiteStats is a snapshot of one site's state and counters. Counters only
// grow, until Prune forgets the site.
type SiteStats struct {
	Site string
	// Rule is the name of the rule that applies.
	Rule string
	// Limits are the limits in force on this replica (divided by Scale).
	Limits Limits
	// OpenConnections are the connections admitted and not released.
	OpenConnections int
	// ConnectionsOpened and MessagesGranted count admissions.
	ConnectionsOpened uint64
	MessagesGranted   uint64
	// Refused counts refusals by reason.
	Refused map[Reason]uint64
	// DeferredWithoutAttempt counts what NoteDeferred was told.
	DeferredWithoutAttempt uint64
	// ThrottleReplies counts replies Observe recognized; Suspensions the
	// suspensions they began.
	ThrottleReplies uint64
	Suspensions     uint64
	// SuspendedUntil is the end of the suspension under way, zero if none;
	// SuspendedReason says what began it.
	SuspendedUntil  time.Time
	SuspendedReason string
	// NextMessage is when the site's message rates (per minute and per
	// hour) next allow a message, zero when they do now; NextConnection
	// the same for its rate of new connections.
	NextMessage, NextConnection time.Time
}

// Stats returns a snapshot of every site, sorted by name.
func (l *Limiter) Stats() []SiteStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	out := make([]SiteStats, 0, len(l.sites))
	for _, st := range l.sites {
		s := SiteStats{
			Site:                   st.site.Name,
			Rule:                   st.rule.name,
			Limits:                 st.limits,
			OpenConnections:        st.open,
			ConnectionsOpened:      st.connsOpened,
			MessagesGranted:        st.granted,
			Refused:                make(map[Reason]uint64, len(st.refused)),
			DeferredWithoutAttempt: st.deferred,
			ThrottleReplies:        st.throttleReplies,
			Suspensions:            st.suspensions,
		}
		for k, v := range st.refused {
			s.Refused[k] = v
		}
		if now.Before(st.until) {
			s.SuspendedUntil, s.SuspendedReason = st.until, st.reason
		}
		s.NextMessage = nextGrant(now, st.perMin, st.perHr)
		s.NextConnection = nextGrant(now, st.newConns)
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b SiteStats) int { return strings.Compare(a.Site, b.Site) })
	return out
}

// nextGrant is the latest time at which one of the buckets is next ready,
// zero when all of them are now.
func nextGrant(now time.Time, buckets ...*bucket) time.Time {
	var next time.Time
	for _, b := range buckets {
		if ok, at := b.ready(now); !ok && at.After(next) {
			next = at
		}
	}
	return next
}

// Prune forgets the sites unused for idle or longer that hold nothing: no
// open connection, no suspension under way or whose back-off could still
// grow (resetAfter not yet passed), and buckets that have refilled. Such a
// site, seen again, starts exactly as it would have continued; only its
// counters start again from zero. It returns how many it forgot.
func (l *Limiter) Prune(idle time.Duration) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	n := 0
	for name, st := range l.sites {
		if st.open > 0 || now.Sub(st.lastUsed) < idle ||
			(!st.lastEnd.IsZero() && now.Sub(st.lastEnd) < st.rule.suspension.resetAfter) ||
			st.newConns.tat.After(now) || st.perMin.tat.After(now) || st.perHr.tat.After(now) {
			continue
		}
		delete(l.sites, name)
		n++
	}
	return n
}
