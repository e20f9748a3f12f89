package report

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/delivery"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/routing"
	"github.com/postgate/postgate/internal/testenv"
)

var (
	apiServer *testenv.APIServer
	scheme    = runtime.NewScheme()
)

func TestMain(m *testing.M) {
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		panic(err)
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		panic(err)
	}
	s, stop, err := testenv.NewAPIServer()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	apiServer = s
	code := m.Run()
	stop()
	os.Exit(code)
}

// counting wraps a client and counts the status patches that reach it, per
// object name; a test waits on the counts, woken by each patch.
type counting struct {
	client.Client
	mu               sync.Mutex
	writes, failures int64
	byName           map[string]int64 // writes that succeeded
	changes          testenv.Changes
	// before, when set, runs before each patch reaches the API server.
	before func()
}

func newCounting(t *testing.T, inner func() client.WithWatch) *counting {
	t.Helper()
	c := &counting{byName: map[string]int64{}}
	c.Client = interceptor.NewClient(inner(), interceptor.Funcs{
		SubResourcePatch: func(ctx context.Context, _ client.Client, sub string, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
			if c.before != nil {
				c.before()
			}
			err := inner().SubResource(sub).Patch(ctx, obj, patch, opts...)
			c.count(obj.GetName(), err)
			return err
		},
		SubResourceApply: func(ctx context.Context, _ client.Client, sub string, obj runtime.ApplyConfiguration, opts ...client.SubResourceApplyOption) error {
			if c.before != nil {
				c.before()
			}
			err := inner().SubResource(sub).Apply(ctx, obj, opts...)
			var name string
			if o, ok := obj.(interface{ GetName() *string }); ok && o.GetName() != nil {
				name = *o.GetName()
			}
			c.count(name, err)
			return err
		},
	})
	return c
}

// count records one status write of the object named name.
func (c *counting) count(name string, err error) {
	defer c.changes.Changed()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.failures++
	} else {
		c.writes++
		c.byName[name]++
	}
}

// counts returns the writes and the failed writes so far.
func (c *counting) counts() (writes, failures int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes, c.failures
}

// written returns how often the object named name was written.
func (c *counting) written(name string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byName[name]
}

// wait waits until cond holds for the counts (read under the lock).
func (c *counting) wait(t *testing.T, what string, cond func(c *counting) bool) {
	t.Helper()
	if err := c.await(what, cond); err != nil {
		t.Fatal(err)
	}
}

// await is wait for goroutines other than the test's.
func (c *counting) await(what string, cond func(c *counting) bool) error {
	return c.changes.Await(func() string {
		c.mu.Lock()
		defer c.mu.Unlock()
		if cond(c) {
			return ""
		}
		return fmt.Sprintf("%s (%d writes, %d failed)", what, c.writes, c.failures)
	})
}

// advance moves the Reporter's clock and wakes it, as its own timer would
// have on a real clock.
func advance(r *Reporter, clk *testenv.Clock, d time.Duration) {
	clk.Add(d)
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func newClient(t *testing.T, cfg *rest.Config) client.WithWatch {
	t.Helper()
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// fixture creates a namespace with a SenderDomain "sd" and a RelayRoute
// "route", and returns their references as the table carries them.
func fixture(t *testing.T, c client.Client) (ns string, domain, route *routing.ObjectRef) {
	t.Helper()
	ctx := t.Context()
	n := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "report-"}}
	if err := c.Create(ctx, n); err != nil {
		t.Fatal(err)
	}
	ns = n.Name
	sd := &v1alpha1.SenderDomain{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "sd"},
		Spec:       v1alpha1.SenderDomainSpec{Domain: "example.com"},
	}
	if err := c.Create(ctx, sd); err != nil {
		t.Fatal(err)
	}
	rr := &v1alpha1.RelayRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "route"},
		Spec: v1alpha1.RelayRouteSpec{
			SenderDomainRef: v1alpha1.LocalObjectReference{Name: "sd"},
			Target:          v1alpha1.RelayTarget{Host: "smarthost.relay.test"},
		},
	}
	if err := c.Create(ctx, rr); err != nil {
		t.Fatal(err)
	}
	return ns,
		&routing.ObjectRef{Kind: routing.KindSenderDomain, Namespace: ns, Name: "sd", UID: sd.UID, Generation: 1},
		&routing.ObjectRef{Kind: routing.KindRelayRoute, Namespace: ns, Name: "route", UID: rr.UID, Generation: 1}
}

