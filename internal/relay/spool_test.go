package relay

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/queue/queuetest"
	"github.com/postgate/postgate/internal/relay/smtpd"
	"github.com/postgate/postgate/internal/routing"
	"github.com/postgate/postgate/internal/testenv"
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
					defer func() { _ = c.Close() }()
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
	defer func() { _ = c.Close() }()
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

// serveQueue runs an SMTP server on q at 127.0.0.1 until the test ends,
// as the relay assembles it, and returns its address. Clients from
// 127.0.0.0/25 may send as example.com.
func serveQueue(t *testing.T, q *queue.Queue) string {
	t.Helper()
	meta := func(name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Namespace: "app", Name: name, Generation: 1}
	}
	compiled := routing.Compile(routing.Input{
		SenderDomains: []v1alpha1.SenderDomain{{ObjectMeta: meta("example"), Spec: v1alpha1.SenderDomainSpec{Domain: "example.com"}}},
		TrustedNetworks: []v1alpha1.TrustedNetwork{{ObjectMeta: meta("lo"),
			Spec: v1alpha1.TrustedNetworkSpec{CIDRs: []v1alpha1.CIDR{"127.0.0.0/25"}}}},
	}, nil)
	srv, err := smtpd.New(smtpd.Config{Hostname: "relay.test", Tables: fixedTable{compiled.Table}, Spool: QueueSpool{q}})
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

// fixedTable is a table source that always has the same table.
type fixedTable struct{ t *routing.Table }

func (f fixedTable) Table() *routing.Table { return f.t }

// smtpClient steps through an SMTP session one command at a time.
type smtpClient struct {
	t *testing.T
	*testenv.SMTPLineConn
}

// dialFrom connects to addr from the loopback address from.
func dialFrom(t *testing.T, from, addr string) *smtpClient {
	t.Helper()
	c, err := testenv.DialSMTPLine(addr, from)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &smtpClient{t: t, SMTPLineConn: c}
}

// hello reads the greeting and says EHLO.
func (c *smtpClient) hello() {
	c.t.Helper()
	if line, err := c.Reply(); err != nil || !strings.HasPrefix(line, "220 ") {
		c.t.Fatalf("greeting %q %v", line, err)
	}
	if code, line := c.send("EHLO client.test\r\n"); code != 250 {
		c.t.Fatalf("EHLO: %q", line)
	}
}

// send sends s, which ends with CRLF, and returns the reply's code (0
// when the connection is gone) and last line.
func (c *smtpClient) send(s string) (int, string) {
	line, err := c.Cmd(strings.TrimSuffix(s, "\r\n"))
	if err != nil {
		return 0, "connection closed: " + err.Error()
	}
	code, err := strconv.Atoi(line[:3])
	if err != nil {
		c.t.Fatalf("reply %q has no code", line)
	}
	return code, line
}
