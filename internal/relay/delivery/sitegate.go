package delivery

// The site gate: the second layer of fairness (docs/design.md, "Traffic
// shaping", "Fairness"). The queue's Due takes turns between senders for
// the worker's leases; the gate takes turns between them for a shaped
// site's capacity, so that a bulk sender's thousand messages to one
// provider wait behind, not in front of, another sender's password reset
// to the same provider.

import (
	"container/heap"
	"context"
	"sync"
	"time"

	"github.com/postgate/postgate/internal/relay/shaping"
)

const (
	// overflowMin and overflowMax bound how far ahead a sender's message
	// beyond its share of a site's waiters is deferred: at least a
	// quarter of a second (no spinning through the journal), at most a
	// quarter of an hour (a wrong estimate costs at most that).
	overflowMin = 250 * time.Millisecond
	overflowMax = 15 * time.Minute
	// defaultTurn is the time between two transactions of a site assumed
	// before one has been measured. Short on purpose: a backlog leased
	// before the first transaction ends is spread with it, and too short
	// a turn costs a message one more deferral, too long a turn leaves
	// the site idle while its mail waits (1 s spread 100 messages over
	// 100 s at a site taking one every 2 ms).
	defaultTurn = 10 * time.Millisecond
)

// siteGates holds one gate per shaped site with transactions under way or
// waiting. A gate lets at most the site's MaxConnections transactions run
// at once (one connection carries one at a time, so more could only wait
// inside the shaping limiter, in no order); the others wait their turn
// round-robin by team (the SenderDomain's namespace), and within a team by
// sender (teamQueue), each sender with at most an
// equal share of the site's waiting places (share) and the site with at
// most bound of them, so that one site's backlog cannot hold every lease
// of the worker. A message beyond that is snoozed (queue.Lease.Snooze) to
// the time its sender's turn is expected (overflow), which spreads a
// backlog over the time the site needs to take it.
type siteGates struct {
	clock Clock
	// capacity is how many messages the worker delivers at once
	// (Options.MaxMessages): the leases the sites' waiters share.
	capacity int

	mu    sync.Mutex
	gates map[string]*siteGate
}

type siteGate struct {
	limit   int // the site's MaxConnections, as last asked
	active  int // transactions admitted and not yet released
	waiting *teamQueue
	// waiters counts the waiters of each sender that are still waiting.
	waiters map[string]int
	total   int
	// turn is the measured time between two releases while transactions
	// waited (an exponentially weighted mean), lastRelease the last one.
	turn        time.Duration
	lastRelease time.Time
	// snoozed holds, per sender, the turns given to its overflow
	// messages that have not come yet (a min-heap of times).
	snoozed map[string]*timeHeap
}

type gateWaiter struct {
	sender  string
	ready   chan struct{}
	granted bool // a slot was handed over (under siteGates.mu)
	gone    bool // stopped waiting (under siteGates.mu)
}

// share is how many of sender's transactions may wait at gate: an equal
// share of the site's waiting places (bound) between the senders waiting,
// sender counted, and at least one, so a newcomer is never turned away by
// another sender's backlog. A sender over its share (it had the places to
// itself before another came) keeps what waits; its next messages are
// snoozed until the others' places are taken in turn.
func (g *siteGates) share(gate *siteGate, sender string) int {
	senders := len(gate.waiters)
	if gate.waiters[sender] == 0 {
		senders++
	}
	return max(1, g.bound(gate)/senders)
}

// bound is how many transactions may wait at gate: about a second of the
// site's work, as measured (a fast site keeps its waiters and spares the
// worker leasing and snoozing them again: at 100 KB x 50 sessions to one
// site, a fixed half of the leases cost a tenth of the rate), between a
// quarter of the worker's capacity (a slow site keeps most leases free for
// the others) and all of it but the site's own slots; half of it before
// the site's pace is known. Senders coming to a site at its bound still
// get their share, up to all the leases but the site's slots.
func (g *siteGates) bound(gate *siteGate) int {
	if gate.turn <= 0 {
		return max(1, g.capacity/2)
	}
	return max(1, g.capacity/4, min(g.capacity-gate.limit, int(time.Second/gate.turn)))
}

func newSiteGates(clock Clock, capacity int) *siteGates {
	return &siteGates{clock: clock, capacity: max(1, capacity), gates: map[string]*siteGate{}}
}

// enter waits for a turn of sender (of team) at site, whose limit is the
// site's MaxConnections now. It returns the release of the slot, or, when the
// sender already has its share waiting, the time until which the message
// is to be snoozed (release nil). It returns ctx's error
// when the attempt ends first.
func (g *siteGates) enter(ctx context.Context, site, team, sender string, limit int) (release func(), overflow time.Time, err error) {
	limit = max(1, limit)
	g.mu.Lock()
	gate := g.gates[site]
	if gate == nil {
		gate = &siteGate{waiting: newTeamQueue(), waiters: map[string]int{}, snoozed: map[string]*timeHeap{}}
		g.gates[site] = gate
	}
	gate.limit = limit
	gate.admit()
	if gate.active < limit && gate.total == 0 {
		gate.active++
		g.mu.Unlock()
		return g.releaser(site, gate), time.Time{}, nil
	}
	if gate.waiters[sender] >= g.share(gate, sender) || gate.total >= max(1, g.capacity-limit) {
		until := gate.overflow(sender, g.clock.Now())
		g.mu.Unlock()
		return nil, until, nil
	}
	w := &gateWaiter{sender: sender, ready: make(chan struct{})}
	gate.waiting.push(team, sender, w)
	gate.waiters[sender]++
	gate.total++
	g.mu.Unlock()

	select {
	case <-w.ready:
		return g.releaser(site, gate), time.Time{}, nil
	case <-ctx.Done():
	}
	g.mu.Lock()
	if w.granted {
		// The slot came as the attempt ended: pass it on.
		g.mu.Unlock()
		g.releaser(site, gate)()
		return nil, time.Time{}, ctx.Err()
	}
	w.gone = true
	gate.leave(sender)
	g.forget(site, gate, g.clock.Now())
	g.mu.Unlock()
	return nil, time.Time{}, ctx.Err()
}

