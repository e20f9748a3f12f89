package smtpd

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/postgate/postgate/internal/routing"
)

// discardSpool reads each message to its end and keeps nothing.
type discardSpool struct{}

func (discardSpool) CheckSpace(int64) error { return nil }

func (discardSpool) Enqueue(_ context.Context, _ *Envelope, body io.Reader) (string, error) {
	_, err := io.Copy(io.Discard, body)
	return "Q1", err
}

// BenchmarkAcceptDATA measures the accept path of DATA over loopback: one
// session sends b.N messages (76-character lines, one in 50 beginning
// with a dot), each read, checked, prepared (Received, Message-ID, Date)
// and handed to a spool that drops it: the server's bytes per second and
// allocations, without the queue's disk.
func BenchmarkAcceptDATA(b *testing.B) {
	for _, size := range []int{1 << 10, 100 << 10} {
		b.Run(fmt.Sprintf("%dKB", size>>10), func(b *testing.B) {
			ts := &tables{}
			ts.p.Store(routing.Compile(testInput(), nil).Table)
			srv, err := New(Config{Tables: ts, Spool: discardSpool{}, Hostname: "relay.test"})
			if err != nil {
				b.Fatal(err)
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			go func() { _ = srv.Serve(ln, false) }()
			defer func() { _ = srv.Shutdown(context.Background()) }()
			conn, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = conn.Close() }()
			r := bufio.NewReader(conn)
			reply := func(want string) {
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						b.Fatal(err)
					}
					if !strings.HasPrefix(line, want) {
						b.Fatalf("reply %q, want %s", line, want)
					}
					if line[3] == ' ' {
						return
					}
				}
			}
			reply("220")
			_, _ = io.WriteString(conn, "EHLO client.test\r\n")
			reply("250")
			var sb strings.Builder
			sb.WriteString("MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@dest.test>\r\nDATA\r\n")
			sb.WriteString("From: <alice@example.com>\r\nSubject: benchmark\r\n\r\n")
			for i := 0; sb.Len() < size; i++ {
				if i%50 == 0 {
					sb.WriteString(".")
				}
				sb.WriteString(strings.Repeat("x", 74) + "\r\n")
			}
			sb.WriteString(".\r\n")
			tx := []byte(sb.String())
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := conn.Write(tx); err != nil {
					b.Fatal(err)
				}
				reply("250")
				reply("250")
				reply("354")
				reply("250")
			}
		})
	}
}
