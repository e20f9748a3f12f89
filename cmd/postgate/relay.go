package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	crlog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/postgate/postgate/internal/relay"
)

const relayUsage = `Usage: postgate relay [flags]

Runs the SMTP relay. Standalone, with --manifests, it compiles its routing
table from SenderDomain, RelayRoute and TrustedNetwork manifests (and their
Secrets) and reloads when the files change: no cluster needed. In a cluster,
with --relay-namespace, it follows the table the operator publishes there.

Flags:
`

// relayFlags are the flags of postgate relay; their names are a contract with
// the chart, the scripts and the docs. Most fill the relay's Config directly.
type relayFlags struct {
	relay.Config
	proxyCIDRs, webhookAllowCIDRs string
	kubeconfig                    string
}

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func parseRelayFlags(args []string, stderr io.Writer) (*relayFlags, error) {
	f := &relayFlags{}
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, relayUsage); fs.PrintDefaults() }
	host, _ := os.Hostname()
	fs.StringVar(&f.SMTPAddr, "smtp-bind-address", ":2525", "address of the SMTP listener (STARTTLS when a key pair is given)")
	fs.StringVar(&f.SMTPSAddr, "smtps-bind-address", "", "address of the implicit-TLS listener, as on port 465 (off when empty)")
	fs.StringVar(&f.SpoolDir, "spool-dir", "./postgate-spool", "directory of the durable queue, generated keys, staging of messages being signed, and the last good table")
	fs.StringVar(&f.Hostname, "hostname", host, "host name in the greeting and in Received headers")
	fs.Var((*stringList)(&f.Manifests), "manifests", "standalone mode: a manifest file or directory (repeatable)")
	fs.StringVar(&f.Namespace, "relay-namespace", "", "cluster mode: the namespace where the operator publishes the table")
	fs.StringVar(&f.TLSCertFile, "tls-cert-file", "", "PEM certificate chain for STARTTLS and implicit TLS (reloaded when it changes)")
	fs.StringVar(&f.TLSKeyFile, "tls-key-file", "", "PEM private key for --tls-cert-file (reloaded when it changes)")
	fs.StringVar(&f.proxyCIDRs, "proxy-protocol-cidrs", "", "comma-separated networks of load balancers that must send a PROXY protocol header; nobody else may")
	fs.Int64Var(&f.MaxMessageBytes, "max-message-bytes", 25<<20, "largest message accepted (552 5.3.4 above)")
	fs.IntVar(&f.MaxRecipients, "max-recipients", 100, "most recipients of one message (452 4.5.3 above)")
	fs.IntVar(&f.MaxConnections, "max-connections", 1000, "most open SMTP connections (421 above)")
	fs.IntVar(&f.MaxConnectionsPerClient, "max-connections-per-client", 50, "most open SMTP connections from one client address (421 above)")
	fs.Int64Var(&f.MinDataRate, "min-data-rate", 100, "least average rate of a message body in bytes/s once the idle timeout has passed since it began; slower bodies get 421 4.4.2 (slow-loris guard; negative: off)")
	fs.StringVar(&f.MetricsAddr, "metrics-bind-address", "", "address of the Prometheus /metrics endpoint (off when empty)")
	fs.BoolVar(&f.Pprof, "pprof", false, "serve Go's CPU and heap profiles (net/http/pprof) under /debug/pprof/ on the metrics listener, for performance work; off by default: a profile shows message data in memory")
	fs.StringVar(&f.HealthAddr, "health-probe-bind-address", "", "address of /healthz and /readyz (off when empty)")
	fs.StringVar(&f.AdminAddr, "admin-bind-address", "127.0.0.1:8025", "address of the queue admin API that `postgate queue` uses (off when empty); it can delete mail, so it must be loopback unless --admin-allow-non-loopback")
	fs.BoolVar(&f.AdminAllowNonLoopback, "admin-allow-non-loopback", false, "let --admin-bind-address be a non-loopback address: the admin API has no authentication, anyone who reaches it can delete queued mail")
	fs.StringVar(&f.DNSServer, "dns-server", "", "delivery: DNS server host:port for MX lookups (default: the system resolver)")
	fs.IntVar(&f.MXPort, "mx-port", 25, "delivery: port of the recipients' MX hosts")
	fs.DurationVar(&f.ShutdownGrace, "shutdown-grace", 25*time.Second, "how long in-flight SMTP sessions may take to finish on SIGTERM")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "cluster mode: kubeconfig file; default: in-cluster, or $KUBECONFIG")
	fs.StringVar(&f.PodName, "pod-name", cmp.Or(os.Getenv("POD_NAME"), host), "cluster mode: this replica's name, for its Lease postgate-relay-<pod name> (default $POD_NAME)")
	fs.StringVar(&f.webhookAllowCIDRs, "webhook-allow-cidrs", "", "comma-separated networks that delivery-notification webhooks may reach although they are loopback, link-local, cloud metadata or otherwise internal (refused by default: SSRF guard)")
	registerLifecycleFlags(fs, &f.Config)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err := f.Check(); err != nil {
		return nil, err
	}
	return f, nil
}

func runRelay(args []string, stderr io.Writer) int {
	f, err := parseRelayFlags(args, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "postgate relay: %v\n", err)
		}
		return 2
	}
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	// The controller-runtime parts the relay uses (the TLS key pair's
	// watcher among them) log through its logger: into the same stream.
	crlog.SetLogger(logr.FromSlogHandler(logger.Handler()))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := relayMain(ctx, f, logger); err != nil {
		logger.Error("Relay stopped", "error", err)
		return 1
	}
	return 0
}

// relayMain runs the relay that f describes until ctx ends; then it shuts
// down gracefully.
func relayMain(ctx context.Context, f *relayFlags, logger *slog.Logger) error {
	cfg, err := f.config(logger)
	if err != nil {
		return err
	}
	r, err := relay.New(cfg)
	if err != nil {
		return err
	}
	return r.Run(ctx)
}

// config completes the relay's Config with what the flags give as text.
func (f *relayFlags) config(logger *slog.Logger) (relay.Config, error) {
	cfg := f.Config
	cfg.Logger = logger
	var err error
	if cfg.ProxyCIDRs, err = parsePrefixes("--proxy-protocol-cidrs", f.proxyCIDRs); err != nil {
		return cfg, err
	}
	if cfg.WebhookAllow, err = parsePrefixes("--webhook-allow-cidrs", f.webhookAllowCIDRs); err != nil {
		return cfg, err
	}
	if cfg.Namespace != "" {
		if cfg.Kube, err = restConfig(f.kubeconfig); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

// parsePrefixes parses a comma-separated list of networks for flag name.
func parsePrefixes(name, list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
