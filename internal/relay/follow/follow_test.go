package follow

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/routing"
	"github.com/postgate/postgate/internal/testenv"
)

var cfg *rest.Config

func TestMain(m *testing.M) {
	s, stop, err := testenv.NewAPIServer()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cfg = s.Config
	code := m.Run()
	stop()
	os.Exit(code)
}

var nsSeq sync.Mutex
var nsN int

func namespace(t *testing.T, cs kubernetes.Interface) string {
	t.Helper()
	nsSeq.Lock()
	nsN++
	name := fmt.Sprintf("relay-%d", nsN)
	nsSeq.Unlock()
	if _, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return name
}

// table compiles a table of SenderDomains named after the prefix: each
// version of a test has its own set, so a table shows which version it is.
func table(prefix string, n int) *routing.Table {
	var in routing.Input
	for i := range n {
		name := fmt.Sprintf("%s-%03d", prefix, i)
		in.SenderDomains = append(in.SenderDomains, v1alpha1.SenderDomain{
			ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: name, UID: types.UID(name), Generation: 1},
			Spec:       v1alpha1.SenderDomainSpec{Domain: v1alpha1.DomainName(name + ".example.com")},
		})
	}
	return routing.Compile(in, nil).Table
}

// publisher writes tables as the operator does (contract 1), with knobs to
// misbehave.
type publisher struct {
	t  *testing.T
	cs kubernetes.Interface
	ns string
}

func (p publisher) shards(shards []routing.Shard) {
	p.t.Helper()
	immutable := true
	for _, s := range shards {
		_, err := p.cs.CoreV1().Secrets(p.ns).Create(context.Background(), &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: s.Name, Labels: map[string]string{routing.TableLabel: routing.TableLabelShard}},
			Immutable:  &immutable, Data: map[string][]byte{routing.ShardDataKey: s.Data},
		}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			p.t.Error(err)
		}
	}
}

func (p publisher) index(idx *routing.Index) {
	p.t.Helper()
	data, _ := json.Marshal(idx)
	secrets := p.cs.CoreV1().Secrets(p.ns)
	s, err := secrets.Get(context.Background(), routing.IndexSecretName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = secrets.Create(context.Background(), &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: routing.IndexSecretName, Labels: map[string]string{routing.TableLabel: routing.TableLabelIndex}},
			Data:       map[string][]byte{routing.IndexDataKey: data},
		}, metav1.CreateOptions{})
	} else if err == nil {
		s.Data = map[string][]byte{routing.IndexDataKey: data}
		_, err = secrets.Update(context.Background(), s, metav1.UpdateOptions{})
	}
	if err != nil {
		p.t.Error(err)
	}
}

func (p publisher) publish(tbl *routing.Table, version int64) (*routing.Index, []routing.Shard) {
	p.t.Helper()
	idx, shards, err := routing.Encode(tbl, version, 4)
	if err != nil {
		p.t.Fatal(err)
	}
	p.shards(shards)
	p.index(idx)
	return idx, shards
}

// logger writes the follower's log records into logs, a line each, for
// the test to wait on.
func logger(logs *testenv.LogBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(logs, nil))
}

func run(t *testing.T, f *Follower) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Error(err)
			}
		case <-time.After(testenv.WaitTimeout):
			t.Error("Run did not return")
		}
	}
	t.Cleanup(stop)
	return stop
}

func versionIs(f *Follower, v int64) func() string {
	return func() string {
		if tbl := f.Table(); tbl == nil || tbl.Version != v {
			return fmt.Sprintf("follower at %v, want version %d", versionOf(tbl), v)
		}
		return ""
	}
}

// waitVersion waits until f serves version v, woken by each table f swaps
// in.
func waitVersion(t *testing.T, f *Follower, v int64) {
	t.Helper()
	tables, cancel := f.Subscribe()
	defer cancel()
	timeout := time.NewTimer(testenv.WaitTimeout)
	defer timeout.Stop()
	// Subscribed before looking: a swap after the look is on the channel.
	for tbl := f.Table(); tbl == nil || tbl.Version != v; {
		select {
		case tbl = <-tables:
		case <-timeout.C:
			t.Fatalf("after %s: %s", testenv.WaitTimeout, versionIs(f, v)())
		}
	}
}

