package controllers

import (
	"context"
	"errors"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/routing"
)

// statusJob is one status write.
type statusJob struct {
	obj v1alpha1.Object
	key routing.ObjectKey
	// old are the conditions the object carries as far as the operator
	// knows: what transitions are decided from.
	old  []metav1.Condition
	want ownedStatus
	hash [32]byte
	err  error
}

// writeStatuses writes the status of every object whose computed status
// differs from what it carries, and prunes the delivery entries of dead
// relays. An object is written only when its status changes: a new table
// version, or a relay's renewal, writes nothing for the objects it does not
// concern. What was last written is remembered (memo), and trusted over the
// cache, which may lag behind the operator's own writes: an object is
// neither written twice nor left with a status the cache no longer shows
// (a status that went Pending and back within the cache's lag stays
// Pending otherwise, as no later event comes). It returns when a
// DeliveryDegraded condition will clear by itself.
func (r *Reconciler) writeStatuses(ctx context.Context, objs *objects, rs relays, now time.Time) (time.Time, error) {
	var jobs []*statusJob
	var clears time.Time
	var errs []error
	seen := map[routing.ObjectKey]bool{}
	counts := map[conditionKey]int{}
	defer func() { r.stats.setConditions(counts) }()
	objs.each(func(kind string, obj v1alpha1.Object) {
		key := routing.ObjectKey{Kind: kind, Namespace: obj.GetNamespace(), Name: obj.GetName()}
		seen[key] = true
		v := r.result.Verdict(key)
		if v == nil || v.Object.UID != obj.GetUID() || v.Object.Generation != obj.GetGeneration() {
			return // changed since the compile: the next reconcile, queued already, handles it
		}
		if pruned, err := pruneDeadReplicas(ctx, r.client, kind, obj, rs); err != nil {
			errs = append(errs, err)
		} else if pruned {
			r.stats.StatusWrites.Add(1)
		}
		var programmed routing.Status
		if v.InTable {
			programmed = r.book.programmed(v.Object, rs, &r.published, r.opts.RelayNamespace)
		}
		conds := v.Conditions(programmed)
		if dd, c := deliveryDegraded(obj.GetDelivery(), rs, obj.GetGeneration(), now, r.opts.DeliveryWindow); dd != nil {
			conds = append(conds, *dd)
			if clears.IsZero() || c.Before(clears) {
				clears = c
			}
		}
		var dkim *v1alpha1.DKIMRecord
		if kind == routing.KindSenderDomain {
			dkim = v.DKIM
		}
		// The memo, when it has the object, is what it carries: the cache's
		// copy may not show the operator's last write yet, and a status
		// computed again equal to that stale copy must still be written.
		m, known := r.memo[key]
		known = known && m.uid == obj.GetUID()
		carries := obj.GetConditions()
		if known {
			carries = m.conditions
		}
		want := desiredStatus(carries, conds, dkim, obj.GetGeneration(), now)
		for _, c := range want.Conditions {
			counts[conditionKey{kind, c.Type, c.Status}]++
		}
		h := statusHash(want)
		switch {
		case known && m.hash == h:
			return
		case !known && sameStatus(obj, want):
			r.memo[key] = newMemoEntry(obj.GetUID(), h, want)
			return
		}
		jobs = append(jobs, &statusJob{obj: obj, key: key, old: carries, want: want, hash: h})
	})
	for k := range r.memo {
		if !seen[k] {
			delete(r.memo, k)
		}
	}

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.opts.StatusWorkers)
	for _, j := range jobs {
		g.Go(func() error {
			j.err = applyStatus(gctx, r.client, j.obj, j.key.Kind, j.want)
			return nil // each job keeps its error; the others go on
		})
	}
	_ = g.Wait()
	for _, j := range jobs {
		if j.err != nil {
			// The write may have taken effect or not: what the object
			// carries is unknown, so the next pass writes again.
			errs = append(errs, j.err)
			r.memo[j.key] = newMemoEntry(j.obj.GetUID(), [32]byte{}, ownedStatus{Conditions: j.old})
			continue
		}
		r.stats.StatusWrites.Add(1)
		r.memo[j.key] = newMemoEntry(j.obj.GetUID(), j.hash, j.want)
		r.recordTransitions(j.obj, j.old, j.want)
	}
	return clears, errors.Join(errs...)
}

// recordTransitions emits an Event for each condition that turned bad (a
// refusal, an unresolved reference, a refused route, degraded delivery) or
// turned accepted again: on transitions only, never on every reconcile. A
// route waiting for its SenderDomain is not bad (routing.Waits).
func (r *Reconciler) recordTransitions(obj client.Object, old []metav1.Condition, s ownedStatus) {
	for _, t := range []v1alpha1.ConditionType{v1alpha1.ConditionAccepted, v1alpha1.ConditionResolvedRefs,
		v1alpha1.ConditionRouteRefused, v1alpha1.ConditionDeliveryDegraded} {
		n := meta.FindStatusCondition(s.Conditions, string(t))
		o := meta.FindStatusCondition(old, string(t))
		if n == nil {
			// DeliveryDegraded is present only while delivery fails: its
			// removal ends a failing period.
			if t == v1alpha1.ConditionDeliveryDegraded && o != nil && o.Status == metav1.ConditionTrue {
				r.events.Eventf(obj, nil, corev1.EventTypeNormal, v1alpha1.EventReasonDeliveryRecovered, string(t),
					"Delivery recovered: the last attempt of every live relay succeeded (was %s)", o.Reason)
			}
			continue
		}
		// A wait for something that may still come is not a failure:
		// no Warning for it.
		bad := (n.Status == metav1.ConditionFalse && !routing.Waits(v1alpha1.Reason(n.Reason))) ||
			(n.Status == metav1.ConditionTrue && (t == v1alpha1.ConditionRouteRefused || t == v1alpha1.ConditionDeliveryDegraded))
		switch {
		case bad && (o == nil || o.Status != n.Status || o.Reason != n.Reason):
			r.events.Eventf(obj, nil, corev1.EventTypeWarning, n.Reason, string(t), "%s", n.Message)
		case t == v1alpha1.ConditionAccepted && n.Status == metav1.ConditionTrue && o != nil && o.Status == metav1.ConditionFalse:
			r.events.Eventf(obj, nil, corev1.EventTypeNormal, n.Reason, string(t), "%s", n.Message)
		}
	}
}
