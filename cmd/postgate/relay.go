package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
	ctrlclient "sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/relay/admin"
	"github.com/postgate/postgate/relay/bounce"
	"github.com/postgate/postgate/relay/delivery"
	"github.com/postgate/postgate/relay/follow"
	"github.com/postgate/postgate/relay/message"
	"github.com/postgate/postgate/relay/notify"
	"github.com/postgate/postgate/relay/queue"
	"github.com/postgate/postgate/relay/report"
	"github.com/postgate/postgate/relay/routing"
	"github.com/postgate/postgate/relay/smtpd"
	"github.com/postgate/postgate/relay/standalone"
)

const relayUsage = `Usage: postgate relay [flags]

Runs the SMTP relay. Standalone, with --manifests, it compiles its routing
table from SenderDomain, RelayRoute and TrustedNetwork manifests (and their
Secrets) and reloads when the files change: no cluster needed. In a cluster,
with --relay-namespace, it follows the table the operator publishes there.

Flags:
`

// relayFlags are the flags of postgate relay; their names are a contract with
// the chart, the scripts and the docs.
type relayFlags struct {
	smtpAddr, smtpsAddr       string
	spoolDir, hostname        string
	manifests                 stringList
	relayNamespace            string
	tlsCert, tlsKey           string
	proxyCIDRs                string
	maxMessageBytes           int64
	maxRecipients             int
	maxConns, maxConnsPerPeer int
	minDataRate               int64
	metricsAddr, healthAddr   string
	adminAddr                 string
	adminAllowNonLoopback     bool
	dnsServer                 string
	mxPort                    int
	shutdownGrace             time.Duration
	kubeconfig, podName       string
	webhookAllowCIDRs         string
	pprof                     bool
	lifecycleFlags            // drain and hand-off: relay_lifecycle.go
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
	fs.StringVar(&f.smtpAddr, "smtp-bind-address", ":2525", "address of the SMTP listener (STARTTLS when a key pair is given)")
	fs.StringVar(&f.smtpsAddr, "smtps-bind-address", "", "address of the implicit-TLS listener, as on port 465 (off when empty)")
	fs.StringVar(&f.spoolDir, "spool-dir", "./postgate-spool", "directory of the durable queue, generated keys, staging of messages being signed, and the last good table")
	fs.StringVar(&f.hostname, "hostname", host, "host name in the greeting and in Received headers")
	fs.Var(&f.manifests, "manifests", "standalone mode: a manifest file or directory (repeatable)")
	fs.StringVar(&f.relayNamespace, "relay-namespace", "", "cluster mode: the namespace where the operator publishes the table")
	fs.StringVar(&f.tlsCert, "tls-cert-file", "", "PEM certificate chain for STARTTLS and implicit TLS (reloaded when it changes)")
	fs.StringVar(&f.tlsKey, "tls-key-file", "", "PEM private key for --tls-cert-file (reloaded when it changes)")
	fs.StringVar(&f.proxyCIDRs, "proxy-protocol-cidrs", "", "comma-separated networks of load balancers that must send a PROXY protocol header; nobody else may")
	fs.Int64Var(&f.maxMessageBytes, "max-message-bytes", 25<<20, "largest message accepted (552 5.3.4 above)")
	fs.IntVar(&f.maxRecipients, "max-recipients", 100, "most recipients of one message (452 4.5.3 above)")
	fs.IntVar(&f.maxConns, "max-connections", 1000, "most open SMTP connections (421 above)")
	fs.IntVar(&f.maxConnsPerPeer, "max-connections-per-client", 50, "most open SMTP connections from one client address (421 above)")
	fs.Int64Var(&f.minDataRate, "min-data-rate", 100, "least average rate of a message body in bytes/s once the idle timeout has passed since it began; slower bodies get 421 4.4.2 (slow-loris guard; negative: off)")
	fs.StringVar(&f.metricsAddr, "metrics-bind-address", "", "address of the Prometheus /metrics endpoint (off when empty)")
	fs.BoolVar(&f.pprof, "pprof", false, "serve Go's CPU and heap profiles (net/http/pprof) under /debug/pprof/ on the metrics listener, for performance work; off by default: a profile shows message data in memory")
	fs.StringVar(&f.healthAddr, "health-probe-bind-address", "", "address of /healthz and /readyz (off when empty)")
	fs.StringVar(&f.adminAddr, "admin-bind-address", "127.0.0.1:8025", "address of the queue admin API that `postgate queue` uses (off when empty); it can delete mail, so it must be loopback unless --admin-allow-non-loopback")
	fs.BoolVar(&f.adminAllowNonLoopback, "admin-allow-non-loopback", false, "let --admin-bind-address be a non-loopback address: the admin API has no authentication, anyone who reaches it can delete queued mail")
	fs.StringVar(&f.dnsServer, "dns-server", "", "delivery: DNS server host:port for MX lookups (default: the system resolver)")
	fs.IntVar(&f.mxPort, "mx-port", 25, "delivery: port of the recipients' MX hosts")
	fs.DurationVar(&f.shutdownGrace, "shutdown-grace", 25*time.Second, "how long in-flight SMTP sessions may take to finish on SIGTERM")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "cluster mode: kubeconfig file; default: in-cluster, or $KUBECONFIG")
	fs.StringVar(&f.podName, "pod-name", cmp.Or(os.Getenv("POD_NAME"), host), "cluster mode: this replica's name, for its Lease postgate-relay-<pod name> (default $POD_NAME)")
	fs.StringVar(&f.webhookAllowCIDRs, "webhook-allow-cidrs", "", "comma-separated networks that delivery-notification webhooks may reach although they are loopback, link-local, cloud metadata or otherwise internal (refused by default: SSRF guard)")
	f.lifecycleFlags.register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	switch {
	case len(f.manifests) == 0 && f.relayNamespace == "":
		return nil, errors.New("give --manifests (standalone) or --relay-namespace (cluster)")
	case len(f.manifests) > 0 && f.relayNamespace != "":
		return nil, errors.New("--manifests and --relay-namespace exclude each other")
	case (f.tlsCert == "") != (f.tlsKey == ""):
		return nil, errors.New("--tls-cert-file and --tls-key-file go together")
	case f.smtpsAddr != "" && f.tlsCert == "":
		return nil, errors.New("--smtps-bind-address needs --tls-cert-file and --tls-key-file")
	case f.adminAddr != "" && !f.adminAllowNonLoopback && !isLoopback(f.adminAddr):
		return nil, fmt.Errorf("--admin-bind-address %q is not a loopback address: the admin API can delete mail and has no authentication; use a port-forward, or --admin-allow-non-loopback", f.adminAddr)
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
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := relayMain(ctx, f, logger); err != nil {
		logger.Error("Relay stopped", "error", err)
		return 1
	}
	return 0
}

