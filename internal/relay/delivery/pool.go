package delivery

import (
	"context"
	"sync"
	"time"
)

// maxSessionAge is how long one connection carries messages: a long
// session would keep a stale DNS answer and a server's resources alive.
const maxSessionAge = 5 * time.Minute

// pool keeps idle sessions for the next message to the same host
// (connection reuse: RSET, then the next transaction).
type pool struct {
	clock     Clock
	idle      time.Duration
	maxPerKey int

	mu     sync.Mutex
	closed bool
	conns  map[connKey][]*pooled
	quits  sync.WaitGroup
}

type pooled struct {
	s    *session
	stop func() bool
}

func newPool(clock Clock, idle time.Duration, maxPerKey int) *pool {
	return &pool{clock: clock, idle: idle, maxPerKey: maxPerKey, conns: make(map[connKey][]*pooled)}
}

// get takes the most recently used idle session for key, or returns nil.
func (p *pool) get(key connKey) *session {
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.conns[key]
	for len(list) > 0 {
		e := list[len(list)-1]
		list = list[:len(list)-1]
		if e.stop() {
			p.setList(key, list)
			return e.s
		}
		// The idle timer fired: its expire, waiting for the lock, will
		// not find the session any more.
		p.endLocked(e.s)
	}
	p.setList(key, list)
	return nil
}

func (p *pool) setList(key connKey, list []*pooled) {
	if len(list) == 0 {
		delete(p.conns, key)
		return
	}
	p.conns[key] = list
}

// put keeps a session that is healthy for IdleTimeout, or ends it.
func (p *pool) put(s *session) {
	if s.broken || s.retire || p.idle <= 0 || p.clock.Now().Sub(s.opened) >= maxSessionAge {
		p.end(s)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || len(p.conns[s.key]) >= p.maxPerKey {
		p.endLocked(s)
		return
	}
	e := &pooled{s: s}
	e.stop = p.clock.At(p.clock.Now().Add(p.idle), func() { p.expire(e) })
	p.conns[s.key] = append(p.conns[s.key], e)
}

// expire ends a session whose idle time is over.
func (p *pool) expire(e *pooled) {
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.conns[e.s.key]
	for i, x := range list {
		if x == e {
			p.setList(e.s.key, append(list[:i:i], list[i+1:]...))
			p.endLocked(e.s)
			return
		}
	}
}

// end closes a session, with QUIT when it is healthy, in the background so
// that the attempt that used it is recorded at once.
func (p *pool) end(s *session) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.endLocked(s)
}

func (p *pool) endLocked(s *session) {
	p.quits.Go(func() { s.close(true) })
}

// endSite ends the idle sessions to the traffic shaping site: the
// receiver counts them as open connections, so they are closed when the
// site throttles, or when a transaction needs the connection they hold.
// It returns how many it ended.
func (p *pool) endSite(site string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for key, list := range p.conns {
		kept := list[:0]
		for _, e := range list {
			if e.s.shape == nil || e.s.shape.Site() != site || !e.stop() {
				// Not the site's, or its idle timer fired and its expire
				// is waiting for the lock: that one ends it.
				kept = append(kept, e)
				continue
			}
			p.endLocked(e.s)
			n++
		}
		clear(list[len(kept):])
		p.setList(key, kept)
	}
	return n
}

// closeAll ends every idle session and waits until all sessions ended.
func (p *pool) closeAll() {
	p.mu.Lock()
	p.closed = true
	for key, list := range p.conns {
		for _, e := range list {
			e.stop()
			p.endLocked(e.s)
		}
		delete(p.conns, key)
	}
	p.mu.Unlock()
	p.quits.Wait()
}

// limiter bounds the transactions under way, per destination and in total.
type limiter struct {
	total chan struct{}
	per   int

	mu    sync.Mutex
	dests map[string]*slots
}

type slots struct {
	ch   chan struct{}
	refs int
}

func newLimiter(total, per int) *limiter {
	return &limiter{total: make(chan struct{}, total), per: per, dests: make(map[string]*slots)}
}

// acquireTotal waits for a slot of the total alone: shaped MX delivery
// takes its place per site in the site's gate instead of per destination.
func (l *limiter) acquireTotal(ctx context.Context) (release func(), err error) {
	select {
	case l.total <- struct{}{}:
		return func() { <-l.total }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// acquire waits for a slot of destination key and one of the total, in
// that order, so that waiting for a busy destination holds no slot that
// another destination could use.
func (l *limiter) acquire(ctx context.Context, key string) (release func(), err error) {
	l.mu.Lock()
	d := l.dests[key]
	if d == nil {
		d = &slots{ch: make(chan struct{}, l.per)}
		l.dests[key] = d
	}
	d.refs++
	l.mu.Unlock()
	drop := func() {
		l.mu.Lock()
		if d.refs--; d.refs == 0 {
			delete(l.dests, key)
		}
		l.mu.Unlock()
	}
	select {
	case d.ch <- struct{}{}:
	case <-ctx.Done():
		drop()
		return nil, ctx.Err()
	}
	select {
	case l.total <- struct{}{}:
	case <-ctx.Done():
		<-d.ch
		drop()
		return nil, ctx.Err()
	}
	return func() {
		<-l.total
		<-d.ch
		drop()
	}, nil
}
