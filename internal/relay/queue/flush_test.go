package queue_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/queue/queuetest"
)

// TestDeliveredFlushed: an Update that only marks recipients delivered is
// not waited on, so a power loss at once brings the message back (it is
// delivered again, never lost), but the queue fsyncs it within about a
// second on its own, and a power loss after that keeps it delivered.
func TestDeliveredFlushed(t *testing.T) {
	for _, tc := range []struct {
		name     string
		wait     time.Duration
		wantBack bool
	}{
		{"crash at once", 0, true},
		{"crash a second later", time.Second, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fsys := queuetest.New()
				clock := newClock()
				q := openQueue(t, fsys, options(clock))
				id := enqueue(t, q, envelope(), body(0, 100))
				l := mustLease(t, q, id)
				if _, err := l.Update(context.Background(), queue.Attempt{Results: []queue.Result{
					{Recipient: 0, State: queue.Delivered, Reply: ok250},
				}}); err != nil {
					t.Fatalf("Update: %v", err)
				}
				l.Close()
				time.Sleep(tc.wait) // the bubble's clock: the queue's flush runs in it
				synctest.Wait()
				fsys.Crash()
				closeQueue(t, q)
				q2 := openQueue(t, fsys, options(clock))
				msgs := listAll(t, q2)
				if back := len(msgs) == 1 && msgs[0].ID == id; back != tc.wantBack || len(msgs) > 1 {
					t.Fatalf("after the crash the queue holds %v, want the message back: %v", ids(msgs), tc.wantBack)
				}
			})
		})
	}
}

// TestFlushIdle: a queue with nothing unsynced makes no fsync of its own,
// however long it stays open.
func TestFlushIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fsys := queuetest.New()
		q := openQueue(t, fsys, options(newClock()))
		enqueue(t, q, envelope(), body(0, 100))
		synctest.Wait()
		before := q.Stats().FileSyncs
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := q.Stats().FileSyncs; got != before {
			t.Fatalf("%d fsyncs while idle, want none", got-before)
		}
	})
}
