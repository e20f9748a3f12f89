package inflow

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// result is what one Wait returned.
type result struct {
	who    int
	waited time.Duration
	end    string
}

// fixture is a gate over a backlog the test sets, with Bound 10 and
// Delay 1s, and the results of the Waits it started.
type fixture struct {
	t       *testing.T
	backlog atomic.Int64
	gate    *Gate
	metrics *Metrics
	reg     *prometheus.Registry
	done    chan result
}

func newFixture(t *testing.T, delay time.Duration, backlog int) *fixture {
	t.Helper()
	f := &fixture{t: t, reg: prometheus.NewRegistry(), done: make(chan result, 16)}
	var err error
	if f.metrics, err = NewMetrics(f.reg); err != nil {
		t.Fatal(err)
	}
	f.backlog.Store(int64(backlog))
	f.gate = New(Options{Delay: delay, Bound: 10, Backlog: func() int { return int(f.backlog.Load()) }, Metrics: f.metrics})
	return f
}

// start begins a Wait as transaction who, and returns once it has either
// returned or joined the line (synctest.Wait: every goroutine of the
// bubble is blocked).
func (f *fixture) start(ctx context.Context, who int) {
	go func() {
		waited, end := f.gate.Wait(ctx)
		f.done <- result{who, waited, end}
	}()
	synctest.Wait()
}

// returned reports the Waits that have returned since the last call.
func (f *fixture) returned() []result {
	synctest.Wait()
	var out []result
	for {
		select {
		case r := <-f.done:
			out = append(out, r)
		default:
			return out
		}
	}
}

func TestWaitDoesNotWaitWhileDeliveryKeepsUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, time.Second, 10) // at Bound: keeping up
		f.start(t.Context(), 1)
		got := f.returned()
		if len(got) != 1 || got[0].end != "" || got[0].waited != 0 {
			t.Fatalf("Wait with the backlog at its bound = %+v, want an immediate return", got)
		}
		if n := histCount(t, f.reg, EndTaken) + histCount(t, f.reg, EndTimeout); n != 0 {
			t.Errorf("a transaction that did not wait was observed (%d)", n)
		}
	})
}

func TestWaitEndsWhenDeliveryTakesAMessage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, time.Second, 11) // one over: behind
		f.start(t.Context(), 1)
		if got := f.returned(); len(got) != 0 {
			t.Fatalf("Wait returned %+v while delivery was behind and took nothing", got)
		}
		if n := f.gate.Waiting(); n != 1 {
			t.Fatalf("Waiting = %d, want 1", n)
		}
		time.Sleep(300 * time.Millisecond) // fake time: the wait so far
		f.backlog.Add(-1)
		f.gate.Taken()
		got := f.returned()
		if len(got) != 1 || got[0].end != EndTaken || got[0].waited != 300*time.Millisecond {
			t.Fatalf("after Taken, Wait = %+v, want taken after 300ms", got)
		}
		if c := histCount(t, f.reg, EndTaken); c != 1 {
			t.Errorf("%s{end=taken} count = %d, want 1", MetricDelay, c)
		}
	})
}

func TestWaitIsBoundedByDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, time.Second, 500)
		f.start(t.Context(), 1)
		time.Sleep(999 * time.Millisecond)
		if got := f.returned(); len(got) != 0 {
			t.Fatalf("Wait returned %+v before the delay", got)
		}
		time.Sleep(time.Millisecond)
		got := f.returned()
		if len(got) != 1 || got[0].end != EndTimeout || got[0].waited != time.Second {
			t.Fatalf("Wait = %+v, want a timeout after 1s", got)
		}
		if n := f.gate.Waiting(); n != 0 {
			t.Errorf("Waiting = %d after the timeout, want 0", n)
		}
		if c := histCount(t, f.reg, EndTimeout); c != 1 {
			t.Errorf("%s{end=timeout} count = %d, want 1", MetricDelay, c)
		}
		f.gate.Taken() // nobody waits: nothing to let go, no panic
	})
}

func TestWaitDisabledWithZeroDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, 0, 1000)
		f.start(t.Context(), 1)
		if got := f.returned(); len(got) != 1 || got[0].end != "" {
			t.Fatalf("Wait with Delay 0 = %+v, want an immediate return", got)
		}
		var nilGate *Gate
		if waited, end := nilGate.Wait(t.Context()); waited != 0 || end != "" {
			t.Errorf("nil gate Wait = %v %q", waited, end)
		}
		nilGate.Taken()
	})
}

func TestWaitersGoFirstComeFirstServed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, time.Second, 50)
		for who := 1; who <= 4; who++ {
			f.start(t.Context(), who)
			time.Sleep(10 * time.Millisecond) // arrivals 10ms apart
		}
		for want := 1; want <= 2; want++ {
			f.backlog.Add(-1) // 49, 48: still behind
			f.gate.Taken()
			got := f.returned()
			if len(got) != 1 || got[0].who != want || got[0].end != EndTaken {
				t.Fatalf("take %d let go %+v, want transaction %d alone", want, got, want)
			}
		}
		// A newcomer while delivery is still behind queues behind the
		// two left, and the delay lets them go in their order too.
		f.start(t.Context(), 5)
		time.Sleep(time.Second)
		var order []int
		for _, r := range f.returned() {
			if r.end != EndTimeout {
				t.Errorf("transaction %d ended %q, want timeout", r.who, r.end)
			}
			order = append(order, r.who)
		}
		if len(order) != 3 || order[0] != 3 || order[1] != 4 || order[2] != 5 {
			t.Fatalf("timeouts in order %v, want [3 4 5]", order)
		}
	})
}

func TestCaughtUpLetsEveryoneGo(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, time.Second, 20)
		for who := 1; who <= 3; who++ {
			f.start(t.Context(), who)
		}
		f.backlog.Store(10) // delivery took a batch: back at the bound
		f.gate.Taken()
		if got := f.returned(); len(got) != 3 {
			t.Fatalf("once caught up, %d of 3 waiters went", len(got))
		}
		// A newcomer when caught up lets the line go before it.
		f.backlog.Store(20)
		f.start(t.Context(), 4)
		f.backlog.Store(0)
		f.start(t.Context(), 5)
		got := f.returned()
		if len(got) != 2 || f.gate.Waiting() != 0 {
			t.Fatalf("newcomer when caught up: returned %+v, %d still waiting", got, f.gate.Waiting())
		}
	})
}

func TestWaitEndsWithItsContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, time.Second, 20)
		ctx, cancel := context.WithCancel(t.Context())
		f.start(ctx, 1)
		f.start(t.Context(), 2)
		cancel()
		got := f.returned()
		if len(got) != 1 || got[0].who != 1 || got[0].end != EndCanceled {
			t.Fatalf("after cancel: %+v, want transaction 1 canceled", got)
		}
		f.gate.Taken()
		if got := f.returned(); len(got) != 1 || got[0].who != 2 {
			t.Fatalf("the take went to %+v, want transaction 2 (1 left the line)", got)
		}
	})
}

// histCount is the sample count of MetricDelay{end}.
func histCount(t *testing.T, reg *prometheus.Registry, end string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != MetricDelay {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "end" && strings.EqualFold(l.GetValue(), end) {
					return m.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	return 0
}
