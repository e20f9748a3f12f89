package controllers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
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
	"github.com/postgate/postgate/relay/routing"
)

// The operator compiles globally: conflicts and signing exclusivity are
// decided across objects, so one reconcile of a fixed key, "the table",
// reads every object from the cache, compiles, publishes when the table
// changed, and writes the status of the objects whose status changed. Every
// watched event requeues that key; the workqueue coalesces a burst of events
// into one reconcile.

// tableRequest is the one key the controller reconciles.
var tableRequest = reconcile.Request{NamespacedName: types.NamespacedName{Name: "routing-table"}}

// Options configure the operator's reconciler.
type Options struct {
	// RelayNamespace is where the table is published and the relays keep
	// their Leases.
	RelayNamespace string
	// PolicyNamespace and PolicyName name the guardrail ConfigMap (DESIGN.md
	// contract 7); an empty PolicyName, or no such ConfigMap, means the
	// default policy.
	PolicyNamespace, PolicyName string
	// Now is the clock; default time.Now.
	Now func() time.Time
	// DeliveryWindow is how long a failed delivery attempt keeps an object
	// DeliveryDegraded unless a later attempt succeeds; default 15 minutes.
	DeliveryWindow time.Duration
	// StatusWorkers bounds the concurrent status writes; default 8.
	StatusWorkers int
	// AckWait is how long the status pass waits, after a publication with
	// live relays, for them to load the new version (their Lease updates
	// end the wait early), so that a changed object goes straight to
	// Programmed=True instead of being written twice; default 2 s, negative
	// to write at once.
	AckWait time.Duration
}

// Reconciler compiles the three kinds and the Secrets they reference,
// publishes the table and writes the objects' status.
type Reconciler struct {
	client client.Client
	events events.EventRecorder
	opts   Options

	cache   *routing.Cache
	secrets *secretStore
	keys    *keyGenerator
	// referenced are the Secrets whose events requeue the table.
	referenced referencedSecrets
	pub        *publisher
	book       versionBook
	// published are the versions a relay may claim to run.
	published publishedVersions
	memo      map[routing.ObjectKey]memoEntry
	started   bool

	policy   routing.Policy
	policyRV string // the ConfigMap's resourceVersion that policy came from; "" for the default

	// inputs counts events that can change the compiled table; a
	// reconcile with no new such event reuses the last result.
	inputs     atomic.Uint64
	compiledAt uint64
	result     *routing.Result
	indexLost  atomic.Bool
	// waitingSince is when the status pass began to wait for AckWait;
	// zero when it does not wait. A stream of changes cannot put it off
	// for longer than AckWait.
	waitingSince time.Time

	// enqueued counts the requeues the event handlers made. A reconcile
	// reads it before its own reads: every event counted then is in the
	// cache, so a status pass that completes has taken it into account.
	enqueued atomic.Uint64
	// afterReconcile, when set (tests), runs at the end of each reconcile
	// with the enqueued count it read first and whether it completed a
	// status pass: the operator is quiet when a completed pass has seen
	// every requeue.
	afterReconcile func(seen uint64, statusDone bool)

	stats Stats
}

// Stats counts what the reconciler did, for tests and benchmarks.
type Stats struct {
	Reconciles    atomic.Int64
	Compiles      atomic.Int64
	Publications  atomic.Int64
	StatusWrites  atomic.Int64
	ShardsDeleted atomic.Int64
	Version       atomic.Int64
	// PublishedAt is when the last index was written (Unix nanoseconds);
	// CompileNanos and StatusNanos how long the last compile (with the
	// Secret reads and the encoding) and the last status pass took.
	PublishedAt  atomic.Int64
	CompileNanos atomic.Int64
	StatusNanos  atomic.Int64
	// TableBytes and TableShards are the size of the table in force (its
	// gzipped shards) and their count; TableObjects its objects.
	TableBytes, TableShards, TableObjects atomic.Int64

	// conditions counts the objects by kind and condition as the last
	// status pass computed them.
	mu         sync.Mutex
	conditions map[conditionKey]int
}

// conditionKey is one series of MetricObjects.
type conditionKey struct {
	kind, condition string
	status          metav1.ConditionStatus
}

// Conditions returns a copy of the counts by kind, condition type and
// status from the last status pass.
func (s *Stats) Conditions() map[conditionKey]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.conditions)
}

func (s *Stats) setConditions(c map[conditionKey]int) {
	s.mu.Lock()
	s.conditions = c
	s.mu.Unlock()
}

