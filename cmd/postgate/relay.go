package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	crlog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/postgate/postgate/internal/relay"
	"github.com/postgate/postgate/internal/relay/admin"
)

const relayUsage = `Usage: postgate relay [flags]

Runs the SMTP relay. Standalone, with --manifests, it compiles its routing
table from SenderDomain, RelayRoute and TrustedNetwork manifests (and their
Secrets) and reloads when the files change: no cluster needed. In a cluster,
with --relay-namespace, it follows the table the operator publishes there.

Flags:
`

func runRelay(args []string, stderr io.Writer) int {
	fs := flagSet("relay", relayUsage, stderr)
	var cfg relay.Config
	cfg.BindFlags(fs)
	kubeconfig := fs.String("kubeconfig", "", "cluster mode: kubeconfig file; default: in-cluster, or $KUBECONFIG")
	err := fs.Parse(args)
	if err == nil && fs.NArg() > 0 {
		err = fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err == nil {
		err = cfg.Check()
	}
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "postgate relay: %v\n", err)
		}
		return 2
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	// The controller-runtime parts the relay uses (the TLS key pair's
	// watcher among them) log through its logger: into the same stream.
	crlog.SetLogger(logr.FromSlogHandler(cfg.Logger.Handler()))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if cfg.Namespace != "" {
		cfg.Kube, err = restConfig(*kubeconfig)
	}
	var r *relay.Relay
	if err == nil {
		r, err = relay.New(cfg)
	}
	if err == nil {
		err = r.Run(ctx)
	}
	if err != nil {
		cfg.Logger.Error("Relay stopped", "error", err)
		return 1
	}
	return 0
}

const relayDrainUsage = `Usage: postgate relay drain [flags]

Drains a running relay through its admin API (loopback by default: run it
in the relay's pod, or through kubectl port-forward): the relay stops
taking mail (421 to SMTP clients, /readyz fails), hands every queued
message to the other live replicas, and reports how many moved. The relay
stays up, not ready, until it is stopped. Exit status 1 when messages are
left.

Flags:
`

func runRelayDrain(args []string, stdout, stderr io.Writer) int {
	fs := flagSet("relay drain", relayDrainUsage, stderr)
	addr := fs.String("admin-address", "127.0.0.1:8025", "host:port (or URL) of the relay's admin API")
	timeout := fs.Duration("timeout", 10*time.Minute, "how long to wait for the hand-off")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeoutCause(context.Background(), *timeout, fmt.Errorf("not done after %s", *timeout))
	defer cancel()
	st, err := admin.NewClient(*addr, 30*time.Second).Drain(ctx, 500*time.Millisecond)
	if err != nil {
		fmt.Fprintf(stderr, "postgate relay drain: %v\n", err)
		return 1
	}
	admin.WriteDrain(stdout, st)
	if st.Remaining != 0 {
		return 1
	}
	return 0
}
