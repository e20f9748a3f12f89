package delivery

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/testenv"
)

// BenchmarkDelivery measures delivery throughput to one MX sink on
// loopback: b.N queued messages (one recipient each), from the worker's
// start until the queue is empty, with the default concurrency (20
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

// BenchmarkDotWriter compares the DATA writer with net/textproto's
// DotWriter (go-smtp's client's), which goes byte by byte: a message in
// 76-character lines, one line in 50 beginning with a dot, handed over in
// the 32 KB pieces delivery reads from the queue.
func BenchmarkDotWriter(b *testing.B) {
	var sb strings.Builder
	for i := 0; sb.Len() < 100<<10; i++ {
		if i%50 == 0 {
			sb.WriteString(".")
		}
		sb.WriteString(strings.Repeat("x", 74) + "\r\n")
	}
	body := []byte(sb.String())
	writers := map[string]func(*bufio.Writer) io.WriteCloser{
		"dotWriter":           func(w *bufio.Writer) io.WriteCloser { return newDotWriter(w) },
		"textproto.DotWriter": textprotoDotWriter,
	}
	for _, name := range []string{"dotWriter", "textproto.DotWriter"} {
		b.Run(name, func(b *testing.B) {
			bw := bufio.NewWriterSize(io.Discard, wireBuffer)
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				w := writers[name](bw)
				for p := body; len(p) > 0; {
					n := min(len(p), 32<<10)
					if _, err := w.Write(p[:n]); err != nil {
						b.Fatal(err)
					}
					p = p[n:]
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
