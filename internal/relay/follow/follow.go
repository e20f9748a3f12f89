// Package follow loads the routing tables the operator publishes (docs/design.md
// contract 1) in the relay's own namespace, swaps each new table in
// atomically once every shard is there and verified, keeps the last good
// table in the spool directory for starts without an API server, and keeps
// the replica's Lease with the loaded version (contract 2).
//
// With the table comes the traffic shaping policy the operator publishes
// beside the index (routing.ShapingDataKey): a table whose policy does not
// parse is refused whole, like one with an invalid shard; each swap applies
// the policy (or the shipped default) to the Shaper, and each Lease renewal
// gives it the number of live relay replicas.
//
// It reads the index Secret through an informer restricted to that one name,
// and the shards it names by direct reads: it needs get on Secrets and
// list/watch of the index in its namespace, and its Lease, nothing else.
package follow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/postgate/postgate/internal/relay/shaping"
	"github.com/postgate/postgate/internal/routing"
)

// Options configure a Follower. Namespace and PodName are required.
type Options struct {
	// Namespace is the relay namespace, where the table is published and
	// the Lease kept.
	Namespace string
	// PodName names this replica; its Lease is postgate-relay-<PodName>.
	PodName string
	// SpoolDir keeps the last good table; empty keeps none.
	SpoolDir string
	// RenewInterval and LeaseDuration of the Lease; default 10 s and 30 s
	// (contract 2). Tests shorten them.
	RenewInterval, LeaseDuration time.Duration
	// RetryInterval is the wait before loading again after a failed load
	// (a shard not there yet or already replaced); default 2 s.
	RetryInterval time.Duration
	// Now is the clock of the Lease; default time.Now.
	Now func() time.Time
	// Logger receives progress and errors; default discards.
	Logger *slog.Logger
	// Cache keeps parsed keys across loads; default a new one.
	Cache *routing.Cache
	// Shaper, when set, takes the shaping policy of each table swapped in
	// (the shipped default when the table has none), before the Lease
	// reports its version, and the number of live relay replicas at each
	// Lease renewal. *shaping.Limiter is one.
	Shaper Shaper
}

// Shaper is what applies the published shaping policy and divides its
// limits between the live replicas (*shaping.Limiter).
type Shaper interface {
	SetPolicy(p *shaping.Policy)
	Scale(replicas int)
}

// Follower follows the published table. Create it with New and start it
// with Run.
type Follower struct {
	client kubernetes.Interface
	opts   Options
	lease  *leaseKeeper

	table atomic.Pointer[routing.Table]
	// policy is the shaping policy of the table in force, nil when it has
	// none (the shipped default applies).
	policy atomic.Pointer[shaping.Policy]

	// current is the loaded index with its shard data, touched only by the
	// loading goroutine (and New).
	current *spooled

	mu   sync.Mutex
	subs map[chan *routing.Table]struct{}
}

// New returns a Follower. It reads the spool directory, so that Table serves
// the last good table at once, before Run has reached the API server.
func New(client kubernetes.Interface, o Options) (*Follower, error) {
	if o.Namespace == "" || o.PodName == "" {
		return nil, errors.New("follow: Namespace and PodName are required")
	}
	if o.RenewInterval <= 0 {
		o.RenewInterval = routing.RelayLeaseRenewSeconds * time.Second
	}
	if o.LeaseDuration <= 0 {
		o.LeaseDuration = routing.RelayLeaseDurationSeconds * time.Second
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = 2 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Cache == nil {
		o.Cache = routing.NewCache()
	}
	f := &Follower{client: client, opts: o, subs: map[chan *routing.Table]struct{}{}}
	f.lease = &leaseKeeper{
		leases: client.CoordinationV1().Leases(o.Namespace),
		name:   routing.RelayLeasePrefix + o.PodName, holder: o.PodName,
		duration: o.LeaseDuration, renew: o.RenewInterval, now: o.Now, log: o.Logger,
		kick: make(chan struct{}, 1),
	}
	if o.Shaper != nil {
		f.lease.replicas = o.Shaper.Scale
	}
	if o.SpoolDir != "" {
		s, err := loadSpool(o.SpoolDir)
		if err == nil && s != nil {
			var t *routing.Table
			var p *shaping.Policy
			if t, p, err = decode(s, o.Cache); err == nil {
				f.swap(s, t, p)
				o.Logger.Info("Loaded the last good routing table from the spool", "version", t.Version)
			}
		}
		if err != nil {
			// A damaged spool is not fatal: the API server has the table.
			o.Logger.Error("Ignoring the spooled routing table", "error", err)
		}
	}
	return f, nil
}

// decode verifies and decodes a table and its shaping policy (nil when it
// has none): both valid, or an error.
func decode(s *spooled, cache *routing.Cache) (*routing.Table, *shaping.Policy, error) {
	if err := s.Index.VerifyShaping(s.Shaping); err != nil {
		return nil, nil, err
	}
	var p *shaping.Policy
	if len(s.Shaping) > 0 {
		var err error
		if p, err = shaping.Parse(s.Shaping); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", routing.ShapingDataKey, err)
		}
	}
	t, err := routing.Decode(s.Index, s.Shards, cache)
	if err != nil {
		return nil, nil, err
	}
	return t, p, nil
}

