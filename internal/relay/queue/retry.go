package queue

import (
	"fmt"
	"time"
)

// Retry is the schedule for recipients that failed temporarily.
//
// The default waits 1m, 5m, 15m, 30m and 1h after the first five failed
// attempts, then 2h after each later one, each wait spread by ±10% so that
// mail deferred together (a destination that was down) does not come back
// together. The schedule only spaces attempts: how long a message may stay
// is the lifetime the caller gives at each attempt (Attempt.Lifetime), and
// the last wait is cut short so that one attempt happens at the end of the
// lifetime. With 48h (the default lifetime) that is about 28 attempts.
type Retry struct {
	// Delays[i] is the wait after the (i+1)-th failed attempt; the last
	// one repeats. It must not be empty, and every delay must be positive.
	Delays []time.Duration
	// Jitter spreads each wait uniformly over [d-d*Jitter, d+d*Jitter].
	// Between 0 and 1.
	Jitter float64
}

// DefaultRetry returns the default schedule.
func DefaultRetry() Retry {
	return Retry{
		Delays: []time.Duration{
			time.Minute, 5 * time.Minute, 15 * time.Minute, 30 * time.Minute,
			time.Hour, 2 * time.Hour,
		},
		Jitter: 0.1,
	}
}

// Delay returns the wait after the attempts-th failed attempt (counting
// from 1). u is a uniform random number in [0, 1) that places the wait in
// its jitter range; 0.5 gives the nominal wait.
func (r Retry) Delay(attempts int, u float64) time.Duration {
	if len(r.Delays) == 0 {
		return 0
	}
	i := min(max(attempts, 1), len(r.Delays)) - 1
	d := r.Delays[i]
	return d + time.Duration(float64(d)*r.Jitter*(2*u-1))
}

func (r Retry) validate() error {
	if len(r.Delays) == 0 || len(r.Delays) > 100 {
		return fmt.Errorf("retry schedule needs 1 to 100 delays, has %d: %w", len(r.Delays), ErrInvalid)
	}
	for _, d := range r.Delays {
		if d <= 0 {
			return fmt.Errorf("retry delay %v is not positive: %w", d, ErrInvalid)
		}
	}
	if r.Jitter < 0 || r.Jitter >= 1 {
		return fmt.Errorf("retry jitter %v is not in [0, 1): %w", r.Jitter, ErrInvalid)
	}
	return nil
}
