package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	acmetav1 "k8s.io/client-go/applyconfigurations/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	acv1alpha1 "github.com/postgate/postgate/api/v1alpha1/applyconfiguration/api/v1alpha1"
	"github.com/postgate/postgate/internal/routing"
)

// FieldManager is the operator's field manager. It owns the conditions,
// status.observedGeneration and status.dkim, and never applies
// status.delivery, whose entries the relays own (docs/design.md contract 6).
const FieldManager = "postgate-operator"

// ownedStatus is the part of a status the operator applies.
type ownedStatus struct {
	ObservedGeneration int64                `json:"observedGeneration"`
	Conditions         []metav1.Condition   `json:"conditions"`
	DKIM               *v1alpha1.DKIMRecord `json:"dkim,omitempty"`
}

// newObjectLike returns an empty object of the given kind with only obj's
// name and namespace, to receive a patch response without touching the
// cache's copy.
func newObjectLike(kind string, obj client.Object) client.Object {
	out := v1alpha1.NewObject(kind)
	out.SetNamespace(obj.GetNamespace())
	out.SetName(obj.GetName())
	return out
}

// desiredStatus is the status the operator wants on an object that carries
// the conditions carried: the compiler's conditions for the given
// Programmed state, the derived delivery condition, and the DKIM record.
// A condition keeps its lastTransitionTime while its status does not
// change (meta.SetStatusCondition); the conditions are in the order of
// conds, and those not in conds are dropped.
func desiredStatus(carried, conds []metav1.Condition, dkim *v1alpha1.DKIMRecord, gen int64, now time.Time) ownedStatus {
	out := make([]metav1.Condition, 0, len(conds))
	for _, c := range conds {
		c.LastTransitionTime = metav1.NewTime(now.Truncate(time.Second))
		if old := meta.FindStatusCondition(carried, c.Type); old != nil {
			kept := []metav1.Condition{*old}
			meta.SetStatusCondition(&kept, c)
			c = kept[0]
		}
		out = append(out, c)
	}
	return ownedStatus{ObservedGeneration: gen, Conditions: out, DKIM: dkim}
}

// sameStatus reports whether obj already carries s, transition times
// aside: as many conditions, none of which meta.SetStatusCondition would
// change or add.
func sameStatus(obj v1alpha1.Object, s ownedStatus) bool {
	cur := obj.GetConditions()
	if obj.GetObservedGeneration() != s.ObservedGeneration || !equality.Semantic.DeepEqual(obj.GetDKIM(), s.DKIM) ||
		len(cur) != len(s.Conditions) {
		return false
	}
	probe := slices.Clone(cur)
	for _, c := range s.Conditions {
		if meta.SetStatusCondition(&probe, c) {
			return false
		}
	}
	return true
}

// statusHash identifies s, transition times aside, for the memo of what was
// written.
func statusHash(s ownedStatus) [32]byte {
	c := s
	c.Conditions = make([]metav1.Condition, len(s.Conditions))
	for i, cond := range s.Conditions {
		cond.LastTransitionTime = metav1.Time{}
		c.Conditions[i] = cond
	}
	b, _ := json.Marshal(c) // plain structs: cannot fail
	return sha256.Sum256(b)
}

// applyStatus applies s to the status subresource of obj with server-side
// apply under FieldManager. It forces: the fields it names are the
// operator's alone (docs/design.md contract 6), and a status left behind by
// another writer must not stop the operator from writing its own.
func applyStatus(ctx context.Context, c client.Client, obj client.Object, kind string, s ownedStatus) error {
	ac, err := statusApply(kind, obj.GetNamespace(), obj.GetName(), s)
	if err != nil {
		return err
	}
	return c.Status().Apply(ctx, ac, client.FieldOwner(FieldManager), client.ForceOwnership)
}

