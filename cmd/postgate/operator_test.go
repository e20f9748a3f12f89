package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/operator"
	"github.com/postgate/postgate/internal/routing"
	"github.com/postgate/postgate/internal/testenv"
)

// freeAddr returns a 127.0.0.1 address with a port nothing listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

// operatorCluster starts an API server with the namespaces postgate-system
// and tenant, and returns a client.
func operatorCluster(t *testing.T) (*testenv.APIServer, client.Client) {
	t.Helper()
	api := testenv.StartAPIServer(t)
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = v1alpha1.AddToScheme(scheme)
	c, err := client.New(api.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{"postgate-system", "tenant"} {
		if err := c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	return api, c
}

// operatorProcess is a running `postgate operator`.
type operatorProcess struct {
	cmd    *exec.Cmd
	exited chan error
	log    *testenv.LogBuffer
}

func startOperatorProcess(t *testing.T, kubeconfig string, args ...string) *operatorProcess {
	t.Helper()
	bin, err := buildPostgate()
	if err != nil {
		t.Fatal(err)
	}
	p := &operatorProcess{exited: make(chan error, 1), log: &testenv.LogBuffer{}}
	p.cmd = exec.Command(bin, append([]string{"operator", "--kubeconfig", kubeconfig, "--leader-elect",
		"--operator-namespace", "postgate-system", "--relay-namespace", "postgate-system"}, args...)...)
	p.cmd.Stderr = p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			t.Logf("operator stopped: %v", <-p.exited)
		}
		if t.Failed() {
			t.Logf("operator log:\n%s", p.log.String())
		}
	})
	return p
}

// terminate sends SIGTERM and waits, bounded, for exit status 0.
func (p *operatorProcess) terminate(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(testenv.WaitTimeout):
		t.Fatalf("the operator did not exit within %s of SIGTERM", testenv.WaitTimeout)
	}
}

func (p *operatorProcess) leads() bool {
	return strings.Contains(strings.ToLower(p.log.String()), "successfully acquired lease")
}

// waitNoRelays waits until the SenderDomain has its status from an operator.
func waitNoRelays(t *testing.T, c client.Client, name string) {
	t.Helper()
	var sd v1alpha1.SenderDomain
	testenv.Eventually(t, func() string {
		if err := c.Get(context.Background(), types.NamespacedName{Namespace: "tenant", Name: name}, &sd); err != nil {
			return err.Error()
		}
		for _, cond := range sd.Status.Conditions {
			if cond.Type == string(v1alpha1.ConditionProgrammed) && cond.Reason == string(v1alpha1.ReasonNoRelays) {
				return ""
			}
		}
		return fmt.Sprintf("%s: conditions %v", name, sd.Status.Conditions)
	})
}

func createSenderDomain(t *testing.T, c client.Client, name string) {
	t.Helper()
	sd := &v1alpha1.SenderDomain{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: name},
		Spec: v1alpha1.SenderDomainSpec{Domain: v1alpha1.DomainName(name + ".example.com")}}
	if err := c.Create(context.Background(), sd); err != nil {
		t.Fatal(err)
	}
}

// TestOperatorCommand runs `postgate operator` as a process against a real
// API server, with leader election, metrics and probes on 127.0.0.1: it
// takes the leader Lease, publishes the table, writes status, serves
// /healthz and /metrics, and exits 0 on SIGTERM.
func TestOperatorCommand(t *testing.T) {
	api, c := operatorCluster(t)
	metrics, probes := freeAddr(t), freeAddr(t)
	p := startOperatorProcess(t, api.Kubeconfig, "--metrics-bind-address", metrics, "--health-probe-bind-address", probes)
	createSenderDomain(t, c, "sd")
	waitNoRelays(t, c, "sd")
	ctx := context.Background()
	var lease coordinationv1.Lease
	if err := c.Get(ctx, types.NamespacedName{Namespace: "postgate-system", Name: operator.LeaderElectionID}, &lease); err != nil {
		t.Errorf("leader Lease: %v", err)
	}
	var index corev1.Secret
	if err := c.Get(ctx, types.NamespacedName{Namespace: "postgate-system", Name: routing.IndexSecretName}, &index); err != nil {
		t.Errorf("index Secret: %v", err)
	}
	for url, want := range map[string]string{"http://" + probes + "/healthz": "ok", "http://" + metrics + "/metrics": "controller_runtime_reconcile_total"} {
		body, err := httpGet(url)
		if err != nil || !strings.Contains(body, want) {
			t.Errorf("GET %s: %v, body lacks %q", url, err, want)
		}
	}
	// The operator's own metrics: the table it published and the object
	// by its conditions (no relay is live, so not Programmed).
	for _, want := range []string{
		"postgate_operator_table_version 1",
		"postgate_operator_table_objects 1",
		"postgate_operator_table_shards ",
		`postgate_operator_objects{condition="Accepted",kind="SenderDomain",status="True"} 1`,
		`postgate_operator_objects{condition="Programmed",kind="SenderDomain",status="False"} 1`,
	} {
		body, err := httpGet("http://" + metrics + "/metrics")
		if err != nil || !strings.Contains(body, want) {
			t.Errorf("operator metrics: %v, no %q in\n%s", err, want, grepLines(body, "postgate_"))
		}
	}
	body, _ := httpGet("http://" + metrics + "/metrics")
	if m := regexp.MustCompile(`(?m)^postgate_operator_table_bytes (\d+)`).FindStringSubmatch(body); m == nil || m[1] == "0" {
		t.Errorf("operator metrics: table bytes %v", m)
	}
	p.terminate(t)
}

// TestOperatorLeaderHandover: of two operators with --leader-elect, one
// works; when it stops, it releases the Lease and the other takes over and
// continues the table's version sequence.
func TestOperatorLeaderHandover(t *testing.T) {
	api, c := operatorCluster(t)
	a := startOperatorProcess(t, api.Kubeconfig, "--metrics-bind-address", "0", "--health-probe-bind-address", "0")
	b := startOperatorProcess(t, api.Kubeconfig, "--metrics-bind-address", "0", "--health-probe-bind-address", "0")
	createSenderDomain(t, c, "first")
	waitNoRelays(t, c, "first")
	leader, standby := a, b
	if b.leads() {
		leader, standby = b, a
	}
	if !leader.leads() || standby.leads() {
		t.Fatalf("leaders: a %v, b %v; want exactly one", a.leads(), b.leads())
	}
	version := func() string {
		var s corev1.Secret
		if err := c.Get(context.Background(), types.NamespacedName{Namespace: "postgate-system", Name: routing.IndexSecretName}, &s); err != nil {
			t.Fatal(err)
		}
		return string(s.Data[routing.IndexDataKey])
	}
	before := version()
	leader.terminate(t)
	createSenderDomain(t, c, "second")
	waitNoRelays(t, c, "second")
	if !standby.leads() {
		t.Error("the standby wrote status without leading")
	}
	after := version()
	if !strings.Contains(before, `"version":1,`) || !strings.Contains(after, `"version":2,`) {
		t.Errorf("index before the handover %s, after %s: want versions 1 then 2", before, after)
	}
	standby.terminate(t)
}

func httpGet(url string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer func() { _ = resp.Body.Close() }()
	var b bytes.Buffer
	_, err = b.ReadFrom(resp.Body)
	return b.String(), err
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
