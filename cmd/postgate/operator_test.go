package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
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
	"github.com/postgate/postgate/relay/routing"
	"github.com/postgate/postgate/relay/testenv"
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

// TestOperatorCommand runs `postgate operator` as a process against a real
// API server, with leader election, metrics and probes on 127.0.0.1: it
// takes the leader Lease, publishes the table, writes status, serves
// /healthz and /metrics, and exits 0 on SIGTERM.
func TestOperatorCommand(t *testing.T) {
	bin, err := buildPostgate()
	if err != nil {
		t.Fatal(err)
	}
	api := testenv.StartAPIServer(t)
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = v1alpha1.AddToScheme(scheme)
	c, err := client.New(api.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, ns := range []string{"postgate-system", "tenant"} {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	metrics, probes := freeAddr(t), freeAddr(t)
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "operator", "--kubeconfig", api.Kubeconfig, "--leader-elect",
		"--operator-namespace", "postgate-system", "--relay-namespace", "postgate-system",
		"--metrics-bind-address", metrics, "--health-probe-bind-address", probes)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			t.Logf("operator stopped: %v", <-exited)
		}
		if t.Failed() {
			t.Logf("operator log:\n%s", stderr.String())
		}
	})

	sd := &v1alpha1.SenderDomain{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: "sd"}, Spec: v1alpha1.SenderDomainSpec{Domain: "tenant.example.com"}}
	if err := c.Create(ctx, sd); err != nil {
		t.Fatal(err)
	}
	poll(t, func() string {
		if err := c.Get(ctx, types.NamespacedName{Namespace: "tenant", Name: "sd"}, sd); err != nil {
			return err.Error()
		}
		for _, cond := range sd.Status.Conditions {
			if cond.Type == v1alpha1.ConditionProgrammed && cond.Reason == v1alpha1.ReasonNoRelays {
				return ""
			}
		}
		return fmt.Sprintf("conditions %v", sd.Status.Conditions)
	})
	var lease coordinationv1.Lease
	if err := c.Get(ctx, types.NamespacedName{Namespace: "postgate-system", Name: operatorLeaderElectionID}, &lease); err != nil {
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

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the operator did not exit within 30s of SIGTERM")
	}
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

func poll(t *testing.T, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		why := cond()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