// statusApply is the apply configuration of s for the object of the given
// kind: the fields the operator owns and nothing else, so that the apply
// leaves the relays' delivery entries alone. A field the operator no
// longer names (a DeliveryDegraded condition that cleared, a DKIM record
// that went away) is removed by the apply, as the operator was its only
// owner.
func statusApply(kind, namespace, name string, s ownedStatus) (runtime.ApplyConfiguration, error) {
	conds := make([]*acmetav1.ConditionApplyConfiguration, len(s.Conditions))
	for i := range s.Conditions {
		conds[i] = conditionApply(&s.Conditions[i])
	}
	switch kind {
	case routing.KindSenderDomain:
		st := acv1alpha1.SenderDomainStatus().WithObservedGeneration(s.ObservedGeneration).WithConditions(conds...)
		if s.DKIM != nil {
			st.WithDKIM(dkimApply(s.DKIM))
		}
		return acv1alpha1.SenderDomain(name, namespace).WithStatus(st), nil
	case routing.KindRelayRoute:
		st := acv1alpha1.RelayRouteStatus().WithObservedGeneration(s.ObservedGeneration).WithConditions(conds...)
		return acv1alpha1.RelayRoute(name, namespace).WithStatus(st), nil
	case routing.KindTrustedNetwork:
		st := acv1alpha1.TrustedNetworkStatus().WithObservedGeneration(s.ObservedGeneration).WithConditions(conds...)
		return acv1alpha1.TrustedNetwork(name, namespace).WithStatus(st), nil
	}
	return nil, fmt.Errorf("no status to apply for kind %q", kind)
}

// conditionApply is c as an apply configuration. Type, status, reason,
// message and lastTransitionTime are required by the schema
// (metav1.Condition) and always named; observedGeneration only when set.
func conditionApply(c *metav1.Condition) *acmetav1.ConditionApplyConfiguration {
	out := acmetav1.Condition().WithType(c.Type).WithStatus(c.Status).WithReason(c.Reason).
		WithMessage(c.Message).WithLastTransitionTime(c.LastTransitionTime)
	if c.ObservedGeneration != 0 {
		out.WithObservedGeneration(c.ObservedGeneration)
	}
	return out
}

// dkimApply is d as an apply configuration, naming only the fields set.
func dkimApply(d *v1alpha1.DKIMRecord) *acv1alpha1.DKIMRecordApplyConfiguration {
	out := acv1alpha1.DKIMRecord()
	if d.Name != "" {
		out.WithName(d.Name)
	}
	if d.Value != "" {
		out.WithValue(d.Value)
	}
	if d.SecretName != "" {
		out.WithSecretName(d.SecretName)
	}
	return out
}

// The delivery condition (docs/design.md contract 6) is derived from the relays'
// entries: a live replica whose most recent attempt failed, within the
// window, makes the object DeliveryDegraded. The condition is present only
// while true.

// deliveryDegraded returns the condition, or nil, and when it will clear by
// itself (zero if never).
func deliveryDegraded(d *v1alpha1.DeliveryStatus, rs relays, gen int64, now time.Time, window time.Duration) (*metav1.Condition, time.Time) {
	if d == nil {
		return nil, time.Time{}
	}
	var worst *v1alpha1.ReplicaDeliveryStatus
	var clears time.Time
	for i := range d.Replicas {
		r := &d.Replicas[i]
		f := r.LastFailed
		if f == nil || !rs.isLive(r.Name) || now.Sub(f.Time.Time) >= window {
			continue
		}
		if r.LastDelivered != nil && !r.LastDelivered.Time.Before(&f.Time) {
			continue
		}
		if worst == nil || f.Time.After(worst.LastFailed.Time.Time) {
			worst = r
		}
		if end := f.Time.Add(window); clears.IsZero() || end.Before(clears) {
			clears = end
		}
	}
	if worst == nil {
		return nil, time.Time{}
	}
	f := worst.LastFailed
	msg := fmt.Sprintf("Relay %s: the last delivery attempt to %s failed", worst.Name, f.RelayHost)
	with := " with "
	if f.ThrottledUntil != nil {
		// Where the mail waits and until when, then the reply: the
		// relay's own, or the site's host asking to slow down.
		msg = fmt.Sprintf("Relay %s: mail to site %s is throttled until %s, deferred without counting an attempt",
			worst.Name, f.Site, f.ThrottledUntil.UTC().Format(time.RFC3339))
		with = ": "
	}
	if f.ResponseCode != 0 {
		msg += fmt.Sprintf("%s%d", with, f.ResponseCode)
		if f.EnhancedCode != "" {
			msg += " " + f.EnhancedCode
		}
	}
	if f.Reply != "" {
		msg += ": " + f.Reply
	}
	return &metav1.Condition{
		Type: string(v1alpha1.ConditionDeliveryDegraded), Status: metav1.ConditionTrue,
		Reason: string(failureReason(f)), Message: msg, ObservedGeneration: gen,
	}, clears
}

