package shaping

import (
	"testing"
	"time"
)

// A bucket of 60 per minute: a burst of 6, then one token every
// ceil(60s/55); idle, it refills to the burst and no further.
func TestBucketRefill(t *testing.T) {
	clock := newFakeClock()
	t0 := clock.Now()
	b := newBucket(60, time.Minute, t0)
	for i := range 6 {
		if ok, _ := b.ready(t0); !ok {
			t.Fatalf("token %d of the burst missing", i+1)
		}
		b.take(t0)
	}
	ok, at := b.ready(t0)
	interval := (time.Minute + 54) / 55
	if ok || !at.Equal(t0.Add(interval)) {
		t.Fatalf("after the burst: ready %v at %v, want a token at +%v", ok, at.Sub(t0), interval)
	}
	if ok, _ := b.ready(at.Add(-1)); ok {
		t.Fatal("a token 1ns before it is due")
	}
	if ok, _ := b.ready(at); !ok {
		t.Fatal("no token at the time ready gave")
	}
	// An hour idle refills the burst, not an hour's worth.
	later := t0.Add(time.Hour)
	if got := b.tokens(later); got != 6 {
		t.Fatalf("tokens after an idle hour: %v, want 6", got)
	}
	n := 0
	for ok, _ := b.ready(later); ok; ok, _ = b.ready(later) {
		b.take(later)
		n++
	}
	if n != 6 {
		t.Fatalf("took %d at once after an idle hour, want the burst of 6", n)
	}
	// Half an interval refills half a token.
	if got := b.tokens(later.Add(interval / 2)); got < 0.49 || got > 0.51 {
		t.Fatalf("tokens half an interval later: %v, want 0.5", got)
	}
}

// However greedy the taker, no window of one period holds more than the
// limit, and a busy bucket still delivers most of it.
func TestBucketNeverExceedsLimitInAnyWindow(t *testing.T) {
	for _, tc := range []struct {
		n      int
		period time.Duration
	}{
		{1, time.Minute}, {2, time.Minute}, {10, time.Minute}, {11, time.Minute},
		{60, time.Minute}, {7, time.Minute}, {600, time.Minute}, {1000, time.Hour},
	} {
		t0 := newFakeClock().Now()
		now := t0
		b := newBucket(tc.n, tc.period, t0)
		var grants []time.Time
		end := t0.Add(5 * tc.period)
		for now.Before(end) {
			ok, at := b.ready(now)
			if !ok {
				now = at
				continue
			}
			b.take(now)
			grants = append(grants, now)
		}
		for i, g := range grants {
			in := 0
			for _, h := range grants[i:] {
				if h.Before(g.Add(tc.period)) {
					in++
				}
			}
			if in > tc.n {
				t.Fatalf("%d per %v: %d grants in the window from %v", tc.n, tc.period, in, g.Sub(t0))
			}
		}
		// Sustained: at least n - burst + 1 per period after the first.
		burst := max(1, (tc.n+9)/10)
		if min := burst + 4*(tc.n-burst+1); len(grants) < min {
			t.Errorf("%d per %v: %d grants in 5 periods, want at least %d", tc.n, tc.period, len(grants), min)
		}
	}
}

// A lower limit keeps the tokens held (no fresh burst); no limit grants
// everything.
func TestBucketSetLimit(t *testing.T) {
	t0 := newFakeClock().Now()
	b := newBucket(100, time.Minute, t0) // burst 10
	for range 8 {
		b.take(t0)
	}
	b.setLimit(50, t0) // burst 5, 2 tokens held
	if got := b.tokens(t0); got < 1.99 || got > 2.01 {
		t.Fatalf("tokens after lowering: %v, want 2", got)
	}
	b.setLimit(0, t0)
	for range 1000 {
		if ok, _ := b.ready(t0); !ok {
			t.Fatal("a bucket without limit refused")
		}
		b.take(t0)
	}
	b.setLimit(10, t0) // from no limit: an empty bucket, never a burst
	if ok, _ := b.ready(t0); ok {
		t.Fatal("a limit set after none granted at once")
	}
}