// ShapingPolicy returns the shaping policy published with the current
// table, or nil when it has none (or before the first table): then the
// shipped default applies.
func (f *Follower) ShapingPolicy() *shaping.Policy { return f.policy.Load() }

// Table returns the current table, or nil before the first one is loaded.
// The table is immutable; a later load swaps in a new one.
func (f *Follower) Table() *routing.Table { return f.table.Load() }

// Subscribe returns a channel that receives each table swapped in from now
// on. A slow receiver sees only the latest one. cancel stops and closes the
// channel.
func (f *Follower) Subscribe() (tables <-chan *routing.Table, cancel func()) {
	ch := make(chan *routing.Table, 1)
	f.mu.Lock()
	f.subs[ch] = struct{}{}
	f.mu.Unlock()
	return ch, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if _, ok := f.subs[ch]; ok {
			delete(f.subs, ch)
			close(ch)
		}
	}
}

func (f *Follower) swap(s *spooled, t *routing.Table, p *shaping.Policy) {
	prev := f.current
	f.current = s
	f.policy.Store(p)
	// The policy applies before the Lease says the version is loaded: an
	// acknowledged version is one whose policy is in force.
	if f.opts.Shaper != nil && (prev == nil || prev.Index.Shaping != s.Index.Shaping) {
		if p == nil {
			p = shaping.DefaultPolicy()
		}
		f.opts.Shaper.SetPolicy(p)
		f.opts.Logger.Info("Applied the shaping policy", "version", t.Version, "published", s.Index.Shaping != "", "sha256", s.Index.Shaping)
	}
	f.table.Store(t)
	f.lease.setVersion(t.Version)
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch := range f.subs {
		select { // drop a table the receiver has not taken yet
		case <-ch:
		default:
		}
		ch <- t
	}
}

// Run follows the published table and keeps the Lease until ctx ends. It
// returns nil then; the API server being away is not an error, the last good
// table stays in use.
func (f *Follower) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { f.lease.run(ctx) })

	factory := informers.NewSharedInformerFactoryWithOptions(f.client, 0,
		informers.WithNamespace(f.opts.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", routing.IndexSecretName).String()
		}))
	informer := factory.Core().V1().Secrets().Informer()
	changed := make(chan struct{}, 1)
	notify := func(any) {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	if _, err := informer.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    notify,
		UpdateFunc: func(_, obj any) { notify(obj) },
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()

	retry := time.NewTimer(0)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-retry.C:
		}
		obj, ok, err := informer.GetStore().GetByKey(f.opts.Namespace + "/" + routing.IndexSecretName)
		if err != nil || !ok {
			continue // deleted: keep the table we have
		}
		if err := f.load(ctx, obj.(*corev1.Secret)); err != nil {
			f.opts.Logger.Error("Loading the routing table failed; keeping the current one", "retryIn", f.opts.RetryInterval, "error", err)
			retry.Reset(f.opts.RetryInterval)
		}
	}
}

// load reads the shards the index names, verifies them and swaps the table
// in. Shards already held (by name, which is their content hash) are not read
// again. On any error the current table stays.
func (f *Follower) load(ctx context.Context, secret *corev1.Secret) error {
	var idx routing.Index
	if err := json.Unmarshal(secret.Data[routing.IndexDataKey], &idx); err != nil {
		return fmt.Errorf("index Secret %s: %w", routing.IndexSecretName, err)
	}
	if cur := f.current; cur != nil && cur.Index.Version == idx.Version && cur.Index.SameContent(&idx) {
		return nil
	}
	shards := make(map[string][]byte, len(idx.Shards))
	for _, ref := range idx.Shards {
		if f.current != nil {
			if data, ok := f.current.Shards[ref.Name]; ok {
				shards[ref.Name] = data
				continue
			}
		}
		s, err := f.client.CoreV1().Secrets(f.opts.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("version %d: shard %s: %w", idx.Version, ref.Name, err)
		}
		if s.Labels[routing.TableLabel] != routing.TableLabelShard {
			return fmt.Errorf("version %d: Secret %s is not labeled %s=%s", idx.Version, ref.Name, routing.TableLabel, routing.TableLabelShard)
		}
		shards[ref.Name] = s.Data[routing.ShardDataKey]
	}
	s := &spooled{Index: &idx, Shards: shards, Shaping: secret.Data[routing.ShapingDataKey]}
	t, p, err := decode(s, f.opts.Cache)
	if err != nil {
		return fmt.Errorf("version %d: %w", idx.Version, err)
	}
	f.swap(s, t, p)
	f.opts.Logger.Info("Loaded a routing table", "version", idx.Version, "shards", len(idx.Shards), "objects", len(t.Objects()))
	if f.opts.SpoolDir != "" {
		if err := saveSpool(f.opts.SpoolDir, s); err != nil {
			// Serving the new table matters more than keeping it for a
			// restart without the API server.
			f.opts.Logger.Error("Keeping the routing table in the spool failed", "error", err)
		}
	}
	return nil
}
