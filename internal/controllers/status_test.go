package controllers

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/randfill"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/routing"
)

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

func attempt(at time.Duration, code int32, mutate ...func(*v1alpha1.DeliveryAttempt)) *v1alpha1.DeliveryAttempt {
	a := &v1alpha1.DeliveryAttempt{Time: metav1.NewMicroTime(t0.Add(at)), RelayHost: "mx.example.com", ResponseCode: code}
	for _, m := range mutate {
		m(a)
	}
	return a
}

func TestDeliveryDegraded(t *testing.T) {
	live := relays{live: []relay{{name: "relay-a", version: 1, expires: t0.Add(time.Minute)}}}
	tlsFailed := func(a *v1alpha1.DeliveryAttempt) {
		a.TLS = &v1alpha1.TransportEncryption{Requested: v1alpha1.TLSPolicyRequired}
	}
	policyFailed := func(policy string) func(*v1alpha1.DeliveryAttempt) {
		return func(a *v1alpha1.DeliveryAttempt) {
			a.TLS = &v1alpha1.TransportEncryption{Requested: v1alpha1.TLSPolicyOpportunistic, Policy: policy, PolicyResult: "validation-failure"}
		}
	}
	enhanced := func(code string) func(*v1alpha1.DeliveryAttempt) {
		return func(a *v1alpha1.DeliveryAttempt) { a.EnhancedCode = code }
	}
	noBind := func(a *v1alpha1.DeliveryAttempt) {
		a.Reply = "dial tcp 192.0.2.7:0->203.0.113.5:25: bind: cannot assign requested address"
	}
	until := metav1.NewTime(t0.Add(5 * time.Minute))
	throttled := func(a *v1alpha1.DeliveryAttempt) {
		a.RelayHost, a.Site, a.ThrottledUntil = "", "google.com", &until
		a.Reply = "site google.com suspended until 2026-01-01T12:05:00Z: throttled"
	}
	tests := []struct {
		desc       string
		replica    v1alpha1.ReplicaDeliveryStatus
		wantReason v1alpha1.Reason // "" for no condition
	}{
		{"never failed", v1alpha1.ReplicaDeliveryStatus{Name: "relay-a", LastDelivered: attempt(0, 250)}, ""},
		{"4xx after the last success", v1alpha1.ReplicaDeliveryStatus{Name: "relay-a", LastDelivered: attempt(-time.Minute, 250), LastFailed: attempt(0, 451)}, v1alpha1.ReasonTemporaryFailures},
		{"5xx", v1alpha1.ReplicaDeliveryStatus{Name: "relay-a", LastFailed: attempt(0, 550)}, v1alpha1.ReasonBounces},
		{"no connection", v1alpha1.ReplicaDeliveryStatus{Name: "relay-a", LastFailed: attempt(0, 0, enhanced("4.4.1"))}, v1alpha1.ReasonTargetUnreachable},
		{"DNS lookup failed for now", v1alpha1.ReplicaDeliveryStatus{Name: "relay-a", LastFailed: attempt(0, 0, enhanced("4.4.3"))}, v1alpha1.ReasonTargetUnreachable},
		{"recipient domain does not exist (NXDOMAIN)", v1alpha1.ReplicaDeliveryStatus{Name: "relay-a", LastFailed: attempt(0, 0, enhanced("5.1.2"))}, v1alpha1.ReasonBounces},
		{"recipient domain accepts no mail (null MX)", v1alpha1.ReplicaDeliveryStatus{Name: "relay-a", LastFailed: attempt(0, 0, enhanced("5.1.10"))}, v1alpha1.ReasonBounces},
		{"4xx reply with a permanent enhanced code", v1alpha1.ReplicaDeliveryStatus{Name: "relay-a", LastFailed: attempt(0, 451, enhanced("5.7.1"))}, v1alpha1.ReasonTemporaryFailures},
		{"TLS required, not established", v1alpha1.ReplicaDeliveryStatus{Name: "relay-a", LastFailed: attempt(0, 0, tlsFailed)}, v1alpha1.ReasonTLSRequiredButUnavailable},
		{"DANE refused the certificate", v1alpha1.ReplicaDeliveryStatus{Name: "relay-a", LastFailed: attempt(0, 0, enhanced("4.7.5"), policyFailed("dane"))}, v1alpha1.ReasonTLSRequiredButUnavailable},
		{"MTA-STS enforce refused the certificate", v1alpha1.ReplicaDeliveryStatus{Name: "relay-a", LastFailed: attempt(0, 0, enhanced("4.7.5"), policyFailed("mta-sts"))}, v1alpha1.ReasonTLSRequiredButUnavailable},
		{"source IP not on the host", v1alpha1.ReplicaDeliveryStatus{Name: "relay-a", LastFailed: attempt(0, 0, noBind)}, v1alpha1.ReasonSourceIPUnavailable},
		{"site suspended, no host tried", v1alpha1.ReplicaDeliveryStatus{Name: "relay-a", LastFailed: attempt(0, 451, enhanced("4.7.0"), throttled)}, v1alpha1.ReasonThrottled},
		{"the site's throttle reply itself", v1alpha1.ReplicaDeliveryStatus{Name: "relay-a", LastFailed: attempt(0, 421, enhanced("4.7.28"), throttled)}, v1alpha1.ReasonThrottled},
		{"a site, not throttled", v1alpha1.ReplicaDeliveryStatus{Name: "relay-a", LastFailed: attempt(0, 451, func(a *v1alpha1.DeliveryAttempt) { a.Site = "google.com" })}, v1alpha1.ReasonTemporaryFailures},
		{"success after the failure", v1alpha1.ReplicaDeliveryStatus{Name: "relay-a", LastDelivered: attempt(time.Second, 250), LastFailed: attempt(0, 451)}, ""},
		{"failure older than the window", v1alpha1.ReplicaDeliveryStatus{Name: "relay-a", LastFailed: attempt(-16*time.Minute, 451)}, ""},
		{"a dead relay's failure", v1alpha1.ReplicaDeliveryStatus{Name: "relay-gone", LastFailed: attempt(0, 451)}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			d := &v1alpha1.DeliveryStatus{Replicas: []v1alpha1.ReplicaDeliveryStatus{tt.replica}}
			c, clears := deliveryDegraded(d, live, 3, t0.Add(time.Second), 15*time.Minute)
			switch {
			case tt.wantReason == "" && c != nil:
				t.Errorf("condition %s %s, want none", c.Reason, c.Message)
			case tt.wantReason != "" && c == nil:
				t.Errorf("no condition, want %s", tt.wantReason)
			case c != nil && (c.Reason != string(tt.wantReason) || c.ObservedGeneration != 3 || c.Status != metav1.ConditionTrue):
				t.Errorf("condition %+v, want reason %s at generation 3", c, tt.wantReason)
			case c != nil && !clears.Equal(tt.replica.LastFailed.Time.Add(15*time.Minute)):
				t.Errorf("clears at %s, want 15 minutes after the failure", clears)
			case c != nil && c.Reason == string(v1alpha1.ReasonThrottled):
				if want := "Relay relay-a: mail to site google.com is throttled until 2026-01-01T12:05:00Z, deferred without counting an attempt: "; !strings.HasPrefix(c.Message, want) {
					t.Errorf("message %q, want it to begin %q", c.Message, want)
				}
			}
		})
	}
}

