package delivery

import "time"

// Clock tells the time and wakes the worker. The queue, the DNS cache, the
// idle connections and the retry loop all read the same clock, so a test
// can drive 48 hours of retries in milliseconds. Network timeouts (connect,
// command, data) are real time: they bound how long a socket may stall.
type Clock interface {
	Now() time.Time
	// At calls f in its own goroutine once the clock reads t or later (at
	// once when it already does). stop cancels the call and reports
	// whether it did. A deadline rather than a duration: a clock that
	// moves between reading Now and setting the timer cannot make it late.
	At(t time.Time, f func()) (stop func() bool)
}

// SystemClock is the wall clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// At is time.AfterFunc until t.
func (SystemClock) At(t time.Time, f func()) func() bool {
	return time.AfterFunc(time.Until(t), f).Stop
}
