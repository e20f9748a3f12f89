package inflow_test

import (
	"bytes"
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/postgate/postgate/internal/relay/inflow"
	"github.com/postgate/postgate/internal/relay/queue"
)

// TestGateOnTheQueue wires a gate to a real queue as the relay does (the
// queue's Untaken as the backlog, its Taken hook as the token): a
// transaction waits while more accepted messages wait for delivery than
// the bound, and goes once delivery leases one.
func TestGateOnTheQueue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		dir, err := queue.OpenDir(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = dir.Close() }()
		var gate *inflow.Gate
		q, err := queue.Open(ctx, dir, queue.Options{MinFreeBytes: 1, Taken: func() { gate.Taken() }})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = q.Close() }()
		gate = inflow.New(inflow.Options{Delay: time.Minute, Bound: 2, Backlog: q.Untaken})

		env := queue.Envelope{From: "a@example.com", To: []queue.Rcpt{{Addr: "b@example.net"}}}
		var ids []queue.ID
		for range 3 {
			id, err := q.Enqueue(ctx, env, bytes.NewReader([]byte("Subject: x\r\n\r\nbody\r\n")))
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		type result struct {
			waited time.Duration
			end    string
		}
		done := make(chan result, 1)
		go func() {
			waited, end := gate.Wait(ctx)
			done <- result{waited, end}
		}()
		synctest.Wait()
		if n := gate.Waiting(); n != 1 {
			t.Fatalf("with 3 untaken messages and a bound of 2, %d transactions wait, want 1", n)
		}
		time.Sleep(5 * time.Second)
		l, err := q.Lease(ctx, ids[0])
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		synctest.Wait()
		select {
		case r := <-done:
			if r.end != inflow.EndTaken || r.waited != 5*time.Second {
				t.Fatalf("Wait = %+v, want taken after 5s", r)
			}
		default:
			t.Fatal("the lease did not let the waiting transaction go")
		}
		// Back at the bound: the next transaction does not wait.
		if waited, end := gate.Wait(ctx); waited != 0 || end != "" {
			t.Errorf("at the bound, Wait = %v %q, want no wait", waited, end)
		}
	})
}
