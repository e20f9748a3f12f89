package controllers

import (
	"context"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/routing"
)

// keyGenerator creates the generated DKIM key Secrets that the table pass
// finds missing. It is a controller of its own, keyed by SenderDomain, so
// that the table pass only reads, compiles, publishes and writes status: the
// Secret it creates reaches the table through the Secret watch, like any
// other Secret the objects reference, and the next pass compiles it in.
//
// Only the table pass knows which SenderDomains may have a key (not refused:
// no conflict, no guardrail refusal), so it hands over the whole set after
// each compile (want); a reconcile creates the key of a SenderDomain in the
// set, and does nothing for one that left it.
type keyGenerator struct {
	client client.Client
	direct client.Reader
	events events.EventRecorder

	mu      sync.Mutex
	pending map[types.NamespacedName]*v1alpha1.SenderDomain
	queue   queue // nil until the controller starts
}

func newKeyGenerator(c client.Client, direct client.Reader, recorder events.EventRecorder) *keyGenerator {
	return &keyGenerator{client: c, direct: direct, events: recorder, pending: map[types.NamespacedName]*v1alpha1.SenderDomain{}}
}

// setup registers the controller. Its one source hands it the workqueue:
// the SenderDomains wanted before it started are queued then.
func (g *keyGenerator) setup(mgr ctrl.Manager) error {
	c, err := controller.New("dkim-keys", mgr, controller.Options{Reconciler: g})
	if err != nil {
		return err
	}
	return c.Watch(source.Func(func(_ context.Context, q queue) error {
		g.mu.Lock()
		defer g.mu.Unlock()
		g.queue = q
		for key := range g.pending {
			q.Add(reconcile.Request{NamespacedName: key})
		}
		return nil
	}))
}

// want replaces the set of SenderDomains whose key is to be generated, and
// queues them. The objects are the table pass's copies, kept unmodified.
func (g *keyGenerator) want(sds []*v1alpha1.SenderDomain) {
	g.mu.Lock()
	defer g.mu.Unlock()
	clear(g.pending)
	for _, sd := range sds {
		key := client.ObjectKeyFromObject(sd)
		g.pending[key] = sd
		if g.queue != nil {
			g.queue.Add(reconcile.Request{NamespacedName: key})
		}
	}
}

// Reconcile creates the key Secret of a wanted SenderDomain. An existing
// Secret of that name is never overwritten.
func (g *keyGenerator) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	g.mu.Lock()
	sd := g.pending[req.NamespacedName]
	g.mu.Unlock()
	if sd == nil {
		return reconcile.Result{}, nil
	}
	sec, err := generatedKeySecret(sd)
	if err != nil {
		return reconcile.Result{}, err
	}
	created, err := createKeySecret(ctx, g.client, g.direct, sec)
	if err != nil {
		return reconcile.Result{}, fmt.Errorf("creating the DKIM key Secret %s: %w", client.ObjectKeyFromObject(sec), err)
	}
	if created {
		ctrl.LoggerFrom(ctx).Info("Generated a DKIM key", "secret", client.ObjectKeyFromObject(sec), "domain", sd.Spec.Domain, "selector", sd.Spec.Signing.Selector)
		g.events.Eventf(sd, sec, corev1.EventTypeNormal, "KeyGenerated", "GenerateKey",
			"Generated a %s DKIM key into Secret %s; publish the TXT record shown in status.dkim", sec.Annotations[DKIMAlgorithmAnnotation], sec.Name)
	}
	return reconcile.Result{}, nil
}

// keysToGenerate returns the SenderDomains of objs that generate their key,
// are not refused by res, and whose key Secret is not among the Secrets the
// compile read.
func keysToGenerate(objs *objects, res *routing.Result, secrets *secretStore) []*v1alpha1.SenderDomain {
	var out []*v1alpha1.SenderDomain
	for i := range objs.sds.Items {
		sd := &objs.sds.Items[i]
		if sd.Spec.Signing == nil || sd.Spec.Signing.Generate == nil {
			continue
		}
		v := res.Verdict(routing.ObjectKey{Kind: routing.KindSenderDomain, Namespace: sd.Namespace, Name: sd.Name})
		name, _ := routing.DKIMKeySecret(sd)
		if v == nil || v.Refused() || secrets.byName[types.NamespacedName{Namespace: sd.Namespace, Name: name}] != nil {
			continue
		}
		out = append(out, sd.DeepCopy())
	}
	return out
}
