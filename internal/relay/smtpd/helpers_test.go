package smtpd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/routing"
	"github.com/postgate/postgate/internal/testenv"
)

// The test table: namespace app sends as example.com from 127.0.0.0/25;
// namespace other sends as other.test from 127.0.0.64/26, with AUTH
// required; 127.0.0.128/25 is in no TrustedNetwork.
func testInput() routing.Input {
	meta := func(ns, name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 1}
	}
	return routing.Input{
		SenderDomains: []v1alpha1.SenderDomain{
			{ObjectMeta: meta("app", "example"), Spec: v1alpha1.SenderDomainSpec{Domain: "example.com"}},
			{ObjectMeta: meta("other", "other"), Spec: v1alpha1.SenderDomainSpec{Domain: "other.test"}},
		},
		TrustedNetworks: []v1alpha1.TrustedNetwork{
			{ObjectMeta: meta("app", "lo"), Spec: v1alpha1.TrustedNetworkSpec{CIDRs: []v1alpha1.CIDR{"127.0.0.0/25"}}},
			{ObjectMeta: meta("other", "lo"), Spec: v1alpha1.TrustedNetworkSpec{
				CIDRs: []v1alpha1.CIDR{"127.0.0.64/26"},
				Authentication: &v1alpha1.SMTPAuthentication{Mode: v1alpha1.SMTPAuthRequired,
					SecretRefs: []v1alpha1.LocalObjectReference{{Name: "mailer"}}},
			}},
		},
		Secrets: []corev1.Secret{{
			ObjectMeta: meta("other", "mailer"), Type: corev1.SecretTypeBasicAuth,
			Data: map[string][]byte{"username": []byte("mailer"), "password": []byte("s3cret-pw")},
		}},
	}
}

// tables is a TableSource whose table a test swaps.
type tables struct{ p atomic.Pointer[routing.Table] }

func newTables(t *testing.T, in routing.Input) *tables {
	t.Helper()
	r := routing.Compile(in, nil)
	for _, v := range r.Verdicts {
		if !v.InTable {
			t.Fatalf("fixture: %v not in the table: %+v", v.Object, v)
		}
	}
	ts := &tables{}
	ts.p.Store(r.Table)
	return ts
}

func (t *tables) Table() *routing.Table { return t.p.Load() }

// memSpool keeps messages in memory; lowSpace makes CheckSpace fail.
type memSpool struct {
	mu       sync.Mutex
	messages []queued
	lowSpace atomic.Bool
	failNext atomic.Bool
	// failWith, when set, is the error of the next Enqueue.
	failWith atomic.Pointer[error]
}

type queued struct {
	env  Envelope
	body []byte
}

func (s *memSpool) CheckSpace(int64) error {
	if s.lowSpace.Load() {
		return errors.New("free space below the threshold")
	}
	return nil
}

func (s *memSpool) Enqueue(_ context.Context, env *Envelope, body io.Reader) (string, error) {
	b, err := io.ReadAll(body)
	if err != nil {
		return "", fmt.Errorf("reading the body: %w", err)
	}
	if s.failNext.Swap(false) {
		return "", errors.New("disk on fire")
	}
	if e := s.failWith.Swap(nil); e != nil {
		return "", *e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.messages = append(s.messages, queued{*env, b})
	return fmt.Sprintf("Q%04d", len(s.messages)), nil
}

func (s *memSpool) all() []queued {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]queued(nil), s.messages...)
}

// testServer runs a Server on 127.0.0.1 and returns its address.
func testServer(t *testing.T, cfg Config) (addr string, spool *memSpool, ts *tables) {
	t.Helper()
	_, addr, spool, ts = startServer(t, cfg)
	return addr, spool, ts
}

// startServer is testServer that also returns the server.
func startServer(t *testing.T, cfg Config) (srv *Server, addr string, spool *memSpool, ts *tables) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, spool, ts = serveOn(t, cfg, ln)
	return srv, ln.Addr().String(), spool, ts
}