func TestRelaysFromLeases(t *testing.T) {
	seconds := int32(30)
	renewed := metav1.NewMicroTime(t0)
	lease := func(name, version string) *coordinationv1.Lease {
		return &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{routing.TableVersionAnnotation: version}},
			Spec:       coordinationv1.LeaseSpec{RenewTime: &renewed, LeaseDurationSeconds: &seconds},
		}
	}
	if _, ok := relayOf(lease("postgate-operator.postgate.io", "3")); ok {
		t.Error("the leader-election Lease counts as a relay")
	}
	r, ok := relayOf(lease(routing.RelayLeasePrefix+"relay-0", "7"))
	if !ok || r.name != "relay-0" || r.version != 7 || !r.expires.Equal(t0.Add(30*time.Second)) {
		t.Errorf("relayOf = %+v, %v", r, ok)
	}
	if r, _ := relayOf(lease(routing.RelayLeasePrefix+"relay-1", "garbage")); r.version != 0 {
		t.Errorf("an unreadable version reads as %d, want 0 (no table)", r.version)
	}
}

func TestVersionBookProgrammed(t *testing.T) {
	key := routing.ObjectKey{Kind: routing.KindSenderDomain, Namespace: "ns", Name: "sd"}
	ref := func(gen int64) routing.ObjectRef {
		return routing.ObjectRef{Kind: key.Kind, Namespace: key.Namespace, Name: key.Name, UID: "u1", Generation: gen}
	}
	b := versionBook{key: {uid: "u1", generation: 2, version: 5}}
	at := func(versions ...int64) relays {
		var rs relays
		for i, v := range versions {
			rs.live = append(rs.live, relay{name: string(rune('a' + i)), version: v})
		}
		return rs
	}
	tests := []struct {
		desc       string
		obj        routing.ObjectRef
		rs         relays
		wantStatus metav1.ConditionStatus
		wantReason v1alpha1.Reason
	}{
		{"no relay", ref(2), at(), metav1.ConditionFalse, v1alpha1.ReasonNoRelays},
		{"every relay has it", ref(2), at(5, 6), metav1.ConditionTrue, v1alpha1.ReasonProgrammed},
		{"one relay lags", ref(2), at(6, 4), metav1.ConditionFalse, v1alpha1.ReasonPending},
		{"a newer generation not published yet", ref(3), at(9), metav1.ConditionFalse, v1alpha1.ReasonPending},
		{"a relay claims a version never published", ref(2), at(5, 12), metav1.ConditionFalse, v1alpha1.ReasonPending},
		{"a relay claims a version skipped by a jump", ref(2), at(5, 10), metav1.ConditionFalse, v1alpha1.ReasonPending},
		{"a relay runs the version after the jump", ref(2), at(5, 11), metav1.ConditionTrue, v1alpha1.ReasonProgrammed},
		{"a relay with no table", ref(2), at(5, 0), metav1.ConditionFalse, v1alpha1.ReasonPending},
	}
	// Versions 1 to 8 were published, then 11: a relay claimed 10.
	var published publishedVersions
	published.add(1, 8)
	published.add(11, 11)
	for _, tt := range tests {
		got := b.programmed(tt.obj, tt.rs, &published, "relays")
		if got.Status != tt.wantStatus || got.Reason != tt.wantReason {
			t.Errorf("%s: %s %s (%s), want %s %s", tt.desc, got.Status, got.Reason, got.Message, tt.wantStatus, tt.wantReason)
		}
	}
}

