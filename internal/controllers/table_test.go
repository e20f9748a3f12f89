package controllers

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kstatus "sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/routing"
	"github.com/postgate/postgate/internal/testenv"
)

func TestConflictOldestWins(t *testing.T) {
	c, tenant, relayNS := setup(t)
	startOperator(t, relayNS)
	f, _ := startFollower(t, relayNS, "relay-a")
	domain := tenant + ".example.com"

	create(t, c, senderDomain(tenant, "a-old", domain))
	waitCond(t, c, tenant, "a-old", newSD, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)
	create(t, c, senderDomain(tenant, "b-new", domain))

	newer := waitCond(t, c, tenant, "b-new", newSD, v1alpha1.ConditionAccepted, metav1.ConditionFalse, v1alpha1.ReasonConflicted)
	if why := condIs(newer, v1alpha1.ConditionStalled, metav1.ConditionTrue, v1alpha1.ReasonConflicted); why != "" {
		t.Error(why)
	}
	if why := hasNoCondition(newer, v1alpha1.ConditionReconciling); why != "" {
		t.Error(why)
	}
	if got := kstatusOf(t, newer); got != kstatus.FailedStatus {
		t.Errorf("kstatus of the conflicted SenderDomain: %s, want Failed", got)
	}
	older := get(t, c, tenant, "a-old", newSD())
	if got := kstatusOf(t, older); got != kstatus.CurrentStatus {
		t.Errorf("kstatus of the programmed SenderDomain: %s, want Current", got)
	}
	before := publishedTable(t, c, relayNS)
	if d := before.Domain(domain); d == nil || d.Object.Name != "a-old" {
		t.Fatalf("published table: domain %s is %+v, want SenderDomain a-old", domain, d)
	}

	if err := c.Delete(context.Background(), older); err != nil {
		t.Fatal(err)
	}
	newer = waitCond(t, c, tenant, "b-new", newSD, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)
	if why := hasNoCondition(newer, v1alpha1.ConditionStalled); why != "" {
		t.Error(why)
	}
	after := publishedTable(t, c, relayNS)
	if d := after.Domain(domain); d == nil || d.Object.Name != "b-new" {
		t.Fatalf("published table after the delete: domain %s is %+v, want SenderDomain b-new", domain, d)
	}
	if after.Version <= before.Version {
		t.Errorf("version %d after the change, was %d", after.Version, before.Version)
	}
	if tbl := f.Table(); tbl == nil || tbl.Version < after.Version {
		t.Errorf("the follower runs %v, want version %d: Ready came before the relay had it", tbl, after.Version)
	}
	waitEvent(t, c, tenant, "b-new", v1alpha1.ReasonConflicted)
}

// waitEvent waits for an events.k8s.io Event about the object with reason.
func waitEvent(t *testing.T, c client.Client, ns, name string, reason v1alpha1.Reason) {
	t.Helper()
	testenv.WaitEvent(t, c, ns, name, string(reason))
}

func TestSigningExclusivity(t *testing.T) {
	c, tenant, relayNS := setup(t)
	startOperator(t, relayNS)
	startFollower(t, relayNS, "relay-a")

	create(t, c, senderDomain(tenant, "billing", "billing."+tenant+".example.com"), relayRoute(tenant, "to-smarthost", "billing"))
	waitCond(t, c, tenant, "to-smarthost", newRR, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)

	// Bump the route's generation first, so that observedGeneration is
	// checked on a generation other than 1.
	rr := get(t, c, tenant, "to-smarthost", newRR())
	rr.Spec.Target.Port = 2525
	update(t, c, rr)
	rr = waitCond(t, c, tenant, "to-smarthost", newRR, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)
	if rr.Generation != 2 || rr.Status.ObservedGeneration != 2 {
		t.Fatalf("generation %d, observedGeneration %d, want 2 and 2", rr.Generation, rr.Status.ObservedGeneration)
	}

	sd := get(t, c, tenant, "billing", newSD())
	generateKey(v1alpha1.DKIMAlgorithmEd25519)(sd)
	update(t, c, sd)
	rr = waitCond(t, c, tenant, "to-smarthost", newRR, v1alpha1.ConditionAccepted, metav1.ConditionFalse, v1alpha1.ReasonSigningEnabled)
	if rr.Status.ObservedGeneration != 2 {
		t.Errorf("route status.observedGeneration %d, want 2", rr.Status.ObservedGeneration)
	}
	if why := condIs(rr, v1alpha1.ConditionStalled, metav1.ConditionTrue, v1alpha1.ReasonSigningEnabled); why != "" {
		t.Error(why)
	}
	waitCond(t, c, tenant, "billing", newSD, v1alpha1.ConditionRouteRefused, metav1.ConditionTrue, v1alpha1.ReasonSigningEnabled)
	waitEvent(t, c, tenant, "to-smarthost", v1alpha1.ReasonSigningEnabled)

	sd = get(t, c, tenant, "billing", newSD())
	sd.Spec.Signing = nil
	update(t, c, sd)
	rr = waitCond(t, c, tenant, "to-smarthost", newRR, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)
	if why := hasNoCondition(rr, v1alpha1.ConditionStalled); why != "" {
		t.Error(why)
	}
	sd = waitCond(t, c, tenant, "billing", newSD, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)
	if why := hasNoCondition(sd, v1alpha1.ConditionRouteRefused); why != "" {
		t.Error(why)
	}
	if sd.Status.DKIM != nil {
		t.Errorf("status.dkim %+v after signing was removed", sd.Status.DKIM)
	}
}

