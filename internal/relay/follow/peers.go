package follow

import (
	"context"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/postgate/postgate/internal/relay/handoff"
	"github.com/postgate/postgate/internal/routing"
)

// HandoffAddressAnnotation on a relay's Lease is the host:port of its
// hand-off endpoint (internal/relay/handoff). A replica announces it while it takes
// hand-offs and removes it when it drains, so that replicas leaving at the
// same time never hand their queues to each other.
const HandoffAddressAnnotation = "postgate.io/handoff-address"

// SetHandoffAddress announces addr on this replica's Lease (at once, and
// at every renewal); "" withdraws it.
func (f *Follower) SetHandoffAddress(addr string) { f.lease.setHandoff(addr) }

// Peers returns the replicas that take hand-offs now: every relay Lease in
// namespace but self's that is unexpired (docs/design.md contract 2: a relay is
// live while its Lease is) and announces a hand-off address. It needs list
// on Leases in the relay namespace.
func Peers(ctx context.Context, client kubernetes.Interface, namespace, self string, now time.Time) ([]handoff.Peer, error) {
	list, err := client.CoordinationV1().Leases(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var peers []handoff.Peer
	for i := range list.Items {
		l := &list.Items[i]
		name, ok := liveRelay(l, now)
		addr := l.Annotations[HandoffAddressAnnotation]
		if !ok || name == self || addr == "" {
			continue
		}
		peers = append(peers, handoff.Peer{Name: name, Addr: addr})
	}
	return peers, nil
}

// countLive counts the live relay replicas among leases. Traffic shaping
// divides its limits by it (docs/design.md "How the policy reaches
// relays"): a draining replica still counts, since it may still deliver
// until its Lease is released; a replica that stopped cleanly does not
// (its released Lease has expired).
func countLive(leases []coordinationv1.Lease, now time.Time) int {
	n := 0
	for i := range leases {
		if _, ok := liveRelay(&leases[i], now); ok {
			n++
		}
	}
	return n
}

// liveRelay returns the pod name of a relay Lease that is unexpired at now
// (docs/design.md contract 2: a relay is live while its Lease is); ok is
// false for an expired Lease or one that is not a relay's.
func liveRelay(l *coordinationv1.Lease, now time.Time) (name string, ok bool) {
	name, ok = strings.CutPrefix(l.Name, routing.RelayLeasePrefix)
	if !ok || name == "" || l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return "", false
	}
	expires := l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second)
	return name, now.Before(expires)
}