// failureReason names why an attempt failed. Whether a failure is
// permanent decides Bounces first: the reply code's first digit when there
// was a reply (RFC 5321 section 4.2.1), otherwise the class of the relay's
// own enhanced status code (RFC 3463 section 3.1: 5 is a permanent
// failure), as for a recipient domain that does not exist (NXDOMAIN, 5.1.2)
// or accepts no mail (null MX, 5.1.10). Only a failure that may pass is
// TargetUnreachable.
func failureReason(f *v1alpha1.DeliveryAttempt) v1alpha1.Reason {
	switch {
	case f.ThrottledUntil != nil:
		// Traffic shaping: the mail waits on its site, the relay's own
		// limits toward the receiver, not on a failure of the mail.
		return v1alpha1.ReasonThrottled
	case f.TLS != nil && !f.TLS.Established &&
		(f.TLS.Requested == v1alpha1.TLSPolicyRequired || f.TLS.Requested == v1alpha1.TLSPolicyVerify ||
			f.TLS.Policy == "dane" || f.TLS.Policy == "mta-sts"):
		return v1alpha1.ReasonTLSRequiredButUnavailable
	case f.ResponseCode == 0 && strings.Contains(strings.ToLower(f.Reply), "cannot assign requested address"):
		// EADDRNOTAVAIL from bind(2): the host does not own the source IP.
		return v1alpha1.ReasonSourceIPUnavailable
	case f.ResponseCode >= 500 || (f.ResponseCode == 0 && strings.HasPrefix(f.EnhancedCode, "5.")):
		return v1alpha1.ReasonBounces
	case f.ResponseCode == 0:
		return v1alpha1.ReasonTargetUnreachable
	default:
		return v1alpha1.ReasonTemporaryFailures
	}
}

// pruneDeadReplicas removes the delivery entries of replicas that have no
// live Lease. Server-side apply cannot do it: each entry belongs to its
// replica's field manager, and an applier removes only what it owns. A JSON
// patch of the status subresource can remove any entry; each removal is
// guarded by a test of the entry's name, so that a concurrent change of the
// list fails the patch instead of removing the wrong entry.
func pruneDeadReplicas(ctx context.Context, c client.Client, kind string, obj v1alpha1.Object, rs relays) (bool, error) {
	d := obj.GetDelivery()
	if d == nil {
		return false, nil
	}
	type op struct {
		Op    string `json:"op"`
		Path  string `json:"path"`
		Value any    `json:"value,omitempty"`
	}
	var ops []op
	for i := len(d.Replicas) - 1; i >= 0; i-- { // from the end: indexes stay valid
		if name := d.Replicas[i].Name; !rs.isLive(name) {
			path := fmt.Sprintf("/status/delivery/replicas/%d", i)
			ops = append(ops, op{"test", path + "/name", name}, op{"remove", path, nil})
		}
	}
	if len(ops) == 0 {
		return false, nil
	}
	data, err := json.Marshal(ops)
	if err != nil {
		return false, err
	}
	if err := c.Status().Patch(ctx, newObjectLike(kind, obj), client.RawPatch(types.JSONPatchType, data), client.FieldOwner(FieldManager)); err != nil {
		return false, fmt.Errorf("pruning delivery entries of dead relays from %s %s: %w", kind, client.ObjectKeyFromObject(obj), err)
	}
	return true, nil
}
