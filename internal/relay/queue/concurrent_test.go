package queue_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/queue/queuetest"
	"github.com/postgate/postgate/internal/testenv"
)

// TestConcurrentDelivery runs enqueuers, two delivery workers and an
// operator flushing and holding at once: every recipient is delivered
// exactly once, and the queue ends empty, after a crash too.
func TestConcurrentDelivery(t *testing.T) {
	for _, st := range []struct {
		name         string
		segmentBytes int64
	}{{"segments of 64 MiB", 0}, {"segments of 4000 bytes", 4000}} {
		// Small segments roll, are removed and compacted while
		// Enqueues and Updates are under way.
		t.Run(st.name, func(t *testing.T) { concurrentDelivery(t, st.segmentBytes) })
	}
}

func concurrentDelivery(t *testing.T, segmentBytes int64) {
	fsys := queuetest.New()
	clock := newClock()
	opts := options(clock)
	opts.SegmentBytes = segmentBytes
	opts.Retry = queue.Retry{Delays: []time.Duration{time.Nanosecond}}
	q := openQueue(t, fsys, opts)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	const enqueuers, each = 6, 15
	var mu sync.Mutex
	delivered := map[queue.ID][]int{}
	queued := map[queue.ID]bool{}
	var producers, others sync.WaitGroup
	for p := range enqueuers {
		producers.Go(func() {
			for i := range each {
				id, err := q.Enqueue(ctx, envelope("a@example.net", "b@example.net"), bytes.NewReader(body(p*each+i, 500)))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				queued[id] = true
				mu.Unlock()
			}
		})
	}
	done := make(chan struct{})
	deliver := func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			for _, id := range q.Due(clock.Now(), 5) {
				l, err := q.Lease(ctx, id)
				if errors.Is(err, queue.ErrBusy) || errors.Is(err, queue.ErrHeld) || errors.Is(err, queue.ErrNotFound) {
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				m := l.Message()
				var res []queue.Result
				for _, i := range m.Pending() {
					// Recipient 1 is deferred at its first attempt.
					st := queue.Delivered
					if i == 1 && m.Recipients[i].Attempts == 0 {
						st = queue.Pending
					}
					res = append(res, queue.Result{Recipient: i, State: st, Reply: ok250})
				}
				if _, err := l.Update(ctx, queue.Attempt{Results: res}); err != nil {
					t.Error(err)
				}
				mu.Lock()
				for _, r := range res {
					if r.State == queue.Delivered {
						delivered[id] = append(delivered[id], r.Recipient)
					}
				}
				mu.Unlock()
				l.Close()
			}
			clock.Add(time.Millisecond)
		}
	}
	for range 2 {
		others.Go(deliver)
	}
	others.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			if _, err := q.Flush(ctx); err != nil {
				t.Error(err)
			}
			for _, id := range q.Due(clock.Now(), 1) {
				if err := q.Hold(ctx, id); err != nil && !errors.Is(err, queue.ErrNotFound) {
					t.Error(err)
				}
				if err := q.Release(ctx, id); err != nil && !errors.Is(err, queue.ErrNotFound) {
					t.Error(err)
				}
			}
		}
	})
	producers.Wait()
	testenv.Eventually(t, func() string {
		if n := q.Stats().Messages; n > 0 {
			return fmt.Sprintf("%d messages still queued", n)
		}
		return ""
	})
	close(done)
	others.Wait()

	if len(queued) != enqueuers*each {
		t.Fatalf("%d messages queued", len(queued))
	}
	for id := range queued {
		if got := delivered[id]; len(got) != 2 || got[0] == got[1] {
			t.Errorf("%s: deliveries %v, want each recipient once", id, got)
		}
	}
	fsys.Crash()
	closeQueue(t, q)
	q2 := openQueue(t, fsys, opts)
	// A crash may roll back Updates that only marked recipients
	// delivered (they are not waited on): a message may come back with
	// such recipients pending, and nothing else.
	for _, m := range listAll(t, q2) {
		if !queued[m.ID] {
			t.Errorf("%s back after a crash, never queued", m.ID)
		}
		for _, i := range m.Pending() {
			if !slices.Contains(delivered[m.ID], i) {
				t.Errorf("%s back after a crash with recipient %d pending, never delivered", m.ID, i)
			}
		}
	}
}