// relayMain wires the relay: table source, queue, SMTP listeners, probes,
// until ctx ends; then it shuts down gracefully.
func relayMain(ctx context.Context, f *relayFlags, logger *slog.Logger) error {
	proxies, err := parsePrefixes("--proxy-protocol-cidrs", f.proxyCIDRs)
	if err != nil {
		return err
	}
	webhookAllow, err := parsePrefixes("--webhook-allow-cidrs", f.webhookAllowCIDRs)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(f.spoolDir, 0o700); err != nil { //nolint:gosec // the operator chooses the spool directory
		return err
	}

	var tables smtpd.TableSource
	var kube kubernetes.Interface // cluster mode: for the lifecycle
	var follower *follow.Follower
	var runTables func(context.Context) error
	reg := prometheus.NewRegistry()
	deliveryMetrics, err := report.NewMetrics(reg)
	if err != nil {
		return err
	}
	observers := report.Observers{deliveryMetrics}
	runReport := func(context.Context) error { return nil } // standalone: nothing is written to any API
	if len(f.manifests) > 0 {
		src, err := standalone.New(f.manifests, standalone.Options{KeysDir: filepath.Join(f.spoolDir, "keys"), Logger: logger})
		if err != nil {
			return err
		}
		tables, runTables = src, src.Run
	} else {
		cfg, err := restConfig(f.kubeconfig)
		if err != nil {
			return err
		}
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return err
		}
		fl, err := follow.New(client, follow.Options{
			Namespace: f.relayNamespace, PodName: f.podName,
			SpoolDir: filepath.Join(f.spoolDir, "table"), Logger: logger,
		})
		if err != nil {
			return err
		}
		tables, runTables = fl, fl.Run
		kube, follower = client, fl
		// Delivery status on the resources (DESIGN.md contract 6).
		scheme := runtime.NewScheme()
		if err := v1alpha1.AddToScheme(scheme); err != nil {
			return err
		}
		statusClient, err := ctrlclient.New(cfg, ctrlclient.Options{Scheme: scheme})
		if err != nil {
			return err
		}
		// Bounce Events (events.k8s.io), aggregated by the reporter and
		// by client-go's series.
		broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
		broadcaster.StartRecordingToSink(ctx.Done())
		defer broadcaster.Shutdown()
		reporter, err := report.New(statusClient, report.Options{Replica: f.podName, Logger: logger,
			Events: broadcaster.NewRecorder(scheme, "postgate-relay")})
		if err != nil {
			return err
		}
		observers, runReport = append(observers, reporter), reporter.Run
	}

	qdir, err := queue.OpenDir(filepath.Join(f.spoolDir, "queue"))
	if err != nil {
		return err
	}
	q, err := queue.Open(ctx, qdir, queue.Options{Logger: logger, MaxBodyBytes: f.maxMessageBytes + message.MaxPrepended, Lifetime: routing.DefaultMaxQueueLifetime})
	if err != nil {
		return err
	}
	defer func() { _ = q.Close() }()

	var tlsConfig *tls.Config
	if f.tlsCert != "" {
		r, err := smtpd.NewCertReloader(f.tlsCert, f.tlsKey, logger)
		if err != nil {
			return err
		}
		tlsConfig = r.TLSConfig()
	}
	stageDir := filepath.Join(f.spoolDir, "staging")
	if err := os.MkdirAll(stageDir, 0o700); err != nil { //nolint:gosec // under the spool directory the operator chose
		return err
	}
	smtpMetrics, err := smtpd.NewMetrics(reg)
	if err != nil {
		return err
	}
	srv, err := smtpd.New(smtpd.Config{
		Metrics:  smtpMetrics,
		StageDir: stageDir,
		Hostname: f.hostname, Tables: tables, Spool: smtpd.QueueSpool{Queue: q}, TLS: tlsConfig,
		ProxyCIDRs: proxies, MaxMessageBytes: f.maxMessageBytes, MaxRecipients: f.maxRecipients,
		MaxConnections: f.maxConns, MaxConnectionsPerClient: f.maxConnsPerPeer, MinDataRate: f.minDataRate, Logger: logger,
	})
	if err != nil {
		return err
	}

	errs := make(chan error, 4)
	listen := func(addr string, implicitTLS bool) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		logger.Info("SMTP listening", "address", ln.Addr().String(), "implicitTLS", implicitTLS, "starttls", tlsConfig != nil)
		go func() { errs <- srv.Serve(ln, implicitTLS) }()
		return nil
	}
	if err := listen(f.smtpAddr, false); err != nil {
		return err
	}
	if f.smtpsAddr != "" {
		if err := listen(f.smtpsAddr, true); err != nil {
			return err
		}
	}
	resolver, err := delivery.NewResolver(delivery.ResolverOptions{Server: f.dnsServer})
	if err != nil {
		return err
	}
	// Delivery notifications: journaled under the spool, sent to the
	// SenderDomains' webhooks, never to the relay's own endpoints.
	notifier, err := notify.New(notify.Options{
		Dir: filepath.Join(f.spoolDir, "notify"), Tables: tables, Allow: webhookAllow,
		Self: ownAddresses(f), Logger: logger, Registerer: reg,
	})
	if err != nil {
		return err
	}
	observers = append(observers, notifier)
	worker, err := delivery.New(q, tables, delivery.Options{
		Hostname: f.hostname, Logger: logger, Resolver: resolver, MXPort: f.mxPort,
		Bouncer: &bounce.Bouncer{Queue: q, Hostname: f.hostname}, Observer: observers,
	})
	if err != nil {
		return err
	}
	lc, err := startLifecycle(ctx, f, logger, q, srv, kube, follower)
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { errs <- runTables(runCtx) }()
	go func() { _ = runReport(runCtx) }() // returns when runCtx ends; its writes are retried, never fatal
	// The notifier stops after delivery (deferred first, so run last): the
	// outcomes of the last attempts reach its journal.
	notifyCtx, stopNotify := context.WithCancel(context.Background())
	notified := make(chan error, 1)
	go func() { notified <- notifier.Run(notifyCtx) }()
	defer func() {
		stopNotify()
		if err := <-notified; err != nil {
			logger.Error("Notifications stopped", "error", err)
		}
	}()
	// Delivery stops after the SMTP server: its own context, canceled last.
	deliverCtx, stopDelivery := context.WithCancel(context.Background())
	delivered := make(chan error, 1)
	go func() { delivered <- worker.Run(deliverCtx) }()
	defer func() {
		stopDelivery()
		if err := <-delivered; err != nil {
			logger.Error("Delivery stopped", "error", err)
		}
	}()
	stopHTTP, err := serveRelayHTTP(f, q, tables, reg, logger, lc)
	if err != nil {
		return err
	}
	defer stopHTTP()

	select {
	case <-ctx.Done():
		logger.Info("Shutting down: no new connections, waiting for sessions", "grace", f.shutdownGrace)
	case err := <-errs:
		if err != nil {
			return err
		}
	}
	// Drain, hand over when leaving for good, then close: relay_lifecycle.go.
	return lc.shutdown(worker)
}

