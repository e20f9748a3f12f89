package queue_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
)

// TestDueLimit: whatever the limit, Due returns the first messages of the
// full order (due time, then ID), including among messages due at the
// same instant, and skips the leased ones.
func TestDueLimit(t *testing.T) {
	clock := newClock()
	q := openQueue(t, openDir(t, t.TempDir()), options(clock))
	type queued struct {
		id      queue.ID
		arrival time.Time
	}
	var all []queued
	for i := range 40 {
		if i%3 == 0 { // runs of up to three messages arrive at the same instant
			clock.Add(time.Second)
		}
		all = append(all, queued{enqueue(t, q, envelope(), body(i, 10)), clock.Now()})
	}
	// Enqueue order is not the order within an instant: IDs break ties.
	slices.SortFunc(all, func(a, b queued) int {
		if c := a.arrival.Compare(b.arrival); c != 0 {
			return c
		}
		return strings.Compare(string(a.id), string(b.id))
	})
	want := make([]queue.ID, len(all))
	for i, m := range all {
		want[i] = m.id
	}
	for _, limit := range []int{-1, 0, 1, 2, 7, 39, 40, 41, 1000} {
		got := q.Due(clock.Now(), limit)
		if w := want[:min(max(limit, 0), len(want))]; !slices.Equal(got, w) {
			t.Errorf("Due(%d) = %v, want %v", limit, got, w)
		}
	}
	// The earliest, leased, gives way to the next.
	l := mustLease(t, q, want[0])
	defer l.Close()
	if got := q.Due(clock.Now(), 3); !slices.Equal(got, want[1:4]) {
		t.Errorf("Due(3) with the first leased = %v, want %v", got, want[1:4])
	}
	if got := q.Due(all[0].arrival, 10); !slices.Equal(got, want[1:3]) {
		t.Errorf("Due at the first instant = %v, want %v", got, want[1:3])
	}
}

// BenchmarkDue: the delivery loop's question under a backlog, a batch of
// the earliest due messages out of thousands.
//
//	go test -run '^$' -bench Due ./internal/relay/queue/
func BenchmarkDue(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("queued=%d", n), func(b *testing.B) {
			clock := newClock()
			q := openQueue(b, openDir(b, b.TempDir()), options(clock))
			for i := range n {
				enqueue(b, q, envelope(), body(i, 10))
				clock.Add(time.Millisecond)
			}
			b.ResetTimer()
			for b.Loop() {
				if got := q.Due(clock.Now(), 100); len(got) != 100 {
					b.Fatalf("Due returned %d", len(got))
				}
			}
		})
	}
}
