// Package operator assembles the operator: a controller-runtime manager
// with the cache and client the reconcilers of internal/controllers need,
// leader election, metrics and probes. `postgate operator` fills Options
// from its flags; tests run an operator in process the same way.
package operator

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/controllers"
)

// LeaderElectionID names the leader-election Lease.
const LeaderElectionID = "postgate-operator.postgate.io"

// Options configure an operator; each field but Logger and
// SkipNameValidation is one flag of `postgate operator`.
type Options struct {
	LeaderElect bool   // --leader-elect
	MetricsAddr string // --metrics-bind-address; "0" disables it
	ProbeAddr   string // --health-probe-bind-address; "0" disables it
	// Namespace (--operator-namespace) holds the policy ConfigMap and the
	// leader-election Lease.
	Namespace string
	// RelayNamespace (--relay-namespace) is where the table is published
	// and the relays keep their Leases.
	RelayNamespace string
	// PolicyConfigMap (--policy-configmap) names the guardrail policy
	// ConfigMap in Namespace (keys policy.yaml and shaping.yaml); empty:
	// the default policies.
	PolicyConfigMap string

	// Logger receives the manager's log.
	Logger logr.Logger
	// SkipNameValidation lets a process run more than one operator (tests):
	// controller-runtime refuses a controller name it has seen.
	SkipNameValidation bool
}

// BindFlags binds o to fs under the flags of `postgate operator`, with
// their defaults; both namespaces default to $POD_NAMESPACE.
func (o *Options) BindFlags(fs *flag.FlagSet) {
	podNamespace := os.Getenv("POD_NAMESPACE")
	fs.BoolVar(&o.LeaderElect, "leader-elect", false, "elect a leader, so that only one replica reconciles")
	fs.StringVar(&o.MetricsAddr, "metrics-bind-address", ":8080", `address of the Prometheus metrics endpoint; "0" disables it`)
	fs.StringVar(&o.ProbeAddr, "health-probe-bind-address", ":8081", `address of /healthz and /readyz; "0" disables them`)
	fs.StringVar(&o.Namespace, "operator-namespace", podNamespace, "namespace of the operator: the policy ConfigMap and the leader-election Lease (default $POD_NAMESPACE)")
	fs.StringVar(&o.RelayNamespace, "relay-namespace", podNamespace, "namespace where the routing table is published and relays keep their Leases (default $POD_NAMESPACE)")
	fs.StringVar(&o.PolicyConfigMap, "policy-configmap", "", "name of the guardrail policy ConfigMap in the operator namespace (key policy.yaml: the guardrail policy; key shaping.yaml: the traffic shaping policy published to the relays); empty: the default policies")
}

// Check reports what the flags leave out, naming them.
func (o *Options) Check() error {
	if o.RelayNamespace == "" || o.Namespace == "" {
		return errors.New("--relay-namespace and --operator-namespace are required (or set POD_NAMESPACE)")
	}
	return nil
}

// Operator is the controller manager with postgate's reconcilers.
type Operator struct {
	mgr ctrl.Manager
}

// New assembles an operator that talks to the API server cfg describes;
// Run starts it.
func New(cfg *rest.Config, o Options) (*Operator, error) {
	if err := o.Check(); err != nil {
		return nil, err
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	opts := controllers.Options{RelayNamespace: o.RelayNamespace, PolicyNamespace: o.Namespace, PolicyName: o.PolicyConfigMap}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                        scheme,
		Logger:                        o.Logger,
		Cache:                         controllers.CacheOptions(opts),
		Client:                        controllers.ClientOptions(),
		Controller:                    config.Controller{SkipNameValidation: &o.SkipNameValidation},
		Metrics:                       metricsserver.Options{BindAddress: o.MetricsAddr},
		HealthProbeBindAddress:        o.ProbeAddr,
		LeaderElection:                o.LeaderElect,
		LeaderElectionID:              LeaderElectionID,
		LeaderElectionNamespace:       o.Namespace,
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		return nil, fmt.Errorf("creating the manager: %w", err)
	}
	r, err := controllers.NewReconciler(mgr.GetClient(), mgr.GetCache(), mgr.GetAPIReader(), mgr.GetEventRecorder("postgate-operator"), opts)
	if err == nil {
		err = r.SetupWithManager(context.Background(), mgr)
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
		return nil, err
	}
	return &Operator{mgr: mgr}, nil
}

// Run runs the operator until ctx ends; with leader election it works
// only while it leads, and releases the Lease when ctx ends.
func (op *Operator) Run(ctx context.Context) error {
	return op.mgr.Start(ctx)
}
