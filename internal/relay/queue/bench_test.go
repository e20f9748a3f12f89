package queue_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/postgate/postgate/internal/relay/queue"
)

// BenchmarkEnqueue measures durable Enqueues on the real disk (b.TempDir)
// by message size and concurrent callers, with the fsyncs each message
// cost: in segments (the default), a share of one segment fsync;
// BenchmarkEnqueueDeliver compares with a file per message.
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
	for range callers {
		wg.Go(func() {
			for next.Add(1) <= int64(b.N) {
				if _, err := q.Enqueue(context.Background(), env, bytes.NewReader(payload)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	st := q.Stats()
	n := float64(b.N)
	b.ReportMetric(float64(st.FileSyncs-start.FileSyncs)/n, "filesyncs/msg")
	b.ReportMetric(float64(st.DirSyncs-start.DirSyncs)/n, "dirsyncs/msg")
	b.ReportMetric(n/b.Elapsed().Seconds(), "msgs/s")
}
