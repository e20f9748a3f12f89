package delivery

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/queue/queuetest"
	"github.com/postgate/postgate/internal/routing"
	"github.com/postgate/postgate/internal/testenv"
)

// epoch is where the fake clock starts.
var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// fakeClock is a Clock that moves only when the test says so.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
	// armed is every time a timer was set for, in order.
	armed   []time.Time
	changes testenv.Changes
}

type fakeTimer struct {
	at    time.Time
	f     func()
	ended bool
}

func newFakeClock() *fakeClock { return &fakeClock{now: epoch} }

// timersSet counts the timers set so far, for waitArmed.
func (c *fakeClock) timersSet() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.armed)
}

// waitArmed waits until a timer has been set for at, after the first
// `after` timers: the code under test has gone as far as waiting for that
// time.
func (c *fakeClock) waitArmed(t testing.TB, after int, at time.Time) {
	t.Helper()
	c.changes.Wait(t, func() string {
		c.mu.Lock()
		defer c.mu.Unlock()
		if !slices.Contains(c.armed[after:], at) {
			return fmt.Sprintf("no timer set for %s", at)
		}
		return ""
	})
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) At(at time.Time, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: at, f: f}
	c.armed = append(c.armed, at)
	defer c.changes.Changed()
	if !at.After(c.now) {
		t.ended = true
		go f()
	} else {
		c.timers = append(c.timers, t)
	}
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if t.ended {
			return false
		}
		t.ended = true
		return true
	}
}

// nextTimer returns the earliest time a timer not yet fired is set for.
func (c *fakeClock) nextTimer() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var next time.Time
	found := false
	for _, t := range c.timers {
		if !t.ended && (!found || t.at.Before(next)) {
			next, found = t.at, true
		}
	}
	return next, found
}

// Advance moves the clock and fires the timers that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var fire []func()
	kept := c.timers[:0]
	for _, t := range c.timers {
		switch {
		case t.ended:
		case !t.at.After(c.now):
			t.ended = true
			fire = append(fire, t.f)
		default:
			kept = append(kept, t)
		}
	}
	c.timers = kept
	c.mu.Unlock()
	for _, f := range fire {
		go f()
	}
}

// tableSource holds the table a test sets.
type tableSource struct{ p atomic.Pointer[routing.Table] }

func (s *tableSource) Table() *routing.Table { return s.p.Load() }

// calls is a record that goroutines append to.
type calls[T any] struct {
	mu    sync.Mutex
	items []T
}

func (c *calls[T]) add(x T) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.items = append(c.items, x)
}

func (c *calls[T]) all() []T {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.items)
}

// fakeBouncer records the DSNs the worker asks for, and fails them with err.
type fakeBouncer struct {
	calls[Bounce]
	err atomic.Pointer[error]
}

func (b *fakeBouncer) Bounce(_ context.Context, x Bounce) error {
	b.add(x)
	if err := b.err.Load(); err != nil {
		return *err
	}
	return nil
}

func (b *fakeBouncer) Calls() []Bounce { return b.all() }

// recorder is an Observer that keeps every attempt.
type recorder struct{ calls[Attempt] }

func (r *recorder) Observe(a Attempt) { r.add(a) }

func (r *recorder) Attempts() []Attempt { return r.all() }

// wireTap dials for the worker and watches every connection: how many, how
// many open at once, from where to where, and the bytes written.
type wireTap struct {
	mu      sync.Mutex
	dials   []netip.AddrPort // every remote dialed, refused ones included
	open    int
	maxOpen int
	conns   []*tappedConn
}

type tappedConn struct {
	net.Conn
	tap    *wireTap
	mu     sync.Mutex
	wrote  bytes.Buffer
	closed bool
}

func (w *wireTap) dial(ctx context.Context, local netip.Addr, remote netip.AddrPort) (net.Conn, error) {
	w.mu.Lock()
	w.dials = append(w.dials, remote)
	w.mu.Unlock()
	c, err := DefaultDial(ctx, local, remote)
	if err != nil {
		return nil, err
	}
	tc := &tappedConn{Conn: c, tap: w}
	w.mu.Lock()
	w.open++
	w.maxOpen = max(w.maxOpen, w.open)
	w.conns = append(w.conns, tc)
	w.mu.Unlock()
	return tc, nil
}