func TestMissingSecretResolvesWithoutEdit(t *testing.T) {
	c, tenant, relayNS := setup(t)
	op := startOperator(t, relayNS)
	startFollower(t, relayNS, "relay-a")

	create(t, c, trustedNetwork(tenant, "office", "192.0.2.0/24", "mailer"))
	tn := waitCond(t, c, tenant, "office", newTN, v1alpha1.ConditionResolvedRefs, metav1.ConditionFalse, v1alpha1.ReasonSecretNotFound)
	if why := condIs(tn, v1alpha1.ConditionReconciling, metav1.ConditionTrue, ""); why != "" {
		t.Error(why)
	}
	if got := kstatusOf(t, tn); got != kstatus.InProgressStatus {
		t.Errorf("kstatus while the Secret is missing: %s, want InProgress", got)
	}
	if tbl := publishedTable(t, c, relayNS); tbl.Contains(routing.ObjectKey{Kind: routing.KindTrustedNetwork, Namespace: tenant, Name: "office"}, 1) {
		t.Error("a network with an unresolved Secret is in the published table")
	}

	// An unrelated Secret does not recompile.
	compiles := op.r.Stats().Compiles.Load()
	create(t, c, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: tenant, Name: "unrelated"}, StringData: map[string]string{"x": "y"}})

	create(t, c, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: tenant, Name: "mailer"}, Type: corev1.SecretTypeBasicAuth,
		StringData: map[string]string{"username": "mailer", "password": "s3cret-password"},
	})
	tn = waitCond(t, c, tenant, "office", newTN, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)
	if tn.Generation != 1 {
		t.Errorf("generation %d: the object was edited", tn.Generation)
	}
	if got := kstatusOf(t, tn); got != kstatus.CurrentStatus {
		t.Errorf("kstatus once resolved: %s, want Current", got)
	}
	if n := op.r.Stats().Compiles.Load() - compiles; n > 2 {
		t.Errorf("%d compiles for one referenced Secret (and one unrelated)", n)
	}
}

// TestRouteWaitsForItsSenderDomain: a RelayRoute applied before its
// SenderDomain (or whose SenderDomain is there but pending) waits: it is
// Reconciling (kstatus InProgress, so Flux and Argo CD wait instead of
// failing), never Stalled, with no Warning Event, and becomes Ready without
// being touched once the SenderDomain arrives.
func TestRouteWaitsForItsSenderDomain(t *testing.T) {
	c, tenant, relayNS := setup(t)
	startOperator(t, relayNS)
	startFollower(t, relayNS, "relay-a")
	domain := tenant + ".example.com"

	create(t, c, relayRoute(tenant, "rr", "sd"))
	rr := waitCond(t, c, tenant, "rr", newRR, v1alpha1.ConditionAccepted, metav1.ConditionFalse, v1alpha1.ReasonSenderDomainNotFound)
	if why := condIs(rr, v1alpha1.ConditionReconciling, metav1.ConditionTrue, v1alpha1.ReasonSenderDomainNotFound); why != "" {
		t.Error(why)
	}
	if why := hasNoCondition(rr, v1alpha1.ConditionStalled); why != "" {
		t.Error(why)
	}
	if got := kstatusOf(t, rr); got != kstatus.InProgressStatus {
		t.Errorf("kstatus while the SenderDomain is missing: %s, want InProgress", got)
	}

	// The SenderDomain arrives, pending on its webhook key Secret: the
	// route still waits, its mail held.
	sd := senderDomain(tenant, "sd", domain)
	sd.Spec.Delivery = &v1alpha1.DeliveryPolicy{Webhook: &v1alpha1.NotificationWebhook{
		URL: "https://hooks.example.com/mail", HMACSecretRef: v1alpha1.SecretKeyReference{Name: "hmac"}}}
	create(t, c, sd)
	rr = waitCond(t, c, tenant, "rr", newRR, v1alpha1.ConditionProgrammed, metav1.ConditionFalse, v1alpha1.ReasonDeliveryHeld)
	if why := condIs(rr, v1alpha1.ConditionAccepted, metav1.ConditionTrue, v1alpha1.ReasonAccepted); why != "" {
		t.Error(why)
	}
	if why := hasNoCondition(rr, v1alpha1.ConditionStalled); why != "" {
		t.Error(why)
	}
	if got := kstatusOf(t, rr); got != kstatus.InProgressStatus {
		t.Errorf("kstatus while the SenderDomain is pending: %s, want InProgress", got)
	}

	create(t, c, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: tenant, Name: "hmac"},
		StringData: map[string]string{routing.WebhookKeySecretKey: "0123456789abcdef0123456789abcdef"}})
	rr = waitCond(t, c, tenant, "rr", newRR, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)
	if rr.Generation != 1 {
		t.Errorf("generation %d: the route was edited", rr.Generation)
	}
	if got := kstatusOf(t, rr); got != kstatus.CurrentStatus {
		t.Errorf("kstatus once the SenderDomain is there: %s, want Current", got)
	}
	// The Event that the route is accepted comes after any the wait made.
	waitEvent(t, c, tenant, "rr", v1alpha1.ReasonAccepted)
	var events eventsv1.EventList
	if err := c.List(context.Background(), &events, client.InNamespace(tenant)); err != nil {
		t.Fatal(err)
	}
	for _, e := range events.Items {
		if e.Regarding.Name == "rr" && e.Type == corev1.EventTypeWarning {
			t.Errorf("Warning Event for the wait: %s %s", e.Reason, e.Note)
		}
	}
}

