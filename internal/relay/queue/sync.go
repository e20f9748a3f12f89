package queue

import "sync"

// groupSync makes directory changes durable with as few directory fsyncs as
// possible: callers that arrive while an fsync runs wait for it and then
// share the next one, whose leader is whichever of them gets there first.
// No goroutine of its own, so nothing to start or stop; under load the
// batch grows to everyone who arrived during one fsync.
type groupSync struct {
	sync func() error

	mu      sync.Mutex
	cond    sync.Cond
	running bool
	pending *syncBatch // the batch that the next fsync will cover
}

type syncBatch struct {
	done bool
	err  error
}

func newGroupSync(sync func() error) *groupSync {
	g := &groupSync{sync: sync}
	g.cond.L = &g.mu
	return g
}

// wait returns once a directory fsync that started after the call has
// finished, with that fsync's error. Changes made before the call are then
// durable.
func (g *groupSync) wait() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.pending == nil {
		g.pending = &syncBatch{}
	}
	b := g.pending
	for g.running && !b.done {
		g.cond.Wait()
	}
	if b.done {
		return b.err
	}
	// Lead b: it stops taking members now, and later callers start the
	// next batch, since their changes may come after this fsync begins.
	g.running = true
	g.pending = nil
	g.mu.Unlock()
	err := g.sync()
	g.mu.Lock()
	b.done, b.err = true, err
	g.running = false
	g.cond.Broadcast()
	return err
}
