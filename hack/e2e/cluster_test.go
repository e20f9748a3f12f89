package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/postgate/postgate/internal/testenv"
)

// buildPostgate builds cmd/postgate once per test run.
var buildPostgate = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "postgate-e2e-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "postgate")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/postgate")
	cmd.Dir = api.Root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, out)
	}
	return bin, nil
})

// freeAddr returns host:port on the loopback address host with a port
// nothing listens on now.
func freeAddr(t *testing.T, host string) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

// containerArgs returns the arguments of the first container of a rendered
// Deployment or StatefulSet.
func containerArgs(t *testing.T, obj map[string]any) []string {
	t.Helper()
	spec, _ := obj["spec"].(map[string]any)
	tmpl, _ := spec["template"].(map[string]any)
	podSpec, _ := tmpl["spec"].(map[string]any)
	containers, _ := podSpec["containers"].([]any)
	if len(containers) == 0 {
		t.Fatalf("no containers in %v", obj["metadata"])
	}
	c, _ := containers[0].(map[string]any)
	raw, _ := c["args"].([]any)
	args := make([]string, 0, len(raw))
	for _, a := range raw {
		args = append(args, fmt.Sprint(a))
	}
	return args
}

// localArgs turns the chart's arguments into a process's on this machine:
// every bind address becomes an explicit 127.0.0.x one (the contract of
// the tests), the downward-API variables are expanded, the spool goes to a
// temporary directory and a kubeconfig replaces in-cluster config.
func localArgs(args []string, binds map[string]string, env map[string]string, spool, kubeconfig string) []string {
	out := make([]string, 0, len(args)+1)
	for _, a := range args {
		for k, v := range env {
			a = strings.ReplaceAll(a, "$("+k+")", v)
		}
		name, _, hasValue := strings.Cut(a, "=")
		switch {
		case hasValue && binds[name] != "":
			a = name + "=" + binds[name]
		case name == "--spool-dir":
			a = name + "=" + spool
		}
		out = append(out, a)
	}
	return append(out, "--kubeconfig="+kubeconfig)
}

// serviceAccountKubeconfig writes a copy of the admin kubeconfig that
// impersonates a service account, so the processes run with exactly the
// RBAC the chart gives them.
func serviceAccountKubeconfig(t *testing.T, sa string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(api.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, auth := range cfg.AuthInfos {
		auth.Impersonate = "system:serviceaccount:" + namespace + ":" + sa
		auth.ImpersonateGroups = []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"}
	}
	path := filepath.Join(t.TempDir(), sa+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// startProcess runs a postgate subcommand until the test ends, and shows
// its log when the test fails.
func startProcess(t *testing.T, name string, env map[string]string, args []string) {
	t.Helper()
	bin, err := buildPostgate()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, args...) //nolint:gosec // the binary just built, with the chart's arguments
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	log := &testenv.LogBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: postgate %s", name, strings.Join(args, " "))
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		// The chart's RBAC must cover everything the process does.
		for line := range strings.Lines(log.String()) {
			if !strings.Contains(line, "forbidden") {
				continue
			}
			t.Errorf("%s was refused a request by RBAC: %s", name, line)
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", name, log.String())
		}
	})
}

// helmTestPod runs the command of the chart's `helm test` pod
// (templates/tests/smoke.yaml) with its addresses pointed at the local
// relay (relay-0; the other replicas' URLs are dropped): it passes once
// the relay answers SMTP and has the operator's table. Pointed at a port
// where nothing listens, it fails.
func helmTestPod(t *testing.T, pod map[string]any, smtpAddr, metricsAddr string) {
	t.Helper()
	if pod == nil {
		t.Fatal("no helm test pod rendered")
	}
	bin, err := buildPostgate()
	if err != nil {
		t.Fatal(err)
	}
	smoke := func(smtp string) (string, error) {
		var args []string
		for _, a := range field(pod, "spec", "containers", 0, "args").([]any) {
			arg := fmt.Sprint(a)
			name, value, _ := strings.Cut(arg, "=")
			switch {
			case name == "--smtp-address":
				arg = name + "=" + smtp
			case name == "--relay-metrics-url" && strings.Contains(value, "//postgate-relay-0."):
				arg = name + "=http://" + metricsAddr + "/metrics"
			case name == "--relay-metrics-url":
				continue
			}
			args = append(args, arg)
		}
		out, err := exec.Command(bin, args...).CombinedOutput() //nolint:gosec // the binary just built, with the chart's arguments
		return fmt.Sprintf("postgate %s\n%s", strings.Join(args, " "), out), err
	}
	out, err := smoke(smtpAddr)
	if err != nil || !strings.Contains(out, "ok   SMTP") || !strings.Contains(out, "ok   routing table") {
		t.Fatalf("the helm test pod's check failed: %v\n%s", err, out)
	}
	t.Logf("helm test pod's check:\n%s", out)
	if out, err := smoke(freeAddr(t, "127.0.0.1")); err == nil {
		t.Errorf("the helm test pod's check passed with no relay listening:\n%s", out)
	}
}