func TestProgrammedFollowsLiveRelays(t *testing.T) {
	c, tenant, relayNS := setup(t)
	op := startOperator(t, relayNS)
	domain := tenant + ".example.com"

	create(t, c, senderDomain(tenant, "sd", domain))
	sd := waitCond(t, c, tenant, "sd", newSD, v1alpha1.ConditionProgrammed, metav1.ConditionFalse, v1alpha1.ReasonNoRelays)
	if got := kstatusOf(t, sd); got != kstatus.InProgressStatus {
		t.Errorf("kstatus with no relays: %s, want InProgress", got)
	}
	if why := condIs(sd, v1alpha1.ConditionReconciling, metav1.ConditionTrue, v1alpha1.ReasonNoRelays); why != "" {
		t.Error(why)
	}

	fa, _ := startFollower(t, relayNS, "relay-a")
	sd = waitCond(t, c, tenant, "sd", newSD, v1alpha1.ConditionProgrammed, metav1.ConditionTrue, v1alpha1.ReasonProgrammed)
	if got := kstatusOf(t, sd); got != kstatus.CurrentStatus {
		t.Errorf("kstatus once programmed: %s, want Current", got)
	}
	key := routing.ObjectKey{Kind: routing.KindSenderDomain, Namespace: tenant, Name: "sd"}
	if tbl := fa.Table(); tbl == nil || !tbl.Contains(key, sd.Generation) {
		t.Fatal("Programmed=True before the follower loaded the generation")
	}

	// A second relay that lags: its Lease reports the current version
	// only, and it does not follow. Stand-in for a replica still loading.
	// Its Lease lasts long enough not to expire on a slow machine while
	// the test looks.
	v1 := fa.Table().Version
	lagging := relayLease(relayNS, "relay-b", v1, time.Now(), 60)
	create(t, c, lagging)
	sd = get(t, c, tenant, "sd", newSD())
	sd.Spec.SourceIP = "192.0.2.10"
	update(t, c, sd)
	waitCond(t, c, tenant, "sd", newSD, v1alpha1.ConditionProgrammed, metav1.ConditionFalse, v1alpha1.ReasonPending)
	testenv.Eventually(t, func() string {
		if tbl := fa.Table(); !tbl.Contains(key, 2) {
			return "follower a has not loaded generation 2"
		}
		return ""
	})
	// Follower a has it; relay b holds Programmed back while its Lease
	// is live. Renew b (still at v1) and check again after a status pass
	// that saw a's Lease update.
	renewLease(t, c, relayNS, "relay-b", v1, 60)
	passAfterLeases(t, c, op, relayNS, fa.Table().Version, "relay-a", "relay-b")
	sd = get(t, c, tenant, "sd", newSD())
	if why := condIs(sd, v1alpha1.ConditionProgrammed, metav1.ConditionFalse, v1alpha1.ReasonPending); why != "" {
		t.Fatalf("with relay b at version %d: %s", v1, why)
	}

	// b catches up.
	renewLease(t, c, relayNS, "relay-b", fa.Table().Version, 4)
	waitCond(t, c, tenant, "sd", newSD, v1alpha1.ConditionProgrammed, metav1.ConditionTrue, v1alpha1.ReasonProgrammed)

	// b stops renewing and falls behind: once its Lease expires, it no
	// longer counts.
	renewLease(t, c, relayNS, "relay-b", fa.Table().Version, 2)
	sd = get(t, c, tenant, "sd", newSD())
	sd.Spec.SourceIP = "192.0.2.11"
	update(t, c, sd)
	waitCond(t, c, tenant, "sd", newSD, v1alpha1.ConditionProgrammed, metav1.ConditionFalse, v1alpha1.ReasonPending)
	start := time.Now()
	sd = waitCond(t, c, tenant, "sd", newSD, v1alpha1.ConditionProgrammed, metav1.ConditionTrue, v1alpha1.ReasonProgrammed)
	t.Logf("Programmed=True %s after relay b's Lease was last renewed for 2s", time.Since(start).Round(time.Millisecond))
	if sd.Generation != 3 {
		t.Errorf("generation %d, want 3", sd.Generation)
	}
}

