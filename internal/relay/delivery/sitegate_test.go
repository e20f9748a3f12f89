package delivery

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// gateTest runs enter calls in goroutines of a synctest bubble and
// records the order in which they get a slot.
type gateTest struct {
	t        *testing.T
	g        *siteGates
	clock    *fakeClock
	mu       sync.Mutex
	granted  []string
	releases map[string]func()
}

// newGateTest returns gates for a worker of the given capacity: until a
// site's pace is measured, half of it may wait at one site.
func newGateTest(t *testing.T, capacity int) *gateTest {
	c := newFakeClock()
	return &gateTest{t: t, g: newSiteGates(c, capacity), clock: c, releases: map[string]func(){}}
}

// enter starts name's enter of site as sender and returns once it has a
// slot or waits for one (synctest.Wait: every goroutine blocked).
func (gt *gateTest) enter(ctx context.Context, sender, name string, limit int) {
	go func() {
		release, overflow, err := gt.g.enter(ctx, "site.test", teamOf(sender), sender, limit)
		gt.mu.Lock()
		defer gt.mu.Unlock()
		switch {
		case err != nil:
			gt.granted = append(gt.granted, name+": "+err.Error())
		case release == nil:
			gt.granted = append(gt.granted, name+": overflow "+overflow.Sub(gt.clock.Now()).String())
		default:
			gt.granted = append(gt.granted, name)
			gt.releases[name] = release
		}
	}()
	synctest.Wait()
}

// release ends name's slot and lets the next waiter take it.
func (gt *gateTest) release(name string) {
	gt.t.Helper()
	gt.mu.Lock()
	r := gt.releases[name]
	if r == nil {
		gt.t.Fatalf("%s holds no slot (granted so far: %v)", name, gt.granted)
	}
	delete(gt.releases, name)
	gt.mu.Unlock()
	r()
	synctest.Wait()
}

func (gt *gateTest) want(want ...string) {
	gt.t.Helper()
	gt.mu.Lock()
	defer gt.mu.Unlock()
	if !slices.Equal(gt.granted, want) {
		gt.t.Fatalf("granted %q, want %q", gt.granted, want)
	}
}

// A site's slots go round-robin between senders: a sender who comes after
// another's queue of waiters is served second, not last.
func TestSiteGateTakesTurns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		gt := newGateTest(t, 100)
		ctx := t.Context()
		gt.enter(ctx, "a.test", "a0", 1) // the one slot
		for _, n := range []string{"a1", "a2", "a3"} {
			gt.enter(ctx, "a.test", n, 1)
		}
		gt.enter(ctx, "b.test", "b1", 1)
		gt.enter(ctx, "b.test", "b2", 1)
		gt.want("a0")
		gt.release("a0")
		gt.release("a1")
		gt.release("b1")
		gt.release("a2")
		gt.release("b2")
		gt.release("a3")
		gt.want("a0", "a1", "b1", "a2", "b2", "a3")
		if n := len(gt.g.gates); n != 0 {
			t.Errorf("%d gates left with nothing under way", n)
		}
	})
}

// A sender with its share of the site's waiting places gets a deferral,
// at least overflowMin ahead and each later than the last, spreading the
// backlog; a sender that comes later gets an equal share, even past the
// site's bound, and slots then go in turns.
func TestSiteGateOverflow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		gt := newGateTest(t, 20) // 10 places before the site's pace is known
		ctx := t.Context()
		gt.enter(ctx, "a.test", "held", 1)
		for i := range 10 {
			gt.enter(ctx, "a.test", "a"+string(rune('0'+i)), 1)
		}
		// The site takes one transaction every 100 ms: A's next message
		// comes after its 10 waiters, then each after the one before.
		gt.g.mu.Lock()
		gt.g.gates["site.test"].turn = 100 * time.Millisecond
		gt.g.mu.Unlock()
		snooze := func() time.Duration {
			t.Helper()
			release, until, err := gt.g.enter(ctx, "site.test", "", "a.test", 1)
			if release != nil || err != nil {
				t.Fatalf("sender A beyond its share: release %v, err %v; want a deferral", release != nil, err)
			}
			return until.Sub(gt.clock.Now())
		}
		for i := range 3 {
			if got, want := snooze(), time.Duration(11+i)*100*time.Millisecond; got != want {
				t.Fatalf("overflow message %d of A snoozed for %s, want %s", i, got, want)
			}
		}
		// Once the first turn has come, a message takes its place behind
		// what is still ahead (the 10 waiters, the 2 turns to come), counted
		// from now: not after the last turn given, which a misjudged pace
		// would push ever further.
		gt.clock.Advance(1150 * time.Millisecond)
		if got, want := snooze(), 13*100*time.Millisecond; got != want {
			t.Fatalf("after the first turns came, snoozed for %s, want %s", got, want)
		}
		for i := range 5 { // half of the 10 places
			gt.enter(ctx, "b.test", "b"+string(rune('0'+i)), 1)
		}
		if release, _, _ := gt.g.enter(ctx, "site.test", "", "b.test", 1); release != nil {
			t.Fatal("sender B waits beyond its share")
		}
		gt.enter(ctx, "c.test", "c0", 1)
		if got := countWaiting(gt.g); got != 16 {
			t.Fatalf("%d waiting, want 10 of A, 5 of B and 1 of C", got)
		}
		gt.release("held")
		gt.release("a0")
		gt.release("b0")
		gt.release("c0")
		gt.want("held", "a0", "b0", "c0", "a1")
	})
}

