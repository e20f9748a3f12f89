package shaping

import "sync"

// FairQueue shares one site's capacity between tenants (SenderDomains, or
// namespaces) round-robin: Next takes the oldest item of the next tenant
// in rotation that has one, so a tenant with 10,000 messages waiting and a
// tenant with 10 take turns, and the 10 go within the first 20 grants
// instead of after the 10,000. Each tenant's items keep their order. A
// tenant with nothing waiting leaves the rotation and joins at its end when
// it has work again, so it cannot save up turns while idle.
//
// Items are whatever delivery queues per site: message IDs, or a waiter's
// channel to wake when capacity frees. It is safe for concurrent use.
type FairQueue[T any] struct {
	mu      sync.Mutex
	ring    []string // tenants with work, in rotation order
	next    int      // index in ring of the tenant whose turn it is
	waiting map[string][]T
	n       int
}

// NewFairQueue returns an empty queue.
func NewFairQueue[T any]() *FairQueue[T] {
	return &FairQueue[T]{waiting: map[string][]T{}}
}

// Push queues item for tenant, behind the tenant's earlier items.
func (q *FairQueue[T]) Push(tenant string, item T) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.waiting[tenant]) == 0 {
		// Join the rotation just before the tenant whose turn it is,
		// that is at the end of the current round.
		q.ring = append(q.ring, "")
		copy(q.ring[q.next+1:], q.ring[q.next:])
		q.ring[q.next] = tenant
		q.next++
		if q.next == len(q.ring) {
			q.next = 0
		}
	}
	q.waiting[tenant] = append(q.waiting[tenant], item)
	q.n++
}

// Next takes the next item in rotation: the tenant whose turn it is gives
// its oldest item and the turn passes on. ok is false when nothing waits.
func (q *FairQueue[T]) Next() (tenant string, item T, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.ring) == 0 {
		return "", item, false
	}
	tenant = q.ring[q.next]
	items := q.waiting[tenant]
	item = items[0]
	var zero T
	items[0] = zero // let it be collected
	items = items[1:]
	q.n--
	if len(items) == 0 {
		delete(q.waiting, tenant)
		q.ring = append(q.ring[:q.next], q.ring[q.next+1:]...)
	} else {
		q.waiting[tenant] = items
		q.next++
	}
	if q.next >= len(q.ring) {
		q.next = 0
	}
	return tenant, item, true
}

// Len returns how many items wait, and Tenants how many tenants have some.
func (q *FairQueue[T]) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}

// Tenants returns how many tenants have items waiting.
func (q *FairQueue[T]) Tenants() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.ring)
}

// Waiting returns how many items tenant has waiting.
func (q *FairQueue[T]) Waiting(tenant string) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.waiting[tenant])
}