func sent(domain, route *routing.ObjectRef, end time.Time) delivery.Attempt {
	return delivery.Attempt{
		QueueID:    "q1",
		Sender:     "app@example.com",
		Domain:     domain,
		Route:      route,
		RelayHost:  "smarthost.relay.test",
		RelayAddr:  netip.MustParseAddrPort("127.0.0.7:2525"),
		SourceAddr: netip.MustParseAddrPort("127.0.0.1:40000"),
		Reply:      queue.Reply{Code: 250, Enhanced: "2.0.0", Text: "OK queued"},
		TLS: delivery.TLSInfo{
			Requested: v1alpha1.TLSPolicyRequired, Mode: v1alpha1.TLSModeSTARTTLS, Established: true,
			Protocol: "TLSv1.3", CipherSuite: "TLS_AES_128_GCM_SHA256",
		},
		Status:     delivery.StatusSent,
		Recipients: []delivery.RecipientResult{{Addr: "user@example.net", Status: delivery.StatusSent}},
		Start:      end.Add(-50 * time.Millisecond),
		End:        end,
	}
}

func bounced(domain, route *routing.ObjectRef, end time.Time) delivery.Attempt {
	a := sent(domain, route, end)
	a.Reply = queue.Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user"}
	a.Status = delivery.StatusBounced
	a.Recipients = []delivery.RecipientResult{{Addr: "nobody@example.net", Status: delivery.StatusBounced, Reply: a.Reply}}
	return a
}

func run(t *testing.T, r *Reporter) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = r.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// entryOf returns the replica's entry of the object, nil when absent.
func entryOf(t *testing.T, c client.Client, obj client.Object, replica string) *v1alpha1.ReplicaDeliveryStatus {
	t.Helper()
	if err := c.Get(t.Context(), client.ObjectKeyFromObject(obj), obj); err != nil {
		t.Fatal(err)
	}
	var d *v1alpha1.DeliveryStatus
	switch o := obj.(type) {
	case *v1alpha1.RelayRoute:
		d = o.Status.Delivery
	case *v1alpha1.SenderDomain:
		d = o.Status.Delivery
	}
	if d == nil {
		return nil
	}
	for i := range d.Replicas {
		if d.Replicas[i].Name == replica {
			return &d.Replicas[i]
		}
	}
	return nil
}

