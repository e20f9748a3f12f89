package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/controllers"
)

const operatorUsage = `Usage: postgate operator [flags]

Runs the controller manager: reconciles SenderDomains, RelayRoutes and
TrustedNetworks and the Secrets they reference, publishes the routing table
in the relay namespace, and writes the resources' status. With
--leader-elect, one replica at a time does the work.

Flags:
`

// operatorLeaderElectionID names the leader-election Lease.
const operatorLeaderElectionID = "postgate-operator.postgate.io"

func runOperator(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("operator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	podNamespace := os.Getenv("POD_NAMESPACE")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file; default: in-cluster, or $KUBECONFIG")
	leaderElect := fs.Bool("leader-elect", false, "elect a leader, so that only one replica reconciles")
	metricsAddr := fs.String("metrics-bind-address", ":8080", `address of the Prometheus metrics endpoint; "0" disables it`)
	probeAddr := fs.String("health-probe-bind-address", ":8081", `address of /healthz and /readyz; "0" disables them`)
	opNamespace := fs.String("operator-namespace", podNamespace, "namespace of the operator: the policy ConfigMap and the leader-election Lease (default $POD_NAMESPACE)")
	relayNamespace := fs.String("relay-namespace", podNamespace, "namespace where the routing table is published and relays keep their Leases (default $POD_NAMESPACE)")
	policyConfigMap := fs.String("policy-configmap", "", "name of the guardrail policy ConfigMap in the operator namespace (key "+"policy.yaml); empty: the default policy")
	fs.Usage = func() { fmt.Fprint(stderr, operatorUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		if err == nil {
			fs.Usage()
		}
		return 2
	}
	if *relayNamespace == "" || *opNamespace == "" {
		fmt.Fprintln(stderr, "postgate operator: --relay-namespace and --operator-namespace are required (or set POD_NAMESPACE)")
		return 2
	}
	log := logr.FromSlogHandler(slog.NewJSONHandler(stderr, nil))
	ctrl.SetLogger(log)

	cfg, err := restConfig(*kubeconfig)
	if err != nil {
		fmt.Fprintf(stderr, "postgate operator: %v\n", err)
		return 2
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		panic(err)
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		panic(err)
	}
	opts := controllers.Options{RelayNamespace: *relayNamespace, PolicyNamespace: *opNamespace, PolicyName: *policyConfigMap}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                        scheme,
		Cache:                         controllers.CacheOptions(opts),
		Client:                        controllers.ClientOptions(),
		Metrics:                       metricsserver.Options{BindAddress: *metricsAddr},
		HealthProbeBindAddress:        *probeAddr,
		LeaderElection:                *leaderElect,
		LeaderElectionID:              operatorLeaderElectionID,
		LeaderElectionNamespace:       *opNamespace,
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		log.Error(err, "Creating the manager failed")
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := controllers.NewReconciler(mgr.GetClient(), mgr.GetCache(), mgr.GetAPIReader(), mgr.GetEventRecorder("postgate-operator"), opts)
	if err == nil {
		err = r.SetupWithManager(ctx, mgr)
	}
	if err == nil {
		// controller-runtime serves its own registry on /metrics. An
		// earlier operator in this process (tests) registered the same
		// descriptors: replace it.
		col := controllers.NewCollector(r)
		ctrlmetrics.Registry.Unregister(col)
		err = ctrlmetrics.Registry.Register(col)
	}
	if err == nil {
		err = mgr.AddHealthzCheck("healthz", healthz.Ping)
	}
	if err == nil {
		err = mgr.AddReadyzCheck("readyz", healthz.Ping)
	}
	if err != nil {
		log.Error(err, "Setting up the operator failed")
		return 1
	}
	log.Info("Starting the operator", "version", version, "relayNamespace", *relayNamespace, "leaderElect", *leaderElect)
	if err := mgr.Start(ctx); err != nil {
		log.Error(err, "The operator stopped")
		return 1
	}
	return 0
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err == nil && cfg.QPS == 0 {
			cfg.QPS = -1 // as ctrl.GetConfig: the API server's priority and fairness limits, not 5 requests a second
		}
		return cfg, err
	}
	return ctrl.GetConfig()
}
