package shaping

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// Tenant A queues 10,000 messages for a site, tenant B 10 after: B's 10
// are through within the first 20 grants, each tenant's in its order.
func TestFairQueueInterleaves(t *testing.T) {
	q := NewFairQueue[int]()
	for i := range 10000 {
		q.Push("a.example", i)
	}
	for i := range 10 {
		q.Push("b.example", i)
	}
	next := map[string]int{}
	bDone := 0
	for grant := 1; ; grant++ {
		tenant, item, ok := q.Next()
		if !ok {
			if grant != 10011 {
				t.Fatalf("empty after %d grants, want 10010", grant-1)
			}
			break
		}
		if item != next[tenant] {
			t.Fatalf("grant %d: %s item %d, want %d (order within a tenant)", grant, tenant, item, next[tenant])
		}
		next[tenant]++
		if tenant == "b.example" && next[tenant] == 10 {
			bDone = grant
		}
	}
	if bDone == 0 || bDone > 20 {
		t.Fatalf("b.example's 10 done at grant %d, want within 20", bDone)
	}
	if q.Len() != 0 || q.Tenants() != 0 {
		t.Fatalf("Len %d Tenants %d after draining", q.Len(), q.Tenants())
	}
}

// The same on a throttled site, with the limiter's grants: at 60 messages
// a minute, B's 10 are delivered within 20 grants and about 20 seconds,
// while A's backlog takes hours.
func TestFairQueueWithLimiter(t *testing.T) {
	p := mustParse(t, `
default:
  maxConnections: 1
  maxMessagesPerMinute: 60
  suspension: {initial: 5m, max: 1h, resetAfter: 1h}
`)
	clock := newFakeClock()
	t0 := clock.Now()
	l := NewLimiter(p, clock)
	q := NewFairQueue[string]()
	for i := range 10000 {
		q.Push("a.example", fmt.Sprint("a", i))
	}
	for i := range 10 {
		q.Push("b.example", fmt.Sprint("b", i))
	}
	c, d := l.AcquireConn(otherSite)
	if !d.OK {
		t.Fatal(d)
	}
	grants, b := 0, 0
	for b < 10 {
		d := c.AcquireMessage()
		if !d.OK {
			if d.Reason != ReasonMessageRate {
				t.Fatalf("refused: %+v", d)
			}
			clock.Set(d.Until)
			continue
		}
		grants++
		if tenant, _, _ := q.Next(); tenant == "b.example" {
			b++
		}
	}
	if took := clock.Now().Sub(t0); grants > 20 || took > 20*time.Second {
		t.Fatalf("b.example's 10 took %d grants and %v, want at most 20 and 20s", grants, took)
	}
}

// A tenant that runs dry leaves the rotation and rejoins at the end of the
// round: it cannot save turns while idle.
func TestFairQueueRotation(t *testing.T) {
	q := NewFairQueue[int]()
	q.Push("a", 1)
	q.Push("a", 2)
	q.Push("b", 1)
	q.Push("c", 1)
	q.Push("c", 2)
	var got []string
	take := func() {
		tenant, item, ok := q.Next()
		if !ok {
			t.Fatal("empty")
		}
		got = append(got, fmt.Sprint(tenant, item))
	}
	take()         // a1
	take()         // b1: b leaves
	q.Push("b", 2) // b rejoins behind c and a
	take()         // c1
	take()         // a2
	take()         // b2
	take()         // c2
	if want := "[a1 b1 c1 a2 b2 c2]"; fmt.Sprint(got) != want {
		t.Fatalf("order %v, want %s", got, want)
	}
	if _, _, ok := q.Next(); ok {
		t.Fatal("not empty")
	}
	if q.Waiting("a") != 0 {
		t.Fatal("a still waiting")
	}
}

func TestFairQueueConcurrent(t *testing.T) {
	q := NewFairQueue[int]()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 1000 {
				q.Push(fmt.Sprint("tenant", w), i)
			}
		})
	}
	var mu sync.Mutex
	taken := 0
	for range 2 {
		wg.Go(func() {
			for range 1000 {
				if _, _, ok := q.Next(); ok {
					mu.Lock()
					taken++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if taken+q.Len() != 4000 {
		t.Fatalf("taken %d + waiting %d, want 4000", taken, q.Len())
	}
}