// TestCoalesced observes 1,000 deliveries and a bounce: with the default
// interval of 10 s the route's entry is written a handful of times and
// ends up showing both. The Reporter's clock is the test's: the
// observations are spread over a second of it and the writes an interval
// allows are counted in it, however slowly the machine runs.
func TestCoalesced(t *testing.T) {
	live := newClient(t, apiServer.Config)
	c := newCounting(t, func() client.WithWatch { return live })
	_, domain, route := fixture(t, live)
	clk := testenv.NewClock(time.Now())
	r, err := New(c, Options{Replica: "relay-0", Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)

	start := clk.Now()
	const n = 1000
	for i := range n {
		r.Observe(sent(domain, route, clk.Now()))
		if i%100 == 99 {
			clk.Add(100 * time.Millisecond) // spread over about a second
		}
	}
	r.Observe(bounced(domain, route, clk.Now()))
	r.Observe(sent(domain, nil, clk.Now())) // MX mail: the SenderDomain
	// Whatever was not in the first write is due one interval later.
	advance(r, clk, DefaultInterval)

	rr := &v1alpha1.RelayRoute{ObjectMeta: metav1.ObjectMeta{Namespace: route.Namespace, Name: route.Name}}
	var e *v1alpha1.ReplicaDeliveryStatus
	testenv.EventuallyTrue(t, "the route's entry does not count every attempt", func() bool {
		e = entryOf(t, live, rr, "relay-0")
		return e != nil && e.Window != nil && e.Window.Delivered+e.Window.Bounced == n+1
	})
	elapsed := clk.Now().Sub(start)
	writes, _ := c.counts()
	t.Logf("%d attempts observed; %d status writes (2 objects) in %s of the Reporter's clock", n+2, writes, elapsed)
	// One write per object straight away, then one per object and 10 s.
	if limit := 2 * (1 + int64(elapsed/DefaultInterval) + 1); writes > limit {
		t.Errorf("%d writes in %s, want at most %d", writes, elapsed, limit)
	}

	d := e.LastDelivered
	if d == nil || d.ResponseCode != 250 || d.EnhancedCode != "2.0.0" || d.RelayHost != "smarthost.relay.test" ||
		d.RelayAddress != "127.0.0.7:2525" || d.SourceAddress != "127.0.0.1:40000" {
		t.Errorf("lastDelivered: got %+v", d)
	}
	if d != nil && (d.TLS == nil || !d.TLS.Established || d.TLS.Protocol != "TLSv1.3" ||
		d.TLS.CipherSuite != "TLS_AES_128_GCM_SHA256" || d.TLS.Requested != v1alpha1.TLSPolicyRequired) {
		t.Errorf("lastDelivered.tls: got %+v", d.TLS)
	}
	f := e.LastFailed
	if f == nil || f.ResponseCode != 550 || f.EnhancedCode != "5.1.1" || f.Reply != "no such user" {
		t.Errorf("lastFailed: got %+v", f)
	}
	if w := e.Window; w.Seconds != 900 || w.Delivered != n || w.Bounced != 1 || w.Deferred != 0 {
		t.Errorf("window: got %+v", w)
	}
	if e.UpdateTime == nil {
		t.Error("updateTime is not set")
	}

	sd := &v1alpha1.SenderDomain{ObjectMeta: metav1.ObjectMeta{Namespace: domain.Namespace, Name: domain.Name}}
	testenv.EventuallyTrue(t, "the SenderDomain's entry does not show the MX delivery", func() bool {
		e := entryOf(t, live, sd, "relay-0")
		return e != nil && e.LastDelivered != nil && e.Window.Delivered == 1
	})
}

// TestReplicasAndConditions: two replicas write their own entries without
// removing each other's, and the operator's conditions survive.
func TestReplicasAndConditions(t *testing.T) {
	live := newClient(t, apiServer.Config)
	_, domain, route := fixture(t, live)
	ctx := t.Context()

	// The operator's condition, under its own field manager.
	cond := map[string]any{
		"apiVersion": v1alpha1.GroupVersion.String(), "kind": "RelayRoute",
		"metadata": map[string]string{"name": route.Name, "namespace": route.Namespace},
		"status": map[string]any{"conditions": []metav1.Condition{{
			Type: string(v1alpha1.ConditionReady), Status: metav1.ConditionTrue, Reason: "Ready", Message: "set by the test",
			LastTransitionTime: metav1.Now(), ObservedGeneration: 1,
		}}},
	}
	data, err := json.Marshal(cond)
	if err != nil {
		t.Fatal(err)
	}
	rr := &v1alpha1.RelayRoute{ObjectMeta: metav1.ObjectMeta{Namespace: route.Namespace, Name: route.Name}}
	if err := live.Status().Patch(ctx, rr, client.RawPatch(types.ApplyPatchType, data), client.FieldOwner("postgate-operator"), client.ForceOwnership); err != nil {
		t.Fatal(err)
	}

	reporters := map[string]*Reporter{}
	clients := map[*Reporter]*counting{}
	for _, name := range []string{"relay-a", "relay-b"} {
		c := newCounting(t, func() client.WithWatch { return live })
		r, err := New(c, Options{Replica: name, Interval: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		run(t, r)
		reporters[name] = r
		clients[r] = c
	}
	t0 := time.Now().Add(-time.Minute).Truncate(time.Second)
	reporters["relay-a"].Observe(sent(domain, route, t0))
	reporters["relay-b"].Observe(bounced(domain, route, t0))
	testenv.EventuallyTrue(t, "both replicas' entries are not there", func() bool {
		a, b := entryOf(t, live, rr, "relay-a"), entryOf(t, live, rr, "relay-b")
		return a != nil && a.LastDelivered != nil && b != nil && b.LastFailed != nil
	})
	// More from each, concurrently: each replica waits for its own write
	// after every ten, so that the writes of the two interleave.
	var wg sync.WaitGroup
	for _, r := range reporters {
		wg.Go(func() {
			c := clients[r]
			for i := range 50 {
				before := c.written(route.Name)
				r.Observe(sent(domain, route, t0.Add(time.Duration(i+1)*time.Second)))
				if i%10 != 9 {
					continue
				}
				if err := c.await("no write of the route", func(c *counting) bool { return c.byName[route.Name] > before }); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	want := t0.Add(50 * time.Second)
	testenv.EventuallyTrue(t, "the later deliveries do not show in both entries", func() bool {
		a, b := entryOf(t, live, rr, "relay-a"), entryOf(t, live, rr, "relay-b")
		return a != nil && b != nil && a.LastDelivered != nil && b.LastDelivered != nil &&
			a.LastDelivered.Time.Sub(want).Abs() < time.Microsecond && b.LastDelivered.Time.Sub(want).Abs() < time.Microsecond
	})
	if b := entryOf(t, live, rr, "relay-b"); b.LastFailed == nil || b.LastFailed.ResponseCode != 550 {
		t.Errorf("relay-b lost its lastFailed: %+v", b.LastFailed)
	}
	if a := entryOf(t, live, rr, "relay-a"); a.LastFailed != nil {
		t.Errorf("relay-a has a lastFailed it never saw: %+v", a.LastFailed)
	}
	if got := rr.Status.Conditions; len(got) != 1 || got[0].Type != string(v1alpha1.ConditionReady) || got[0].Message != "set by the test" {
		t.Errorf("the operator's conditions changed: %+v", got)
	}
	managers := map[string]bool{}
	for _, m := range rr.ManagedFields {
		if m.Subresource == "status" {
			managers[m.Manager] = true
		}
	}
	for _, m := range []string{"postgate-operator", "postgate-relay/relay-a", "postgate-relay/relay-b"} {
		if !managers[m] {
			t.Errorf("no status fields managed by %s; managers: %v", m, managers)
		}
	}
}

// TestAPIServerAway: while the API server cannot be reached Observe does
// not wait and writes are retried; the latest state lands once it is back.
func TestAPIServerAway(t *testing.T) {
	live := newClient(t, apiServer.Config)
	_, domain, route := fixture(t, live)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := rest.CopyConfig(apiServer.Config)
	closed.Host = "https://" + l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	var current atomic.Pointer[client.WithWatch]
	away := newClient(t, closed)
	current.Store(&away)
	c := newCounting(t, func() client.WithWatch { return *current.Load() })
	// The first write hangs until the test lets it go: the API server does
	// not answer. Observe must not wait for it.
	writing, release := make(chan struct{}), make(chan struct{})
	var hung sync.Once
	c.before = func() {
		hung.Do(func() {
			close(writing)
			<-release
		})
	}

	r, err := New(c, Options{Replica: "relay-0", Interval: 100 * time.Millisecond, MaxBackoff: 400 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	r.Observe(sent(domain, route, time.Now()))
	select {
	case <-writing:
	case <-time.After(testenv.WaitTimeout):
		t.Fatal("no write was tried")
	}
	observed := make(chan struct{})
	go func() {
		defer close(observed)
		for range 999 {
			r.Observe(sent(domain, route, time.Now()))
		}
		r.Observe(bounced(domain, route, time.Now()))
	}()
	select {
	case <-observed:
	case <-time.After(testenv.WaitTimeout):
		t.Fatal("Observe waited for the API server: 1,001 calls did not return while a write hung")
	}
	close(release)
	c.wait(t, "the write was not retried", func(c *counting) bool { return c.failures >= 2 })
	if w, _ := c.counts(); w != 0 {
		t.Fatal("a write reached a closed port")
	}
	current.Store(&live)

	rr := &v1alpha1.RelayRoute{ObjectMeta: metav1.ObjectMeta{Namespace: route.Namespace, Name: route.Name}}
	testenv.EventuallyTrue(t, "the entry was not written once the API server was back", func() bool {
		e := entryOf(t, live, rr, "relay-0")
		return e != nil && e.LastFailed != nil && e.LastFailed.ResponseCode == 550 && e.Window.Delivered == 1000
	})
	_, failed := c.counts()
	t.Logf("%d failed writes while away", failed)
}

// TestGone: an object that does not exist is forgotten quietly.
func TestGone(t *testing.T) {
	live := newClient(t, apiServer.Config)
	ns, domain, _ := fixture(t, live)
	c := newCounting(t, func() client.WithWatch { return live })
	logs := &testenv.LogBuffer{}
	r, err := New(c, Options{Replica: "relay-0", Interval: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	gone := &routing.ObjectRef{Kind: routing.KindRelayRoute, Namespace: ns, Name: "deleted"}
	r.Observe(sent(domain, gone, time.Now()))
	logs.WaitFor(t, "the object is gone", 1)
	r.mu.Lock()
	remembered := len(r.objs)
	r.mu.Unlock()
	if _, failed := c.counts(); failed != 1 || remembered != 0 {
		t.Fatalf("the missing route is still remembered: %d failed writes, %d objects", failed, remembered)
	}
	r.Observe(sent(nil, nil, time.Now())) // neither route nor domain: nothing to report
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.objs) != 0 {
		t.Errorf("an attempt without route or domain was recorded: %v", r.objs)
	}
}

func TestTruncate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"abcdef", 3, "abc"},
		{"aé", 2, "a"}, // é is two bytes: not split
		{"aé", 3, "aé"},
		{"€€", 4, "€"},
	} {
		if got := truncate(tc.in, tc.n); got != tc.want {
			t.Errorf("truncate(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}

// TestWindowAgesOut: without more mail the entry is written once more when
// its counts have left the window, and keeps the last attempts.
func TestWindowAgesOut(t *testing.T) {
	live := newClient(t, apiServer.Config)
	_, domain, route := fixture(t, live)
	c := newCounting(t, func() client.WithWatch { return live })
	clk := testenv.NewClock(time.Now())
	const interval, window = 100 * time.Millisecond, 1500 * time.Millisecond
	r, err := New(c, Options{Replica: "relay-0", Interval: interval, Window: window, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	r.Observe(sent(domain, route, clk.Now()))
	rr := &v1alpha1.RelayRoute{ObjectMeta: metav1.ObjectMeta{Namespace: route.Namespace, Name: route.Name}}
	testenv.EventuallyTrue(t, "the delivery is not counted", func() bool {
		e := entryOf(t, live, rr, "relay-0")
		return e != nil && e.Window != nil && e.Window.Delivered == 1
	})
	advance(r, clk, window)
	testenv.EventuallyTrue(t, "the count did not leave the window", func() bool {
		e := entryOf(t, live, rr, "relay-0")
		return e.Window != nil && e.Window.Delivered == 0 && e.LastDelivered != nil
	})
	// Much later, two writes of the SenderDomain, an interval apart: the
	// Reporter writes every object that is due in one pass, so once the
	// second is done, a third write of the route would have been done too.
	clk.Add(10 * window)
	for i := range int64(2) {
		r.Observe(sent(domain, nil, clk.Now()))
		c.wait(t, "the SenderDomain is not written", func(c *counting) bool { return c.byName[domain.Name] > i })
		clk.Add(interval)
	}
	if n := c.written(route.Name); n != 2 {
		t.Errorf("%d writes of the route, want 2: the delivery, then the empty window", n)
	}
}

// TestHeldIsNoFailure: a held attempt (a RelayRoute that cannot take
// effect) is counted deferred, but it tried no host: it is no lastFailed,
// so the operator does not call the target unreachable.
func TestHeldIsNoFailure(t *testing.T) {
	live := newClient(t, apiServer.Config)
	_, domain, route := fixture(t, live)
	c := newCounting(t, func() client.WithWatch { return live })
	r, err := New(c, Options{Replica: "relay-a", Interval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	t0 := time.Now().Add(-time.Minute).Truncate(time.Second)
	held := sent(domain, route, t0)
	held.RelayHost, held.RelayAddr, held.SourceAddr, held.TLS = "", netip.AddrPort{}, netip.AddrPort{}, delivery.TLSInfo{}
	held.Reply = queue.Reply{Enhanced: "4.4.4", Text: "held: RelayRoute x/route cannot take effect"}
	held.Cause, held.Status = delivery.CauseHeld, delivery.StatusDeferred
	held.Recipients = []delivery.RecipientResult{{Addr: "user@example.net", Status: delivery.StatusDeferred, Reply: held.Reply}}
	r.Observe(held)
	rr := &v1alpha1.RelayRoute{ObjectMeta: metav1.ObjectMeta{Namespace: route.Namespace, Name: route.Name}}
	c.wait(t, "the entry is not written", func(c *counting) bool { return c.writes > 0 })
	e := entryOf(t, live, rr, "relay-a")
	if e == nil || e.Window == nil || e.Window.Deferred != 1 {
		t.Fatalf("entry %+v, want the held recipient counted deferred", e)
	}
	if e.LastFailed != nil {
		t.Errorf("a held attempt is the route's lastFailed: %+v", e.LastFailed)
	}
}

// TestThrottledAttempt: an MX attempt that traffic shaping deferred
// without an attempt reaches the SenderDomain's entry with its site and
// until when, which the operator's DeliveryDegraded=Throttled reads.
func TestThrottledAttempt(t *testing.T) {
	live := newClient(t, apiServer.Config)
	_, domain, _ := fixture(t, live)
	c := newCounting(t, func() client.WithWatch { return live })
	r, err := New(c, Options{Replica: "relay-a", Interval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	t0 := time.Now().Add(-time.Minute).Truncate(time.Second)
	until := t0.Add(5 * time.Minute)
	a := sent(domain, nil, t0)
	a.RelayHost, a.RelayAddr, a.SourceAddr, a.TLS = "", netip.AddrPort{}, netip.AddrPort{}, delivery.TLSInfo{}
	a.Reply = queue.Reply{Code: 451, Enhanced: "4.7.0", Text: "site google.com suspended until " + until.UTC().Format(time.RFC3339) + ": throttled"}
	a.Cause, a.Status = delivery.CauseThrottled, delivery.StatusDeferred
	a.Site, a.ThrottledUntil, a.SiteSuspended = "google.com", until, true
	a.Recipients = []delivery.RecipientResult{{Addr: "user@example.net", Status: delivery.StatusDeferred, Reply: a.Reply}}
	r.Observe(a)
	sd := &v1alpha1.SenderDomain{ObjectMeta: metav1.ObjectMeta{Namespace: domain.Namespace, Name: domain.Name}}
	c.wait(t, "the entry is not written", func(c *counting) bool { return c.writes > 0 })
	e := entryOf(t, live, sd, "relay-a")
	if e == nil || e.LastFailed == nil {
		t.Fatalf("entry %+v, want the throttled attempt as lastFailed", e)
	}
	f := e.LastFailed
	if f.Site != "google.com" || f.ThrottledUntil == nil || !f.ThrottledUntil.Time.Equal(until) || f.ResponseCode != 451 {
		t.Errorf("lastFailed %+v (throttledUntil %v), want site google.com throttled until %s", f, f.ThrottledUntil, until)
	}
}
