package follow

import (
	"context"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationclient "k8s.io/client-go/kubernetes/typed/coordination/v1"

	"github.com/postgate/postgate/internal/routing"
)

// leaseKeeper keeps this replica's Lease (docs/design.md contract 2): renewed
// every renew interval, and at once when the loaded version changes, so that
// the operator sees a new table programmed without waiting for a renewal.
type leaseKeeper struct {
	leases   coordinationclient.LeaseInterface
	name     string
	holder   string
	duration time.Duration
	renew    time.Duration
	now      func() time.Time
	log      *slog.Logger

	version atomic.Int64
	// handoff is the hand-off address announced on the Lease; empty
	// announces none (a draining replica takes no hand-offs).
	handoff atomic.Pointer[string]
	kick    chan struct{}
	// replicas, when set, is told after each renewal how many relay
	// replicas are live, this one included (countLive).
	replicas func(n int)
}

// setHandoff records the hand-off address and asks for a renewal now.
func (k *leaseKeeper) setHandoff(addr string) {
	if old := k.handoff.Swap(&addr); old != nil && *old == addr {
		return
	}
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

// annotate sets the annotations this replica owns on its Lease.
func (k *leaseKeeper) annotate(a map[string]string, version string) {
	a[routing.TableVersionAnnotation] = version
	if p := k.handoff.Load(); p != nil && *p != "" {
		a[HandoffAddressAnnotation] = *p
	} else {
		delete(a, HandoffAddressAnnotation)
	}
}

// setVersion records the loaded version and asks for a renewal now.
func (k *leaseKeeper) setVersion(v int64) {
	if k.version.Swap(v) == v {
		return
	}
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

func (k *leaseKeeper) run(ctx context.Context) {
	t := time.NewTicker(k.renew)
	defer t.Stop()
	for {
		if err := k.renewOnce(ctx); err != nil && ctx.Err() == nil {
			k.log.Error("Renewing the relay Lease failed", "lease", k.name, "error", err)
		} else if err == nil && k.replicas != nil {
			k.countReplicas(ctx)
		}
		select {
		case <-ctx.Done():
			k.release()
			return
		case <-t.C:
		case <-k.kick:
		}
	}
}

func (k *leaseKeeper) renewOnce(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, k.renew)
	defer cancel()
	now := metav1.NewMicroTime(k.now())
	version := strconv.FormatInt(k.version.Load(), 10)
	seconds := int32(max(1, k.duration/time.Second)) //nolint:gosec // a lease duration in seconds fits
	l, err := k.leases.Get(ctx, k.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		l = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: k.name, Annotations: map[string]string{}},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity: &k.holder, LeaseDurationSeconds: &seconds, AcquireTime: &now, RenewTime: &now,
			},
		}
		k.annotate(l.Annotations, version)
		_, err = k.leases.Create(ctx, l, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	if l.Annotations == nil {
		l.Annotations = map[string]string{}
	}
	k.annotate(l.Annotations, version)
	if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != k.holder || l.Spec.AcquireTime == nil {
		l.Spec.AcquireTime = &now
	}
	l.Spec.HolderIdentity = &k.holder
	l.Spec.LeaseDurationSeconds = &seconds
	l.Spec.RenewTime = &now
	_, err = k.leases.Update(ctx, l, metav1.UpdateOptions{})
	return err
}

// countReplicas tells replicas how many relay Leases are live, this one
// included (just renewed). A failed list keeps the last count: limits stay
// as they were rather than jump to one replica's share.
func (k *leaseKeeper) countReplicas(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, k.renew)
	defer cancel()
	list, err := k.leases.List(ctx, metav1.ListOptions{})
	if err != nil {
		k.log.Error("Counting the live relay replicas failed; the shaping limits stay divided as they were", "error", err)
		return
	}
	k.replicas(max(1, countLive(list.Items, k.now())))
}

// release lets the Lease expire now, on a clean shutdown, so that the
// operator stops waiting for this replica at once rather than after the
// lease duration. It needs no more than update.
func (k *leaseKeeper) release() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := k.leases.Get(ctx, k.name, metav1.GetOptions{})
	if err != nil {
		return
	}
	past := metav1.NewMicroTime(k.now().Add(-2 * time.Second))
	one := int32(1)
	l.Spec.RenewTime, l.Spec.LeaseDurationSeconds = &past, &one
	if _, err := k.leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		k.log.Error("Releasing the relay Lease failed", "lease", k.name, "error", err)
	}
}
