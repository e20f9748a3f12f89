package relay

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/queue/queuetest"
	"github.com/postgate/postgate/internal/testenv"
)

type stepClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *stepClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *stepClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// TestQueueCollector reads depth, held count and the oldest message's age
// from a real queue as messages come, are held and leave.
func TestQueueCollector(t *testing.T) {
	ctx := context.Background()
	clock := &stepClock{t: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)}
	q, err := queue.Open(ctx, queuetest.New(), queue.Options{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = q.Close() }()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewQueueCollector(q, clock.Now))
	want := func(messages, held, age float64) {
		t.Helper()
		got := testenv.Gather(t, reg)
		for name, v := range map[string]float64{MetricQueueMessages: messages, MetricQueueHeld: held, MetricQueueOldestAge: age} {
			if got[name+"{}"] != v {
				t.Errorf("%s = %v, want %v", name, got[name+"{}"], v)
			}
		}
	}
	want(0, 0, 0)
	env := queue.Envelope{From: "a@example.com", To: []queue.Rcpt{{Addr: "b@dest.test"}}}
	first, err := q.Enqueue(ctx, env, strings.NewReader("Subject: 1\r\n\r\nx\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	clock.add(90 * time.Second)
	second, err := q.Enqueue(ctx, env, strings.NewReader("Subject: 2\r\n\r\nx\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	clock.add(10 * time.Second)
	want(2, 0, 100)
	if err := q.Hold(ctx, second); err != nil {
		t.Fatal(err)
	}
	want(2, 1, 100)
	if err := q.Delete(ctx, first); err != nil {
		t.Fatal(err)
	}
	want(1, 1, 10) // the oldest is now the second
	if got := testenv.Gather(t, reg)[MetricQueueEnqueued+"{}"]; got != 2 {
		t.Errorf("%s = %v, want 2", MetricQueueEnqueued, got)
	}
}

// TestQueueCollectorSegments reads the segment files' count, bytes and
// live bytes from a real queue as segments fill, roll and are reclaimed.
func TestQueueCollectorSegments(t *testing.T) {
	ctx := context.Background()
	q, err := queue.Open(ctx, queuetest.New(), queue.Options{SegmentBytes: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = q.Close() }()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewQueueCollector(q, nil))
	const magic = 4 // each segment starts with one, never live
	want := func(segments float64, dead float64) {
		t.Helper()
		got := testenv.Gather(t, reg)
		n, size, live := got[MetricQueueSegments+"{}"], got[MetricQueueSegmentBytes+"{}"], got[MetricQueueSegmentLiveBytes+"{}"]
		if n != segments || size-live != dead+segments*magic {
			t.Errorf("segments %v, bytes %v, live bytes %v: want %v segments and %v dead bytes besides their magic", n, size, live, segments, dead)
		}
	}
	want(0, 0)
	env := queue.Envelope{From: "a@example.com", To: []queue.Rcpt{{Addr: "b@dest.test"}}}
	body := "Subject: x\r\n\r\n" + strings.Repeat("x", 3000) + "\r\n"
	first, err := q.Enqueue(ctx, env, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	want(1, 0)
	if live := testenv.Gather(t, reg)[MetricQueueSegmentLiveBytes+"{}"]; live < float64(len(body)) {
		t.Errorf("live bytes %v, less than the body (%d)", live, len(body))
	}
	if _, err := q.Enqueue(ctx, env, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	want(2, 0) // past 4096 bytes: a second segment
	if err := q.Delete(ctx, first); err != nil {
		t.Fatal(err)
	}
	// The first segment is removed; the delete record stays in the second:
	// length, kind, the 26-byte ID, CRC.
	want(1, 4+1+26+4)
}

// fakeStats is a queue as the collector sees it.
type fakeStats queue.Stats

func (f fakeStats) Stats() queue.Stats { return queue.Stats(f) }

// The damage the queue found at start is exported as it is.
func TestQueueCollectorDamaged(t *testing.T) {
	for _, n := range []int{0, 3} {
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(NewQueueCollector(fakeStats{Damaged: n}, nil))
		if got := testenv.Gather(t, reg)[MetricQueueDamaged+"{}"]; got != float64(n) {
			t.Errorf("%s = %v, want %d", MetricQueueDamaged, got, n)
		}
	}
}