// serveRelayHTTP serves /metrics and the probes on their own listeners.
func serveRelayHTTP(f *relayFlags, q *queue.Queue, tables smtpd.TableSource, reg *prometheus.Registry, logger *slog.Logger, lc *lifecycle) (stop func(), err error) {
	var servers []*http.Server
	var adminHandler http.Handler
	stop = func() {
		for _, s := range servers {
			_ = s.Close()
		}
	}
	start := func(addr string, h http.Handler) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		// The admin API bounds its request bodies and work; these bound the rest.
		s := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second,
			WriteTimeout: 2 * admin.RequestTimeout, IdleTimeout: time.Minute, MaxHeaderBytes: 64 << 10}
		servers = append(servers, s)
		go func() { _ = s.Serve(ln) }()
		logger.Info("HTTP listening", "address", ln.Addr().String(), "admin", h == adminHandler)
		return nil
	}
	if f.metricsAddr != "" {
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		reg.MustRegister(report.NewQueueCollector(q, nil), report.NewTableCollector(tables))
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		if f.pprof {
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		}
		if err := start(f.metricsAddr, mux); err != nil {
			stop()
			return nil, err
		}
	}
	if f.healthAddr != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
		// Ready once a table is loaded: before that every sender would be
		// told 451, so the Service should not send clients here.
		mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
			if err := lc.ready(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			if tables.Table() == nil {
				http.Error(w, "no routing table loaded yet", http.StatusServiceUnavailable)
				return
			}
			_, _ = io.WriteString(w, "ok\n")
		})
		if err := start(f.healthAddr, mux); err != nil {
			stop()
			return nil, err
		}
	}
	if f.adminAddr != "" {
		bo := &bounce.Bouncer{Queue: q, Hostname: f.hostname}
		adminHandler = admin.New(q, admin.Options{Bounce: func(ctx context.Context, m queue.Message, rcpts []int) error {
			return bo.Bounce(ctx, delivery.Bounce{Message: m, Recipients: rcpts, Time: time.Now()})
		}})
		adminHandler = lc.adminHandler(adminHandler) // POST /v1/drain
		if err := start(f.adminAddr, adminHandler); err != nil {
			stop()
			return nil, err
		}
	}
	return stop, nil
}

// isLoopback reports whether the host of addr is a loopback address or
// localhost.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
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

// ownAddresses are the relay's own HTTP and SMTP listen addresses, which a
// webhook must never reach. A listen address given by host name (possible
// for SMTP only) is left out: it cannot be matched at dial time anyway.
func ownAddresses(f *relayFlags) []netip.AddrPort {
	var out []netip.AddrPort
	for _, a := range []string{f.metricsAddr, f.healthAddr, f.adminAddr, f.handoffAddr, f.smtpAddr, f.smtpsAddr} {
		if self, err := notify.SelfAddrs(a); err == nil {
			out = append(out, self...)
		}
	}
	return out
}
