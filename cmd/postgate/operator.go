package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/postgate/postgate/internal/operator"
)

const operatorUsage = `Usage: postgate operator [flags]

Runs the controller manager: reconciles SenderDomains, RelayRoutes and
TrustedNetworks and the Secrets they reference, publishes the routing table
in the relay namespace, and writes the resources' status. With
--leader-elect, one replica at a time does the work.

Flags:
`

func runOperator(args []string, stderr io.Writer) int {
	fs := flagSet("operator", operatorUsage, stderr)
	var o operator.Options
	o.BindFlags(fs)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file; default: in-cluster, or $KUBECONFIG")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		if err == nil {
			fs.Usage()
		}
		return 2
	}
	if err := o.Check(); err != nil {
		fmt.Fprintf(stderr, "postgate operator: %v\n", err)
		return 2
	}
	o.Logger = logr.FromSlogHandler(slog.NewJSONHandler(stderr, nil))
	ctrl.SetLogger(o.Logger)
	cfg, err := restConfig(*kubeconfig)
	if err != nil {
		fmt.Fprintf(stderr, "postgate operator: %v\n", err)
		return 2
	}
	op, err := operator.New(cfg, o)
	if err != nil {
		o.Logger.Error(err, "Setting up the operator failed")
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	o.Logger.Info("Starting the operator", "version", version, "relayNamespace", o.RelayNamespace, "leaderElect", o.LeaderElect)
	if err := op.Run(ctx); err != nil {
		o.Logger.Error(err, "The operator stopped")
		return 1
	}
	return 0
}
