package relay_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/admin"
	"github.com/postgate/postgate/internal/testenv"
)

// adminList returns every message queued on a relay, by ID, through its
// admin API.
func adminList(t *testing.T, p *testRelay) map[string]admin.Message {
	t.Helper()
	out := map[string]admin.Message{}
	c := admin.NewClient(p.adminAddr, 10*time.Second)
	var resp admin.ListResponse
	if err := c.Do(context.Background(), http.MethodGet, "/v1/messages?limit=1000", nil, &resp); err != nil {
		t.Fatalf("list: %v", err)
	}
	for _, m := range resp.Messages {
		out[m.ID] = m
	}
	return out
}

// TestRelayScaleDownHandsOff runs the operator and three cluster-mode relay
// processes against a real API server, with mail deferred because the MX
// answers 451. The StatefulSet goes from 3 to 2 replicas and relay-2 gets
// SIGTERM: its messages move to relay-0 and relay-1 with their queue IDs,
// arrival times and attempt history. Then `postgate relay drain` empties
// relay-1 into relay-0 the same way, and relay-1 answers 421. Once the MX
// recovers every recipient gets its message exactly once.
// POSTGATE_HANDOFF_MESSAGES sets the messages per relay (default 4).
func TestRelayScaleDownHandsOff(t *testing.T) {
	api, c := operatorCluster(t)
	startOperator(t, api)
	dns := testenv.StartDNSServer(t, testenv.DNSOptions{})
	mx := testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: "127.0.0.3:0"})
	mx.SetFault(testenv.StageRcpt, testenv.Fault{Code: 451, Enhanced: smtp.EnhancedCode{4, 3, 0}, Text: "try again later"})
	if err := dns.Add("dest.test. 60 IN MX 10 mx.dest.test.", "mx.dest.test. 60 IN A 127.0.0.3"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	three := int32(3)
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: "postgate-system", Name: "postgate-relay"},
		Spec: appsv1.StatefulSetSpec{
			Replicas: &three, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "relay"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "relay"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "relay", Image: "postgate"}}}},
		},
	}
	for _, obj := range []client.Object{
		sts,
		&v1alpha1.SenderDomain{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: "example"},
			Spec: v1alpha1.SenderDomainSpec{Domain: "example.com"}},
		&v1alpha1.TrustedNetwork{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: "lo"},
			Spec: v1alpha1.TrustedNetworkSpec{CIDRs: []v1alpha1.CIDR{"127.0.0.0/8"}}},
	} {
		if err := c.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}

	relays := make([]*testRelay, 3)
	for i := range relays {
		relays[i] = startRelayInProcess(t, api.Config, "--relay-namespace", "postgate-system",
			"--pod-name", fmt.Sprintf("relay-%d", i), "--statefulset-name", "postgate-relay",
			"--handoff-bind-address", "127.0.0.1:0", "--spool-dir", t.TempDir(), "--hostname", "relay.test",
			"--dns-server", dns.Addr(), "--mx-port", fmt.Sprint(mx.Port()), "--shutdown-grace", "5s")
	}
	// Every relay announces its hand-off address on its Lease.
	testenv.Eventually(t, func() string {
		for i, p := range relays {
			if !strings.Contains(p.logs(), `msg="Hand-off listening"`) {
				return fmt.Sprintf("relay-%d does not serve hand-offs", i)
			}
		}
		return ""
	})

	// Four messages a relay, one recipient each, all deferred by the MX.
	perRelay := 4
	if s := os.Getenv("POSTGATE_HANDOFF_MESSAGES"); s != "" {
		_, _ = fmt.Sscanf(s, "%d", &perRelay)
	}
	owner := map[string]int{} // queue id -> relay
	for i, p := range relays {
		for j := range perRelay {
			to := fmt.Sprintf("r%d-%d@dest.test", i, j)
			testenv.Eventually(t, func() string { // until the relay has its table
				line, err := testenv.SubmitMail(p.addr, "127.0.0.1", "app@example.com", to, to)
				m := queuedID.FindStringSubmatch(line)
				if err != nil || m == nil {
					return fmt.Sprintf("submitting to relay-%d: %q %v", i, line, err)
				}
				owner[m[1]] = i
				return ""
			})
		}
	}
	var before map[string]admin.Message
	testenv.Eventually(t, func() string {
		before = adminList(t, relays[2])
		for _, m := range before {
			if m.Recipients[0].Attempts == 0 {
				return "relay-2 has not tried " + m.ID + " yet"
			}
		}
		if len(before) != perRelay {
			return fmt.Sprintf("relay-2 holds %d messages, want %d", len(before), perRelay)
		}
		return ""
	})

	// Scale down: the StatefulSet first (as kubectl scale does), then the
	// pod with the highest ordinal gets SIGTERM.
	two := int32(2)
	if err := c.Get(ctx, types.NamespacedName{Namespace: "postgate-system", Name: "postgate-relay"}, sts); err != nil {
		t.Fatal(err)
	}
	sts.Spec.Replicas = &two
	if err := c.Update(ctx, sts); err != nil {
		t.Fatal(err)
	}
	// Clients keep submitting to relay-2 through its SIGTERM: what they
	// got 250 for must reach the other relays too.
	loadCtx, stopLoad := context.WithCancel(ctx)
	var loadMu sync.Mutex
	loadAcked := map[string]string{} // queue id -> recipient
	var greeted421 atomic.Int64
	var loadChanges testenv.Changes
	var wg sync.WaitGroup
	for c := range 3 {
		wg.Go(func() {
			for i := 0; loadCtx.Err() == nil; i++ {
				to := fmt.Sprintf("load%d-%d@dest.test", c, i)
				line, err := testenv.SubmitMail(relays[2].addr, "127.0.0.1", "app@example.com", to, to)
				m := queuedID.FindStringSubmatch(line)
				switch {
				case err == nil && m != nil:
					loadMu.Lock()
					loadAcked[m[1]] = to
					loadMu.Unlock()
					loadChanges.Changed()
				case strings.HasPrefix(line, "421 4.3.2"):
					greeted421.Add(1)
				default:
					time.Sleep(10 * time.Millisecond) // the listener is closed
				}
			}
		})
	}
	// The load is flowing when the SIGTERM comes.
	loadChanges.Wait(t, func() string {
		loadMu.Lock()
		defer loadMu.Unlock()
		if len(loadAcked) < 3 {
			return fmt.Sprintf("%d messages acknowledged under load, want 3 before the SIGTERM", len(loadAcked))
		}
		return ""
	})
	start := time.Now()
	relays[2].stop(t)
	took := time.Since(start).Round(time.Millisecond)
	stopLoad()
	wg.Wait()
	m := regexp.MustCompile(`msg="Hand-off finished" handedOff=(\d+) remaining=0`).FindStringSubmatch(relays[2].logs())
	if m == nil || !strings.Contains(relays[2].logs(), "a scale-down") {
		t.Fatalf("relay-2 did not hand its queue over:\n%s", relays[2].logs())
	}
	t.Logf("relay-2 handed %s messages over (%d deferred before, %d acknowledged under load; %d clients greeted 421) and exited in %s",
		m[1], perRelay, len(loadAcked), greeted421.Load(), took)
	if len(loadAcked) == 0 || greeted421.Load() == 0 {
		t.Fatalf("the load proves nothing: %d acknowledged, %d greeted 421", len(loadAcked), greeted421.Load())
	}
	// Every message acknowledged under load is on a surviving relay.
	survivors := map[string]bool{}
	for _, p := range relays[:2] {
		for id := range adminList(t, p) {
			survivors[id] = true
		}
	}
	for id, to := range loadAcked {
		if !survivors[id] {
			t.Errorf("%s (to %s) got 250 from relay-2 and is on no surviving relay", id, to)
		}
	}

	// The survivors hold relay-2's messages as they were.
	checkMoved := func(from int, to []*testRelay) {
		t.Helper()
		moved := 0
		for _, p := range to {
			for id, m := range adminList(t, p) {
				if owner[id] != from {
					continue
				}
				moved++
				b := before[id]
				if !m.Arrival.Equal(b.Arrival) || m.Recipients[0].Attempts != b.Recipients[0].Attempts || !m.Recipients[0].NextAttempt.Equal(b.Recipients[0].NextAttempt) {
					t.Errorf("%s arrived as %+v, was %+v on relay-%d: arrival or history not kept", id, m.Recipients[0], b.Recipients[0], from)
				}
			}
		}
		if moved != perRelay {
			t.Fatalf("%d of relay-%d's %d messages reached the other relays", moved, from, perRelay)
		}
	}
	checkMoved(2, relays[:2])

	// postgate relay drain empties relay-1 into relay-0, the only peer
	// left; relay-1 stays up and takes no mail.
	onRelay1 := adminList(t, relays[1])
	for id, m := range onRelay1 {
		before[id] = m
	}
	var stdout strings.Builder
	start = time.Now()
	drainCtx, cancelDrain := context.WithTimeout(ctx, 10*time.Minute)
	defer cancelDrain()
	st, err := admin.NewClient(relays[1].adminAddr, 30*time.Second).Drain(drainCtx, 500*time.Millisecond)
	if err == nil {
		admin.WriteDrain(&stdout, st)
	}
	if err != nil || st.Remaining != 0 ||
		!strings.Contains(stdout.String(), fmt.Sprintf("handed off %d, remaining 0", len(onRelay1))) {
		t.Fatalf("postgate relay drain: %v: %s\n%s", err, stdout.String(), relays[1].logs())
	}
	t.Logf("postgate relay drain handed %d messages over in %s:\n%s", len(onRelay1), time.Since(start).Round(time.Millisecond), stdout.String())
	if n := len(adminList(t, relays[1])); n != 0 {
		t.Errorf("relay-1 holds %d messages after the drain", n)
	}
	if line, _ := sendOne(relays[1].addr, "app@example.com", "late"); !strings.HasPrefix(line, "421 4.3.2 relay.test Service shutting down") {
		t.Errorf("a drained relay greeted %q, want 421 4.3.2", line)
	}
	checkMoved(1, relays[:1])
	checkMoved(2, relays[:1])

	// The MX recovers; flush relay-0 rather than wait for the schedule.
	// Each recipient gets exactly one message.
	mx.ClearFaults()
	if _, err := admin.NewClient(relays[0].adminAddr, 30*time.Second).Flush(ctx, nil); err != nil {
		t.Fatalf("flush failed: %v", err)
	}
	want := 3*perRelay + len(loadAcked)
	wait, cancel := context.WithTimeout(ctx, testenv.WaitTimeout)
	defer cancel()
	if _, err := mx.WaitMessages(wait, want); err != nil {
		t.Fatalf("MX got %d messages, want %d: %v", len(mx.Messages()), want, err)
	}
	// A duplicate could only come from a message still queued: once the
	// relays left hold none, every delivery they made is at the sink.
	testenv.Eventually(t, func() string {
		for i, p := range relays[:2] {
			if n := len(adminList(t, p)); n != 0 {
				return fmt.Sprintf("relay-%d still holds %d messages", i, n)
			}
		}
		return ""
	})
	got := map[string]int{}
	for _, m := range mx.Messages() {
		for _, r := range m.Rcpts {
			got[r]++
		}
	}
	for i := range 3 {
		for j := range perRelay {
			if r := fmt.Sprintf("r%d-%d@dest.test", i, j); got[r] != 1 {
				t.Errorf("%s got %d messages, want 1", r, got[r])
			}
		}
	}
	for _, to := range loadAcked {
		if got[to] != 1 {
			t.Errorf("%s, acknowledged under load, got %d messages, want 1", to, got[to])
		}
	}
	if len(got) != want {
		t.Errorf("MX saw %d recipients, want %d: %v", len(got), want, got)
	}
}