func (c *tappedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.wrote.Write(p)
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *tappedConn) Close() error {
	c.mu.Lock()
	first := !c.closed
	c.closed = true
	c.mu.Unlock()
	if first {
		c.tap.mu.Lock()
		c.tap.open--
		c.tap.mu.Unlock()
	}
	return c.Conn.Close()
}

func (w *wireTap) Dials() []netip.AddrPort {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.dials)
}

func (w *wireTap) MaxOpen() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.maxOpen
}

// Written returns what the worker wrote on every connection, in order.
func (w *wireTap) Written() []string {
	w.mu.Lock()
	conns := slices.Clone(w.conns)
	w.mu.Unlock()
	var out []string
	for _, c := range conns {
		c.mu.Lock()
		out = append(out, c.wrote.String())
		c.mu.Unlock()
	}
	return out
}

// env is one test's relay side: DNS server, fake clock, queue, table,
// bouncer, observer, and the worker once started.
type env struct {
	t        testing.TB
	dns      *testenv.DNSServer
	clock    *fakeClock
	fs       *queuetest.FS
	q        *queue.Queue
	tables   *tableSource
	bouncer  *fakeBouncer
	observer *recorder
	wire     *wireTap
	logs     *testenv.LogBuffer
	opts     Options
	mxPort   int

	w      *Worker
	cancel context.CancelFunc
	runErr chan error
}

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{
		t:        t,
		dns:      testenv.StartDNSServer(t, testenv.DNSOptions{}),
		clock:    newFakeClock(),
		fs:       queuetest.New(),
		tables:   &tableSource{},
		bouncer:  &fakeBouncer{},
		observer: &recorder{},
		wire:     &wireTap{},
		logs:     &testenv.LogBuffer{},
	}
	e.openQueue()
	res, err := NewResolver(ResolverOptions{Server: e.dns.Addr(), Clock: e.clock, Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	e.opts = Options{
		Hostname: "relay.postgate.test", Clock: e.clock, Resolver: res,
		Logger:  slog.New(slog.NewTextHandler(e.logs, nil)),
		Bouncer: e.bouncer, Observer: e.observer, Dial: e.wire.dial,
		Timeouts: Timeouts{Connect: 2 * time.Second, Command: 5 * time.Second, DataBlock: 5 * time.Second, DataTermination: 5 * time.Second},
	}
	e.setTable()
	t.Cleanup(func() {
		e.stop()
		_ = e.q.Close()
		if t.Failed() {
			t.Logf("delivery log:\n%s", e.logs.String())
		}
	})
	return e
}

func (e *env) openQueue() {
	e.t.Helper()
	q, err := queue.Open(context.Background(), e.fs, queue.Options{Clock: e.clock})
	if err != nil {
		e.t.Fatal(err)
	}
	e.q = q
}

// dnsAdd adds zone records.
func (e *env) dnsAdd(records ...string) {
	e.t.Helper()
	if err := e.dns.Add(records...); err != nil {
		e.t.Fatal(err)
	}
}

// mxSink starts an SMTP sink on ip at the port every MX sink of the test
// shares (Options.MXPort).
func (e *env) mxSink(ip string, opts testenv.SMTPSinkOptions) *testenv.SMTPSink {
	e.t.Helper()
	opts.Addr = ip + ":" + fmt.Sprint(e.mxPort)
	s := testenv.StartSMTPSink(e.t, opts)
	if e.mxPort == 0 {
		e.mxPort = s.Port()
		e.opts.MXPort = s.Port()
	}
	return s
}

// MXPort returns the MX port, reserving one when no sink has yet.
func (e *env) MXPort() int {
	if e.mxPort == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			e.t.Fatal(err)
		}
		e.mxPort = l.Addr().(*net.TCPAddr).Port
		e.opts.MXPort = e.mxPort
		_ = l.Close()
	}
	return e.mxPort
}

