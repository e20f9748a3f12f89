package relay_test

import (
	"context"
	"log/slog"
	"testing"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/operator"
	"github.com/postgate/postgate/internal/testenv"
)

// The tests of the contracts between operator and relays (docs/design.md
// section 3) run both in this process against a real API server.

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

// startOperator runs the operator in this process, as `postgate operator
// --leader-elect` with postgate-system as both namespaces and no metrics
// or probe listeners, until the test ends; opts change the options.
func startOperator(t *testing.T, api *testenv.APIServer, opts ...func(*operator.Options)) {
	t.Helper()
	logs := &testenv.LogBuffer{}
	o := operator.Options{
		LeaderElect: true, MetricsAddr: "0", ProbeAddr: "0",
		Namespace: "postgate-system", RelayNamespace: "postgate-system",
		Logger:             logr.FromSlogHandler(slog.NewJSONHandler(logs, nil)),
		SkipNameValidation: true,
	}
	for _, opt := range opts {
		opt(&o)
	}
	op, err := operator.New(api.Config, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- op.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("operator: %v", err)
		}
		if t.Failed() {
			t.Logf("operator log:\n%s", logs)
		}
	})
}
