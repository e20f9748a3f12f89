package follow

import (
	"context"
	"slices"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/postgate/postgate/internal/relay/handoff"
)

// TestPeers: a peer is another relay whose Lease is unexpired and
// announces a hand-off address.
func TestPeers(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	lease := func(name string, renewedAgo time.Duration, addr string) runtime.Object {
		renew := metav1.NewMicroTime(now.Add(-renewedAgo))
		d := int32(30)
		l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "postgate-system", Name: name},
			Spec: coordinationv1.LeaseSpec{RenewTime: &renew, LeaseDurationSeconds: &d}}
		if addr != "" {
			l.Annotations = map[string]string{HandoffAddressAnnotation: addr}
		}
		return l
	}
	client := fake.NewClientset(
		lease("postgate-relay-relay-0", 5*time.Second, "10.0.0.1:8026"),
		lease("postgate-relay-relay-1", 5*time.Second, "10.0.0.2:8026"), // self
		lease("postgate-relay-relay-2", time.Minute, "10.0.0.3:8026"),   // expired
		lease("postgate-relay-relay-3", 5*time.Second, ""),              // draining
		lease("postgate-operator.postgate.io", time.Second, "10.0.0.5:8026"),
	)
	peers, err := Peers(context.Background(), client, "postgate-system", "relay-1", now)
	if err != nil {
		t.Fatal(err)
	}
	if want := []handoff.Peer{{Name: "relay-0", Addr: "10.0.0.1:8026"}}; !slices.Equal(peers, want) {
		t.Errorf("Peers = %v, want %v", peers, want)
	}
}

// TestLeaseAnnouncesHandoff: the address is on the Lease while set, and
// gone once withdrawn, the table version kept.
func TestLeaseAnnouncesHandoff(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	k := &leaseKeeper{leases: client.CoordinationV1().Leases("postgate-system"), name: "postgate-relay-relay-0", holder: "relay-0",
		duration: 30 * time.Second, renew: 10 * time.Second, now: time.Now, kick: make(chan struct{}, 1)}
	k.version.Store(7)
	annotations := func() map[string]string {
		t.Helper()
		if err := k.renewOnce(ctx); err != nil {
			t.Fatal(err)
		}
		l, err := k.leases.Get(ctx, k.name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return l.Annotations
	}
	k.setHandoff("10.0.0.1:8026")
	if a := annotations(); a[HandoffAddressAnnotation] != "10.0.0.1:8026" || a["postgate.io/table-version"] != "7" {
		t.Errorf("annotations %v", a)
	}
	k.setHandoff("")
	if a := annotations(); a[HandoffAddressAnnotation] != "" || a["postgate.io/table-version"] != "7" {
		t.Errorf("after withdrawal: annotations %v", a)
	}
}