// releaser returns the release of one slot of gate, harmless to call twice.
func (g *siteGates) releaser(site string, gate *siteGate) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			now := g.clock.Now()
			if gate.total > 0 && !gate.lastRelease.IsZero() {
				// The site is the bottleneck: measure its pace.
				d := now.Sub(gate.lastRelease)
				if gate.turn == 0 {
					gate.turn = d
				} else {
					gate.turn += (d - gate.turn) / 8
				}
			}
			gate.lastRelease = now
			gate.active--
			gate.admit()
			g.forget(site, gate, now)
		})
	}
}

// admit hands free slots to waiters in turn. g.mu is held.
func (gate *siteGate) admit() {
	for gate.active < gate.limit {
		w, ok := gate.waiting.next()
		if !ok {
			return
		}
		if w.gone {
			continue
		}
		w.granted = true
		gate.leave(w.sender)
		gate.active++
		close(w.ready)
	}
}

// leave counts a waiter of sender out. g.mu is held.
func (gate *siteGate) leave(sender string) {
	gate.total--
	if gate.waiters[sender]--; gate.waiters[sender] <= 0 {
		delete(gate.waiters, sender)
	}
}

// overflow returns when an overflow message of sender is expected to have
// its turn: after the sender's waiters and its overflow messages whose
// turn has not come yet, each a round of every sender waiting away. The
// position, not the last turn given, decides: a message back too early
// (the pace was misjudged) is placed behind what is really ahead of it,
// not behind every turn given so far. g.mu is held.
func (gate *siteGate) overflow(sender string, now time.Time) time.Time {
	turn := gate.turn
	if turn <= 0 {
		turn = defaultTurn
	}
	round := turn * time.Duration(max(1, len(gate.waiters)))
	h := gate.snoozed[sender]
	if h == nil {
		h = &timeHeap{}
		gate.snoozed[sender] = h
	}
	h.pruneTo(now)
	t := now.Add(round * time.Duration(gate.waiters[sender]+h.Len()+1))
	if lo := now.Add(overflowMin); t.Before(lo) {
		t = lo
	}
	if hi := now.Add(overflowMax); t.After(hi) {
		t = hi
	}
	heap.Push(h, t)
	return t
}

// forget drops the overflow turns that have passed (they say nothing any
// more), and the gate when nothing is under way, waiting or expected.
// g.mu is held.
func (g *siteGates) forget(site string, gate *siteGate, now time.Time) {
	for s, h := range gate.snoozed {
		if h.pruneTo(now); h.Len() == 0 {
			delete(gate.snoozed, s)
		}
	}
	if gate.active == 0 && gate.total == 0 && len(gate.snoozed) == 0 && g.gates[site] == gate {
		delete(g.gates, site)
	}
}

// timeHeap is a min-heap of times (container/heap).
type timeHeap []time.Time

func (h timeHeap) Len() int           { return len(h) }
func (h timeHeap) Less(i, j int) bool { return h[i].Before(h[j]) }
func (h timeHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *timeHeap) Push(x any)        { *h = append(*h, x.(time.Time)) } //nolint:forcetypeassert // only times are pushed
func (h *timeHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	*h = old[:len(old)-1]
	return t
}

// pruneTo drops the times at or before now: those turns have come.
func (h *timeHeap) pruneTo(now time.Time) {
	for h.Len() > 0 && !(*h)[0].After(now) {
		heap.Pop(h)
	}
}

// teamQueue takes waiters round-robin by team, and within a team
// round-robin by sender (two shaping.FairQueues): a team's turn goes to
// its senders in turn, so a team with ten sender domains gets one share of
// the site, not ten, and its own bulk domain cannot hold back its other
// domains' mail either. The outer queue holds one token per waiter, so the
// two always agree on how many wait.
type teamQueue struct {
	teams   *shaping.FairQueue[struct{}]
	senders map[string]*shaping.FairQueue[*gateWaiter]
}

func newTeamQueue() *teamQueue {
	return &teamQueue{teams: shaping.NewFairQueue[struct{}](), senders: map[string]*shaping.FairQueue[*gateWaiter]{}}
}

func (q *teamQueue) push(team, sender string, w *gateWaiter) {
	in := q.senders[team]
	if in == nil {
		in = shaping.NewFairQueue[*gateWaiter]()
		q.senders[team] = in
	}
	in.Push(sender, w)
	q.teams.Push(team, struct{}{})
}

// next takes the next waiter in turn; ok is false when none waits.
func (q *teamQueue) next() (w *gateWaiter, ok bool) {
	team, _, ok := q.teams.Next()
	if !ok {
		return nil, false
	}
	in := q.senders[team]
	_, w, _ = in.Next()
	if in.Len() == 0 {
		delete(q.senders, team)
	}
	return w, true
}