func TestDesiredStatusKeepsTransitionTimes(t *testing.T) {
	old := metav1.NewTime(t0)
	cur := &v1alpha1.RelayRoute{Status: v1alpha1.RelayRouteStatus{ObservedGeneration: 1, Conditions: []metav1.Condition{
		{Type: string(v1alpha1.ConditionAccepted), Status: metav1.ConditionTrue, Reason: "Accepted", LastTransitionTime: old, ObservedGeneration: 1},
		{Type: string(v1alpha1.ConditionProgrammed), Status: metav1.ConditionFalse, Reason: "Pending", LastTransitionTime: old, ObservedGeneration: 1},
	}}}
	now := t0.Add(time.Hour)
	want := desiredStatus(cur.GetConditions(), []metav1.Condition{
		{Type: string(v1alpha1.ConditionAccepted), Status: metav1.ConditionTrue, Reason: "Accepted", ObservedGeneration: 2},
		{Type: string(v1alpha1.ConditionProgrammed), Status: metav1.ConditionTrue, Reason: "Programmed", ObservedGeneration: 2},
	}, nil, 2, now)
	if got := want.Conditions[0].LastTransitionTime; !got.Equal(&old) {
		t.Errorf("Accepted stayed True but its transition time moved to %s", got)
	}
	if got := want.Conditions[1].LastTransitionTime; !got.Time.Equal(now) {
		t.Errorf("Programmed turned True at %s, want %s", got, now)
	}
	if sameStatus(cur, want) {
		t.Error("a new generation and a new condition status compare as the same status")
	}
	cur2 := &v1alpha1.RelayRoute{Status: v1alpha1.RelayRouteStatus{ObservedGeneration: 2, Conditions: want.Conditions}}
	again := desiredStatus(cur2.GetConditions(), []metav1.Condition{want.Conditions[0], want.Conditions[1]}, nil, 2, now.Add(time.Hour))
	if !sameStatus(cur2, again) || statusHash(again) != statusHash(want) {
		t.Error("the same status computed later compares as different")
	}
}