func relayLease(ns, pod string, version int64, renew time.Time, seconds int32) *coordinationv1.Lease {
	rt := metav1.NewMicroTime(renew)
	holder := pod
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: routing.RelayLeasePrefix + pod,
			Annotations: map[string]string{routing.TableVersionAnnotation: fmt.Sprint(version)}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &seconds, RenewTime: &rt},
	}
}

// passAfterLeases waits until the operator has finished a reconcile that
// began after its cache held the current Leases of the relays named (as the
// API server has them now, relay a at version at least v): the state the
// test checks next is that reconcile's.
func passAfterLeases(t *testing.T, c client.Client, op *operator, ns string, v int64, pods ...string) {
	t.Helper()
	testenv.Eventually(t, func() string {
		for _, pod := range pods {
			want := get(t, c, ns, routing.RelayLeasePrefix+pod, &coordinationv1.Lease{})
			if got, _ := strconv.ParseInt(want.Annotations[routing.TableVersionAnnotation], 10, 64); pod == pods[0] && got < v {
				return fmt.Sprintf("%s has not reported version %d", pod, v)
			}
			var cached coordinationv1.Lease
			if err := op.r.client.Get(t.Context(), client.ObjectKeyFromObject(want), &cached); err != nil {
				return err.Error()
			}
			if cached.Annotations[routing.TableVersionAnnotation] != want.Annotations[routing.TableVersionAnnotation] ||
				!cached.Spec.RenewTime.Equal(want.Spec.RenewTime) {
				return fmt.Sprintf("the operator's cache does not have the current Lease of %s", pod)
			}
		}
		return ""
	})
	// Reconciles count when they begin, one at a time: the first to begin
	// from now on reads the Leases above; once the one after it has begun,
	// it has ended. A probe relay at the current version starts each
	// without changing what the relays have loaded.
	begun := op.r.Stats().Reconciles.Load()
	probe := relayLease(ns, "probe", v, time.Now(), 60)
	create(t, c, probe)
	testenv.Eventually(t, func() string {
		if op.r.Stats().Reconciles.Load() <= begun {
			return "no reconcile after the probe relay appeared"
		}
		return ""
	})
	if err := c.Delete(t.Context(), probe); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, func() string {
		if op.r.Stats().Reconciles.Load() <= begun+1 {
			return "no reconcile after the probe relay went"
		}
		return ""
	})
}

func renewLease(t *testing.T, c client.Client, ns, pod string, version int64, seconds int32) {
	t.Helper()
	l := get(t, c, ns, routing.RelayLeasePrefix+pod, &coordinationv1.Lease{})
	want := relayLease(ns, pod, version, time.Now(), seconds)
	l.Annotations, l.Spec = want.Annotations, want.Spec
	update(t, c, l)
}