// TestRelaySIGTERMUnderLoad shuts a relay down (as SIGTERM does) while
// clients submit: a session in the middle of a transaction finishes it
// (250) and is told 421 for its next command, clients connecting during
// the shutdown are greeted with 421 4.3.2, and every message a client got
// 250 for is on the spool the restarted relay reads (a restart keeps the
// queue).
func TestRelaySIGTERMUnderLoad(t *testing.T) {
	spool := t.TempDir()
	p := startRelayInProcess(t, nil, "--manifests", testenv.Samples(t), "--spool-dir", spool,
		"--shutdown-grace", "5s", "--hostname", "relay.test")
	var acked sync.Map
	var total, refused, greeted421 atomic.Int64
	var changes testenv.Changes
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for c := range 4 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				subject := fmt.Sprintf("c%d-m%d", c, i)
				line, err := sendOne(p.addr, "alice@example.com", subject)
				switch m := queuedID.FindStringSubmatch(line); {
				case err == nil && m != nil:
					acked.Store(m[1], subject)
					total.Add(1)
					changes.Changed()
				case strings.HasPrefix(line, "421 4.3.2 relay.test Service shutting down"):
					greeted421.Add(1)
				default:
					refused.Add(1)
					time.Sleep(10 * time.Millisecond) // the listener is gone
				}
			}
		})
	}
	// A session in the middle of a transaction keeps the relay in its
	// grace period until it ends.
	slow := dialSMTP(t, p.addr)
	slow.cmd("EHLO slow.test", 250)
	slow.cmd("MAIL FROM:<alice@example.com>", 250)
	slow.cmd("RCPT TO:<bob@dest.test>", 250)
	// The load is flowing when the SIGTERM comes.
	changes.Wait(t, func() string {
		if n := total.Load(); n < 10 {
			return fmt.Sprintf("%d messages acknowledged, want 10 before the SIGTERM", n)
		}
		return ""
	})
	exited := make(chan error, 1)
	go func() { exited <- p.Shutdown(context.Background()) }()
	testenv.Eventually(t, func() string {
		if greeted421.Load() < 10 {
			return fmt.Sprintf("%d clients greeted with 421 during the shutdown", greeted421.Load())
		}
		return ""
	})
	slow.cmd("DATA", 354)
	line := slow.cmd("Subject: slow\r\n\r\nbody\r\n.", 250)
	if m := queuedID.FindStringSubmatch(line); m != nil {
		acked.Store(m[1], "slow")
		total.Add(1)
	}
	slow.cmd("MAIL FROM:<alice@example.com>", 421)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("relay exited with %v", err)
		}
	case <-time.After(testenv.WaitTimeout):
		t.Fatalf("relay did not exit:\n%s", p.logs())
	}
	cancel()
	wg.Wait()
	lost, queued := assertQueued(t, spool, &acked)
	t.Logf("SIGTERM under load: %d messages acknowledged, %d lost, %d queued; %d connections greeted 421, %d refused",
		total.Load(), lost, queued, greeted421.Load(), refused.Load())
}

// smtpClient is a line-by-line SMTP client for a session the test steps.
type smtpClient struct {
	t *testing.T
	c *testenv.SMTPLineConn
}

func dialSMTP(t *testing.T, addr string) *smtpClient {
	t.Helper()
	c, err := testenv.DialSMTPLine(addr, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	s := &smtpClient{t: t, c: c}
	if line, err := c.Reply(); err != nil || !strings.HasPrefix(line, "220") {
		t.Fatalf("greeting %q %v", line, err)
	}
	return s
}

// cmd sends one line and checks the reply's code.
func (s *smtpClient) cmd(line string, code int) string {
	s.t.Helper()
	reply, err := s.c.Cmd(line)
	if err != nil || !strings.HasPrefix(reply, fmt.Sprint(code)) {
		s.t.Fatalf("after %q: %q %v, want %d", line, reply, err, code)
	}
	return reply
}
