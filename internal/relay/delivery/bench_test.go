package delivery

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/testenv"
)

// BenchmarkDelivery measures delivery throughput to one MX sink on
// loopback: b.N queued messages (one recipient each), from the worker's
// start until the queue is empty, with the default concurrency (10
// sessions to the destination, reused). The queue is in memory
// (queuetest.FS), so the number is the delivery side's, not the disk's.
func BenchmarkDelivery(b *testing.B) {
	for _, size := range []int{1 << 10, 100 << 10} {
		b.Run(fmt.Sprintf("%dKB", size>>10), func(b *testing.B) {
			e := newEnv(b)
			e.opts.Logger = slog.New(slog.DiscardHandler)
			e.opts.Observer = nil
			sink := e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{})
			e.dnsAdd("rcpt.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3")
			body := benchBody(size)
			env := queue.Envelope{From: "app@sender.test", To: []queue.Rcpt{{Addr: "user@rcpt.test"}}}
			for range b.N {
				e.enqueueEnv(env, body)
			}
			b.SetBytes(int64(len(body)))
			b.ResetTimer()
			start := time.Now()
			e.start()
			e.waitWithin(5*time.Minute, "an empty queue", func() bool { return e.q.Stats().Messages == 0 })
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
			if st := sink.Stats(); st.Messages != b.N {
				b.Fatalf("sink got %d messages, want %d", st.Messages, b.N)
			}
		})
	}
}

// benchBody is a message of about size bytes in 76-character lines.
func benchBody(size int) string {
	var sb strings.Builder
	sb.WriteString("From: <app@sender.test>\r\nTo: <user@rcpt.test>\r\nSubject: benchmark\r\n\r\n")
	line := strings.Repeat("x", 74) + "\r\n"
	for sb.Len() < size {
		sb.WriteString(line)
	}
	return sb.String()
}