// A held route that resolves keeps its generation, yet is programmed only
// once the relays load the version that takes it out of hold.
func TestVersionBookHeldToResolved(t *testing.T) {
	sd := v1alpha1.SenderDomain{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "sd", UID: "u1", Generation: 1},
		Spec: v1alpha1.SenderDomainSpec{Domain: "example.com"}}
	rr := v1alpha1.RelayRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "rr", UID: "u2", Generation: 1},
		Spec: v1alpha1.RelayRouteSpec{SenderDomainRef: v1alpha1.LocalObjectReference{Name: "sd"},
			Target: v1alpha1.RelayTarget{Host: "smart.example.net", CredentialsSecretRef: &v1alpha1.LocalObjectReference{Name: "creds"}}}}
	creds := corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "creds"}, Type: corev1.SecretTypeBasicAuth,
		Data: map[string][]byte{"username": []byte("u"), "password": []byte("p")}}
	in := routing.Input{SenderDomains: []v1alpha1.SenderDomain{sd}, RelayRoutes: []v1alpha1.RelayRoute{rr}}
	b := versionBook{}
	b.record(routing.Compile(in, nil).Table, 5)
	in.Secrets = []corev1.Secret{creds}
	b.record(routing.Compile(in, nil).Table, 6)
	var published publishedVersions
	published.add(5, 6)
	ref := routing.ObjectRef{Kind: routing.KindRelayRoute, Namespace: "ns", Name: "rr", UID: "u2", Generation: 1}
	if got := b.programmed(ref, relays{live: []relay{{name: "a", version: 5}}}, &published, "relays"); got.Status != metav1.ConditionFalse {
		t.Errorf("relay at the held version 5: %s %s, want not programmed", got.Status, got.Message)
	}
	if got := b.programmed(ref, relays{live: []relay{{name: "a", version: 6}}}, &published, "relays"); got.Status != metav1.ConditionTrue {
		t.Errorf("relay at version 6: %s %s, want programmed", got.Status, got.Message)
	}
}

// TestStatusApplyNamesWhatTheOperatorOwns: the apply configuration of a
// status names the operator's fields as their JSON form does, and nothing
// else: no status.delivery, whose entries are the relays' (docs/design.md
// contract 6). A field it left out would be given up and removed.
func TestStatusApplyNamesWhatTheOperatorOwns(t *testing.T) {
	f := randfill.NewWithSeed(1).NilChance(0.3)
	for i := range 300 {
		var s ownedStatus
		f.Fill(&s)
		kind := []string{routing.KindSenderDomain, routing.KindRelayRoute, routing.KindTrustedNetwork}[i%3]
		if kind != routing.KindSenderDomain {
			s.DKIM = nil // only a SenderDomain has one (writeStatuses)
		}
		if len(s.Conditions) == 0 {
			// Never so: the summary conditions are always there.
			s.Conditions = []metav1.Condition{{Type: string(v1alpha1.ConditionReady), Status: metav1.ConditionTrue}}
		}
		ac, err := statusApply(kind, "tenant", "name", s)
		if err != nil {
			t.Fatal(err)
		}
		want := jsonValue(t, map[string]any{
			"apiVersion": v1alpha1.GroupVersion.String(), "kind": kind,
			"metadata": map[string]string{"namespace": "tenant", "name": "name"},
			"status":   s,
		})
		if got := jsonValue(t, ac); !reflect.DeepEqual(got, want) {
			t.Fatalf("the apply configuration of\n%v\nis\n%v", want, got)
		}
	}
	if _, err := statusApply("Secret", "tenant", "name", ownedStatus{}); err == nil {
		t.Error("a status of a kind that is none of the three applies")
	}
}

// jsonValue is v's JSON form, decoded into maps and slices.
func jsonValue(t *testing.T, v any) any {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatal(err)
	}
	return out
}
