package controllers

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/routing"
)

// quietWatch follows an operator's reconciles, so that a test waits on them
// instead of on the clock. The operator is quiet when a completed status
// pass has seen every requeue its event handlers made.
type quietWatch struct {
	r       *Reconciler
	mu      sync.Mutex
	settled uint64
	wake    chan struct{}
}

func newQuietWatch() *quietWatch { return &quietWatch{wake: make(chan struct{}, 1)} }

func withQuietWatch(q *quietWatch) operatorOpt {
	return func(_ *Options, r *Reconciler) {
		if r != nil {
			q.r = r
			r.afterReconcile = q.after
		}
	}
}

func (q *quietWatch) after(seen uint64, statusDone bool) {
	if statusDone {
		q.mu.Lock()
		q.settled = max(q.settled, seen)
		q.mu.Unlock()
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (q *quietWatch) quiet() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.settled == q.r.enqueued.Load()
}

// until waits until cond holds (and, with needQuiet, the operator is
// quiet). cond says why not, and when to look again if no reconcile comes
// first (a Lease that expires: zero for never). It looks after each
// reconcile and at that time, and fails after timeout.
func (q *quietWatch) until(t testing.TB, timeout time.Duration, needQuiet bool, cond func() (string, time.Time)) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		quiet := !needQuiet || q.quiet()
		why, recheck := cond()
		if why == "" && quiet {
			return
		}
		if !quiet {
			why = "the operator is not quiet; " + why
		}
		var at <-chan time.Time
		var timer *time.Timer
		if !recheck.IsZero() {
			timer = time.NewTimer(time.Until(recheck))
			at = timer.C
		}
		select {
		case <-q.wake:
		case <-at:
		case <-deadline.C:
			t.Fatalf("after %s: %s", timeout, why)
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// leaseModel is the test's own account of what the operator published and
// which version first held each object's generation, from which it
// computes what Programmed must say given the relay Leases.
type leaseModel struct {
	c               client.Client
	tenant, relayNS string
	published       map[int64]bool
	current         int64
	first           map[routing.ObjectKey]firstSeen
	// base is the version current when the relays began to claim: the
	// objects there then may have been first published earlier, so only
	// this version and later ones are claimed.
	base int64
}

func newLeaseModel(c client.Client, tenant, relayNS string) *leaseModel {
	return &leaseModel{c: c, tenant: tenant, relayNS: relayNS, published: map[int64]bool{}, first: map[routing.ObjectKey]firstSeen{}}
}

// observe reads the published table and notes its version and the
// objects it holds for the first time. It returns the table, an empty one
// before the first publication.
func (m *leaseModel) observe(t testing.TB) *routing.Table {
	t.Helper()
	tbl := m.read(t)
	m.published[tbl.Version] = true
	m.current = max(m.current, tbl.Version)
	for _, o := range tbl.Objects() {
		if f, ok := m.first[o.Key()]; ok && f.uid == o.UID && f.generation == o.Generation {
			continue
		}
		m.first[o.Key()] = firstSeen{uid: o.UID, generation: o.Generation, version: tbl.Version}
	}
	return tbl
}

// read reads the published table; before the first publication, an empty
// one.
func (m *leaseModel) read(t testing.TB) *routing.Table {
	t.Helper()
	err := m.c.Get(context.Background(), types.NamespacedName{Namespace: m.relayNS, Name: routing.IndexSecretName}, &corev1.Secret{})
	if apierrors.IsNotFound(err) {
		return &routing.Table{}
	}
	return publishedTable(t, m.c, m.relayNS)
}

// baseline takes every version up to the current one as published and as
// holding the objects there now: the objects created before the relays
// claim anything.
func (m *leaseModel) baseline(t testing.TB) {
	t.Helper()
	tbl := m.observe(t)
	for v := int64(1); v <= tbl.Version; v++ {
		m.published[v] = true
	}
	m.base = tbl.Version
	for _, o := range tbl.Objects() {
		m.first[o.Key()] = firstSeen{uid: o.UID, generation: o.Generation, version: tbl.Version}
	}
}

// leaseVersions returns the version each live relay Lease claims, and when
// the first of them expires.
func (m *leaseModel) liveRelays(t testing.TB, now time.Time) (map[string]int64, time.Time) {
	t.Helper()
	var list coordinationv1.LeaseList
	if err := m.c.List(context.Background(), &list, client.InNamespace(m.relayNS)); err != nil {
		t.Fatal(err)
	}
	live := map[string]int64{}
	var next time.Time
	for _, l := range list.Items {
		if !strings.HasPrefix(l.Name, routing.RelayLeasePrefix) || l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
			continue
		}
		expires := l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second)
		if !expires.After(now) {
			continue
		}
		v, _ := strconv.ParseInt(l.Annotations[routing.TableVersionAnnotation], 10, 64)
		live[l.Name] = v
		if next.IsZero() || expires.Before(next) {
			next = expires
		}
	}
	return live, next
}

