// Package report owns the relay's side of delivery status (docs/design.md
// contract 6): it aggregates delivery attempts per RelayRoute (routed mail)
// or SenderDomain (MX mail) and writes this replica's own entry of
// status.delivery.replicas with server-side apply, coalesced, under the
// field manager postgate-relay/<replica>. The operator derives the delivery
// condition from the entries and prunes those of replicas that are gone.
//
// Metrics counts the same attempts for Prometheus; Observers passes each
// attempt to several observers (delivery takes one).
package report

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	acv1alpha1 "github.com/postgate/postgate/api/v1alpha1/applyconfiguration/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/delivery"
	"github.com/postgate/postgate/internal/routing"
)

// FieldManagerPrefix is followed by the replica name (contract 6).
const FieldManagerPrefix = "postgate-relay/"

// Defaults of Options.
const (
	DefaultInterval   = 10 * time.Second
	DefaultWindow     = 15 * time.Minute
	DefaultMaxBackoff = 2 * time.Minute
)

// Limits of the API fields (api/v1alpha1 DeliveryAttempt).
const (
	maxReply    = 512
	maxHost     = 253
	maxEnhanced = 16
)

// buckets is how many buckets the window is cut into.
const buckets = 15

// Options configure a Reporter.
type Options struct {
	// Replica is this relay replica's name (its pod name): the key of its
	// entry and the suffix of its field manager. Required.
	Replica string
	// Interval is the least time between two writes of one object's entry;
	// DefaultInterval when zero.
	Interval time.Duration
	// Window is the period the counts cover, cut into 15 buckets: a count
	// leaves it between 14/15 of Window and Window after the attempt (and the
	// entry is written once more when the last count has left);
	// DefaultWindow when zero.
	Window time.Duration
	// MaxBackoff caps the delay between retries of a failed write (the
	// delay starts at Interval and doubles); DefaultMaxBackoff when zero.
	MaxBackoff time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Logger; slog.Default() when nil.
	Logger *slog.Logger
	// Events, when set, receives one Warning Event (reason Bounced) per
	// object and write when recipients bounced or expired since the last
	// one: aggregated, never one per message. The start and end of a
	// failing period are the operator's Events (DeliveryDegraded).
	Events events.EventRecorder
}

// Reporter implements delivery.Observer. Observe only updates an in-memory
// aggregate; Run writes it to the API server.
type Reporter struct {
	c    client.Client
	opts Options
	wake chan struct{}

	mu   sync.Mutex
	objs map[routing.ObjectKey]*entry
}

var _ delivery.Observer = (*Reporter)(nil)

// entry is what the reporter knows of one object's delivery.
type entry struct {
	key                       routing.ObjectKey
	lastDelivered, lastFailed *v1alpha1.DeliveryAttempt
	counts                    [buckets]bucket
	dirty                     bool
	notBefore                 time.Time     // no write before this (interval, backoff)
	refreshAt                 time.Time     // rewrite then, when the written counts have left the window
	backoff                   time.Duration // of the next failed write; 0 after a success
	uid                       types.UID     // of the object, for Events
	// bounced counts recipients that bounced or expired since the last
	// Event; lastBounce is the newest such attempt.
	bounced    int64
	lastBounce *v1alpha1.DeliveryAttempt
}

// bucket counts recipients in one slice of the window.
type bucket struct {
	slot                        int64 // which slice of time, counted from the epoch
	delivered, deferred, bounce int64
}

