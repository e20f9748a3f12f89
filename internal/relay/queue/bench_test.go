package queue_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
)

// BenchmarkEnqueue measures durable Enqueues on the real disk (b.TempDir)
// by message size and concurrent callers, with the fsyncs each message
// cost: in segments (the default), a share of one segment fsync;
// BenchmarkEnqueueDeliver compares with a file per message. It reports
// the 50th and 99th percentiles of one Enqueue's latency too: group
// commit should keep the tail within a few fsync times of the median.
//
//	go test -run '^$' -bench Enqueue -benchtime 2s ./internal/relay/queue/
func BenchmarkEnqueue(b *testing.B) {
	for _, size := range []int{1 << 10, 100 << 10} {
		for _, callers := range []int{1, 50} {
			b.Run(fmt.Sprintf("size=%dKB/callers=%d", size>>10, callers), func(b *testing.B) {
				benchmarkEnqueue(b, size, callers)
			})
		}
	}
}

func benchmarkEnqueue(b *testing.B, size, callers int) {
	opts := queue.Options{MaxMessages: 1 << 30}
	q, err := queue.Open(context.Background(), openDir(b, b.TempDir()), opts)
	if err != nil {
		b.Fatal(err)
	}
	defer closeQueue(b, q)
	payload := body(0, size)
	env := envelope()
	env.Size = int64(size)
	start := q.Stats()
	b.SetBytes(int64(size))
	b.ResetTimer()
	var next atomic.Int64
	var wg sync.WaitGroup
	lat := make([]time.Duration, b.N)
	for range callers {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
				t := time.Now()
				if _, err := q.Enqueue(context.Background(), env, bytes.NewReader(payload)); err != nil {
					b.Error(err)
					return
				}
				lat[i-1] = time.Since(t)
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	st := q.Stats()
	n := float64(b.N)
	b.ReportMetric(float64(st.FileSyncs-start.FileSyncs)/n, "filesyncs/msg")
	b.ReportMetric(float64(st.DirSyncs-start.DirSyncs)/n, "dirsyncs/msg")
	b.ReportMetric(n/b.Elapsed().Seconds(), "msgs/s")
}