func TestGeneratedDKIMKeySurvivesRecreate(t *testing.T) {
	c, tenant, relayNS := setup(t)
	startOperator(t, relayNS)
	startFollower(t, relayNS, "relay-a")
	domain := tenant + ".example.com"

	create(t, c, senderDomain(tenant, "signed", domain, generateKey(v1alpha1.DKIMAlgorithmEd25519)))
	sd := waitCond(t, c, tenant, "signed", newSD, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)
	secretName := v1alpha1.DefaultDKIMKeySecretName(domain, "s1")
	if sd.Status.DKIM == nil || sd.Status.DKIM.Name != "s1._domainkey."+domain || !strings.HasPrefix(sd.Status.DKIM.Value, "v=DKIM1; k=ed25519; p=") ||
		sd.Status.DKIM.SecretName != secretName {
		t.Fatalf("status.dkim = %+v", sd.Status.DKIM)
	}
	key := get(t, c, tenant, secretName, &corev1.Secret{})
	if key.Labels[DKIMKeyLabel] != "true" || key.Annotations[DKIMDomainAnnotation] != domain || key.Annotations[DKIMSelectorAnnotation] != "s1" {
		t.Errorf("key Secret labels %v annotations %v", key.Labels, key.Annotations)
	}
	if len(key.OwnerReferences) != 0 {
		t.Errorf("key Secret has owner references %v: garbage collection would remove it", key.OwnerReferences)
	}
	record := *sd.Status.DKIM
	waitEvent(t, c, tenant, "signed", "KeyGenerated")

	// A GitOps re-sync: delete and re-create. Same Secret, same record.
	if err := c.Delete(context.Background(), sd); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, func() string {
		if err := c.Get(context.Background(), client.ObjectKeyFromObject(sd), newSD()); err == nil {
			return "still there"
		}
		return ""
	})
	create(t, c, senderDomain(tenant, "signed", domain, generateKey(v1alpha1.DKIMAlgorithmEd25519)))
	sd = waitCond(t, c, tenant, "signed", newSD, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)
	if sd.Status.DKIM == nil || *sd.Status.DKIM != record {
		t.Errorf("after re-creating: status.dkim %+v, want %+v", sd.Status.DKIM, record)
	}
	again := get(t, c, tenant, secretName, &corev1.Secret{})
	if again.UID != key.UID || again.ResourceVersion != key.ResourceVersion {
		t.Error("the key Secret was replaced or rewritten")
	}

	// An existing Secret is never overwritten, even when it is unusable.
	create(t, c, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: tenant, Name: "mine"}, StringData: map[string]string{"other": "x"}})
	sd2 := senderDomain(tenant, "signed2", "two."+domain, generateKey(v1alpha1.DKIMAlgorithmRSA2048))
	sd2.Spec.Signing.Generate.SecretName = "mine"
	create(t, c, sd2)
	waitCond(t, c, tenant, "signed2", newSD, v1alpha1.ConditionResolvedRefs, metav1.ConditionFalse, v1alpha1.ReasonInvalidSecret)
	if mine := get(t, c, tenant, "mine", &corev1.Secret{}); len(mine.Data) != 1 {
		t.Errorf("the user's Secret was overwritten: keys %v", slices.Collect(mapsKeys(mine.Data)))
	}
}

func mapsKeys(m map[string][]byte) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func TestPolicyRefusesClaim(t *testing.T) {
	c := newClient(t)
	ns := namespaces(t, c, "tenant", "relay", "operator")
	tenant, relayNS, opNS := ns[0], ns[1], ns[2]
	create(t, c, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: opNS, Name: "policy"}, Data: map[string]string{
		routing.PolicyConfigMapKey: "domainClaims:\n- namespaces: [\"nobody\"]\n  suffixes: [\"example.com\"]\n",
	}})
	t.Cleanup(func() {
		_ = c.Delete(context.Background(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: opNS, Name: "policy"}})
	})
	startOperator(t, relayNS, withPolicy(opNS, "policy"))

	create(t, c, senderDomain(tenant, "sd", tenant+".example.com"))
	sd := waitCond(t, c, tenant, "sd", newSD, v1alpha1.ConditionAccepted, metav1.ConditionFalse, v1alpha1.ReasonDomainNotAllowed)
	if got := kstatusOf(t, sd); got != kstatus.FailedStatus {
		t.Errorf("kstatus: %s, want Failed", got)
	}
	// Allowing the namespace takes effect without touching the object.
	cm := get(t, c, opNS, "policy", &corev1.ConfigMap{})
	cm.Data[routing.PolicyConfigMapKey] = fmt.Sprintf("domainClaims:\n- namespaces: [%q]\n  suffixes: [\"example.com\"]\n", tenant)
	update(t, c, cm)
	waitCond(t, c, tenant, "sd", newSD, v1alpha1.ConditionAccepted, metav1.ConditionTrue, v1alpha1.ReasonAccepted)
}

