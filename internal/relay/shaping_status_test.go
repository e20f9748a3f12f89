package relay_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"regexp"
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
	"github.com/postgate/postgate/internal/relay/admin"
	"github.com/postgate/postgate/internal/testenv"
)

// TestShapingVisible runs the operator and a cluster-mode relay with
// traffic shaping against a real API server; the MX sink answers MAIL with
// a throttle reply of the shipped default rule. The site is suspended and
// the mail waits: `postgate queue sites` shows the site suspended with the
// two messages waiting for it, `queue list --site` lists them, the metrics
// show the suspension under site="other", and the SenderDomain's entry
// carries the site and until when, from which the operator sets
// DeliveryDegraded=Throttled naming the site.
func TestShapingVisible(t *testing.T) {
	api, c := operatorCluster(t)
	startOperator(t, api)
	dns, mx, _ := mailWorld(t, testenv.SMTPSinkOptions{})
	mx.SetFault(testenv.StageMail, testenv.Fault{Code: 421, Enhanced: smtp.EnhancedCode{4, 7, 0}, Text: "has been temporarily rate limited due to IP reputation"})
	ctx := context.Background()
	for _, obj := range []client.Object{
		&v1alpha1.SenderDomain{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: "example"},
			Spec: v1alpha1.SenderDomainSpec{Domain: "example.com"}},
		&v1alpha1.TrustedNetwork{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: "lo"},
			Spec: v1alpha1.TrustedNetworkSpec{CIDRs: []v1alpha1.CIDR{"127.0.0.0/8"}}},
	} {
		if err := c.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	p := runRelayInProcess(t, relay.Config{
		SMTPAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", SpoolDir: t.TempDir(), Hostname: "relay.test",
		Kube: api.Config, Namespace: "postgate-system", PodName: "relay-a",
		MaxMessageBytes: 25 << 20, MaxRecipients: 100, MaxConnections: 100, MaxConnectionsPerClient: 10,
		DNSServer: dns.Addr(), MXPort: mx.Port(), ShutdownGrace: 5 * time.Second, Shaping: true,
		Logger: slog.New(slog.DiscardHandler), // runRelayInProcess sets its own
	})
	p.adminAddr = p.log.WaitMatch(t, adminListening)[1]
	metricsAddr := p.log.WaitMatch(t, regexp.MustCompile(`msg="HTTP listening" address=(\S+) admin=false`))[1]
	var ids []string
	send := func(subject string) {
		t.Helper()
		testenv.Eventually(t, func() string { // the relay may have no table yet
			line, err := sendOne(p.addr, "alice@example.com", subject)
			if m := queuedID.FindStringSubmatch(line); err == nil && m != nil {
				ids = append(ids, m[1])
				return ""
			}
			return fmt.Sprintf("submitting: %q %v", line, err)
		})
	}
	send("first")
	p.log.WaitMatch(t, regexp.MustCompile(`temporarily rate limited`))
	send("second")
	p.log.WaitMatch(t, regexp.MustCompile(`reply="451 4\.7\.0 site dest\.test suspended until `))

	// postgate queue sites, through the admin API.
	a := admin.NewClient(p.adminAddr, 30*time.Second)
	sites, err := a.Sites(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(sites.Sites) != 1 {
		t.Fatalf("sites: %+v", sites)
	}
	s := sites.Sites[0]
	if s.Name != "dest.test" || s.Rule != "default" || s.Suspensions != 1 || s.ThrottleReplies < 1 || s.SuspendedUntil.IsZero() ||
		s.DeferredWithoutAttempt < 2 || s.QueuedMessages != 2 || s.QueuedRecipients != 2 {
		t.Errorf("dest.test: %+v", s)
	}
	var out bytes.Buffer
	act := admin.Action{Verb: "sites"}
	if err := act.Run(ctx, a, &out); err != nil {
		t.Fatal(err)
	}
	t.Logf("postgate queue sites:\n%s", out.String())
	page, err := a.List(ctx, admin.ListQuery{Site: "dest.test", Limit: 10})
	if err != nil || len(page.Messages) != 2 || page.Messages[0].ID != ids[0] || page.Messages[1].ID != ids[1] {
		t.Errorf("list --site dest.test: %+v %v, want %v", page, err, ids)
	}
	out.Reset()
	admin.WriteList(&out, page)
	t.Logf("postgate queue list --site dest.test:\n%s", out.String())
	if page, err := a.List(ctx, admin.ListQuery{Site: "google.com", Limit: 10}); err != nil || len(page.Messages) != 0 {
		t.Errorf("list --site google.com: %+v %v, want nothing", page, err)
	}

	metrics := string(scrape(t, "http://"+metricsAddr+"/metrics"))
	for _, want := range []string{
		`postgate_relay_site_suspended{rule="default",site="other"} 1`,
		`postgate_relay_site_suspensions_total{rule="default",site="other"} 1`,
		`postgate_relay_site_connections_opened_total{rule="default",site="other"} 1`,
	} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("metrics lack %s:\n%s", want, metrics)
		}
	}

	// The SenderDomain's entry and condition.
	testenv.Eventually(t, func() string {
		var sd v1alpha1.SenderDomain
		if err := c.Get(ctx, types.NamespacedName{Namespace: "tenant", Name: "example"}, &sd); err != nil {
			t.Fatal(err)
		}
		if sd.Status.Delivery == nil || len(sd.Status.Delivery.Replicas) != 1 {
			return fmt.Sprintf("no delivery entry: %+v", sd.Status.Delivery)
		}
		f := sd.Status.Delivery.Replicas[0].LastFailed
		if f == nil || f.Site != "dest.test" || f.ThrottledUntil == nil || !f.ThrottledUntil.Time.Equal(s.SuspendedUntil.Truncate(time.Second)) {
			return fmt.Sprintf("lastFailed %+v, want site dest.test throttled until %s", f, s.SuspendedUntil)
		}
		cond := meta.FindStatusCondition(sd.Status.Conditions, string(v1alpha1.ConditionDeliveryDegraded))
		if cond == nil || cond.Reason != string(v1alpha1.ReasonThrottled) ||
			!strings.Contains(cond.Message, "mail to site dest.test is throttled until "+s.SuspendedUntil.UTC().Format(time.RFC3339)) {
			return fmt.Sprintf("DeliveryDegraded %+v, want Throttled naming dest.test", cond)
		}
		t.Logf("DeliveryDegraded=%s: %s", cond.Reason, cond.Message)
		return ""
	})
	testenv.WaitEvent(t, c, "tenant", "example", string(v1alpha1.ReasonThrottled))
}
