// Package inflow holds new SMTP transactions back while delivery is behind
// acceptance: the relay's form of Postfix's in_flow_delay
// (docs/design.md, "In-flow backpressure"). The relay, its clients and its
// next hops share the same CPUs; without it, a burst of sessions takes the
// CPU that delivery needs, and the queue grows while the sink keeps up.
//
// Postfix's cleanup server takes a token from a pipe the queue manager
// fills, one per message it takes from the incoming queue, and sleeps the
// whole in_flow_delay when there is none. A Gate instead lets a waiting
// transaction go as soon as delivery takes a message, first come first
// served, and after Delay at the latest; and nobody waits while delivery
// keeps up. Nothing is ever refused for it.
package inflow

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultDelay is Postfix's in_flow_delay default: the longest one
// transaction waits.
const DefaultDelay = time.Second

// Options configure a Gate.
type Options struct {
	// Delay bounds one transaction's wait; 0 or less opens the gate for
	// good (nobody waits).
	Delay time.Duration
	// Bound is the backlog at or under which delivery counts as keeping
	// up: nobody waits. The relay gives it delivery's capacity, the
	// messages delivery works on at once, so that a burst that delivery
	// will take in one go is never held back.
	Bound int
	// Backlog returns how many accepted messages delivery has not taken
	// yet (queue.Queue.Untaken). It is called with and without the gate's
	// lock held, and must not call into the gate.
	Backlog func() int
	// Metrics observes the waits; nil observes nothing.
	Metrics *Metrics
}

// Gate holds transactions back while delivery is behind. A nil *Gate
// holds nobody. Its methods are safe for concurrent use.
type Gate struct {
	opts Options

	mu   sync.Mutex
	line []chan struct{} // the waiting transactions, first come first
	// waiting is len(line), changed under mu: Wait and Taken read it
	// without the lock, so that while delivery keeps up a transaction
	// costs two atomic reads and no lock.
	waiting atomic.Int64
}

// New returns a gate with opts.
func New(opts Options) *Gate {
	if opts.Backlog == nil {
		opts.Backlog = func() int { return 0 }
	}
	return &Gate{opts: opts}
}

// How a wait ended, the label "end" of MetricDelay.
const (
	EndTaken    = "taken"    // delivery took a message, or caught up
	EndTimeout  = "timeout"  // Delay passed
	EndCanceled = "canceled" // the caller's context ended
)

// Wait returns at once when delivery keeps up (a backlog at most Bound)
// and nobody waits before the caller. Otherwise the caller joins the line
// and Wait returns when delivery lets it go (see Taken), when Delay has
// passed, or when ctx ends, whichever comes first. It returns how long the
// caller waited and why it stopped ("" when it did not wait). The caller
// goes on with its transaction in every case.
func (g *Gate) Wait(ctx context.Context) (time.Duration, string) {
	if g == nil || g.opts.Delay <= 0 {
		return 0, ""
	}
	if g.waiting.Load() == 0 && g.opts.Backlog() <= g.opts.Bound {
		return 0, ""
	}
	g.mu.Lock()
	if g.opts.Backlog() <= g.opts.Bound {
		// Caught up: whoever still waits goes too, before the caller.
		g.releaseLocked(len(g.line))
		g.mu.Unlock()
		return 0, ""
	}
	ch := make(chan struct{})
	g.line = append(g.line, ch)
	g.waiting.Store(int64(len(g.line)))
	g.mu.Unlock()

	start := time.Now()
	timer := time.NewTimer(g.opts.Delay)
	defer timer.Stop()
	end := EndTaken
	select {
	case <-ch:
	case <-timer.C:
		end = EndTimeout
	case <-ctx.Done():
		end = EndCanceled
	}
	if end != EndTaken && !g.leave(ch) {
		end = EndTaken // let go at the same moment: it counts as such
	}
	waited := time.Since(start)
	g.opts.Metrics.observe(end, waited)
	return waited, end
}

// Taken tells the gate that delivery took a message: the first waiter in
// line goes, or every waiter once the backlog is back at most Bound.
//
// A take that finds nobody waiting does nothing, without the lock. One
// that races with a transaction joining the line may miss it; the next
// take, the next transaction once delivery has caught up, or the delay
// lets it go.
func (g *Gate) Taken() {
	if g == nil || g.waiting.Load() == 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 1
	if g.opts.Backlog() <= g.opts.Bound {
		n = len(g.line)
	}
	g.releaseLocked(n)
}

// Waiting returns how many transactions wait.
func (g *Gate) Waiting() int {
	if g == nil {
		return 0
	}
	return int(g.waiting.Load())
}

// releaseLocked lets the first n waiters go. The caller holds g.mu.
func (g *Gate) releaseLocked(n int) {
	n = min(n, len(g.line))
	for _, ch := range g.line[:n] {
		close(ch)
	}
	clear(g.line[:n])
	g.line = g.line[n:]
	if len(g.line) == 0 {
		g.line = nil // let the array go rather than creep along it
	}
	g.waiting.Store(int64(len(g.line)))
}

// leave takes ch out of the line; false when it was let go already.
func (g *Gate) leave(ch chan struct{}) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, c := range g.line {
		if c == ch {
			g.line = append(g.line[:i], g.line[i+1:]...)
			g.waiting.Store(int64(len(g.line)))
			return true
		}
	}
	return false
}
