package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
)

func TestRetryDelay(t *testing.T) {
	r := queue.DefaultRetry()
	for _, tc := range []struct {
		attempts int
		u        float64
		want     time.Duration
	}{
		{0, 0.5, time.Minute}, // not attempted yet: as after the first
		{1, 0.5, time.Minute},
		{2, 0.5, 5 * time.Minute},
		{3, 0.5, 15 * time.Minute},
		{4, 0.5, 30 * time.Minute},
		{5, 0.5, time.Hour},
		{6, 0.5, 2 * time.Hour},
		{7, 0.5, 2 * time.Hour},
		{1000, 0.5, 2 * time.Hour},
		{1, 0, 54 * time.Second},           // -10%
		{6, 0, 108 * time.Minute},          // -10%
		{6, 0.75, 126 * time.Minute},       // +5%
		{6, 0.99999999, 132 * time.Minute}, // just under +10%
	} {
		if got := r.Delay(tc.attempts, tc.u); (got-tc.want).Abs() > time.Millisecond || got > 132*time.Minute {
			t.Errorf("Delay(%d, %v) = %v, want %v", tc.attempts, tc.u, got, tc.want)
		}
	}
}

// TestRetrySchedule follows one recipient that always fails temporarily
// through a 48-hour lifetime with the default schedule.
func TestRetrySchedule(t *testing.T) {
	clock := newClock()
	opts := options(clock)
	q := openQueue(t, openDir(t, t.TempDir()), opts)
	ctx := context.Background()
	id := enqueue(t, q, envelope(), body(1, 100))
	lifetime := 48 * time.Hour
	nominal := []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour}
	attempts := 0
	for {
		due := q.Due(clock.Now(), 1)
		if len(due) != 1 {
			next, _ := q.NextDue()
			if !next.After(clock.Now()) {
				t.Fatalf("nothing due at %v, NextDue %v", clock.Now(), next)
			}
			clock.Set(next)
			continue
		}
		l := mustLease(t, q, due[0])
		m, err := l.Update(ctx, queue.Attempt{Lifetime: lifetime, Results: []queue.Result{{Recipient: 0, State: queue.Pending, Reply: temp451}}})
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
		attempts++
		s := m.Recipients[0]
		if s.State == queue.Expired {
			if !clock.Now().Equal(t0.Add(lifetime)) {
				t.Errorf("expired at %v, want arrival+48h", clock.Now())
			}
			break
		}
		wait := s.NextAttempt.Sub(clock.Now())
		d := nominal[min(attempts, len(nominal))-1]
		if s.NextAttempt.Equal(t0.Add(lifetime)) {
			d = min(d, wait) // the last wait is cut at the end of the lifetime
		}
		if wait < d*9/10 || wait > d*11/10 {
			t.Errorf("attempt %d: waits %v, want %v ±10%%", attempts, wait, d)
		}
	}
	if _, err := q.Get(ctx, id); err == nil {
		t.Error("expired message still queued")
	}
	if attempts < 25 || attempts > 31 {
		t.Errorf("%d attempts in 48h, want about 28", attempts)
	}
	t.Logf("%d attempts in 48h", attempts)
}

func TestRetryValidate(t *testing.T) {
	for _, r := range []queue.Retry{
		{Delays: []time.Duration{}},
		{Delays: []time.Duration{time.Minute, 0}},
		{Delays: []time.Duration{time.Minute}, Jitter: 1},
		{Delays: []time.Duration{time.Minute}, Jitter: -0.1},
	} {
		opts := options(newClock())
		opts.Retry = r
		if q, err := queue.Open(context.Background(), openDir(t, t.TempDir()), opts); err == nil {
			closeQueue(t, q)
			t.Errorf("Open accepted %+v", r)
		}
	}
}