// mismatch compares every object of the tenant namespace with the truth
// computed from the Leases: Programmed is True exactly when there is a live
// relay and every live relay claims a version the operator published that
// is not older than the first one holding the object's generation.
func (m *leaseModel) mismatch(t testing.TB) (string, time.Time) {
	t.Helper()
	now := time.Now()
	live, next := m.liveRelays(t, now)
	var objs []client.Object
	for _, l := range []client.ObjectList{&v1alpha1.SenderDomainList{}, &v1alpha1.RelayRouteList{}, &v1alpha1.TrustedNetworkList{}} {
		if err := m.c.List(context.Background(), l, client.InNamespace(m.tenant)); err != nil {
			t.Fatal(err)
		}
		switch l := l.(type) {
		case *v1alpha1.SenderDomainList:
			for i := range l.Items {
				objs = append(objs, &l.Items[i])
			}
		case *v1alpha1.RelayRouteList:
			for i := range l.Items {
				objs = append(objs, &l.Items[i])
			}
		case *v1alpha1.TrustedNetworkList:
			for i := range l.Items {
				objs = append(objs, &l.Items[i])
			}
		}
	}
	var wrong []string
	for _, obj := range objs {
		gvk, err := m.c.GroupVersionKindFor(obj)
		if err != nil {
			t.Fatal(err)
		}
		key := routing.ObjectKey{Kind: gvk.Kind, Namespace: obj.GetNamespace(), Name: obj.GetName()}
		f, ok := m.first[key]
		if !ok || f.uid != obj.GetUID() || f.generation != obj.GetGeneration() {
			wrong = append(wrong, key.String()+": generation not seen in a published table yet")
			continue
		}
		status, reason := metav1.ConditionTrue, v1alpha1.ReasonProgrammed
		if len(live) == 0 {
			status, reason = metav1.ConditionFalse, v1alpha1.ReasonNoRelays
		}
		for _, v := range live {
			if !m.published[v] || v < f.version {
				status, reason = metav1.ConditionFalse, v1alpha1.ReasonPending
			}
		}
		if why := condIs(obj, v1alpha1.ConditionProgrammed, status, reason); why != "" {
			wrong = append(wrong, why)
		}
	}
	if len(wrong) > 0 {
		slices.Sort(wrong)
		return fmt.Sprintf("%d of %d objects wrong with live relays %v (published up to %d): %s", len(wrong), len(objs), live, m.current, strings.Join(wrong, "; ")), next
	}
	return "", next
}