// setTable compiles objects (SenderDomains, RelayRoutes, Secrets) into the
// table in force; every object must be accepted.
func (e *env) setTable(objs ...any) *routing.Table {
	e.t.Helper()
	var in routing.Input
	for _, o := range objs {
		switch o := o.(type) {
		case v1alpha1.SenderDomain:
			in.SenderDomains = append(in.SenderDomains, o)
		case v1alpha1.RelayRoute:
			in.RelayRoutes = append(in.RelayRoutes, o)
		case corev1.Secret:
			in.Secrets = append(in.Secrets, o)
		default:
			e.t.Fatalf("setTable: %T", o)
		}
	}
	res := routing.Compile(in, nil)
	for _, v := range res.Verdicts {
		if v.Refused() || !v.InTable {
			e.t.Fatalf("%s not in the table: %+v", v.Object.Key(), v)
		}
	}
	e.tables.p.Store(res.Table)
	return res.Table
}

func meta(name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Namespace: "team", Name: name, Generation: 1, UID: types.UID("uid-" + name),
		CreationTimestamp: metav1.NewTime(epoch),
	}
}

type sdOpt func(*v1alpha1.SenderDomain)

func senderDomain(domain string, opts ...sdOpt) v1alpha1.SenderDomain {
	sd := v1alpha1.SenderDomain{ObjectMeta: meta(strings.ReplaceAll(domain, ".", "-")), Spec: v1alpha1.SenderDomainSpec{Domain: v1alpha1.DomainName(domain)}}
	for _, o := range opts {
		o(&sd)
	}
	return sd
}

func sourceIP(ip string) sdOpt {
	return func(sd *v1alpha1.SenderDomain) { sd.Spec.SourceIP = v1alpha1.IPAddress(ip) }
}

func mxPolicy(p v1alpha1.TLSPolicy) sdOpt {
	return func(sd *v1alpha1.SenderDomain) {
		if sd.Spec.Delivery == nil {
			sd.Spec.Delivery = &v1alpha1.DeliveryPolicy{}
		}
		sd.Spec.Delivery.TLSPolicy = p
	}
}

func lifetime(d time.Duration) sdOpt {
	return func(sd *v1alpha1.SenderDomain) {
		if sd.Spec.Delivery == nil {
			sd.Spec.Delivery = &v1alpha1.DeliveryPolicy{}
		}
		sd.Spec.Delivery.MaxQueueLifetime = &metav1.Duration{Duration: d}
	}
}

type rrOpt func(*v1alpha1.RelayRoute)

// relayRoute routes domain's mail to host:port, TLS None unless changed.
func relayRoute(domain, host string, port int, opts ...rrOpt) v1alpha1.RelayRoute {
	rr := v1alpha1.RelayRoute{ObjectMeta: meta("route-" + strings.ReplaceAll(domain, ".", "-")), Spec: v1alpha1.RelayRouteSpec{
		SenderDomainRef: v1alpha1.LocalObjectReference{Name: strings.ReplaceAll(domain, ".", "-")},
		Target: v1alpha1.RelayTarget{
			Host: v1alpha1.DomainName(host), Port: int32(port), //nolint:gosec // test ports fit
			TLSPolicy: v1alpha1.TLSPolicyNone, TLSMode: v1alpha1.TLSModeSTARTTLS,
		},
	}}
	for _, o := range opts {
		o(&rr)
	}
	return rr
}

func senders(addrs ...string) rrOpt {
	return func(rr *v1alpha1.RelayRoute) {
		for _, a := range addrs {
			rr.Spec.SenderAddresses = append(rr.Spec.SenderAddresses, v1alpha1.EmailAddress(a))
		}
	}
}

func tlsPolicy(p v1alpha1.TLSPolicy, m v1alpha1.TLSMode) rrOpt {
	return func(rr *v1alpha1.RelayRoute) { rr.Spec.Target.TLSPolicy, rr.Spec.Target.TLSMode = p, m }
}

// caBundle makes the route trust the CA in Secret "ca".
func caBundle() rrOpt {
	return func(rr *v1alpha1.RelayRoute) {
		rr.Spec.Target.CABundleSecretRef = &v1alpha1.SecretKeyReference{Name: "ca"}
	}
}

