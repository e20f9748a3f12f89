package notify

import (
	"fmt"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/delivery"
)

// benchEnv runs a Notifier with a large buffer and a receiver on loopback.
func benchEnv(b *testing.B) *env {
	rcv := newReceiver(b)
	var src tables
	src.set(b, hook{"example.test", rcv.url(), key1})
	opts := fastOptions(b.TempDir(), &src)
	opts.BufferSize = 1 << 20
	e := newEnv(b, opts)
	e.run()
	return e
}

// BenchmarkObserve is the cost on the delivery goroutine: building the
// notifications and handing them to the buffer (the writer drains it).
func BenchmarkObserve(b *testing.B) {
	e := benchEnv(b)
	a := attempt("Q1", "example.test", delivery.StatusSent)
	b.ReportAllocs()
	for b.Loop() {
		e.n.Observe(a)
	}
	b.ReportMetric(e.count(resultBufferFull), "dropped")
}

// BenchmarkDrain is the sender's rate with a receiver on loopback: one
// request per message (1 notification each), journal included.
func BenchmarkDrain(b *testing.B) {
	e := benchEnv(b)
	b.ResetTimer()
	for i := range b.N {
		e.n.Observe(attempt(fmt.Sprintf("Q%d", i), "example.test", delivery.StatusSent))
	}
	for e.count(resultSent) < float64(b.N) {
		if e.count(resultBufferFull) > 0 {
			b.Fatal("dropped")
		}
		time.Sleep(time.Millisecond)
	}
}