// TestLeaseChurnLeavesNothingPending is the churn sequence users met: with
// two relays running and objects Ready, a Lease without a version appears
// (everything Pending, rightly), goes away, and a new relay starts at once
// and acknowledges the current version within a fraction of a second.
// Once the operator is quiet, nothing may be left Pending.
func TestLeaseChurnLeavesNothingPending(t *testing.T) {
	c, tenant, relayNS := setup(t)
	q := newQuietWatch()
	startOperator(t, relayNS, withQuietWatch(q))
	startFollower(t, relayNS, "relay-0")
	startFollower(t, relayNS, "relay-1")
	for i := range 12 {
		create(t, c, trustedNetwork(tenant, fmt.Sprintf("net-%02d", i), fmt.Sprintf("10.%d.0.0/16", i)))
	}
	for i := range 7 {
		sd := fmt.Sprintf("sd-%d", i)
		create(t, c, senderDomain(tenant, sd, fmt.Sprintf("d%d.%s.example.com", i, tenant)))
		create(t, c, relayRoute(tenant, "rr-"+sd, sd))
	}
	m := newLeaseModel(c, tenant, relayNS)
	// The objects arrive in a few publications; the relays ack the last.
	q.until(t, time.Minute, true, func() (string, time.Time) {
		tbl := m.observe(t)
		if n := len(tbl.Objects()); n != 26 {
			return fmt.Sprintf("%d objects published, want 26", n), time.Time{}
		}
		m.baseline(t)
		return m.mismatch(t)
	})

	for round := range 3 {
		ghost := relayLease(relayNS, "ghost", 0, time.Now(), 30)
		ghost.Annotations = nil
		create(t, c, ghost)
		q.until(t, time.Minute, true, func() (string, time.Time) {
			if why, next := m.mismatch(t); why != "" {
				return why, next
			}
			live, _ := m.liveRelays(t, time.Now())
			if _, ok := live[routing.RelayLeasePrefix+"ghost"]; !ok || len(live) != 3+round {
				return fmt.Sprintf("live relays %v, want the ghost too", live), time.Time{}
			}
			return "", time.Time{}
		})
		if err := c.Delete(context.Background(), ghost); err != nil {
			t.Fatal(err)
		}
		pod := fmt.Sprintf("relay-%d", 3+round)
		startFollower(t, relayNS, pod)
		q.until(t, time.Minute, true, func() (string, time.Time) {
			live, _ := m.liveRelays(t, time.Now())
			if v := live[routing.RelayLeasePrefix+pod]; v != m.current {
				return fmt.Sprintf("round %d: %s claims version %d, want %d", round, pod, v, m.current), time.Time{}
			}
			return m.mismatch(t)
		})
	}
}