func credentials() rrOpt {
	return func(rr *v1alpha1.RelayRoute) {
		rr.Spec.Target.CredentialsSecretRef = &v1alpha1.LocalObjectReference{Name: "creds"}
	}
}

func caSecret(ca *testenv.CA) corev1.Secret {
	return corev1.Secret{ObjectMeta: meta("ca"), Data: map[string][]byte{routing.CABundleSecretKey: ca.PEM}}
}

func credsSecret(user, password string) corev1.Secret {
	return corev1.Secret{ObjectMeta: meta("creds"), Type: corev1.SecretTypeBasicAuth,
		Data: map[string][]byte{"username": []byte(user), "password": []byte(password)}}
}

// start runs the worker until the test ends (or stop).
func (e *env) start() *Worker {
	e.t.Helper()
	w, err := New(e.q, e.tables, e.opts)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.w, e.cancel, e.runErr = w, cancel, make(chan error, 1)
	go func() { e.runErr <- w.Run(ctx) }()
	return w
}

// stop aborts the worker and waits for Run to return.
func (e *env) stop() {
	if e.w == nil {
		return
	}
	e.cancel()
	select {
	case err := <-e.runErr:
		if err != nil {
			e.t.Errorf("Run: %v", err)
		}
	case <-time.After(testenv.WaitTimeout):
		e.t.Errorf("Run did not return within %s of its context's end", testenv.WaitTimeout)
	}
	e.w = nil
}

const testBody = "From: <app@sender.test>\r\nTo: <user@rcpt.test>\r\nSubject: test\r\n\r\nHello.\r\n"

// enqueue queues a message from from to rcpts with testBody.
func (e *env) enqueue(from string, rcpts ...string) queue.ID {
	e.t.Helper()
	env := queue.Envelope{From: from}
	for _, r := range rcpts {
		env.To = append(env.To, queue.Rcpt{Addr: r})
	}
	return e.enqueueEnv(env, testBody)
}

func (e *env) enqueueEnv(env queue.Envelope, body string) queue.ID {
	e.t.Helper()
	id, err := e.q.Enqueue(context.Background(), env, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	return id
}

// waitFor waits until cond holds, with the tests' shared bounded poll.
func (e *env) waitFor(what string, cond func() bool) {
	e.t.Helper()
	testenv.EventuallyTrue(e.t, "still waiting for "+what, cond)
}

// waitWithin is waitFor with a longer bound, for benchmarks.
func (e *env) waitWithin(limit time.Duration, what string, cond func() bool) {
	e.t.Helper()
	testenv.EventuallyWithin(e.t, limit, func() string {
		if cond() {
			return ""
		}
		return "still waiting for " + what
	})
}

// waitAttempts waits until the observer saw n attempts and returns them.
func (e *env) waitAttempts(n int) []Attempt {
	e.t.Helper()
	e.waitFor(fmt.Sprintf("%d attempts", n), func() bool { return len(e.observer.Attempts()) >= n })
	return e.observer.Attempts()
}

// lastAttempt waits for the n-th attempt and returns it.
func (e *env) attempt(n int) Attempt {
	e.t.Helper()
	return e.waitAttempts(n)[n-1]
}

// message returns the queued message, or false when it is gone.
func (e *env) message(id queue.ID) (queue.Message, bool) {
	e.t.Helper()
	m, err := e.q.Get(context.Background(), id)
	if err != nil {
		return queue.Message{}, false
	}
	return m, true
}

// waitGone waits until the message has left the queue.
func (e *env) waitGone(id queue.ID) {
	e.t.Helper()
	e.waitFor("message "+string(id)+" to leave the queue", func() bool { _, ok := e.message(id); return !ok })
}

// advanceToNext moves the clock to the queue's next due time, once the
// worker has given the message back.
func (e *env) advanceToNext() {
	e.t.Helper()
	var next time.Time
	e.waitFor("a message to be due", func() bool {
		var ok bool
		next, ok = e.q.NextDue()
		return ok
	})
	if d := next.Sub(e.clock.Now()); d > 0 {
		e.clock.Advance(d)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), testenv.WaitTimeout)
	t.Cleanup(cancel)
	return c
}
