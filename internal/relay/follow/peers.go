package follow

import (
	"context"
	"strings"
	"time"

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
	for _, l := range list.Items {
		name, ok := strings.CutPrefix(l.Name, routing.RelayLeasePrefix)
		addr := l.Annotations[HandoffAddressAnnotation]
		if !ok || name == self || addr == "" || l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
			continue
		}
		expires := l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second)
		if !now.Before(expires) {
			continue
		}
		peers = append(peers, handoff.Peer{Name: name, Addr: addr})
	}
	return peers, nil
}
