package relay_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay"
	"github.com/postgate/postgate/internal/testenv"
)

// TestRelayDeliveryStatus runs the operator and two cluster-mode relays
// against a real API server (contract 6): each relay writes its own entry on
// the RelayRoute; a 5xx from the target makes the operator set
// DeliveryDegraded with Bounces, and the next delivery clears it.
func TestRelayDeliveryStatus(t *testing.T) {
	api, c := operatorCluster(t)
	startOperator(t, api)
	dns := testenv.StartDNSServer(t, testenv.DNSOptions{})
	target := testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: "127.0.0.4:0"})
	if err := dns.Add("smarthost.relay.test. 60 IN A 127.0.0.4"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, obj := range []client.Object{
		&v1alpha1.SenderDomain{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: "billing"},
			Spec: v1alpha1.SenderDomainSpec{Domain: "billing.example.com"}},
		&v1alpha1.RelayRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: "billing"},
			Spec: v1alpha1.RelayRouteSpec{SenderDomainRef: v1alpha1.LocalObjectReference{Name: "billing"},
				Target: v1alpha1.RelayTarget{Host: "smarthost.relay.test", Port: int32(target.Port()), TLSPolicy: v1alpha1.TLSPolicyNone}}}, //nolint:gosec // a port
		&v1alpha1.TrustedNetwork{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: "lo"},
			Spec: v1alpha1.TrustedNetworkSpec{CIDRs: []v1alpha1.CIDR{"127.0.0.0/8"}}},
	} {
		if err := c.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}

	addrs := map[string]string{}
	for _, name := range []string{"relay-a", "relay-b"} {
		logs := &testenv.LogBuffer{}
		r, err := relay.New(relay.Config{
			SMTPAddr: "127.0.0.1:0", SpoolDir: t.TempDir(), Hostname: "relay.test",
			Kube: api.Config, Namespace: "postgate-system", PodName: name,
			MaxMessageBytes: 25 << 20, MaxRecipients: 100, MaxConnections: 100, MaxConnectionsPerClient: 10,
			DNSServer: dns.Addr(), MXPort: 1, ShutdownGrace: 5 * time.Second,
			Logger: slog.New(slog.NewTextHandler(logs, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- r.Run(rctx) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s: %v", name, err)
			}
			if t.Failed() {
				t.Logf("%s log:\n%s", name, logs)
			}
		})
		testenv.Eventually(t, func() string {
			if m := listening.FindStringSubmatch(logs.String()); m != nil {
				addrs[name] = m[1]
				return ""
			}
			return name + " is not listening"
		})
	}
	// send submits through a relay, retrying while it has no table yet.
	send := func(relay, subject string) {
		t.Helper()
		testenv.Eventually(t, func() string {
			line, err := sendOne(addrs[relay], "invoices@billing.example.com", subject)
			if err != nil || !queuedID.MatchString(line) {
				return fmt.Sprintf("submitting through %s: %q %v", relay, line, err)
			}
			return ""
		})
	}
	route := func() *v1alpha1.RelayRoute {
		var rr v1alpha1.RelayRoute
		if err := c.Get(ctx, types.NamespacedName{Namespace: "tenant", Name: "billing"}, &rr); err != nil {
			t.Fatal(err)
		}
		return &rr
	}
	entry := func(rr *v1alpha1.RelayRoute, name string) *v1alpha1.ReplicaDeliveryStatus {
		if rr.Status.Delivery == nil {
			return nil
		}
		for i := range rr.Status.Delivery.Replicas {
			if rr.Status.Delivery.Replicas[i].Name == name {
				return &rr.Status.Delivery.Replicas[i]
			}
		}
		return nil
	}
	condition := func(rr *v1alpha1.RelayRoute, typ v1alpha1.ConditionType) *metav1.Condition {
		return meta.FindStatusCondition(rr.Status.Conditions, string(typ))
	}

	send("relay-a", "one")
	send("relay-b", "two")
	testenv.Eventually(t, func() string {
		rr := route()
		for _, name := range []string{"relay-a", "relay-b"} {
			e := entry(rr, name)
			if e == nil || e.LastDelivered == nil {
				return fmt.Sprintf("no delivery in %s's entry: %+v", name, rr.Status.Delivery)
			}
			d := e.LastDelivered
			if d.ResponseCode != 250 || d.RelayHost != "smarthost.relay.test" || d.TLS == nil || d.TLS.Requested != v1alpha1.TLSPolicyNone || d.TLS.Established {
				return fmt.Sprintf("%s's lastDelivered: %+v (tls %+v)", name, d, d.TLS)
			}
		}
		if condition(rr, v1alpha1.ConditionReady) == nil {
			return fmt.Sprintf("the operator's Ready condition is missing: %+v", rr.Status.Conditions)
		}
		return ""
	})

	// Entry times have microseconds: a failure right after a delivery is
	// the later one, no need to wait for the next second.
	target.SetFault(testenv.StageData, testenv.Fault{Code: 554, Enhanced: smtp.EnhancedCode{5, 7, 1}, Text: "refused by policy"})
	send("relay-a", "three")
	testenv.Eventually(t, func() string {
		rr := route()
		if e := entry(rr, "relay-a"); e == nil || e.LastFailed == nil || e.LastFailed.ResponseCode != 554 || e.LastFailed.EnhancedCode != "5.7.1" {
			return fmt.Sprintf("relay-a's entry does not show the refusal: %+v", e)
		}
		if cond := condition(rr, v1alpha1.ConditionDeliveryDegraded); cond == nil || cond.Reason != string(v1alpha1.ReasonBounces) {
			return fmt.Sprintf("no DeliveryDegraded/Bounces: %+v", rr.Status.Conditions)
		}
		if entry(rr, "relay-b") == nil {
			return "relay-b's entry is gone"
		}
		return ""
	})
	// Events: the operator's at the start of the failing period, the
	// relay's aggregated bounce report.
	testenv.WaitEvent(t, c, "tenant", "billing", string(v1alpha1.ReasonBounces))
	if e := testenv.WaitEvent(t, c, "tenant", "billing", v1alpha1.EventReasonBounced); !strings.Contains(e.Note, "relay-a: 1 recipient(s) bounced") ||
		!strings.Contains(e.Note, "554 5.7.1 refused by policy") || e.ReportingController != "postgate-relay" {
		t.Errorf("the relay's Bounced Event: controller %q note %q", e.ReportingController, e.Note)
	}

	target.ClearFaults()
	send("relay-a", "four")
	testenv.Eventually(t, func() string {
		rr := route()
		if cond := condition(rr, v1alpha1.ConditionDeliveryDegraded); cond != nil {
			return fmt.Sprintf("DeliveryDegraded did not clear: %+v; relay-a: %+v", cond, entry(rr, "relay-a"))
		}
		return ""
	})
	testenv.WaitEvent(t, c, "tenant", "billing", v1alpha1.EventReasonDeliveryRecovered)
}
