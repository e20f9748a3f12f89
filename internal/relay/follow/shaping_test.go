package follow

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/postgate/postgate/internal/relay/shaping"
	"github.com/postgate/postgate/internal/routing"
	"github.com/postgate/postgate/internal/testenv"
)

// publishShaping publishes tbl as version with the shaping policy data
// beside the index; hashOf is the policy the index names (data, unless the
// test lies).
func (p publisher) publishShaping(tbl *routing.Table, version int64, data, hashOf []byte) {
	p.t.Helper()
	idx, shards, err := routing.Encode(tbl, version, 4)
	if err != nil {
		p.t.Fatal(err)
	}
	idx.SetShaping(hashOf)
	p.shards(shards)
	indexJSON, _ := json.Marshal(idx)
	secrets := p.cs.CoreV1().Secrets(p.ns)
	s, err := secrets.Get(context.Background(), routing.IndexSecretName, metav1.GetOptions{})
	if err != nil {
		p.t.Fatal(err)
	}
	s.Data = map[string][]byte{routing.IndexDataKey: indexJSON}
	if data != nil {
		s.Data[routing.ShapingDataKey] = data
	}
	if _, err := secrets.Update(context.Background(), s, metav1.UpdateOptions{}); err != nil {
		p.t.Fatal(err)
	}
}

// recordingShaper is a real limiter that also reports each Scale.
type recordingShaper struct {
	*shaping.Limiter
	scaled chan int
}

func (r recordingShaper) Scale(n int) {
	r.Limiter.Scale(n)
	select {
	case r.scaled <- n:
	default: // the test reads the latest only
	}
}

