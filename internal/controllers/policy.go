package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/postgate/postgate/internal/routing"
)

// readPolicy reads the guardrail ConfigMap. A policy that does not parse
// leaves the last good one in force (a typo must not loosen the guardrails);
// with none since the start, nothing is compiled until it is fixed.
func (r *Reconciler) readPolicy(ctx context.Context) error {
	if r.opts.PolicyName == "" {
		return nil
	}
	cm := &corev1.ConfigMap{}
	err := r.client.Get(ctx, types.NamespacedName{Namespace: r.opts.PolicyNamespace, Name: r.opts.PolicyName}, cm)
	if apierrors.IsNotFound(err) {
		r.policy, r.policyRV = routing.Policy{}, ""
		return nil
	}
	if err != nil {
		return err
	}
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