// New returns a Reporter that writes with c, whose scheme must know
// api/v1alpha1.
func New(c client.Client, opts Options) (*Reporter, error) {
	if opts.Replica == "" {
		return nil, fmt.Errorf("report: the replica name is required")
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	if opts.Window <= 0 {
		opts.Window = DefaultWindow
	}
	opts.Window = max(opts.Window, buckets*time.Millisecond) // a bucket lasts at least 1 ms
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	if opts.MaxBackoff < opts.Interval {
		opts.MaxBackoff = opts.Interval
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Reporter{c: c, opts: opts, wake: make(chan struct{}, 1), objs: map[routing.ObjectKey]*entry{}}, nil
}

// Observe records an attempt against the RelayRoute it took, else its
// SenderDomain; an attempt with neither is not reported. It never waits
// for the API server.
func (r *Reporter) Observe(a delivery.Attempt) {
	ref := a.Route
	if ref == nil {
		ref = a.Domain
	}
	if ref == nil {
		return
	}
	key := ref.Key()
	end := a.End
	if end.IsZero() {
		end = r.opts.Now()
	}
	r.mu.Lock()
	e := r.objs[key]
	if e == nil {
		e = &entry{key: key}
		r.objs[key] = e
	}
	at := attemptOf(a, end)
	if ref.UID != "" {
		e.uid = ref.UID
	}
	for _, rc := range a.Recipients {
		if rc.Status == delivery.StatusBounced || rc.Status == delivery.StatusExpired {
			e.bounced++
			if e.lastBounce == nil || !at.Time.Before(&e.lastBounce.Time) {
				e.lastBounce = at
			}
		}
	}
	if a.Status == delivery.StatusSent {
		if e.lastDelivered == nil || !at.Time.Before(&e.lastDelivered.Time) {
			e.lastDelivered = at
		}
	} else if a.Cause != delivery.CauseHeld && (e.lastFailed == nil || !at.Time.Before(&e.lastFailed.Time)) {
		// A held message tried no host: it is counted deferred, but it is
		// no failed delivery (the route's conditions say DeliveryHeld).
		e.lastFailed = at
	}
	b := e.bucket(r.slot(end))
	if len(a.Recipients) == 0 {
		b.add(a.Status, 1)
	}
	for _, rc := range a.Recipients {
		b.add(rc.Status, 1)
	}
	wasDirty := e.dirty
	e.dirty = true
	r.mu.Unlock()
	if !wasDirty {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

// slot is the index of the window slice t falls in.
func (r *Reporter) slot(t time.Time) int64 {
	return t.UnixNano() / int64(r.opts.Window/buckets)
}

// bucket returns the bucket of slot, recycling a stale one.
func (e *entry) bucket(slot int64) *bucket {
	b := &e.counts[slot%buckets]
	if b.slot != slot {
		*b = bucket{slot: slot}
	}
	return b
}

func (b *bucket) add(s delivery.Status, n int64) {
	switch s {
	case delivery.StatusSent:
		b.delivered += n
	case delivery.StatusDeferred:
		b.deferred += n
	default:
		b.bounce += n
	}
}

func attemptOf(a delivery.Attempt, end time.Time) *v1alpha1.DeliveryAttempt {
	at := &v1alpha1.DeliveryAttempt{
		Time:         metav1.NewMicroTime(end),
		RelayHost:    truncate(a.RelayHost, maxHost),
		ResponseCode: int32(min(max(a.Reply.Code, 0), 599)), //nolint:gosec // clamped to the API's range
		EnhancedCode: truncate(a.Reply.Enhanced, maxEnhanced),
		Reply:        truncate(a.Reply.Text, maxReply),
	}
	if a.RelayAddr.IsValid() {
		at.RelayAddress = a.RelayAddr.String()
	}
	if a.SourceAddr.IsValid() {
		at.SourceAddress = a.SourceAddr.String()
	}
	at.Site = truncate(a.Site, maxHost)
	if !a.ThrottledUntil.IsZero() {
		t := metav1.NewTime(a.ThrottledUntil)
		at.ThrottledUntil = &t
	}
	if a.TLS != (delivery.TLSInfo{}) {
		at.TLS = &v1alpha1.TransportEncryption{
			Requested:    a.TLS.Requested,
			Established:  a.TLS.Established,
			Protocol:     truncate(a.TLS.Protocol, 32),
			CipherSuite:  truncate(a.TLS.CipherSuite, 128),
			Policy:       truncate(string(a.TLS.Policy), 32),
			PolicyResult: truncate(a.TLS.PolicyResult, 64),
		}
	}
	return at
}

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Run writes the entries that changed, each at most once per Interval,
// until ctx ends. A write that fails is retried with backoff; an object
// that no longer exists is forgotten.
func (r *Reporter) Run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		keys, wait := r.due()
		for _, k := range keys {
			if ctx.Err() != nil {
				return nil
			}
			r.write(ctx, k)
		}
		if len(keys) > 0 {
			continue // the writes took time: look again
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-r.wake:
		case <-timer.C:
		}
	}
}

// due returns the objects to write now and how long until the next one
// is due.
func (r *Reporter) due() ([]routing.ObjectKey, time.Duration) {
	now := r.opts.Now()
	wait := time.Hour
	var keys []routing.ObjectKey
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, e := range r.objs {
		if !e.dirty && !e.refreshAt.IsZero() {
			if d := e.refreshAt.Sub(now); d > 0 {
				wait = min(wait, d)
				continue
			}
			e.dirty = true
		}
		if !e.dirty {
			continue
		}
		if d := e.notBefore.Sub(now); d > 0 {
			wait = min(wait, d)
			continue
		}
		keys = append(keys, k)
	}
	return keys, wait
}

// write applies one object's entry.
func (r *Reporter) write(ctx context.Context, k routing.ObjectKey) {
	now := r.opts.Now()
	r.mu.Lock()
	e := r.objs[k]
	if e == nil || !e.dirty {
		r.mu.Unlock()
		return
	}
	st := r.snapshot(e, now)
	e.dirty = false
	e.refreshAt = time.Time{}
	bounced, lastBounce, uid := e.bounced, e.lastBounce, e.uid
	e.bounced, e.lastBounce = 0, nil
	r.mu.Unlock()

	err := r.apply(ctx, k, st)
	if err == nil && bounced > 0 {
		r.bounceEvent(k, uid, bounced, lastBounce)
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil && !apierrors.IsNotFound(err) {
		// Reported with the next write that succeeds.
		e.bounced += bounced
		if e.lastBounce == nil {
			e.lastBounce = lastBounce
		}
	}
	switch {
	case err == nil:
		e.backoff = 0
		e.notBefore = now.Add(r.opts.Interval)
		if w := st.Window; (w.Delivered != 0 || w.Deferred != 0 || w.Bounced != 0) && e.refreshAt.IsZero() {
			// Without more mail the counts would stay as written: write
			// once more when the newest of them has left the window.
			e.refreshAt = r.windowEnd(e, now)
		}
	case apierrors.IsNotFound(err):
		// The object is gone (or its kind is not served): forget it.
		// Mail observed since the snapshot is forgotten with it; a
		// recreated object gets an entry with its next attempt.
		if r.objs[k] == e {
			delete(r.objs, k)
		}
		r.opts.Logger.Debug("Delivery status not written: the object is gone", "object", k.String())
	default:
		e.dirty = true
		e.backoff = min(max(2*e.backoff, r.opts.Interval), r.opts.MaxBackoff)
		e.notBefore = now.Add(e.backoff)
		r.opts.Logger.Warn("Writing delivery status failed; will retry", "object", k.String(), "retryIn", e.backoff.String(), "err", err)
	}
}

// carrier returns an empty object named k, or nil when k's kind carries
// no mail of its own and so no delivery status (a TrustedNetwork).
func carrier(k routing.ObjectKey) v1alpha1.Object {
	if k.Kind == routing.KindTrustedNetwork {
		return nil
	}
	obj := v1alpha1.NewObject(k.Kind)
	if obj == nil {
		return nil
	}
	obj.SetNamespace(k.Namespace)
	obj.SetName(k.Name)
	return obj
}

// bounceEvent emits one Warning Event for n recipients that bounced or
// expired, naming the last reply.
func (r *Reporter) bounceEvent(k routing.ObjectKey, uid types.UID, n int64, last *v1alpha1.DeliveryAttempt) {
	if r.opts.Events == nil {
		return
	}
	obj := carrier(k)
	if obj == nil {
		return
	}
	obj.SetUID(uid)
	note := fmt.Sprintf("Relay %s: %d recipient(s) bounced or expired", r.opts.Replica, n)
	if last != nil {
		note += "; last from " + cmp.Or(last.RelayHost, "no host")
		if last.ResponseCode != 0 {
			note += fmt.Sprintf(": %d %s", last.ResponseCode, last.EnhancedCode)
		}
		if last.Reply != "" {
			note += " " + last.Reply
		}
	}
	// The API bounds a note to 1 kB.
	r.opts.Events.Eventf(obj, nil, corev1.EventTypeWarning, v1alpha1.EventReasonBounced, "Deliver", "%s", truncate(note, 1000))
}

// windowEnd is when the newest count of e leaves the window. r.mu is held.
func (r *Reporter) windowEnd(e *entry, now time.Time) time.Time {
	cur := r.slot(now)
	newest := int64(-1)
	for _, b := range e.counts {
		if b.slot > cur-buckets && b.slot <= cur && b.slot > newest {
			newest = b.slot
		}
	}
	slice := r.opts.Window / buckets
	return time.Unix(0, (newest+buckets)*int64(slice))
}

// snapshot builds the entry as it stands at now. r.mu is held.
func (r *Reporter) snapshot(e *entry, now time.Time) v1alpha1.ReplicaDeliveryStatus {
	w := &v1alpha1.DeliveryWindow{Seconds: int64(r.opts.Window / time.Second)}
	cur := r.slot(now)
	for _, b := range e.counts {
		if b.slot > cur-buckets && b.slot <= cur {
			w.Delivered += b.delivered
			w.Deferred += b.deferred
			w.Bounced += b.bounce
		}
	}
	t := metav1.NewTime(now)
	return v1alpha1.ReplicaDeliveryStatus{
		Name:          r.opts.Replica,
		UpdateTime:    &t,
		LastDelivered: e.lastDelivered.DeepCopy(),
		LastFailed:    e.lastFailed.DeepCopy(),
		Window:        w,
	}
}

// apply writes st as this replica's entry of the object's
// status.delivery.replicas. Without ForceOwnership, and naming only its
// own entry (a map-list keyed by name), the apply leaves the other
// replicas' entries and the operator's conditions alone (contract 6); a
// field of its entry that st no longer has (a lastFailed.tls) is removed,
// as this replica was its only owner.
func (r *Reporter) apply(ctx context.Context, k routing.ObjectKey, st v1alpha1.ReplicaDeliveryStatus) error {
	var ac runtime.ApplyConfiguration
	delivery := acv1alpha1.DeliveryStatus().WithReplicas(replicaApply(&st))
	switch k.Kind {
	case routing.KindSenderDomain:
		ac = acv1alpha1.SenderDomain(k.Name, k.Namespace).WithStatus(acv1alpha1.SenderDomainStatus().WithDelivery(delivery))
	case routing.KindRelayRoute:
		ac = acv1alpha1.RelayRoute(k.Name, k.Namespace).WithStatus(acv1alpha1.RelayRouteStatus().WithDelivery(delivery))
	default:
		// No delivery status on this kind (a TrustedNetwork carries no
		// mail of its own): as for an object that is gone.
		return apierrors.NewNotFound(v1alpha1.GroupVersion.WithResource(k.Kind).GroupResource(), k.Name)
	}
	if err := r.c.Status().Apply(ctx, ac, client.FieldOwner(FieldManagerPrefix+r.opts.Replica)); err != nil {
		return fmt.Errorf("applying delivery status of %s: %w", k, err)
	}
	return nil
}

// replicaApply is st as an apply configuration. It names only the fields
// that are set, as their JSON form (omitempty) does: a zero count is
// absent, not 0.
func replicaApply(st *v1alpha1.ReplicaDeliveryStatus) *acv1alpha1.ReplicaDeliveryStatusApplyConfiguration {
	out := acv1alpha1.ReplicaDeliveryStatus().WithName(st.Name)
	if st.UpdateTime != nil {
		out.WithUpdateTime(*st.UpdateTime)
	}
	if st.LastDelivered != nil {
		out.WithLastDelivered(attemptApply(st.LastDelivered))
	}
	if st.LastFailed != nil {
		out.WithLastFailed(attemptApply(st.LastFailed))
	}
	if w := st.Window; w != nil {
		aw := acv1alpha1.DeliveryWindow()
		setIf(w.Seconds, aw.WithSeconds)
		setIf(w.Delivered, aw.WithDelivered)
		setIf(w.Deferred, aw.WithDeferred)
		setIf(w.Bounced, aw.WithBounced)
		out.WithWindow(aw)
	}
	return out
}

// attemptApply is a as an apply configuration, naming only the fields set.
func attemptApply(a *v1alpha1.DeliveryAttempt) *acv1alpha1.DeliveryAttemptApplyConfiguration {
	out := acv1alpha1.DeliveryAttempt().WithTime(a.Time)
	setIf(a.RelayHost, out.WithRelayHost)
	setIf(a.RelayAddress, out.WithRelayAddress)
	setIf(a.SourceAddress, out.WithSourceAddress)
	setIf(a.ResponseCode, out.WithResponseCode)
	setIf(a.EnhancedCode, out.WithEnhancedCode)
	setIf(a.Reply, out.WithReply)
	if t := a.TLS; t != nil {
		at := acv1alpha1.TransportEncryption()
		setIf(t.Requested, at.WithRequested)
		setIf(t.Established, at.WithEstablished)
		setIf(t.Protocol, at.WithProtocol)
		setIf(t.CipherSuite, at.WithCipherSuite)
		setIf(t.Policy, at.WithPolicy)
		setIf(t.PolicyResult, at.WithPolicyResult)
		out.WithTLS(at)
	}
	setIf(a.Site, out.WithSite)
	if a.ThrottledUntil != nil {
		out.WithThrottledUntil(*a.ThrottledUntil)
	}
	return out
}

// setIf calls with(v) unless v is the zero value.
func setIf[T comparable, R any](v T, with func(T) R) {
	var zero T
	if v != zero {
		with(v)
	}
}
