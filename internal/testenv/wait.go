package testenv

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// WaitTimeout bounds every wait of the helpers here. It is generous on
// purpose: a machine loaded by other work makes a test slower, never wrong;
// only a condition that never comes uses it up.
const WaitTimeout = 60 * time.Second

// Eventually checks cond until it returns "" and fails the test with
// cond's last reason when WaitTimeout passes first. It is the one bounded
// poll the tests share, for state that sends no notification of its change
// (an object in the API server, a file another process writes, a metric);
// a test that can wait on a channel, a watch or a log line does that
// instead. The interval grows from 10 ms to 250 ms, so a short wait is
// short and a long one costs little.
func Eventually(tb testing.TB, cond func() string) {
	tb.Helper()
	EventuallyWithin(tb, WaitTimeout, cond)
}

// EventuallyWithin is Eventually with a longer bound, for benchmarks whose
// fixture takes minutes to load.
func EventuallyWithin(tb testing.TB, within time.Duration, cond func() string) {
	tb.Helper()
	deadline := time.Now().Add(within)
	interval := 10 * time.Millisecond
	tick := time.NewTimer(interval)
	defer tick.Stop()
	for {
		why := cond()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("after %s: %s", within, why)
		}
		<-tick.C
		interval = min(2*interval, 250*time.Millisecond)
		tick.Reset(interval)
	}
}

// EventuallyTrue is Eventually for a condition without a reason of its
// own: why is the failure while cond is false.
func EventuallyTrue(tb testing.TB, why string, cond func() bool) {
	tb.Helper()
	Eventually(tb, func() string {
		if cond() {
			return ""
		}
		return why
	})
}

// Changes lets a test wait on state that other goroutines change, woken at
// each change instead of polling: the goroutine that changes the state
// calls Changed, the test calls Wait. The zero value is ready to use.
type Changes struct {
	mu   sync.Mutex
	next chan struct{} // closed by the next Changed; nil while nobody waits
}

// Changed wakes the waiters.
func (c *Changes) Changed() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.next != nil {
		close(c.next)
		c.next = nil
	}
}

// Wait checks cond at once and after each Changed until it returns "", and
// fails the test with cond's last reason when WaitTimeout passes first.
func (c *Changes) Wait(tb testing.TB, cond func() string) {
	tb.Helper()
	if err := c.Await(cond); err != nil {
		tb.Fatal(err)
	}
}

// Await is Wait for goroutines other than the test's: it returns the
// failure instead.
func (c *Changes) Await(cond func() string) error {
	timeout := time.NewTimer(WaitTimeout)
	defer timeout.Stop()
	for {
		// Taken before cond runs: a change after it closes this channel.
		c.mu.Lock()
		if c.next == nil {
			c.next = make(chan struct{})
		}
		next := c.next
		c.mu.Unlock()
		why := cond()
		if why == "" {
			return nil
		}
		select {
		case <-next:
		case <-timeout.C:
			return fmt.Errorf("after %s: %s", WaitTimeout, why)
		}
	}
}