// waitReady polls an HTTP endpoint until it answers 200.
func waitReady(t *testing.T, url string) {
	t.Helper()
	testenv.Eventually(t, func() string {
		resp, err := http.Get(url) //nolint:gosec,noctx // a loopback probe the test started
		if err != nil {
			return fmt.Sprintf("%s not ready: %v", url, err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Sprintf("%s not ready: %s", url, resp.Status)
		}
		return ""
	})
}

// TestInstalledOperatorAndRelayProgramTheSamples installs the chart into
// the API server with helm install (no kubelet runs its pods), runs the operator and one relay replica as processes with
// the arguments the chart gives them and the RBAC it grants (impersonating
// their service accounts), applies the samples in a tenant namespace and
// waits until the relay has loaded them; then it runs the two-tenant
// scenario (twoTenants) against the same processes.
func TestInstalledOperatorAndRelayProgramTheSamples(t *testing.T) {
	const tenant = "tenant-a"
	createNamespace(t)
	// --take-ownership: the suite's API server has the CRDs already
	// (envtest installs config/crd/bases), not through Helm, as after
	// `kubectl apply -k` (README: Upgrade).
	notes := run(t, nil, "helm", "install", "postgate", "charts/postgate", "--namespace", namespace, "--take-ownership")
	for _, want := range []string{"swaks --server 127.0.0.1:2525", "kubectl get postgate -A", "port-forward svc/postgate-relay 2525:25"} {
		if !bytes.Contains(notes, []byte(want)) {
			t.Errorf("helm install NOTES lack %q:\n%s", want, notes)
		}
	}
	objs := parse(t, helmTemplate(t))

	fx := startFixtures(t)
	opEnv := map[string]string{"POD_NAMESPACE": namespace}
	startProcess(t, "operator", opEnv, localArgs(
		containerArgs(t, objs["Deployment "+namespace+"/postgate-operator"]),
		map[string]string{
			"--metrics-bind-address":      freeAddr(t, "127.0.0.1"),
			"--health-probe-bind-address": freeAddr(t, "127.0.0.1"),
		},
		opEnv, "", serviceAccountKubeconfig(t, "postgate-operator")))

	fx.relayPodName = "postgate-relay-0"
	relayEnv := map[string]string{"POD_NAMESPACE": namespace, "POD_NAME": fx.relayPodName}
	relayProbes := freeAddr(t, "127.0.0.1")
	relayMetrics := freeAddr(t, "127.0.0.1")
	fx.relaySMTP = freeAddr(t, "127.0.0.1")
	startProcess(t, "relay", relayEnv, append(localArgs(
		containerArgs(t, objs["StatefulSet "+namespace+"/postgate-relay"]),
		map[string]string{
			"--smtp-bind-address":         fx.relaySMTP,
			"--metrics-bind-address":      relayMetrics,
			"--health-probe-bind-address": relayProbes,
			"--handoff-bind-address":      freeAddr(t, "127.0.0.1"),
		},
		relayEnv, t.TempDir(), serviceAccountKubeconfig(t, "postgate-relay")),
		"--dns-server="+fx.dns.Addr(), fmt.Sprintf("--mx-port=%d", fx.mx.Port()),
		// The queue admin endpoint defaults to 127.0.0.1:8025, which another
		// process on the machine may hold.
		"--admin-bind-address="+freeAddr(t, "127.0.0.1")))

	run(t, []byte("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: "+tenant+"\n"), "kubectl", "apply", "--server-side", "-f", "-")
	run(t, nil, "kubectl", "apply", "-n", tenant, "-f", "config/samples")
	start := time.Now()
	for _, cond := range []string{"Accepted", "Programmed", "Ready"} {
		run(t, nil, "kubectl", "wait", "-n", tenant, "--for=condition="+cond, "--timeout=90s",
			"senderdomains,relayroutes,trustednetworks", "--all")
	}
	t.Logf("samples accepted, programmed and ready in %s", time.Since(start).Round(time.Millisecond))
	waitReady(t, "http://"+relayProbes+"/readyz")
	helmTestPod(t, objs["Pod "+namespace+"/postgate-smoke"], fx.relaySMTP, relayMetrics)
	t.Logf("kubectl get postgate -A:\n%s", run(t, nil, "kubectl", "get", "postgate", "-A"))

	// The samples trust all of loopback: take them away before the
	// two-tenant scenario, whose clients are told apart by address.
	run(t, nil, "kubectl", "delete", "-n", tenant, "--wait", "--timeout=60s", "-f", "config/samples")
	twoTenants(t, fx)
	argoHealthOnRealStatus(t)
	t.Logf("kubectl get postgate -A:\n%s", run(t, nil, "kubectl", "get", "postgate", "-A"))
}