func versionOf(t *routing.Table) any {
	if t == nil {
		return "no table"
	}
	return t.Version
}

func TestFollowLoadsSwapsAndAcknowledges(t *testing.T) {
	cs := kubernetes.NewForConfigOrDie(cfg)
	ns := namespace(t, cs)
	p := publisher{t, cs, ns}
	p.publish(table("one", 3), 1)

	spool := t.TempDir()
	f, err := New(cs, Options{Namespace: ns, PodName: "relay-0", SpoolDir: spool, RenewInterval: 100 * time.Millisecond, LeaseDuration: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tables, cancel := f.Subscribe()
	defer cancel()
	stop := run(t, f)
	waitVersion(t, f, 1)
	if d := f.Table().Domain("one-002.example.com"); d == nil {
		t.Fatal("the loaded table lacks one-002")
	}
	select {
	case got := <-tables:
		if got.Version != 1 {
			t.Errorf("subscriber got version %d, want 1", got.Version)
		}
	case <-time.After(testenv.WaitTimeout):
		t.Fatal("subscriber got nothing")
	}
	leaseIs := func(v string) func() string {
		return func() string {
			l, err := cs.CoordinationV1().Leases(ns).Get(context.Background(), "postgate-relay-relay-0", metav1.GetOptions{})
			if err != nil {
				return err.Error()
			}
			if got := l.Annotations[routing.TableVersionAnnotation]; got != v {
				return fmt.Sprintf("Lease reports version %q, want %q", got, v)
			}
			if *l.Spec.HolderIdentity != "relay-0" || *l.Spec.LeaseDurationSeconds != 2 {
				return fmt.Sprintf("Lease spec %+v", l.Spec)
			}
			return ""
		}
	}
	testenv.Eventually(t, leaseIs("1"))

	p.publish(table("two", 5), 2)
	waitVersion(t, f, 2)
	if f.Table().Domain("one-000.example.com") != nil || f.Table().Domain("two-004.example.com") == nil {
		t.Error("version 2 is not the table published as version 2")
	}
	testenv.Eventually(t, leaseIs("2"))
	// The spool is written after the swap that the Lease acknowledges, so
	// it may trail the Lease by a moment.
	testenv.Eventually(t, func() string {
		if s, err := loadSpool(spool); err != nil || s == nil || s.Index.Version != 2 {
			return fmt.Sprintf("spool: %+v, %v; want version 2", s, err)
		}
		return ""
	})

	// The Lease is renewed.
	first := lease(t, cs, ns).Spec.RenewTime.Time
	testenv.Eventually(t, func() string {
		if !lease(t, cs, ns).Spec.RenewTime.After(first) {
			return "not renewed"
		}
		return ""
	})
	// A clean stop lets the Lease expire at once.
	stop()
	l := lease(t, cs, ns)
	if exp := l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second); exp.After(time.Now()) {
		t.Errorf("after a clean stop the Lease expires at %s, in the future", exp)
	}
}

func lease(t *testing.T, cs kubernetes.Interface, ns string) *coordinationv1.Lease {
	t.Helper()
	l, err := cs.CoordinationV1().Leases(ns).Get(context.Background(), "postgate-relay-relay-0", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestFollowNeverSwapsInHalfATable: an index whose shards are missing or do
// not match is not applied; the current table stays until a complete one is
// there. Then a publisher that replaces versions as fast as it can, deleting
// each version's shards right after the next index (the worst a loader
// racing the operator can meet): every table swapped in is a whole version.
func TestFollowNeverSwapsInHalfATable(t *testing.T) {
	cs := kubernetes.NewForConfigOrDie(cfg)
	ns := namespace(t, cs)
	p := publisher{t, cs, ns}
	_, shards1 := p.publish(table("v1", 20), 1)
	logs := &testenv.LogBuffer{}
	// While the publisher below races it, the follower's shard reads wait
	// until the publisher has deleted the shards they ask for: the
	// follower meets indexes whose shards are gone, however the machine
	// schedules the two.
	gate := &publishGate{}
	slow := rest.CopyConfig(cfg)
	slow.Wrap(func(rt http.RoundTripper) http.RoundTripper { return lateShards{rt, gate} })
	f, err := New(kubernetes.NewForConfigOrDie(slow), Options{Namespace: ns, PodName: "relay-0", RetryInterval: 50 * time.Millisecond, Logger: logger(logs)})
	if err != nil {
		t.Fatal(err)
	}
	run(t, f)
	waitVersion(t, f, 1)

	// An index naming a shard that is not there (deleted, or a publisher
	// that wrote the index first). Small tables have one shard.
	idx2, shards2, err := routing.Encode(table("v2", 20), 2, 4)
	if err != nil {
		t.Fatal(err)
	}
	p.shards(shards2[1:])
	p.index(idx2)
	logs.WaitFor(t, "version 2: shard "+shards2[0].Name, 2) // tried twice
	if why := versionIs(f, 1)(); why != "" {
		t.Fatal(why)
	}
	// A corrupt shard: the name of one, other content.
	immutable := true
	_, err = cs.CoreV1().Secrets(ns).Create(context.Background(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: shards2[0].Name, Labels: map[string]string{routing.TableLabel: routing.TableLabelShard}},
		Immutable:  &immutable, Data: map[string][]byte{routing.ShardDataKey: shards1[0].Data},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	logs.WaitFor(t, "does not match the index", 1)
	if why := versionIs(f, 1)(); why != "" {
		t.Fatal(why)
	}
	if err := cs.CoreV1().Secrets(ns).Delete(context.Background(), shards2[0].Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	p.shards(shards2[:1])
	waitVersion(t, f, 2)

	// Race the loader. The subscriber collects every table swapped in
	// until the last version, so the check below sees each one.
	const last = 40
	failedBefore := logs.Count("Loading the routing table failed")
	tables, cancel := f.Subscribe()
	defer cancel()
	var swapped []*routing.Table
	sawLast := make(chan struct{})
	go func() {
		defer close(sawLast)
		for tbl := range tables {
			swapped = append(swapped, tbl)
			if tbl.Version == last {
				return
			}
		}
	}()
	gate.hold()
	prev := shards2
	for v := int64(3); v <= last; v++ {
		_, shards := p.publish(table(fmt.Sprintf("v%d", v), 20), v)
		for _, s := range prev {
			if !containsShard(shards, s.Name) {
				_ = cs.CoreV1().Secrets(ns).Delete(context.Background(), s.Name, metav1.DeleteOptions{})
			}
		}
		prev = shards
		gate.move()
	}
	gate.release()
	select {
	case <-sawLast:
	case <-time.After(testenv.WaitTimeout):
		t.Fatalf("after %s: %s", testenv.WaitTimeout, versionIs(f, last)())
	}
	if len(swapped) == 0 {
		t.Fatal("no swap seen")
	}
	for _, tbl := range swapped {
		objs := tbl.Objects()
		if len(objs) != 20 {
			t.Errorf("version %d has %d objects, want 20", tbl.Version, len(objs))
		}
		for _, o := range objs {
			if !strings.HasPrefix(o.Name, fmt.Sprintf("v%d-", tbl.Version)) {
				t.Errorf("version %d holds %s of another version", tbl.Version, o.Name)
				break
			}
		}
	}
	t.Logf("%d versions published while the follower loaded: %d swapped in, %d loads failed on a shard already gone and were retried",
		last-2, len(swapped), logs.Count("Loading the routing table failed")-failedBefore)
}

// publishGate holds each reader until the publisher has moved on twice:
// past the version the reader was reading, and past deleting its shards.
// Open (held nil), it holds nobody.
type publishGate struct {
	mu         sync.Mutex
	held, next chan struct{} // closed at the next move, at the one after
}

// hold makes the readers that come from now on wait.
func (g *publishGate) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.held, g.next = make(chan struct{}), make(chan struct{})
}

// move releases the readers that came before the last move.
func (g *publishGate) move() {
	g.mu.Lock()
	defer g.mu.Unlock()
	close(g.held)
	g.held, g.next = g.next, make(chan struct{})
}

// release lets every reader through, now and later.
func (g *publishGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	close(g.held)
	close(g.next)
	g.held, g.next = nil, nil
}

// wait returns the channel a reader waits on, nil when it need not.
func (g *publishGate) wait() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.next
}

// lateShards holds each read of a shard Secret at the gate.
type lateShards struct {
	next http.RoundTripper
	gate *publishGate
}

func (l lateShards) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/secrets/"+routing.ShardNamePrefix) {
		if held := l.gate.wait(); held != nil {
			select {
			case <-held:
			case <-r.Context().Done():
				return nil, r.Context().Err()
			}
		}
	}
	return l.next.RoundTrip(r)
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func containsShard(shards []routing.Shard, name string) bool {
	for _, s := range shards {
		if s.Name == name {
			return true
		}
	}
	return false
}

func TestFollowStartsFromSpoolWithoutAPIServer(t *testing.T) {
	cs := kubernetes.NewForConfigOrDie(cfg)
	ns := namespace(t, cs)
	publisher{t, cs, ns}.publish(table("spooled", 4), 7)
	spool := t.TempDir()
	f, err := New(cs, Options{Namespace: ns, PodName: "relay-0", SpoolDir: spool})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, f)
	waitVersion(t, f, 7)
	stop()

	// Nothing listens on port 1 of 127.0.0.1: the API server is away. Run
	// goes on until the follower has tried it and failed.
	failed := make(chan struct{})
	var once sync.Once
	awayCfg := &rest.Config{Host: "https://127.0.0.1:1", Timeout: time.Second}
	awayCfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			resp, err := rt.RoundTrip(r)
			if err != nil {
				once.Do(func() { close(failed) })
			}
			return resp, err
		})
	})
	away := kubernetes.NewForConfigOrDie(awayCfg)
	f2, err := New(away, Options{Namespace: ns, PodName: "relay-0", SpoolDir: spool})
	if err != nil {
		t.Fatal(err)
	}
	if why := versionIs(f2, 7)(); why != "" {
		t.Fatal(why)
	}
	if f2.Table().Domain("spooled-003.example.com") == nil {
		t.Error("the spooled table lacks spooled-003")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-failed:
		case <-time.After(testenv.WaitTimeout):
			t.Error("the follower never tried the API server")
		}
		cancel()
	}()
	if err := f2.Run(ctx); err != nil {
		t.Errorf("Run without an API server: %v", err)
	}
	if why := versionIs(f2, 7)(); why != "" {
		t.Error(why)
	}
}

