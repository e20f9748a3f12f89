//go:build unix

package queue_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
)

// BenchmarkEnqueueDeliver measures a message's whole life in the queue,
// Enqueue then Lease and an Update that delivers it, per storage (a file
// per message as before segments, or segments), body size and concurrent
// callers, with the process's CPU time (user and system, from getrusage)
// per message. The spool is b.TempDir: check that it is on a real disk
// (df -T "$TMPDIR"), not tmpfs, or fsync costs nothing.
//
//	go test -run '^$' -bench EnqueueDeliver -benchtime 3s ./internal/relay/queue/
func BenchmarkEnqueueDeliver(b *testing.B) {
	for _, st := range []struct {
		name string
		seg  int64
	}{{"file", -1}, {"segment", 0}} {
		for _, size := range []int{1 << 10, 100 << 10} {
			for _, callers := range []int{1, 20, 50} {
				b.Run(fmt.Sprintf("%s/size=%dKB/callers=%d", st.name, size>>10, callers), func(b *testing.B) {
					benchmarkEnqueueDeliver(b, queue.Options{MaxMessages: 1 << 30, SegmentBodyBytes: st.seg}, size, callers)
				})
			}
		}
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchmarkEnqueueDeliver(b *testing.B, opts queue.Options, size, callers int) {
	ctx := context.Background()
	q, err := queue.Open(ctx, openDir(b, b.TempDir()), opts)
	if err != nil {
		b.Fatal(err)
	}
	defer closeQueue(b, q)
	payload := body(0, size)
	env := envelope()
	env.Size = int64(size)
	delivered := queue.Attempt{Results: []queue.Result{{Recipient: 0, State: queue.Delivered, Reply: ok250}}}
	start := q.Stats()
	b.SetBytes(int64(size))
	cpu := cpuTime()
	b.ResetTimer()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				id, err := q.Enqueue(ctx, env, bytes.NewReader(payload))
				if err != nil {
					b.Error(err)
					return
				}
				l, err := q.Lease(ctx, id)
				if err != nil {
					b.Error(err)
					return
				}
				if _, err := l.Update(ctx, delivered); err != nil {
					b.Error(err)
				}
				l.Close()
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	cpu = cpuTime() - cpu
	st := q.Stats()
	n := float64(b.N)
	b.ReportMetric(float64(st.FileSyncs-start.FileSyncs)/n, "filesyncs/msg")
	b.ReportMetric(float64(st.DirSyncs-start.DirSyncs)/n, "dirsyncs/msg")
	b.ReportMetric(n/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64(cpu.Microseconds())/n, "cpu-µs/msg")
}