// A waiter whose attempt ends leaves the queue; a slot never gets lost,
// and a raised limit admits waiters at once.
func TestSiteGateCancelAndLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		gt := newGateTest(t, 100)
		ctx := t.Context()
		gt.enter(ctx, "a.test", "a0", 1)
		cctx, cancel := context.WithCancel(ctx)
		gt.enter(cctx, "a.test", "gone", 1)
		gt.enter(ctx, "b.test", "b1", 1)
		gt.enter(ctx, "b.test", "b2", 1)
		cancel()
		synctest.Wait()
		gt.want("a0", "gone: context canceled")
		gt.release("a0")
		gt.want("a0", "gone: context canceled", "b1")
		// The limit goes up to 3: the next enter admits the waiter, then
		// itself (the two goroutines may record it in either order).
		gt.enter(ctx, "c.test", "c1", 3)
		gt.mu.Lock()
		last := slices.Sorted(slices.Values(gt.granted[3:]))
		gt.mu.Unlock()
		if !slices.Equal(last, []string{"b2", "c1"}) {
			t.Fatalf("after the limit went up, granted %q, want b2 and c1", last)
		}
		gt.release("b1")
		gt.release("b2")
		gt.release("c1")
		if n := len(gt.g.gates); n != 0 {
			t.Errorf("%d gates left with nothing under way", n)
		}
	})
}

func countWaiting(g *siteGates) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if gate := g.gates["site.test"]; gate != nil {
		return gate.total
	}
	return 0
}

// A site's waiting places follow its pace: about a second of its work,
// at least a quarter of the worker's capacity, at most all of it but the
// site's own slots; half before the pace is known.
func TestSiteGateBound(t *testing.T) {
	g := newSiteGates(newFakeClock(), 100)
	for _, c := range []struct {
		turn time.Duration
		want int
	}{
		{0, 50},
		{time.Millisecond, 80},
		{20 * time.Millisecond, 50},
		{time.Second, 25},
	} {
		if got := g.bound(&siteGate{limit: 20, turn: c.turn}); got != c.want {
			t.Errorf("turn %s: bound %d, want %d", c.turn, got, c.want)
		}
	}
}

// teamOf is the test's team of a sender: the part before the first dot
// after "team-" ("team-x.a.test" is of team x); senders without one have
// none (each sender domain its own share, as without SenderDomains).
func teamOf(sender string) string {
	if rest, ok := strings.CutPrefix(sender, "team-"); ok {
		team, _, _ := strings.Cut(rest, ".")
		return team
	}
	return ""
}

// Turns go round-robin between teams, then between a team's senders: team
// x with two sender domains gets one share, not two, and its two domains
// take turns within it.
func TestSiteGateTeams(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		gt := newGateTest(t, 100)
		ctx := t.Context()
		gt.enter(ctx, "team-x.bulk.test", "held", 1)
		for _, n := range []string{"xb1", "xb2", "xb3"} {
			gt.enter(ctx, "team-x.bulk.test", n, 1)
		}
		gt.enter(ctx, "team-x.reset.test", "xr1", 1)
		gt.enter(ctx, "team-y.app.test", "y1", 1)
		gt.enter(ctx, "team-y.app.test", "y2", 1)
		for _, n := range []string{"held", "xb1", "y1", "xr1", "y2", "xb2"} {
			gt.release(n)
		}
		gt.want("held", "xb1", "y1", "xr1", "y2", "xb2", "xb3")
	})
}