// TestUnchangedObjectsAreNotRewritten: a new table version rewrites the
// status of the object that changed, and of no other.
func TestUnchangedObjectsAreNotRewritten(t *testing.T) {
	c, tenant, relayNS := setup(t)
	op := startOperator(t, relayNS)
	f, _ := startFollower(t, relayNS, "relay-a")

	const n = 30
	create(t, c, senderDomain(tenant, "sd", tenant+".example.com"))
	for i := range n {
		create(t, c, trustedNetwork(tenant, fmt.Sprintf("net-%02d", i), fmt.Sprintf("10.%d.0.0/16", i)))
	}
	rvs := map[string]string{}
	testenv.Eventually(t, func() string {
		var list v1alpha1.TrustedNetworkList
		if err := c.List(context.Background(), &list, client.InNamespace(tenant)); err != nil {
			return err.Error()
		}
		for i := range list.Items {
			if why := condIs(&list.Items[i], v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady); why != "" {
				return why
			}
			rvs[list.Items[i].Name] = list.Items[i].ResourceVersion
		}
		return ""
	})
	sd := get(t, c, tenant, "sd", newSD())
	writesBefore, statusBefore, versionBefore := op.writes.n.Load(), op.r.Stats().StatusWrites.Load(), op.r.Stats().Version.Load()
	readsBefore := op.writes.reads.Load()

	tn := get(t, c, tenant, "net-07", newTN())
	tn.Spec.CIDRs = append(tn.Spec.CIDRs, "10.200.0.0/16")
	update(t, c, tn)
	waitCond(t, c, tenant, "net-07", newTN, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)
	if v := f.Table().Version; v <= versionBefore {
		t.Fatalf("follower at version %d, want > %d", v, versionBefore)
	}
	var list v1alpha1.TrustedNetworkList
	if err := c.List(context.Background(), &list, client.InNamespace(tenant)); err != nil {
		t.Fatal(err)
	}
	for _, item := range list.Items {
		if item.Name != "net-07" && item.ResourceVersion != rvs[item.Name] {
			t.Errorf("%s was rewritten (resourceVersion %s, was %s)", item.Name, item.ResourceVersion, rvs[item.Name])
		}
	}
	if again := get(t, c, tenant, "sd", newSD()); again.ResourceVersion != sd.ResourceVersion {
		t.Error("the unchanged SenderDomain was rewritten")
	}
	writes, status := op.writes.n.Load()-writesBefore, op.r.Stats().StatusWrites.Load()-statusBefore
	reads := op.writes.reads.Load() - readsBefore
	t.Logf("one changed TrustedNetwork among %d objects: %d API writes (%d status), %d API reads of Secrets, version %d -> %d",
		n+1, writes, status, reads, versionBefore, op.r.Stats().Version.Load())
	// The index, read before it is rewritten; no Secret metadata from the
	// API server (the cache has it).
	if reads > 1 {
		t.Errorf("%d API reads for one change with no Secret", reads)
	}
	// Programmed False then True on the changed object, one shard, the
	// index, and the deletion of the shard the old version alone used.
	if status > 2 || writes > 6 {
		t.Errorf("%d writes, %d of them status: more than the changed object needs", writes, status)
	}
}

// TestDeliveryDegradedAndPruning: the operator derives DeliveryDegraded from
// the relays' entries and removes the entries of relays whose Lease is gone,
// although each entry belongs to its relay's field manager.
func TestDeliveryDegradedAndPruning(t *testing.T) {
	c, tenant, relayNS := setup(t)
	startOperator(t, relayNS)
	startFollower(t, relayNS, "relay-a")

	create(t, c, senderDomain(tenant, "sd", tenant+".example.com"))
	waitCond(t, c, tenant, "sd", newSD, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)

	now := time.Now()
	applyReplica(t, c, tenant, "sd", v1alpha1.ReplicaDeliveryStatus{Name: "relay-gone",
		LastDelivered: &v1alpha1.DeliveryAttempt{Time: metav1.NewMicroTime(now.Add(-time.Minute)), RelayHost: "mx.example.com", ResponseCode: 250}})
	applyReplica(t, c, tenant, "sd", v1alpha1.ReplicaDeliveryStatus{Name: "relay-a",
		LastDelivered: &v1alpha1.DeliveryAttempt{Time: metav1.NewMicroTime(now.Add(-time.Minute)), RelayHost: "mx.example.com", ResponseCode: 250},
		LastFailed:    &v1alpha1.DeliveryAttempt{Time: metav1.NewMicroTime(now), RelayHost: "mx.example.com", ResponseCode: 451, EnhancedCode: "4.3.0", Reply: "try again later"}})

	sd := waitCond(t, c, tenant, "sd", newSD, v1alpha1.ConditionDeliveryDegraded, metav1.ConditionTrue, v1alpha1.ReasonTemporaryFailures)
	waitEvent(t, c, tenant, "sd", v1alpha1.ReasonTemporaryFailures) // a failing period starts
	testenv.Eventually(t, func() string {
		sd = get(t, c, tenant, "sd", newSD())
		var names []string
		for _, r := range sd.Status.Delivery.Replicas {
			names = append(names, r.Name)
		}
		if !slices.Equal(names, []string{"relay-a"}) {
			return fmt.Sprintf("replicas %v, want [relay-a]", names)
		}
		return ""
	})
	for _, mf := range sd.ManagedFields {
		if mf.Manager == "postgate-relay/relay-gone" && mf.FieldsV1 != nil && strings.Contains(mf.FieldsV1.GetRawString(), "relay-gone") {
			t.Errorf("the dead relay still owns fields: %s", mf.FieldsV1.GetRawString())
		}
	}
	// Ready is not about delivery.
	if why := condIs(sd, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady); why != "" {
		t.Error(why)
	}
	// The live relay's entry is still its own: it can apply it again.
	applyReplica(t, c, tenant, "sd", v1alpha1.ReplicaDeliveryStatus{Name: "relay-a",
		LastDelivered: &v1alpha1.DeliveryAttempt{Time: metav1.NewMicroTime(now.Add(time.Second)), RelayHost: "mx.example.com", ResponseCode: 250},
		LastFailed:    &v1alpha1.DeliveryAttempt{Time: metav1.NewMicroTime(now), RelayHost: "mx.example.com", ResponseCode: 451, EnhancedCode: "4.3.0", Reply: "try again later"}})
	testenv.Eventually(t, func() string {
		return hasNoCondition(get(t, c, tenant, "sd", newSD()), v1alpha1.ConditionDeliveryDegraded)
	})
	waitEvent(t, c, tenant, "sd", v1alpha1.EventReasonDeliveryRecovered) // and ends
}