// TestProgrammedUnderRandomLeaseChurn drives random sequences of relay
// Lease creations, renewals, acknowledgements (true, stale and claiming
// versions never published), expiries and deletions, and of table
// publications, and checks, whenever the operator is quiet, that every
// object's Programmed equals the truth computed from the Leases. The seed
// is logged; POSTGATE_CHURN_SEED replays one.
func TestProgrammedUnderRandomLeaseChurn(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("POSTGATE_CHURN_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("seed %d (POSTGATE_CHURN_SEED=%d replays it)", seed, seed)
	rnd := rand.New(rand.NewPCG(seed, seed))

	c, tenant, relayNS := setup(t)
	q := newQuietWatch()
	startOperator(t, relayNS, withQuietWatch(q))
	nets := map[string]int{} // name -> CIDR counter
	const baseNets = 20
	cidr, nextNet := 0, baseNets
	for i := range baseNets {
		cidr++
		nets[fmt.Sprintf("net-%d", i)] = cidr
		create(t, c, trustedNetwork(tenant, fmt.Sprintf("net-%d", i), fmt.Sprintf("10.%d.0.0/16", cidr)))
	}
	create(t, c, senderDomain(tenant, "sd", tenant+".example.com"), relayRoute(tenant, "rr", "sd"))
	m := newLeaseModel(c, tenant, relayNS)
	q.until(t, time.Minute, true, func() (string, time.Time) {
		if n := len(m.observe(t).Objects()); n != baseNets+2 {
			return fmt.Sprintf("%d objects published, want %d", n, baseNets+2), time.Time{}
		}
		m.baseline(t)
		return m.mismatch(t)
	})

	// A long Lease outlives every wait of the test: a wrong status cannot
	// turn right by the expiry of the Lease it is wrong about.
	const longLease = int32(300)
	ctx := context.Background()
	var leases []string // pod names of the Leases the test keeps
	nextPod, followers := 0, 0
	logf := func(format string, args ...any) { t.Logf("step: "+format, args...) }
	claim := func() (string, bool) {
		switch r := rnd.IntN(10); {
		case r < 5:
			return strconv.FormatInt(m.current, 10), true
		case r < 6:
			return "", false // no table yet
		case r < 7:
			return "0", true
		case r < 8:
			return strconv.FormatInt(m.current+1+rnd.Int64N(3), 10), true // never published
		default:
			var published []int64
			for v := range m.published {
				if v >= m.base {
					published = append(published, v)
				}
			}
			slices.Sort(published)
			return strconv.FormatInt(published[rnd.IntN(len(published))], 10), true
		}
	}
	writeLease := func(pod string, mutate func(*coordinationv1.Lease)) {
		l := &coordinationv1.Lease{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: relayNS, Name: routing.RelayLeasePrefix + pod}, l); err != nil {
			t.Fatal(err)
		}
		mutate(l)
		if err := c.Update(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	setClaim := func(l *coordinationv1.Lease, v string, ok bool) {
		if !ok {
			delete(l.Annotations, routing.TableVersionAnnotation)
			return
		}
		if l.Annotations == nil {
			l.Annotations = map[string]string{}
		}
		l.Annotations[routing.TableVersionAnnotation] = v
	}
	newRelay := func(pod string, v string, ok bool, seconds int32) {
		l := relayLease(relayNS, pod, 0, time.Now(), seconds)
		setClaim(l, v, ok)
		create(t, c, l)
		leases = append(leases, pod)
	}
	// publish changes one TrustedNetwork and waits for the table that
	// holds the change.
	publish := func() {
		before := m.current
		names := slices.Sorted(func(yield func(string) bool) {
			for n := range nets {
				if !yield(n) {
					return
				}
			}
		})
		var want func(*routing.Table) bool
		switch r := rnd.IntN(3); {
		case r == 0 || len(names) < 2:
			name := fmt.Sprintf("net-%d", nextNet)
			nextNet++
			cidr++
			nets[name] = cidr
			logf("publish: create TrustedNetwork %s", name)
			tn := trustedNetwork(tenant, name, fmt.Sprintf("10.%d.0.0/16", cidr))
			create(t, c, tn)
			want = func(tbl *routing.Table) bool {
				return tbl.Contains(routing.ObjectKey{Kind: routing.KindTrustedNetwork, Namespace: tenant, Name: name}, 1)
			}
		case r == 1:
			name := names[rnd.IntN(len(names))]
			cidr++
			nets[name] = cidr
			logf("publish: update TrustedNetwork %s", name)
			tn := get(t, c, tenant, name, newTN())
			tn.Spec.CIDRs = []v1alpha1.CIDR{v1alpha1.CIDR(fmt.Sprintf("10.%d.0.0/16", cidr))}
			update(t, c, tn)
			gen := get(t, c, tenant, name, newTN()).Generation
			want = func(tbl *routing.Table) bool {
				return tbl.Contains(routing.ObjectKey{Kind: routing.KindTrustedNetwork, Namespace: tenant, Name: name}, gen)
			}
		default:
			name := names[rnd.IntN(len(names))]
			delete(nets, name)
			logf("publish: delete TrustedNetwork %s", name)
			if err := c.Delete(ctx, trustedNetwork(tenant, name, "10.0.0.0/16")); err != nil {
				t.Fatal(err)
			}
			want = func(tbl *routing.Table) bool {
				for _, o := range tbl.Objects() {
					if o.Kind == routing.KindTrustedNetwork && o.Name == name && o.Namespace == tenant {
						return false
					}
				}
				return true
			}
		}
		q.until(t, time.Minute, false, func() (string, time.Time) {
			if tbl := m.observe(t); tbl.Version == before || !want(tbl) {
				return fmt.Sprintf("version %d published, the change not yet", tbl.Version), time.Time{}
			}
			return "", time.Time{}
		})
		logf("published version %d", m.current)
	}
	pick := func() string { return leases[rnd.IntN(len(leases))] }
	remove := func(pod string) {
		if err := c.Delete(ctx, relayLease(relayNS, pod, 0, time.Now(), 1)); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		leases = slices.DeleteFunc(leases, func(p string) bool { return p == pod })
	}
	checkpoint := func(what string) {
		logf("wait until quiet: %s", what)
		q.until(t, time.Minute, true, func() (string, time.Time) { return m.mismatch(t) })
	}

	// churn is the sequence users met: with every relay on the current
	// version, a Lease without a version comes and goes, and a new relay
	// acknowledges the current version at once.
	churn := func() {
		logf("every relay renews and acks version %d", m.current)
		for _, pod := range leases {
			writeLease(pod, func(l *coordinationv1.Lease) {
				now := metav1.NewMicroTime(time.Now())
				l.Spec.RenewTime, l.Spec.LeaseDurationSeconds = &now, ptr(longLease)
				setClaim(l, strconv.FormatInt(m.current, 10), true)
			})
		}
		if len(leases) > 0 && rnd.IntN(2) == 0 {
			// All but one: it claims a version never published, which
			// acknowledges nothing.
			pod, v := pick(), m.current+1+rnd.Int64N(3)
			logf("but Lease %s claims version %d, never published", pod, v)
			writeLease(pod, func(l *coordinationv1.Lease) { setClaim(l, strconv.FormatInt(v, 10), true) })
			checkpoint("a relay claims a version never published")
			writeLease(pod, func(l *coordinationv1.Lease) { setClaim(l, strconv.FormatInt(m.current, 10), true) })
		}
		settle := func() {
			if rnd.IntN(2) == 0 {
				q.until(t, time.Minute, true, func() (string, time.Time) { return "", time.Time{} })
			}
		}
		checkpoint("every relay on the current version")
		pod := fmt.Sprintf("relay-%d", nextPod)
		nextPod++
		logf("ghost Lease, deleted; new relay %s acks version %d", pod, m.current)
		ghost := relayLease(relayNS, "ghost", 0, time.Now(), longLease)
		ghost.Annotations = nil
		create(t, c, ghost)
		settle()
		if err := c.Delete(ctx, ghost); err != nil {
			t.Fatal(err)
		}
		settle()
		if followers < 2 && rnd.IntN(2) == 0 {
			// A real relay, which loads the table and acks on its own
			// time, a fraction of a second after its Lease appears.
			logf("relay %s is a follower", pod)
			followers++
			startFollower(t, relayNS, pod)
		} else {
			newRelay(pod, "", false, longLease)
			settle()
			writeLease(pod, func(l *coordinationv1.Lease) { setClaim(l, strconv.FormatInt(m.current, 10), true) })
		}
		q.until(t, time.Minute, true, func() (string, time.Time) {
			live, _ := m.liveRelays(t, time.Now())
			if v := live[routing.RelayLeasePrefix+pod]; v != m.current {
				return fmt.Sprintf("%s claims version %d, want %d", pod, v, m.current), time.Time{}
			}
			return m.mismatch(t)
		})
	}

	const steps = 40
	for i := range steps {
		switch r := rnd.IntN(100); {
		case i%10 == 5:
			churn()
		case r < 15 || len(leases) == 0:
			if len(leases) >= 4 {
				remove(pick())
				break
			}
			pod := fmt.Sprintf("relay-%d", nextPod)
			nextPod++
			v, ok := claim()
			seconds := longLease
			if rnd.IntN(4) == 0 {
				seconds = 1 + rnd.Int32N(2) // expires during the sequence
			}
			logf("create Lease %s claiming %q (%v) for %ds", pod, v, ok, seconds)
			newRelay(pod, v, ok, seconds)
		case r < 30:
			pod := pick()
			logf("renew Lease %s", pod)
			writeLease(pod, func(l *coordinationv1.Lease) {
				now := metav1.NewMicroTime(time.Now())
				l.Spec.RenewTime = &now
			})
		case r < 55:
			pod := pick()
			v, ok := claim()
			logf("Lease %s claims %q (%v)", pod, v, ok)
			writeLease(pod, func(l *coordinationv1.Lease) { setClaim(l, v, ok) })
		case r < 63:
			pod := pick()
			in := time.Duration(rnd.Int64N(int64(time.Second)))
			logf("Lease %s expires in %s", pod, in)
			writeLease(pod, func(l *coordinationv1.Lease) {
				at := metav1.NewMicroTime(time.Now().Add(in - time.Duration(*l.Spec.LeaseDurationSeconds)*time.Second))
				l.Spec.RenewTime = &at
			})
		case r < 70:
			pod := pick()
			logf("delete Lease %s", pod)
			remove(pod)
		case r < 78:
			churn()
		case r < 93:
			publish()
		default:
			checkpoint(fmt.Sprintf("step %d", i))
		}
		if rnd.IntN(3) == 0 {
			// Let the operator write what this step calls for, so that the
			// next step comes while its cache may still lag behind those
			// writes.
			q.until(t, time.Minute, true, func() (string, time.Time) { return "", time.Time{} })
		}
	}
	checkpoint("the end")
}

// TestDeliveryEntriesGoAtLeaseExpiry: a relay whose last MX attempt
// bounced on a recipient domain that does not exist (no reply, 5.1.2) makes
// its SenderDomain DeliveryDegraded with reason Bounces; when the relay
// stops renewing its Lease, its entry is removed and the condition cleared
// at the Lease's expiry, with no other event to prompt the operator.
func TestDeliveryEntriesGoAtLeaseExpiry(t *testing.T) {
	c, tenant, relayNS := setup(t)
	q := newQuietWatch()
	startOperator(t, relayNS, withQuietWatch(q))
	f, _ := startFollower(t, relayNS, "relay-a")
	create(t, c, senderDomain(tenant, "sd", tenant+".example.com"))
	waitCond(t, c, tenant, "sd", newSD, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)

	create(t, c, relayLease(relayNS, "relay-b", f.Table().Version, time.Now(), 30))
	applyReplica(t, c, tenant, "sd", v1alpha1.ReplicaDeliveryStatus{Name: "relay-b",
		LastFailed: &v1alpha1.DeliveryAttempt{Time: metav1.NewMicroTime(time.Now()), RelayHost: "nxdomain.example.net",
			EnhancedCode: "5.1.2", Reply: "domain nxdomain.example.net does not exist (NXDOMAIN)"}})
	waitCond(t, c, tenant, "sd", newSD, v1alpha1.ConditionDeliveryDegraded, metav1.ConditionTrue, v1alpha1.ReasonBounces)

	// relay-b stops: its Lease is left to expire in a second.
	l := get(t, c, relayNS, routing.RelayLeasePrefix+"relay-b", &coordinationv1.Lease{})
	renewed := metav1.NewMicroTime(time.Now().Add(time.Second - 30*time.Second))
	l.Spec.RenewTime = &renewed
	update(t, c, l)
	expires := renewed.Add(30 * time.Second)
	q.until(t, time.Minute, false, func() (string, time.Time) {
		sd := get(t, c, tenant, "sd", newSD())
		if sd.Status.Delivery != nil && len(sd.Status.Delivery.Replicas) > 0 {
			if time.Now().Before(expires) {
				return "relay-b's Lease is live", expires
			}
			return fmt.Sprintf("the entries %v are still there after the Lease expired", sd.Status.Delivery.Replicas), time.Time{}
		}
		if time.Now().Before(expires) {
			t.Fatal("the entry was removed before its relay's Lease expired")
		}
		return hasNoCondition(sd, v1alpha1.ConditionDeliveryDegraded), time.Time{}
	})
}

func ptr[T any](v T) *T { return &v }
