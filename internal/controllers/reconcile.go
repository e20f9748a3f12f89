package controllers

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/routing"
)

// The operator compiles globally: conflicts and signing exclusivity are
// decided across objects, so one reconcile of a fixed key, "the table",
// reads every object from the cache, compiles, publishes when the table
// changed, and writes the status of the objects whose status changed. Every
// watched event requeues that key; the workqueue coalesces a burst of events
// into one reconcile.

// tableRequest is the one key the controller reconciles.
var tableRequest = reconcile.Request{NamespacedName: types.NamespacedName{Name: "routing-table"}}

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
	// shaping is the canonical JSON of the traffic shaping policy to
	// publish, nil for none (the relays' default); shapingRV the
	// ConfigMap's resourceVersion it was last read from, and shapingFrom
	// the ConfigMap, for Events.
	shaping     []byte
	shapingRV   string
	shapingFrom *corev1.ConfigMap

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
		r.shaping = r.pub.shaping // the last good policy, until the ConfigMap is read
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
		prevShaping := r.pub.shapingHash()
		idx, fresh, err := r.pub.publish(ctx, res.Table, r.shaping, rs.maxVersion()+1)
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
			if idx.Shaping != prevShaping {
				r.shapingPublished(idx)
			}
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