func canonical(t *testing.T, y string) []byte {
	t.Helper()
	p, err := shaping.Parse([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var bigSite = shaping.SiteOf([]string{"mx1.big.example"})

// limitsOf is the limits the limiter applies to bigSite now, and the rule.
func limitsOf(t *testing.T, l *shaping.Limiter) (shaping.Limits, string) {
	t.Helper()
	for _, s := range l.Stats() {
		if s.Site == bigSite.Name {
			return s.Limits, s.Rule
		}
	}
	t.Fatalf("no stats for %s", bigSite.Name)
	return shaping.Limits{}, ""
}

// TestFollowAppliesShapingPolicy: each table swapped in applies its
// shaping policy to the limiter, without a restart and before the Lease
// acknowledges the version; no policy is the shipped default; a policy that
// does not parse, or does not match the index, makes the follower refuse
// the whole table and keep the one it has; the last good policy comes back
// from the spool.
func TestFollowAppliesShapingPolicy(t *testing.T) {
	cs := kubernetes.NewForConfigOrDie(cfg)
	ns := namespace(t, cs)
	p := publisher{t, cs, ns}
	p.publish(table("one", 2), 1)

	lim := shaping.NewLimiter(shaping.DefaultPolicy(), testenv.NewClock(time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)))
	conn, d := lim.AcquireConn(bigSite) // the site is known: its limits show in Stats
	if !d.OK {
		t.Fatal(d)
	}
	defer conn.Release()
	logs := &testenv.LogBuffer{}
	spool := t.TempDir()
	f, err := New(cs, Options{Namespace: ns, PodName: "relay-0", SpoolDir: spool, RetryInterval: 50 * time.Millisecond,
		Logger: logger(logs), Shaper: recordingShaper{lim, make(chan int, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	run(t, f)
	waitVersion(t, f, 1)
	if l, rule := limitsOf(t, lim); l.MaxConnections != 10 || rule != "default" || f.ShapingPolicy() != nil {
		t.Errorf("no published policy: %s %+v, want the shipped default's 10 connections", rule, l)
	}

	policy := canonical(t, `
default: {maxConnections: 4, suspension: {initial: 1m, max: 1h, resetAfter: 1h}}
sites:
  - {name: big, match: {mxHostSuffixes: [.big.example]}, maxConnections: 2, maxMessagesPerMinute: 30}
`)
	p.publishShaping(table("one", 2), 2, policy, policy)
	waitVersion(t, f, 2)
	if l, rule := limitsOf(t, lim); rule != "big" || l.MaxConnections != 2 || l.MaxMessagesPerMinute != 30 {
		t.Errorf("published policy: %s %+v, want big with 2 connections and 30 a minute", rule, l)
	}
	testenv.Eventually(t, func() string {
		if got := lease(t, cs, ns).Annotations[routing.TableVersionAnnotation]; got != "2" {
			return "Lease at version " + got
		}
		return ""
	})

	// Refused whole: a policy that does not parse (with its true hash),
	// and one that is not the policy the index names.
	bad := []byte(`{"default":{"maxConnections":0}}`)
	p.publishShaping(table("three", 2), 3, bad, bad)
	logs.WaitFor(t, "version 3: shaping.json: shaping policy: default.suspension: initial, max and resetAfter are required", 1)
	other := canonical(t, "default: {maxConnections: 9, suspension: {initial: 1m, max: 1h, resetAfter: 1h}}")
	p.publishShaping(table("four", 2), 4, other, policy)
	logs.WaitFor(t, "version 4: shaping.json: content hash", 1)
	if why := versionIs(f, 2)(); why != "" {
		t.Fatal(why)
	}
	if l, rule := limitsOf(t, lim); rule != "big" || l.MaxConnections != 2 {
		t.Errorf("after refused tables: %s %+v, want the policy of version 2", rule, l)
	}
	if got := lease(t, cs, ns).Annotations[routing.TableVersionAnnotation]; got != "2" {
		t.Errorf("Lease at version %s after refused tables, want 2", got)
	}

	// Back to no policy: the shipped default again.
	p.publishShaping(table("five", 2), 5, nil, nil)
	waitVersion(t, f, 5)
	if l, rule := limitsOf(t, lim); rule != "default" || l.MaxConnections != 10 {
		t.Errorf("policy withdrawn: %s %+v, want the shipped default", rule, l)
	}

	// The spool keeps the policy with the table.
	p.publishShaping(table("six", 2), 6, policy, policy)
	waitVersion(t, f, 6)
	testenv.Eventually(t, func() string {
		if s, err := loadSpool(spool); err != nil || s == nil || s.Index.Version != 6 {
			return fmt.Sprintf("spool: %v; want version 6", err)
		}
		return ""
	})
	restarted := shaping.NewLimiter(nil, testenv.NewClock(time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)))
	if _, d := restarted.AcquireConn(bigSite); !d.OK {
		t.Fatal(d)
	}
	if _, err := New(cs, Options{Namespace: ns, PodName: "relay-1", SpoolDir: spool, Shaper: restarted}); err != nil {
		t.Fatal(err)
	}
	if l, rule := limitsOf(t, restarted); rule != "big" || l.MaxConnections != 2 {
		t.Errorf("from the spool: %s %+v, want big with 2 connections", rule, l)
	}
}

// TestFollowScalesByLiveReplicas: at each Lease renewal the shaper learns
// how many relay Leases are live, its own included; expired ones, released
// ones and other Leases do not count.
func TestFollowScalesByLiveReplicas(t *testing.T) {
	cs := kubernetes.NewForConfigOrDie(cfg)
	ns := namespace(t, cs)
	publisher{t, cs, ns}.publish(table("one", 1), 1)
	now := time.Now()
	leaseAt := func(name string, renewed time.Time, seconds int32) {
		t.Helper()
		r := metav1.NewMicroTime(renewed)
		_, err := cs.CoordinationV1().Leases(ns).Create(context.Background(), &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       coordinationv1.LeaseSpec{RenewTime: &r, LeaseDurationSeconds: &seconds},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	leaseAt(routing.RelayLeasePrefix+"relay-1", now, 3600)                  // live
	leaseAt(routing.RelayLeasePrefix+"relay-2", now, 3600)                  // live
	leaseAt(routing.RelayLeasePrefix+"relay-3", now.Add(-time.Hour), 30)    // expired
	leaseAt(routing.RelayLeasePrefix+"relay-4", now.Add(-2*time.Second), 1) // released
	leaseAt("postgate-operator-leader", now, 3600)                          // not a relay

	lim := shaping.NewLimiter(nil, testenv.NewClock(now))
	if _, d := lim.AcquireConn(bigSite); !d.OK {
		t.Fatal(d)
	}
	rec := recordingShaper{lim, make(chan int, 1)}
	f, err := New(cs, Options{Namespace: ns, PodName: "relay-0", RenewInterval: 100 * time.Millisecond, LeaseDuration: time.Hour, Shaper: rec})
	if err != nil {
		t.Fatal(err)
	}
	run(t, f)
	waitScale := func(want int) {
		t.Helper()
		timeout := time.After(testenv.WaitTimeout)
		for {
			select {
			case n := <-rec.scaled:
				if n == want {
					return
				}
			case <-timeout:
				t.Fatalf("Scale(%d) never came", want)
			}
		}
	}
	waitScale(3) // relay-0, relay-1, relay-2
	if l, _ := limitsOf(t, lim); l.MaxConnections != 3 {
		t.Errorf("3 replicas: maxConnections %d, want 10/3 = 3", l.MaxConnections)
	}
	if err := cs.CoordinationV1().Leases(ns).Delete(context.Background(), routing.RelayLeasePrefix+"relay-2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitScale(2)
	if l, _ := limitsOf(t, lim); l.MaxConnections != 5 {
		t.Errorf("2 replicas: maxConnections %d, want 10/2 = 5", l.MaxConnections)
	}
}

func TestCountLive(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	l := func(name string, renewed time.Time, seconds int32) coordinationv1.Lease {
		r := metav1.NewMicroTime(renewed)
		return coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: coordinationv1.LeaseSpec{RenewTime: &r, LeaseDurationSeconds: &seconds}}
	}
	leases := []coordinationv1.Lease{
		l("postgate-relay-a", now, 30),
		l("postgate-relay-b", now.Add(-29*time.Second), 30),
		l("postgate-relay-c", now.Add(-30*time.Second), 30), // expires now
		l("postgate-relay-", now, 30),
		l("other", now, 30),
		{ObjectMeta: metav1.ObjectMeta{Name: "postgate-relay-d"}}, // never renewed
	}
	if n := countLive(leases, now); n != 2 {
		t.Errorf("countLive = %d, want 2", n)
	}
}