// applyReplica writes one replica's entry as a relay does: server-side apply
// of the status subresource under its own field manager (contract 6).
func applyReplica(t *testing.T, c client.Client, ns, name string, r v1alpha1.ReplicaDeliveryStatus) {
	t.Helper()
	body := map[string]any{
		"apiVersion": v1alpha1.GroupVersion.String(), "kind": "SenderDomain",
		"metadata": map[string]any{"namespace": ns, "name": name},
		"status":   map[string]any{"delivery": map[string]any{"replicas": []any{r}}},
	}
	data, err := jsonMarshal(body)
	if err != nil {
		t.Fatal(err)
	}
	obj := &v1alpha1.SenderDomain{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := c.Status().Patch(context.Background(), obj, client.RawPatch(types.ApplyPatchType, data), client.FieldOwner("postgate-relay/"+r.Name), client.ForceOwnership); err != nil {
		t.Fatal(err)
	}
}

// TestOperatorDiesBetweenShardsAndIndex: an operator that writes the shards
// of a new version and dies before the index leaves the relays on the last
// complete version; the next operator continues the version sequence,
// publishes, and deletes the orphaned shards once no live relay needs them.
func TestOperatorDiesBetweenShardsAndIndex(t *testing.T) {
	c, tenant, relayNS := setup(t)
	first := startOperator(t, relayNS)
	f, _ := startFollower(t, relayNS, "relay-a")
	create(t, c, senderDomain(tenant, "one", "one."+tenant+".example.com"))
	waitCond(t, c, tenant, "one", newSD, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)
	v1 := f.Table().Version
	first.stop()

	died := make(chan struct{})
	var once sync.Once
	dying := startOperator(t, relayNS, withAfterShards(func() error {
		once.Do(func() { close(died) })
		return errors.New("killed between the shard writes and the index write")
	}))
	create(t, c, senderDomain(tenant, "two", "two."+tenant+".example.com"))
	select {
	case <-died:
	case <-time.After(testenv.WaitTimeout):
		t.Fatal("the dying operator never reached the index write")
	}
	dying.stop()

	key2 := routing.ObjectKey{Kind: routing.KindSenderDomain, Namespace: tenant, Name: "two"}
	if tbl := f.Table(); tbl.Version != v1 || tbl.Contains(key2, 1) {
		t.Fatalf("follower runs version %d (contains two: %v), want %d without two", tbl.Version, tbl.Contains(key2, 1), v1)
	}
	if tbl := publishedTable(t, c, relayNS); tbl.Version != v1 {
		t.Fatalf("published index version %d, want %d", tbl.Version, v1)
	}
	if n := len(shardSecrets(t, c, relayNS)); n <= len(indexShards(t, c, relayNS)) {
		t.Fatalf("%d shard Secrets: the dying operator wrote no new shard", n)
	}
	if why := condIs(get(t, c, tenant, "two", newSD()), v1alpha1.ConditionReady, metav1.ConditionTrue, ""); why == "" {
		t.Fatal("two is Ready although no index names it")
	}

	next := startOperator(t, relayNS)
	waitCond(t, c, tenant, "two", newSD, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)
	if v := f.Table().Version; v != v1+1 {
		t.Errorf("follower at version %d, want %d: the new operator continues the sequence", v, v1+1)
	}
	testenv.Eventually(t, func() string {
		have, want := shardSecrets(t, c, relayNS), indexShards(t, c, relayNS)
		if !slices.Equal(have, want) {
			return fmt.Sprintf("shard Secrets %v, want those of the index %v", have, want)
		}
		return ""
	})
	next.stop()

	// A restart with nothing changed publishes nothing.
	again := startOperator(t, relayNS)
	testenv.Eventually(t, func() string {
		if again.r.Stats().Reconciles.Load() == 0 {
			return "no reconcile yet"
		}
		return ""
	})
	if n := again.r.Stats().Publications.Load(); n != 0 {
		t.Errorf("%d publications after a restart with no change", n)
	}
	if v := publishedTable(t, c, relayNS).Version; v != v1+1 {
		t.Errorf("version %d after a restart, want %d", v, v1+1)
	}
}

func shardSecrets(t *testing.T, c client.Client, ns string) []string {
	t.Helper()
	var list corev1.SecretList
	if err := c.List(context.Background(), &list, client.InNamespace(ns), client.MatchingLabels{routing.TableLabel: routing.TableLabelShard}); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range list.Items {
		if s.DeletionTimestamp == nil {
			names = append(names, s.Name)
		}
	}
	slices.Sort(names)
	return names
}

func indexShards(t *testing.T, c client.Client, ns string) []string {
	t.Helper()
	idx := readIndex(t, c, ns)
	names := shardNames(idx)
	slices.Sort(names)
	return names
}

// TestRotatedBackSecretRepublishesDeletedShard: a password rotated and
// rotated back gives a table with the content of an earlier version, whose
// shard was deleted meanwhile: it is written again, and the follower loads
// the version.
func TestRotatedBackSecretRepublishesDeletedShard(t *testing.T) {
	c, tenant, relayNS := setup(t)
	startOperator(t, relayNS)
	f, _ := startFollower(t, relayNS, "relay-a")
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: tenant, Name: "mailer"}, Type: corev1.SecretTypeBasicAuth,
		StringData: map[string]string{"username": "mailer", "password": "first-password"}}
	create(t, c, secret, trustedNetwork(tenant, "office", "192.0.2.0/24", "mailer"))
	waitCond(t, c, tenant, "office", newTN, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)
	first := indexShards(t, c, relayNS)

	rotate := func(password string) {
		s := get(t, c, tenant, "mailer", &corev1.Secret{})
		s.StringData = map[string]string{"password": password}
		update(t, c, s)
	}
	authenticates := func(password string) func() string {
		return func() string {
			tbl := f.Table()
			if tbl.Authenticate(netip.MustParseAddr("192.0.2.7"), "mailer", password) == "" {
				return fmt.Sprintf("the follower's table (version %d) does not take %q", tbl.Version, password)
			}
			return ""
		}
	}
	testenv.Eventually(t, authenticates("first-password"))
	rotate("second-password")
	testenv.Eventually(t, authenticates("second-password"))
	testenv.Eventually(t, func() string {
		for _, name := range shardSecrets(t, c, relayNS) {
			if slices.Contains(first, name) {
				return "the first version's shard is not deleted yet"
			}
		}
		return ""
	})
	rotate("first-password")
	testenv.Eventually(t, authenticates("first-password"))
	if got := indexShards(t, c, relayNS); !slices.Equal(got, first) {
		t.Errorf("shards %v, want the first version's %v again", got, first)
	}
}

