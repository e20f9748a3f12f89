package controllers

import (
	"context"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/routing"
)

// CacheOptions restricts the manager's cache to what the operator needs:
// Leases of the relay namespace, the guardrail ConfigMap, and no managed
// fields. Secrets are watched metadata-only (SetupWithManager), and
// ClientOptions makes typed Secret reads go to the API server, so the cache
// never holds Secret data.
func CacheOptions(o Options) cache.Options {
	byObject := map[client.Object]cache.ByObject{
		&coordinationv1.Lease{}: {Namespaces: map[string]cache.Config{o.RelayNamespace: {}}},
	}
	if o.PolicyName != "" {
		byObject[&corev1.ConfigMap{}] = cache.ByObject{
			Namespaces: map[string]cache.Config{o.PolicyNamespace: {}},
			Field:      fields.OneTermEqualSelector("metadata.name", o.PolicyName),
		}
	}
	return cache.Options{ByObject: byObject, DefaultTransform: cache.TransformStripManagedFields()}
}

// ClientOptions keeps typed Secrets out of the cache: reading one goes to
// the API server instead of starting a cluster-wide informer of Secret data.
func ClientOptions() client.Options {
	return client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}}}}
}

// SetupWithManager registers the table controller and the DKIM key
// generator.
func (r *Reconciler) SetupWithManager(_ context.Context, mgr ctrl.Manager) error {
	if err := r.keys.setup(mgr); err != nil {
		return err
	}
	c, err := controller.New("routing-table", mgr, controller.Options{Reconciler: r, MaxConcurrentReconciles: 1})
	if err != nil {
		return err
	}
	sources := []source.Source{
		source.Kind(mgr.GetCache(), client.Object(&v1alpha1.SenderDomain{}), r.objectHandler()),
		source.Kind(mgr.GetCache(), client.Object(&v1alpha1.RelayRoute{}), r.objectHandler()),
		source.Kind(mgr.GetCache(), client.Object(&v1alpha1.TrustedNetwork{}), r.objectHandler()),
		source.Kind(mgr.GetCache(), client.Object(secretMeta()), r.secretHandler()),
		source.Kind(mgr.GetCache(), client.Object(&coordinationv1.Lease{}), r.leaseHandler()),
	}
	if r.opts.PolicyName != "" {
		sources = append(sources, source.Kind(mgr.GetCache(), client.Object(&corev1.ConfigMap{}), r.inputHandler()))
	}
	for _, s := range sources {
		if err := c.Watch(s); err != nil {
			return err
		}
	}
	return nil
}

type queue = workqueue.TypedRateLimitingInterface[reconcile.Request]

// changed marks the inputs changed and requeues the table.
func (r *Reconciler) changed(q queue) {
	r.inputs.Add(1)
	r.enqueue(q)
}

// enqueue requeues the table.
func (r *Reconciler) enqueue(q queue) {
	r.enqueued.Add(1)
	q.Add(tableRequest)
}

func (r *Reconciler) inputHandler() handler.EventHandler {
	return handler.Funcs{
		CreateFunc: func(_ context.Context, _ event.CreateEvent, q queue) { r.changed(q) },
		UpdateFunc: func(_ context.Context, e event.UpdateEvent, q queue) {
			if e.ObjectOld.GetResourceVersion() != e.ObjectNew.GetResourceVersion() {
				r.changed(q)
			}
		},
		DeleteFunc: func(_ context.Context, _ event.DeleteEvent, q queue) { r.changed(q) },
	}
}

// objectHandler: a new generation changes the table; a change of the
// relays' delivery entries changes only the status. The operator's own
// status writes change neither, and requeue nothing.
func (r *Reconciler) objectHandler() handler.EventHandler {
	h := r.inputHandler().(handler.Funcs)
	h.UpdateFunc = func(_ context.Context, e event.UpdateEvent, q queue) {
		switch {
		case e.ObjectOld.GetGeneration() != e.ObjectNew.GetGeneration() || e.ObjectOld.GetUID() != e.ObjectNew.GetUID():
			r.changed(q)
		case !equality.Semantic.DeepEqual(e.ObjectOld.(v1alpha1.Object).GetDelivery(), e.ObjectNew.(v1alpha1.Object).GetDelivery()):
			r.enqueue(q)
		}
	}
	return h
}

// secretHandler requeues for a Secret some object references, and for the
// loss of the index Secret.
func (r *Reconciler) secretHandler() handler.EventHandler {
	handle := func(ctx context.Context, obj client.Object, q queue) {
		if obj.GetNamespace() == r.opts.RelayNamespace && obj.GetName() == routing.IndexSecretName {
			return
		}
		if r.referenced.has(client.ObjectKeyFromObject(obj)) {
			r.changed(q)
		}
	}
	return handler.Funcs{
		CreateFunc: func(ctx context.Context, e event.CreateEvent, q queue) { handle(ctx, e.Object, q) },
		UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q queue) {
			if e.ObjectOld.GetResourceVersion() != e.ObjectNew.GetResourceVersion() {
				handle(ctx, e.ObjectNew, q)
			}
		},
		DeleteFunc: func(ctx context.Context, e event.DeleteEvent, q queue) {
			if e.Object.GetNamespace() == r.opts.RelayNamespace && e.Object.GetName() == routing.IndexSecretName {
				r.indexLost.Store(true)
				r.changed(q)
				return
			}
			handle(ctx, e.Object, q)
		},
	}
}

// leaseHandler requeues when a relay appears, goes, loads a version, or
// comes back after its Lease expired; a plain renewal changes nothing (the
// reconcile after a Lease's expiry time, requested by RequeueAfter, sees
// whether it was renewed).
func (r *Reconciler) leaseHandler() handler.EventHandler {
	isRelay := func(o client.Object) bool {
		_, ok := relayOf(o.(*coordinationv1.Lease))
		return ok
	}
	return handler.Funcs{
		CreateFunc: func(_ context.Context, e event.CreateEvent, q queue) {
			if isRelay(e.Object) {
				r.enqueue(q)
			}
		},
		UpdateFunc: func(_ context.Context, e event.UpdateEvent, q queue) {
			oldL, newL := e.ObjectOld.(*coordinationv1.Lease), e.ObjectNew.(*coordinationv1.Lease)
			o, okOld := relayOf(oldL)
			n, okNew := relayOf(newL)
			if okOld != okNew || (okNew && (o.version != n.version || !o.expires.After(r.opts.Now()) ||
				n.expires.Before(o.expires))) {
				r.enqueue(q)
			}
		},
		DeleteFunc: func(_ context.Context, e event.DeleteEvent, q queue) {
			if isRelay(e.Object) {
				r.enqueue(q)
			}
		},
	}
}
