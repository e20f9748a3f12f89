package delivery

import "time"

// Clock tells the time and wakes the worker. The queue, the DNS cache, the
// idle connections and the retry loop all read the same clock, so a test
// can drive 48 hours of retries in milliseconds. Network timeouts (connect,
// command, data) are real time: they bound how long a socket may stall.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine once d has passed on this
	// clock (at once when d <= 0). stop cancels the call and reports
	// whether it did.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// SystemClock is the wall clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// AfterFunc is time.AfterFunc.
func (SystemClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}