// TestGeneratedKeyIsNeverMissing: while the operator generates a
// SenderDomain's key, the domain waits for it (Programmed=False Pending);
// no status it writes until the key is in (status.dkim) says the key
// Secret is not found.
func TestGeneratedKeyIsNeverMissing(t *testing.T) {
	c, tenant, relayNS := setup(t)
	wc, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w, err := wc.Watch(ctx, &v1alpha1.SenderDomainList{}, client.InNamespace(tenant))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	// No relay: the status is written at once, without waiting for
	// relays to load the table.
	startOperator(t, relayNS)
	create(t, c, senderDomain(tenant, "signed", tenant+".example.com", generateKey(v1alpha1.DKIMAlgorithmEd25519)))
	timeout := time.After(time.Minute)
	for {
		select {
		case <-timeout:
			t.Fatal("the SenderDomain did not get its DKIM record")
		case e, ok := <-w.ResultChan():
			if !ok {
				t.Fatal("the watch ended")
			}
			sd, isSD := e.Object.(*v1alpha1.SenderDomain)
			if !isSD {
				continue
			}
			if msg := condIs(sd, v1alpha1.ConditionResolvedRefs, metav1.ConditionFalse, ""); msg == "" {
				c := meta.FindStatusCondition(sd.Status.Conditions, string(v1alpha1.ConditionResolvedRefs))
				t.Fatalf("while its key was generated, the SenderDomain said ResolvedRefs=False %s: %s", c.Reason, c.Message)
			}
			if sd.Status.DKIM != nil {
				return
			}
		}
	}
}
