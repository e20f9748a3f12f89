package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/postgate/postgate/internal/relay/shaping"
	"github.com/postgate/postgate/internal/routing"
)

// readPolicy reads the guardrail ConfigMap: the guardrail policy
// (policy.yaml) and the traffic shaping policy (shaping.yaml). A policy that
// does not parse leaves the last good one in force (a typo must not loosen
// the guardrails); with no guardrail policy since the start, nothing is
// compiled until it is fixed.
func (r *Reconciler) readPolicy(ctx context.Context) error {
	if r.opts.PolicyName == "" {
		r.shaping = nil // no ConfigMap, no shaping policy: not one an earlier operator published
		return nil
	}
	cm := &corev1.ConfigMap{}
	err := r.client.Get(ctx, types.NamespacedName{Namespace: r.opts.PolicyNamespace, Name: r.opts.PolicyName}, cm)
	if apierrors.IsNotFound(err) {
		r.policy, r.policyRV = routing.Policy{}, ""
		r.shaping, r.shapingRV, r.shapingFrom = nil, "", nil
		return nil
	}
	if err != nil {
		return err
	}
	r.readShaping(ctx, cm)
	if cm.ResourceVersion == r.policyRV {
		return nil
	}
	p, err := routing.ParsePolicy([]byte(cm.Data[routing.PolicyConfigMapKey]))
	if err != nil {
		r.events.Eventf(cm, nil, corev1.EventTypeWarning, "InvalidPolicy", "ParsePolicy", "%s", err.Error())
		if r.policyRV == "" && r.result == nil {
			return fmt.Errorf("the guardrail policy ConfigMap %s/%s: %w", cm.Namespace, cm.Name, err)
		}
		ctrl.LoggerFrom(ctx).Error(err, "Keeping the last good guardrail policy")
		return nil
	}
	r.policy, r.policyRV = p, cm.ResourceVersion
	return nil
}

// maxShapingBytes bounds the published shaping policy: it shares the index
// Secret (1 MiB at most) with the index and the shard history, and a policy
// that could not be written would hold every table back. The shipped
// policy is 2 KiB as JSON.
const maxShapingBytes = 256 << 10

// readShaping reads the shaping policy of the ConfigMap once per version of
// it. A policy that does not parse is a Warning Event on the ConfigMap and
// leaves the last good one published (the one read before, or the one a
// previous operator published); it never holds the table back, since the
// relays' limits stay those of the last good policy. No key: no policy, the
// relays use the shipped default.
func (r *Reconciler) readShaping(ctx context.Context, cm *corev1.ConfigMap) {
	if cm.ResourceVersion == r.shapingRV {
		return
	}
	r.shapingRV = cm.ResourceVersion
	r.shapingFrom = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: cm.Namespace, Name: cm.Name, UID: cm.UID}}
	data, ok := cm.Data[routing.ShapingConfigMapKey]
	if !ok {
		r.shaping = nil
		return
	}
	p, err := shaping.Parse([]byte(data))
	var canonical []byte
	if err == nil {
		canonical, err = p.Canonical()
	}
	if err == nil && len(canonical) > maxShapingBytes {
		err = fmt.Errorf("the policy is %d bytes as JSON, at most %d: it is published in the index Secret beside the index", len(canonical), maxShapingBytes)
	}
	if err != nil {
		r.events.Eventf(cm, nil, corev1.EventTypeWarning, "InvalidShapingPolicy", "ParseShapingPolicy",
			"%s: %s; the last good shaping policy stays published", routing.ShapingConfigMapKey, err.Error())
		ctrl.LoggerFrom(ctx).Error(err, "Keeping the last good shaping policy", "configMap", cm.Namespace+"/"+cm.Name)
		return
	}
	r.shaping = canonical
}

// shapingPublished records the Event that says which table version carries
// a new shaping policy: a relay that reports that version or a later one on
// its Lease applies it.
func (r *Reconciler) shapingPublished(idx *routing.Index) {
	if r.shapingFrom == nil {
		return
	}
	if idx.Shaping == "" {
		r.events.Eventf(r.shapingFrom, nil, corev1.EventTypeNormal, "ShapingPolicyPublished", "Publish",
			"table version %d carries no shaping policy: relays from this version on use the shipped default", idx.Version)
		return
	}
	r.events.Eventf(r.shapingFrom, nil, corev1.EventTypeNormal, "ShapingPolicyPublished", "Publish",
		"%s published with table version %d (sha256 %.12s): a relay that reports this version or a later one on its Lease applies it",
		routing.ShapingConfigMapKey, idx.Version, idx.Shaping)
}
