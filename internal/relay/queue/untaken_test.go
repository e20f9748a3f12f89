package queue_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
)

// TestUntaken checks the backlog the in-flow gate watches: a message
// Enqueue accepted counts until its first lease, which calls Taken once;
// a hold, a delete or a completion takes it out too; imported and
// recovered messages never count. In segments and in files alike.
func TestUntaken(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts func(*queue.Options)
	}{
		{"segments", func(*queue.Options) {}},
		{"files", func(o *queue.Options) { o.SegmentBodyBytes = -1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			clock := newClock()
			taken := 0
			opts := options(clock)
			opts.Taken = func() { taken++ }
			tc.opts(&opts)
			dir := t.TempDir()
			q := openQueue(t, openDir(t, dir), opts)
			check := func(when string, wantUntaken, wantTaken int) {
				t.Helper()
				if got := q.Untaken(); got != wantUntaken {
					t.Errorf("%s: Untaken = %d, want %d", when, got, wantUntaken)
				}
				if got := q.Stats().Untaken; got != wantUntaken {
					t.Errorf("%s: Stats().Untaken = %d, want %d", when, got, wantUntaken)
				}
				if taken != wantTaken {
					t.Errorf("%s: Taken called %d times, want %d", when, taken, wantTaken)
				}
			}
			var ids []queue.ID
			for i := range 5 {
				ids = append(ids, enqueue(t, q, envelope(), body(i, 2000)))
			}
			check("after 5 Enqueues", 5, 0)

			l := mustLease(t, q, ids[0])
			check("after a lease", 4, 1)
			if _, err := l.Update(ctx, queue.Attempt{Results: []queue.Result{{Recipient: 0, State: queue.Pending, Reply: temp451}}}); err != nil {
				t.Fatal(err)
			}
			l.Close()
			clock.Add(24 * time.Hour) // due again
			mustLease(t, q, ids[0]).Close()
			check("a second lease of the same message", 4, 1)

			if err := q.Hold(ctx, ids[1]); err != nil {
				t.Fatal(err)
			}
			check("after a hold", 3, 1)
			if err := q.Release(ctx, ids[1]); err != nil {
				t.Fatal(err)
			}
			check("a release does not count it again", 3, 1)
			if err := q.Delete(ctx, ids[2]); err != nil {
				t.Fatal(err)
			}
			check("after a delete", 2, 1)

			// Import: a peer's message, maybe deferred, is not a new
			// acceptance.
			var rec bytes.Buffer
			if err := q.Export(ctx, ids[3], &rec); err != nil {
				t.Fatal(err)
			}
			peer := openQueue(t, openDir(t, t.TempDir()), opts)
			if _, err := peer.Import(ctx, &rec); err != nil {
				t.Fatal(err)
			}
			if n := peer.Untaken(); n != 0 {
				t.Errorf("imported message counted: Untaken = %d", n)
			}

			// Recovery: what a previous run left is not a new
			// acceptance either.
			closeQueue(t, q)
			q = openQueue(t, openDir(t, dir), opts)
			check("after a restart", 0, 1)
		})
	}
}
