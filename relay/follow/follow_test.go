package follow

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/relay/routing"
	"github.com/postgate/postgate/relay/testenv"
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

// logLines records the follower's log messages.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) logger() logr.Logger {
	return funcr.New(func(prefix, args string) {
		l.mu.Lock()
		l.lines = append(l.lines, prefix+args)
		l.mu.Unlock()
	}, funcr.Options{})
}

func (l *logLines) count(substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.lines {
		if strings.Contains(s, substr) {
			n++
		}
	}
	return n
}

func eventually(t *testing.T, timeout time.Duration, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		why := cond()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const timeout = 20 * time.Second

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
		case <-time.After(timeout):
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
	eventually(t, timeout, versionIs(f, 1))
	if d := f.Table().Domain("one-002.example.com"); d == nil {
		t.Fatal("the loaded table lacks one-002")
	}
	select {
	case got := <-tables:
		if got.Version != 1 {
			t.Errorf("subscriber got version %d, want 1", got.Version)
		}
	case <-time.After(timeout):
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
	eventually(t, timeout, leaseIs("1"))

	p.publish(table("two", 5), 2)
	eventually(t, timeout, versionIs(f, 2))
	if f.Table().Domain("one-000.example.com") != nil || f.Table().Domain("two-004.example.com") == nil {
		t.Error("version 2 is not the table published as version 2")
	}
	eventually(t, timeout, leaseIs("2"))
	s, err := loadSpool(spool)
	if err != nil || s == nil || s.Index.Version != 2 {
		t.Fatalf("spool: %+v, %v; want version 2", s, err)
	}

	// The Lease is renewed.
	first := lease(t, cs, ns).Spec.RenewTime.Time
	eventually(t, timeout, func() string {
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
	logs := &logLines{}
	// The follower reads each shard 30ms late, so that the publisher below
	// overtakes it: it meets indexes whose shards are already deleted.
	slow := rest.CopyConfig(cfg)
	slow.Wrap(func(rt http.RoundTripper) http.RoundTripper { return lateShards{rt, 30 * time.Millisecond} })
	f, err := New(kubernetes.NewForConfigOrDie(slow), Options{Namespace: ns, PodName: "relay-0", RetryInterval: 50 * time.Millisecond, Log: logs.logger()})
	if err != nil {
		t.Fatal(err)
	}
	run(t, f)
	eventually(t, timeout, versionIs(f, 1))

	// An index naming a shard that is not there (deleted, or a publisher
	// that wrote the index first). Small tables have one shard.
	idx2, shards2, err := routing.Encode(table("v2", 20), 2, 4)
	if err != nil {
		t.Fatal(err)
	}
	p.shards(shards2[1:])
	p.index(idx2)
	eventually(t, timeout, func() string {
		if logs.count("version 2: shard "+shards2[0].Name) < 2 {
			return "the follower has not tried version 2 twice yet"
		}
		return ""
	})
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
	eventually(t, timeout, func() string {
		if logs.count("does not match the index") < 1 {
			return "the follower has not read the corrupt shard yet"
		}
		return ""
	})
	if why := versionIs(f, 1)(); why != "" {
		t.Fatal(why)
	}
	if err := cs.CoreV1().Secrets(ns).Delete(context.Background(), shards2[0].Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	p.shards(shards2[:1])
	eventually(t, timeout, versionIs(f, 2))

	// Race the loader.
	failedBefore := logs.count("Loading the routing table failed")
	tables, cancel := f.Subscribe()
	defer cancel()
	var swapped []*routing.Table
	var wg sync.WaitGroup
	wg.Go(func() {
		for tbl := range tables {
			swapped = append(swapped, tbl)
		}
	})
	const last = 40
	prev := shards2
	for v := int64(3); v <= last; v++ {
		_, shards := p.publish(table(fmt.Sprintf("v%d", v), 20), v)
		for _, s := range prev {
			if !containsShard(shards, s.Name) {
				_ = cs.CoreV1().Secrets(ns).Delete(context.Background(), s.Name, metav1.DeleteOptions{})
			}
		}
		prev = shards
	}
	eventually(t, timeout, versionIs(f, last))
	cancel()
	wg.Wait()
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
		last-2, len(swapped), logs.count("Loading the routing table failed")-failedBefore)
}

// lateShards delays the reads of shard Secrets.
type lateShards struct {
	next  http.RoundTripper
	delay time.Duration
}

func (l lateShards) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/secrets/"+routing.ShardNamePrefix) {
		time.Sleep(l.delay)
	}
	return l.next.RoundTrip(r)
}

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
	eventually(t, timeout, versionIs(f, 7))
	stop()

	// Nothing listens on port 1 of 127.0.0.1: the API server is away.
	away := kubernetes.NewForConfigOrDie(&rest.Config{Host: "https://127.0.0.1:1", Timeout: time.Second})
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
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
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
	logs := &logLines{}
	f, err := New(kubernetes.NewForConfigOrDie(cfg), Options{Namespace: "x", PodName: "p", SpoolDir: dir, Log: logs.logger()})
	if err != nil {
		t.Fatal(err)
	}
	if f.Table() != nil || logs.count("Ignoring the spooled routing table") != 1 {
		t.Errorf("a damaged spool gave table %v", f.Table())
	}
}
