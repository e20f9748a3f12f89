package smtpd

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postgate/postgate/relay/queue"
	"github.com/postgate/postgate/relay/queue/queuetest"
)

var queuedAs = regexp.MustCompile(`queued as (\S+)`)

// TestNoAcknowledgedMessageLost runs the server on the real queue over a
// filesystem that forgets every write not fsynced when it "crashes". Clients
// send concurrently; the power fails after a chosen number of filesystem
// operations, for several choices; after each crash a new queue on the same
// filesystem must hold every message some client saw a 250 for, intact.
func TestNoAcknowledgedMessageLost(t *testing.T) {
	for _, crashAfter := range []int{5, 40, 150, 400, 1000} {
		t.Run(fmt.Sprintf("crash after %d operations", crashAfter), func(t *testing.T) {
			fsys := queuetest.New()
			q, err := queue.Open(context.Background(), fsys, queue.Options{})
			if err != nil {
				t.Fatal(err)
			}
			addr := serveQueue(t, q)
			fsys.CrashAt(crashAfter)
			var mu sync.Mutex
			acked := map[string]string{} // queue id -> body
			var wg sync.WaitGroup
			for client := range 4 {
				wg.Go(func() {
					c := dialFrom(t, fmt.Sprintf("127.0.0.%d", 10+client), addr)
					defer func() { _ = c.conn.Close() }()
					c.hello()
					for i := range 15 {
						body := fmt.Sprintf("Subject: %d-%d\r\n\r\nbody of message %d from client %d\r\n", client, i, i, client)
						if code, _ := c.send("MAIL FROM:<alice@example.com>\r\n"); code != 250 {
							continue // 452 4.3.1 once the disk is gone
						}
						c.send("RCPT TO:<bob@dest.test>\r\n")
						if code, _ := c.send("DATA\r\n"); code != 354 {
							continue
						}
						code, line := c.send(body + ".\r\n")
						if code == 250 {
							mu.Lock()
							acked[queuedAs.FindStringSubmatch(line)[1]] = body
							mu.Unlock()
						}
					}
				})
			}
			wg.Wait()
			_ = q.Close()
			fsys.Crash()

			q2, err := queue.Open(context.Background(), fsys, queue.Options{})
			if err != nil {
				t.Fatalf("reopening after the crash: %v", err)
			}
			defer func() { _ = q2.Close() }()
			for id, want := range acked {
				l, err := q2.Lease(context.Background(), queue.ID(id))
				if err != nil {
					t.Errorf("message %s got 250 and is lost: %v", id, err)
					continue
				}
				got := readBody(t, l)
				l.Close()
				if !strings.HasSuffix(got, "\r\n"+want) {
					t.Errorf("message %s: body %q, want %q", id, got, want)
				}
			}
			t.Logf("%d messages acknowledged before the crash, all recovered", len(acked))
		})
	}
}

func readBody(t *testing.T, l *queue.Lease) string {
	t.Helper()
	r, err := l.Body(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Close() }()
	var b []byte
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		b = append(b, buf[:n]...)
		if err != nil {
			break
		}
	}
	return string(b)
}

// TestQueuedEnvelopeNamesTheMessage: the queued envelope carries the
// Message-ID and From address read at accept time, which delivery
// notifications report ("messageId", "mimeFrom").
func TestQueuedEnvelopeNamesTheMessage(t *testing.T) {
	q, err := queue.Open(context.Background(), queuetest.New(), queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = q.Close() }()
	c := dialFrom(t, "127.0.0.10", serveQueue(t, q))
	defer func() { _ = c.conn.Close() }()
	c.hello()
	c.send("MAIL FROM:<alice@example.com>\r\n")
	c.send("RCPT TO:<bob@dest.test>\r\n")
	c.send("DATA\r\n")
	code, line := c.send("From: \"Alice\" <alice@example.com>\r\nMessage-ID: <m1@client.test>\r\n\r\nhi\r\n.\r\n")
	if code != 250 {
		t.Fatalf("DATA: %s", line)
	}
	m, err := q.Get(context.Background(), queue.ID(queuedAs.FindStringSubmatch(line)[1]))
	if err != nil {
		t.Fatal(err)
	}
	if m.Envelope.MessageID != "<m1@client.test>" || m.Envelope.HeaderFrom != "alice@example.com" {
		t.Errorf("envelope MessageID %q HeaderFrom %q, want <m1@client.test> and alice@example.com", m.Envelope.MessageID, m.Envelope.HeaderFrom)
	}
}

// serveQueue runs a server on q at 127.0.0.1 until the test ends and
// returns its address.
func serveQueue(t *testing.T, q *queue.Queue) string {
	t.Helper()
	srv, err := New(Config{Hostname: "relay.test", Tables: newTables(t, testInput()), Spool: QueueSpool{q}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln, false) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return ln.Addr().String()
}