// memoEntry is the status an object carries as far as the operator knows,
// having written it or seen it: its hash, and the type, status, reason and
// transition time of each condition (what transition times and Events are
// decided from; messages are left out to save memory).
type memoEntry struct {
	uid        types.UID
	hash       [32]byte // zero: unknown, write again
	conditions []metav1.Condition
}

func newMemoEntry(uid types.UID, hash [32]byte, s ownedStatus) memoEntry {
	conds := make([]metav1.Condition, len(s.Conditions))
	for i, c := range s.Conditions {
		conds[i] = metav1.Condition{Type: c.Type, Status: c.Status, Reason: c.Reason, LastTransitionTime: c.LastTransitionTime}
	}
	return memoEntry{uid: uid, hash: hash, conditions: conds}
}

// NewReconciler returns a reconciler. c writes and reads the three kinds,
// Leases and the policy ConfigMap from the cache; cache is the manager's
// cache itself, for the metadata of Secrets (the client sends every Secret
// read, metadata ones included, to the API server: ClientOptions); direct
// reads the API server.
func NewReconciler(c client.Client, cache, direct client.Reader, recorder events.EventRecorder, o Options) (*Reconciler, error) {
	if o.RelayNamespace == "" {
		return nil, errors.New("controllers: RelayNamespace is required")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.DeliveryWindow <= 0 {
		o.DeliveryWindow = 15 * time.Minute
	}
	if o.StatusWorkers <= 0 {
		o.StatusWorkers = 8
	}
	if o.AckWait == 0 {
		o.AckWait = 2 * time.Second
	}
	return &Reconciler{
		client: c, events: recorder, opts: o,
		cache:   routing.NewCache(),
		secrets: newSecretStore(cache, direct),
		keys:    newKeyGenerator(c, direct, recorder),
		pub:     newPublisher(c, cache, direct, o.RelayNamespace),
		book:    versionBook{},
		memo:    map[routing.ObjectKey]memoEntry{},
	}, nil
}

// Stats returns the reconciler's counters.
func (r *Reconciler) Stats() *Stats { return &r.stats }

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

// objects is one consistent read of the three kinds from the cache. The
// items are the cache's own: never modify them.
type objects struct {
	sds v1alpha1.SenderDomainList
	rrs v1alpha1.RelayRouteList
	tns v1alpha1.TrustedNetworkList
}

func (r *Reconciler) list(ctx context.Context) (*objects, error) {
	o := &objects{}
	for _, l := range []client.ObjectList{&o.sds, &o.rrs, &o.tns} {
		if err := r.client.List(ctx, l, client.UnsafeDisableDeepCopy); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// each calls fn with each object and the name of its kind.
func (o *objects) each(fn func(kind string, obj v1alpha1.Object)) {
	for i := range o.sds.Items {
		fn(routing.KindSenderDomain, &o.sds.Items[i])
	}
	for i := range o.rrs.Items {
		fn(routing.KindRelayRoute, &o.rrs.Items[i])
	}
	for i := range o.tns.Items {
		fn(routing.KindTrustedNetwork, &o.tns.Items[i])
	}
}

// Reconcile compiles, publishes and writes status. It ignores the request:
// there is one table.
func (r *Reconciler) Reconcile(ctx context.Context, _ reconcile.Request) (_ reconcile.Result, err error) {
	seen, statusDone := r.enqueued.Load(), false
	if r.afterReconcile != nil {
		defer func() { r.afterReconcile(seen, statusDone && err == nil) }()
	}
	log := ctrl.LoggerFrom(ctx)
	r.stats.Reconciles.Add(1)
	now := r.opts.Now()
	rs, err := readRelays(ctx, r.client, r.opts.RelayNamespace, now)
	if err != nil {
		return reconcile.Result{}, err
	}
	if !r.started {
		t, err := r.pub.start(ctx, r.cache)
		if err != nil {
			return reconcile.Result{}, err
		}
		if v := r.pub.version(); v > 0 {
			r.published.add(1, v)
		}
		if t != nil {
			r.book.record(t, t.Version)
			r.stats.Version.Store(t.Version)
			r.stats.TableBytes.Store(r.pub.bytes)
			r.stats.TableShards.Store(int64(len(r.pub.index.Shards)))
			r.stats.TableObjects.Store(int64(len(t.Objects())))
			log.Info("Continuing from the published routing table", "version", t.Version)
		}
		r.started = true
	}
	// Read the input counter before the objects: an event counted here is
	// in the cache already (an informer updates its store before it calls
	// the handlers), so what the counter says was compiled was.
	inputs := r.inputs.Load()
	objs, err := r.list(ctx)
	if err != nil {
		return reconcile.Result{}, err
	}
	if r.indexLost.Swap(false) && r.pub.index != nil {
		r.pub.index.Hash = "" // publish again, as a new version
		r.result = nil
	}
	if r.result == nil || inputs != r.compiledAt {
		began := time.Now()
		res, err := r.compile(ctx, objs)
		if err != nil {
			return reconcile.Result{}, err
		}
		idx, fresh, err := r.pub.publish(ctx, res.Table, rs.maxVersion()+1)
		if err != nil {
			return reconcile.Result{}, err
		}
		r.stats.CompileNanos.Store(int64(time.Since(began)))
		if fresh {
			r.published.add(idx.Version, idx.Version)
			r.book.record(res.Table, idx.Version)
			r.stats.Publications.Add(1)
			r.stats.Version.Store(idx.Version)
			r.stats.TableBytes.Store(r.pub.bytes)
			r.stats.TableShards.Store(int64(len(idx.Shards)))
			r.stats.TableObjects.Store(int64(len(res.Table.Objects())))
			r.stats.PublishedAt.Store(time.Now().UnixNano())
			log.Info("Published a routing table", "version", idx.Version, "shards", len(idx.Shards), "objects", len(res.Table.Objects()), "took", time.Since(began))
		}
		r.result, r.compiledAt = res, inputs
		if fresh && len(rs.live) > 0 && r.opts.AckWait > 0 {
			if r.waitingSince.IsZero() {
				r.waitingSince = now
			}
			if wait := r.opts.AckWait - now.Sub(r.waitingSince); wait > 0 {
				// The relays load a new version within about a second;
				// the Lease updates that say so requeue at once.
				r.collectShards(ctx, rs)
				return reconcile.Result{RequeueAfter: wait}, nil
			}
		}
	}
	r.collectShards(ctx, rs)
	r.waitingSince = time.Time{}
	began := time.Now()
	clears, err := r.writeStatuses(ctx, objs, rs, now)
	r.stats.StatusNanos.Store(int64(time.Since(began)))
	if err != nil {
		return reconcile.Result{}, err
	}
	statusDone = true
	next := clears
	if !rs.nextExpiry.IsZero() && (next.IsZero() || rs.nextExpiry.Before(next)) {
		next = rs.nextExpiry
	}
	if next.IsZero() {
		return reconcile.Result{}, nil
	}
	return reconcile.Result{RequeueAfter: next.Sub(now) + 100*time.Millisecond}, nil
}

func (r *Reconciler) collectShards(ctx context.Context, rs relays) {
	if n, err := r.pub.collect(ctx, rs.versions()); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Deleting unused shards failed")
	} else {
		r.stats.ShardsDeleted.Add(int64(n))
	}
}

// compile reads the policy and the referenced Secrets, and compiles. The
// generated DKIM keys that are missing are handed to the key generator,
// whose Secrets come back through the Secret watch.
func (r *Reconciler) compile(ctx context.Context, objs *objects) (*routing.Result, error) {
	r.stats.Compiles.Add(1)
	if err := r.readPolicy(ctx); err != nil {
		return nil, err
	}
	// Until the compile's own list is recorded, every Secret event
	// requeues: the Secret may have come after the read below.
	r.referenced.compiling.Store(true)
	defer r.referenced.compiling.Store(false)
	refs := map[types.NamespacedName]struct{}{}
	objs.each(func(_ string, o v1alpha1.Object) {
		for _, name := range routing.SecretRefs(o) {
			refs[types.NamespacedName{Namespace: o.GetNamespace(), Name: name}] = struct{}{}
		}
	})
	secrets, err := r.secrets.refresh(ctx, refs)
	if err != nil {
		return nil, err
	}
	in := routing.Input{SenderDomains: objs.sds.Items, RelayRoutes: objs.rrs.Items, TrustedNetworks: objs.tns.Items, Secrets: secrets, Policy: r.policy,
		KeysGeneratedLater: true}
	res := routing.Compile(in, r.cache)
	r.referenced.record(res)
	r.keys.want(keysToGenerate(objs, res, r.secrets))
	return res, nil
}

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
