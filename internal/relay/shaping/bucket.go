package shaping

import (
	"time"
)

// bucket is a token bucket that holds a limit of n per period exactly: in
// no window of one period (half-open, wherever it starts) does it grant
// more than n. A plain bucket of n tokens refilled at n per period grants
// up to 2n in a period (a full bucket plus what refills), and a receiver
// counting per minute would see that; so the bucket holds burst =
// max(1, ceil(n/10)) tokens and refills at k = n - burst + 1 per period (one
// token every ceil(period/k)): a window that begins with the bucket full
// takes the burst plus the tokens that refill before it ends, at most
// k - 1 since the k-th arrives at the window's end or later. A quiet site
// can take a tenth of its limit at once; a busy one is paced at a little
// under its limit.
//
// It is kept as a theoretical arrival time (the generic cell rate
// algorithm) in integer nanoseconds, so that no rounding of fractional
// tokens can grant one early: a grant is allowed while tat <= now + (burst-1)
// * interval, and moves tat one interval on.
type bucket struct {
	limit    int           // n; 0: no limit
	period   time.Duration // the period n is counted in
	burst    int
	interval time.Duration // time to refill one token
	tat      time.Time
}

// newBucket returns a full bucket for n per period; n <= 0 is no limit.
func newBucket(n int, period time.Duration, now time.Time) *bucket {
	b := &bucket{period: period, tat: now}
	b.configure(n)
	return b
}

func (b *bucket) configure(n int) {
	b.limit = max(n, 0)
	if b.limit == 0 {
		b.burst, b.interval = 0, 0
		return
	}
	b.burst = max(1, (b.limit+9)/10)
	k := time.Duration(b.limit - b.burst + 1)
	b.interval = (b.period + k - 1) / k // rounded up: never early
}

// setLimit changes the limit, keeping the tokens the bucket holds (but no
// more than the new burst), so that a policy change or a new replica count
// applies at once without granting a fresh burst. A limit where there was
// none starts empty, for the same reason.
func (b *bucket) setLimit(n int, now time.Time) {
	if max(n, 0) == b.limit {
		return
	}
	tokens := b.tokens(now)
	b.configure(n)
	if b.limit == 0 {
		return
	}
	tokens = min(tokens, float64(b.burst))
	// tat such that tokens(now) gives tokens back.
	b.tat = now.Add(time.Duration((float64(b.burst) - tokens) * float64(b.interval)))
}

// tokens returns how many whole or partial tokens the bucket holds.
func (b *bucket) tokens(now time.Time) float64 {
	if b.limit == 0 {
		return 0
	}
	owed := b.tat.Sub(now)
	if owed <= 0 {
		return float64(b.burst)
	}
	return max(0, float64(b.burst)-float64(owed)/float64(b.interval))
}

// ready reports whether a token is there, and if not the time at which the
// next one will be.
func (b *bucket) ready(now time.Time) (bool, time.Time) {
	if b.limit == 0 {
		return true, time.Time{}
	}
	at := b.tat.Add(-time.Duration(b.burst-1) * b.interval)
	if !now.Before(at) {
		return true, time.Time{}
	}
	return false, at
}

// take uses one token; the caller checked ready first.
func (b *bucket) take(now time.Time) {
	if b.limit == 0 {
		return
	}
	if b.tat.Before(now) {
		b.tat = now
	}
	b.tat = b.tat.Add(b.interval)
}