func TestSpoolIsReplacedWhole(t *testing.T) {
	dir := t.TempDir()
	idx, shards, err := routing.Encode(table("a", 3), 3, 1)
	if err != nil {
		t.Fatal(err)
	}
	in := &spooled{Index: idx, Shards: map[string][]byte{shards[0].Name: shards[0].Data}}
	if err := saveSpool(dir, in); err != nil {
		t.Fatal(err)
	}
	if err := saveSpool(dir, in); err != nil { // over an existing one
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != spoolFile {
		t.Errorf("spool directory holds %v, want only %s", entries, spoolFile)
	}
	out, err := loadSpool(dir)
	if err != nil || out.Index.Hash != idx.Hash {
		t.Fatalf("loadSpool: %+v, %v", out, err)
	}
	if _, err := routing.Decode(out.Index, out.Shards, nil); err != nil {
		t.Error(err)
	}

	// A damaged spool is ignored, not fatal: the API server has the table.
	if err := os.WriteFile(filepath.Join(dir, spoolFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &testenv.LogBuffer{}
	f, err := New(kubernetes.NewForConfigOrDie(cfg), Options{Namespace: "x", PodName: "p", SpoolDir: dir, Logger: logger(logs)})
	if err != nil {
		t.Fatal(err)
	}
	if f.Table() != nil || logs.Count("Ignoring the spooled routing table") != 1 {
		t.Errorf("a damaged spool gave table %v", f.Table())
	}
}