// serveOn runs a Server on ln until the test ends.
func serveOn(t *testing.T, cfg Config, ln net.Listener) (srv *Server, spool *memSpool, ts *tables) {
	t.Helper()
	spool = &memSpool{}
	ts = newTables(t, testInput())
	if cfg.Tables == nil {
		cfg.Tables = ts
	}
	if cfg.Spool == nil {
		cfg.Spool = spool
	}
	cfg.Hostname = "relay.test"
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln, false) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testenv.WaitTimeout)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return srv, spool, ts
}

// pipeListener hands a Server in-memory connections (net.Pipe) that look
// like TCP from a 127.0.0.x client. Inside a testing/synctest bubble their
// deadlines run on the bubble's clock: a test of timeouts then sees each
// one fire exactly when due, however loaded the machine is.
type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 25} }

// dial connects from the address from (127.0.0.x).
func (l *pipeListener) dial(t *testing.T, from string) *rawClient {
	t.Helper()
	server, client := net.Pipe()
	src := &net.TCPAddr{IP: net.ParseIP(from), Port: 40000}
	l.conns <- addrConn{Conn: server, local: l.Addr(), remote: src}
	conn := addrConn{Conn: client, local: src, remote: l.Addr()}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawClient{t: t, conn: conn, r: bufio.NewReader(conn)}
}

// addrConn is a connection with the addresses it is given.
type addrConn struct {
	net.Conn
	local, remote net.Addr
}

func (c addrConn) LocalAddr() net.Addr  { return c.local }
func (c addrConn) RemoteAddr() net.Addr { return c.remote }

// rawClient speaks SMTP byte for byte, so tests can send what a well-behaved
// client library never would (bare LF, NUL, PROXY headers).
type rawClient struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

// dialFrom connects to addr from the local address from (127.0.0.x).
func dialFrom(t *testing.T, from, addr string) *rawClient {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawClient{t: t, conn: conn, r: bufio.NewReader(conn)}
}

// reply reads one (possibly multi-line) reply and returns its code and
// last line.
func (c *rawClient) reply() (int, string) {
	c.t.Helper()
	var code int
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return 0, "connection closed: " + err.Error()
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 {
			c.t.Fatalf("short reply %q", line)
		}
		if _, err := fmt.Sscanf(line[:3], "%d", &code); err != nil {
			c.t.Fatalf("reply %q has no code", line)
		}
		if line[3] == ' ' {
			return code, line
		}
	}
}

// send writes raw bytes and reads one reply.
func (c *rawClient) send(s string) (int, string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s); err != nil {
		return 0, "write failed: " + err.Error()
	}
	return c.reply()
}

// expect sends and checks the reply code and a fragment.
func (c *rawClient) expect(s string, code int, fragment string) {
	c.t.Helper()
	got, line := c.send(s)
	if got != code || !strings.Contains(line, fragment) {
		c.t.Fatalf("after %q: got %q, want %d ...%s...", strings.TrimSpace(s), line, code, fragment)
	}
}

// startData opens a transaction from alice@example.com to bob@dest.test
// and says DATA, expecting 250, 250 and 354.
func (c *rawClient) startData() {
	c.t.Helper()
	c.expect("MAIL FROM:<alice@example.com>\r\n", 250, "")
	c.expect("RCPT TO:<bob@dest.test>\r\n", 250, "")
	c.expect("DATA\r\n", 354, "")
}

// hello reads the greeting and says EHLO.
func (c *rawClient) hello() {
	c.t.Helper()
	if code, line := c.reply(); code != 220 {
		c.t.Fatalf("greeting %q", line)
	}
	c.expect("EHLO client.test\r\n", 250, "")
}

func (c *rawClient) closed() bool {
	_ = c.conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err := c.r.ReadByte()
	return err != nil
}

func addr4(s string) netip.Addr { return netip.MustParseAddr(s) }

func mustPrefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}
