// Package relay assembles the SMTP relay: table source (standalone
// manifests or the table the operator publishes), durable queue, SMTP
// listeners, delivery, notifications, status reporting, probes, metrics and
// the admin API; and it owns the order in which they stop. `postgate relay`
// fills a Config from its flags; tests and benchmarks run a relay in
// process the same way.
package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
	ctrlclient "sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/admin"
	"github.com/postgate/postgate/internal/relay/delivery"
	"github.com/postgate/postgate/internal/relay/follow"
	"github.com/postgate/postgate/internal/relay/inflow"
	"github.com/postgate/postgate/internal/relay/lifecycle"
	"github.com/postgate/postgate/internal/relay/message"
	"github.com/postgate/postgate/internal/relay/notify"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/report"
	"github.com/postgate/postgate/internal/relay/shaping"
	"github.com/postgate/postgate/internal/relay/smtpd"
	"github.com/postgate/postgate/internal/relay/standalone"
	"github.com/postgate/postgate/internal/routing"
)

// Config is a relay's configuration; each field is one flag of `postgate
// relay` (named in its comment), whose help text says more. Addresses are
// host:port, port 0 picks a free port; an empty optional address turns
// its listener off.
type Config struct {
	// SMTPAddr (--smtp-bind-address) is the SMTP listener, with STARTTLS
	// when a key pair is given; SMTPSAddr (--smtps-bind-address) the
	// implicit-TLS one.
	SMTPAddr, SMTPSAddr string
	// SpoolDir (--spool-dir) holds the queue, generated keys, staging and
	// the last good table.
	SpoolDir string
	// SpoolSegmentBytes (--spool-segment-bytes) is the size at which the
	// queue starts a new segment file; SpoolSegmentMaxBody
	// (--spool-segment-max-body) the largest body it stores in segments,
	// negative for a file per message. 0: the queue's defaults
	// (docs/design.md, "The queue").
	SpoolSegmentBytes, SpoolSegmentMaxBody int64
	// Hostname (--hostname) is the name in the greeting and in Received
	// headers.
	Hostname string

	// Manifests (--manifests): standalone mode, the manifest files or
	// directories the table is compiled from.
	Manifests []string
	// Namespace (--relay-namespace): cluster mode, the namespace where the
	// operator publishes the table; Kube is the API server's client
	// configuration (--kubeconfig) and PodName (--pod-name) this replica.
	Namespace string
	Kube      *rest.Config
	PodName   string

	// TLSCertFile and TLSKeyFile (--tls-cert-file, --tls-key-file): the key
	// pair for STARTTLS and implicit TLS, reloaded when it changes.
	TLSCertFile, TLSKeyFile string
	// ProxyCIDRs (--proxy-protocol-cidrs) must send a PROXY header; nobody
	// else may.
	ProxyCIDRs []netip.Prefix

	MaxMessageBytes         int64 // --max-message-bytes
	MaxRecipients           int   // --max-recipients
	MaxConnections          int   // --max-connections
	MaxConnectionsPerClient int   // --max-connections-per-client
	MinDataRate             int64 // --min-data-rate
	// InFlowDelay (--in-flow-delay) is the longest a new transaction waits
	// at MAIL FROM while delivery is behind acceptance; 0 turns the wait
	// off (docs/design.md, "In-flow backpressure").
	InFlowDelay time.Duration

	MetricsAddr string // --metrics-bind-address
	Pprof       bool   // --pprof: profiles on the metrics listener
	HealthAddr  string // --health-probe-bind-address
	AdminAddr   string // --admin-bind-address: the queue admin API, unauthenticated
	// AdminAllowNonLoopback (--admin-allow-non-loopback) lets AdminAddr be
	// other than loopback.
	AdminAllowNonLoopback bool

	DNSServer string // --dns-server; empty: the system resolver
	MXPort    int    // --mx-port
	// Outbound (--dane, --dns-dnssec, --mta-sts*, --tls-ca-file,
	// --tls-rpt*): the recipient domains' TLS policies for MX delivery and
	// TLS reporting.
	Outbound OutboundTLS
	// Shaping (--shaping, on by default) shapes MX delivery per site
	// (docs/design.md, "Traffic shaping") with the policy the operator
	// publishes, or ShapingPolicy (--shaping-policy, standalone only), or
	// the shipped default.
	Shaping       bool
	ShapingPolicy string

	// ShutdownGrace (--shutdown-grace) is how long sessions and delivery
	// attempts may take to finish at shutdown.
	ShutdownGrace time.Duration
	// WebhookAllow (--webhook-allow-cidrs): internal networks webhooks may
	// reach all the same.
	WebhookAllow []netip.Prefix

	// Drain and hand-off (internal/relay/lifecycle): --statefulset-name,
	// --handoff-bind-address, --handoff-advertise-address,
	// --handoff-timeout, --spool-ephemeral.
	StatefulSet                   string
	HandoffAddr, HandoffAdvertise string
	HandoffTimeout                time.Duration
	SpoolEphemeral                bool

	// Logger receives the relay's log; nil discards it.
	Logger *slog.Logger

	// proxyCIDRsFlag and webhookAllowFlag are the text of
	// --proxy-protocol-cidrs and --webhook-allow-cidrs that BindFlags
	// binds; New adds their networks to ProxyCIDRs and WebhookAllow.
	proxyCIDRsFlag, webhookAllowFlag string
}

// Relay is one relay replica. Run it once.
type Relay struct {
	cfg Config
	log *slog.Logger

	stopOnce sync.Once
	stopping chan struct{} // closed by Shutdown
	done     chan struct{} // closed when Run returns
	err      error         // Run's result, once done is closed
	runOnce  sync.Once
}

// minSegmentBytes bounds --spool-segment-bytes from below: smaller segments
// would cost a file and a directory fsync every few messages.
const minSegmentBytes = 1 << 20

// maxInFlowDelay bounds --in-flow-delay: Postfix allows 0 to 10 s, and a
// client waits at least 5 minutes for the MAIL reply (RFC 5321 section
// 4.5.3.2.2), so 10 s is far from any client's patience.
const maxInFlowDelay = 10 * time.Second

// Check reports the first contradiction in c, naming the flags: one mode,
// standalone or cluster; a TLS key pair whole; the spool's segment sizes
// in their bounds (docs/design.md, "The queue"); an admin API that can
// delete mail and has no authentication on loopback only, unless allowed.
func (c *Config) Check() error {
	switch {
	case len(c.Manifests) == 0 && c.Namespace == "":
		return errors.New("give --manifests (standalone) or --relay-namespace (cluster)")
	case len(c.Manifests) > 0 && c.Namespace != "":
		return errors.New("--manifests and --relay-namespace exclude each other")
	case (c.TLSCertFile == "") != (c.TLSKeyFile == ""):
		return errors.New("--tls-cert-file and --tls-key-file go together")
	case c.SMTPSAddr != "" && c.TLSCertFile == "":
		return errors.New("--smtps-bind-address needs --tls-cert-file and --tls-key-file")
	case c.SpoolSegmentBytes != 0 && c.SpoolSegmentBytes < minSegmentBytes:
		return fmt.Errorf("--spool-segment-bytes %d: give at least %d (1 MiB)", c.SpoolSegmentBytes, minSegmentBytes)
	case c.InFlowDelay < 0 || c.InFlowDelay > maxInFlowDelay:
		return fmt.Errorf("--in-flow-delay %s: give 0 (off) to %s", c.InFlowDelay, maxInFlowDelay)
	case c.SpoolSegmentMaxBody > queue.MaxSegmentBodyBytes:
		return fmt.Errorf("--spool-segment-max-body %d: give at most %d (16 MiB), or a negative value for a file per message", c.SpoolSegmentMaxBody, queue.MaxSegmentBodyBytes)
	case c.AdminAddr != "" && !c.AdminAllowNonLoopback && !isLoopback(c.AdminAddr):
		return fmt.Errorf("--admin-bind-address %q is not a loopback address: the admin API can delete mail and has no authentication; use a port-forward, or --admin-allow-non-loopback", c.AdminAddr)
	}
	if err := c.checkShapingPolicy(); err != nil {
		return err
	}
	return c.Outbound.check(c.DNSServer)
}

// checkShapingPolicy: --shaping-policy is the standalone relay's (in a
// cluster the operator publishes the policy), needs --shaping, and must be
// readable and valid at start (later changes that are not keep the last
// good policy).
func (c *Config) checkShapingPolicy() error {
	switch {
	case c.ShapingPolicy == "":
		return nil
	case c.Namespace != "":
		return errors.New("--shaping-policy is for a standalone relay (--manifests): with --relay-namespace the operator publishes the policy, from the shaping.yaml key of its guardrail ConfigMap")
	case !c.Shaping:
		return errors.New("--shaping-policy needs --shaping: without it delivery is not shaped")
	}
	if _, err := shaping.ParseFile(c.ShapingPolicy); err != nil {
		return fmt.Errorf("--shaping-policy: %w", err)
	}
	return nil
}

// New checks cfg and returns a relay that Run starts.
func New(cfg Config) (*Relay, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	if cfg.Namespace != "" && cfg.Kube == nil {
		return nil, errors.New("cluster mode needs the API server's configuration")
	}
	if err := cfg.parseFlagText(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Relay{cfg: cfg, log: log, stopping: make(chan struct{}), done: make(chan struct{})}, nil
}

// Shutdown stops a running relay gracefully, as the end of Run's context
// does, and waits for Run to return: it returns what Run returned, or
// ctx's error if ctx ends first.
func (r *Relay) Shutdown(ctx context.Context) error {
	r.stopOnce.Do(func() { close(r.stopping) })
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run assembles the relay and serves until ctx ends, Shutdown is called or
// a listener fails; then it shuts down in order: drain, sessions and
// delivery attempts finish within the grace period, the queue is handed
// over when the replica leaves for good, listeners close. A relay runs
// once: Run again returns an error.
func (r *Relay) Run(ctx context.Context) error {
	err := errors.New("relay: Run called twice")
	r.runOnce.Do(func() {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			select {
			case <-r.stopping:
				cancel()
			case <-ctx.Done():
			}
		}()
		err = r.run(ctx)
		r.err = err
		close(r.done)
	})
	return err
}

// run is Run: ctx ends at shutdown.
func (r *Relay) run(ctx context.Context) error {
	cfg, logger := r.cfg, r.log
	if err := os.MkdirAll(cfg.SpoolDir, 0o700); err != nil { //nolint:gosec // the operator chooses the spool directory
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
	// Traffic shaping: the table source applies the policy and, in a
	// cluster, divides it by the live replicas.
	var limiter *shaping.Limiter
	var shaper follow.Shaper // nil unless shaping is on
	if cfg.Shaping {
		limiter = shaping.NewLimiter(shaping.DefaultPolicy(), delivery.SystemClock{})
		shaper = limiter
	}
	if len(cfg.Manifests) > 0 {
		src, err := standalone.New(cfg.Manifests, standalone.Options{KeysDir: filepath.Join(cfg.SpoolDir, "keys"), Logger: logger,
			ShapingPolicy: cfg.ShapingPolicy, Shaper: shaper})
		if err != nil {
			return err
		}
		tables, runTables = src, src.Run
	} else {
		client, err := kubernetes.NewForConfig(cfg.Kube)
		if err != nil {
			return err
		}
		fl, err := follow.New(client, follow.Options{
			Namespace: cfg.Namespace, PodName: cfg.PodName,
			SpoolDir: filepath.Join(cfg.SpoolDir, "table"), Logger: logger, Shaper: shaper,
		})
		if err != nil {
			return err
		}
		tables, runTables = fl, fl.Run
		kube, follower = client, fl
		// Delivery status on the resources (design.md, contract 6).
		scheme := runtime.NewScheme()
		if err := v1alpha1.AddToScheme(scheme); err != nil {
			return err
		}
		statusClient, err := ctrlclient.New(cfg.Kube, ctrlclient.Options{Scheme: scheme})
		if err != nil {
			return err
		}
		// Bounce Events (events.k8s.io), aggregated by the reporter and
		// by client-go's series.
		broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
		broadcaster.StartRecordingToSink(ctx.Done())
		defer broadcaster.Shutdown()
		reporter, err := report.New(statusClient, report.Options{Replica: cfg.PodName, Logger: logger,
			Events: broadcaster.NewRecorder(scheme, "postgate-relay")})
		if err != nil {
			return err
		}
		observers, runReport = append(observers, reporter), reporter.Run
	}

	qdir, err := queue.OpenDir(filepath.Join(cfg.SpoolDir, "queue"))
	if err != nil {
		return err
	}
	// The gate is made once delivery's capacity is known; nothing leases
	// before delivery runs, later.
	var gate *inflow.Gate
	q, err := queue.Open(ctx, qdir, queue.Options{
		Logger: logger, MaxBodyBytes: cfg.MaxMessageBytes + message.MaxPrepended, Lifetime: routing.DefaultMaxQueueLifetime,
		SegmentBytes: cfg.SpoolSegmentBytes, SegmentBodyBytes: cfg.SpoolSegmentMaxBody,
		Taken: func() { gate.Taken() },
		Team:  teamOf(tables),
	})
	if err != nil {
		return err
	}
	defer func() { _ = q.Close() }()

	var tlsConfig *tls.Config
	if cfg.TLSCertFile != "" {
		cr, err := smtpd.NewCertReloader(cfg.TLSCertFile, cfg.TLSKeyFile, logger)
		if err != nil {
			return err
		}
		if err := reg.Register(cr); err != nil {
			return err
		}
		go func() { _ = cr.Start(ctx) }() // it logs what goes wrong and falls back to reading the files
		tlsConfig = cr.TLSConfig()
	}
	stageDir := filepath.Join(cfg.SpoolDir, "staging")
	if err := os.MkdirAll(stageDir, 0o700); err != nil { //nolint:gosec // under the spool directory the operator chose
		return err
	}
	resolver, err := delivery.NewResolver(delivery.ResolverOptions{Server: cfg.DNSServer, TrustAD: cfg.Outbound.DNSSEC})
	if err != nil {
		return fmt.Errorf("--dns-server: %w", err)
	}
	tlsPolicies, err := newOutbound(cfg.Outbound, outboundEnv{
		SpoolDir: cfg.SpoolDir, Hostname: cfg.Hostname, StageDir: stageDir, WebhookAllow: cfg.WebhookAllow,
		Resolver: resolver, Queue: q, Tables: tables, Logger: logger, Registerer: reg,
	})
	if err != nil {
		return err
	}
	defer tlsPolicies.close()
	// Delivery notifications: journaled under the spool, sent to the
	// SenderDomains' webhooks, never to the relay's own endpoints.
	notifier, err := notify.New(notify.Options{
		Dir: filepath.Join(cfg.SpoolDir, "notify"), Tables: tables, Allow: cfg.WebhookAllow,
		Self: r.ownAddresses(), Logger: logger, Registerer: reg,
	})
	if err != nil {
		return err
	}
	observers = append(observers, notifier)
	deliveryOpts := delivery.Options{
		Hostname: cfg.Hostname, Logger: logger, Resolver: resolver, MXPort: cfg.MXPort,
		Bouncer: &Bouncer{Queue: q, Hostname: cfg.Hostname, Logger: logger}, Observer: observers,
	}
	tlsPolicies.deliveryOptions(&deliveryOpts)
	if limiter != nil {
		deliveryOpts.Shaping = limiter
		logger.Info("Traffic shaping on")
	}
	worker, err := delivery.New(q, tables, deliveryOpts)
	if err != nil {
		return err
	}
	sites, err := watchSites(ctx, reg, deliveryOpts.Shaping, worker) // metrics, pruning, the admin API's view
	if err != nil {
		return err
	}
	// In-flow backpressure (docs/design.md): while more accepted messages
	// wait for delivery than it works on at once, a new transaction waits
	// at MAIL FROM for delivery to take one, at most --in-flow-delay.
	inflowMetrics, err := inflow.NewMetrics(reg)
	if err != nil {
		return err
	}
	gate = inflow.New(inflow.Options{Delay: cfg.InFlowDelay, Bound: worker.Capacity(), Backlog: q.Untaken, Metrics: inflowMetrics})
	smtpMetrics, err := smtpd.NewMetrics(reg)
	if err != nil {
		return err
	}
	srv, err := smtpd.New(smtpd.Config{
		Metrics:  smtpMetrics,
		StageDir: stageDir,
		Hostname: cfg.Hostname, Tables: tables, Spool: QueueSpool{Queue: q}, TLS: tlsConfig,
		ProxyCIDRs: cfg.ProxyCIDRs, MaxMessageBytes: cfg.MaxMessageBytes, MaxRecipients: cfg.MaxRecipients,
		MaxConnections: cfg.MaxConnections, MaxConnectionsPerClient: cfg.MaxConnectionsPerClient, MinDataRate: cfg.MinDataRate, Logger: logger,
		InFlow: gate,
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
	if err := listen(cfg.SMTPAddr, false); err != nil {
		return err
	}
	if cfg.SMTPSAddr != "" {
		if err := listen(cfg.SMTPSAddr, true); err != nil {
			return err
		}
	}
	lc := lifecycle.New(lifecycle.Config{
		Namespace: cfg.Namespace, PodName: cfg.PodName, StatefulSet: cfg.StatefulSet,
		HandoffAddr: cfg.HandoffAddr, HandoffAdvertise: cfg.HandoffAdvertise, HandoffTimeout: cfg.HandoffTimeout,
		SpoolEphemeral: cfg.SpoolEphemeral, TempDir: stageDir,
		MaxHandoffBytes: cfg.MaxMessageBytes + message.MaxPrepended + 16<<20, // envelope and history besides the body
		Logger:          logger, Queue: q, SMTP: srv, Kube: kube, Follower: follower,
	})
	if err := lc.Start(ctx); err != nil {
		return err
	}
	// The table source and the reporter end with runCtx, and run waits for
	// them (deferred, so after delivery has stopped): the table source
	// writes its last good table under the spool, and nothing of the relay
	// may still write there once Run has returned.
	runCtx, cancel := context.WithCancel(ctx)
	var background sync.WaitGroup
	defer func() {
		cancel()
		background.Wait()
	}()
	background.Go(func() { errs <- runTables(runCtx) })
	background.Go(func() { _ = runReport(runCtx) }) // its writes are retried, never fatal
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
	// TLS reporting stops after delivery (deferred before it, so run
	// after): the last sessions are counted and saved.
	reportCtx, stopReports := context.WithCancel(context.Background())
	reported := make(chan error, 1)
	go func() { reported <- tlsPolicies.run(reportCtx) }()
	defer func() {
		stopReports()
		if err := <-reported; err != nil {
			logger.Error("TLS reporting stopped", "error", err)
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
	stopHTTP, err := r.serveHTTP(q, tables, reg, lc, tlsPolicies.adminReports(), sites)
	if err != nil {
		return err
	}
	defer stopHTTP()

	// The end of ctx also ends the table source, which sends nil on errs:
	// both cases can be ready at once, and select picks either, so the
	// shutdown is announced after the select, whichever came first.
	select {
	case <-ctx.Done():
	case err := <-errs:
		if err != nil && ctx.Err() == nil {
			return err
		}
	}
	if ctx.Err() != nil {
		logger.Info("Shutting down: no new connections, waiting for sessions", "grace", cfg.ShutdownGrace)
	}
	return r.shutdown(lc, srv, worker, q)
}

// teamOf returns the queue's Team: the namespace of the sender domain's
// SenderDomain in the table in force (the team delivery's site gates take
// turns by too), or the domain itself when no SenderDomain claims it.
func teamOf(tables smtpd.TableSource) func(tenant string) string {
	return func(tenant string) string {
		if t := tables.Table(); t != nil {
			if d := t.Domain(tenant); d != nil {
				return "namespace/" + d.Object.Namespace
			}
		}
		return "domain/" + tenant
	}
}

// shutdown is the order in which a relay stops: drain at once (421 to
// new mail, /readyz fails, no hand-offs taken), let sessions and delivery
// attempts finish within the grace period, hand the queue over if the
// replica leaves for good, then close the listeners.
func (r *Relay) shutdown(lc *lifecycle.Lifecycle, srv *smtpd.Server, worker *delivery.Worker, q *queue.Queue) error {
	start := time.Now()
	lc.BeginDrain()
	graceCtx, done := context.WithTimeout(context.Background(), r.cfg.ShutdownGrace)
	defer done()
	if err := srv.Idle(graceCtx); err != nil {
		r.log.Warn("SMTP sessions still open after the grace period are closed", "error", err)
	}
	// Attempts under way finish within the grace period, or are aborted
	// and not recorded, so the schedule resumes intact wherever the
	// message goes next. That is the designed end of a slow attempt (a
	// slow MX on a rollout), not a failure: a warning, and exit status 0.
	if werr := worker.Shutdown(graceCtx); werr != nil {
		r.log.Warn("Delivery attempts still open after the grace period were aborted, not recorded; they are retried", "error", werr)
	}
	lc.Leave()
	closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	// Sessions still open after the grace period are closed here, as
	// designed (their messages were never acknowledged): not an error.
	var err error
	if serr := srv.Shutdown(closeCtx); serr != nil && !errors.Is(serr, context.DeadlineExceeded) {
		err = serr
	}
	lc.Close()
	r.log.Info("Shut down", "duration", time.Since(start).Round(time.Millisecond))
	return err
}

// serveHTTP serves /metrics, the probes and the admin API on their own
// listeners.
func (r *Relay) serveHTTP(q *queue.Queue, tables smtpd.TableSource, reg *prometheus.Registry, lc *lifecycle.Lifecycle, reports admin.TLSReports, sites admin.Sites) (stop func(), err error) {
	cfg, logger := r.cfg, r.log
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
	if cfg.MetricsAddr != "" {
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		reg.MustRegister(NewQueueCollector(q, nil), NewTableCollector(tables))
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		if cfg.Pprof {
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace) // latency: where a goroutine waited, and on what
		}
		if err := start(cfg.MetricsAddr, mux); err != nil {
			stop()
			return nil, err
		}
	}
	if cfg.HealthAddr != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
		// Ready once a table is loaded: before that every sender would be
		// told 451, so the Service should not send clients here.
		mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
			if err := lc.Ready(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			if tables.Table() == nil {
				http.Error(w, "no routing table loaded yet", http.StatusServiceUnavailable)
				return
			}
			_, _ = io.WriteString(w, "ok\n")
		})
		if err := start(cfg.HealthAddr, mux); err != nil {
			stop()
			return nil, err
		}
	}
	if cfg.AdminAddr != "" {
		bo := &Bouncer{Queue: q, Hostname: cfg.Hostname, Logger: r.log}
		adminHandler = admin.New(q, admin.Options{Bounce: func(ctx context.Context, m queue.Message, rcpts []int) error {
			return bo.Bounce(ctx, delivery.Bounce{Message: m, Recipients: rcpts, Time: time.Now()})
		}, TLSReports: reports, Sites: sites})
		adminHandler = lc.AdminHandler(adminHandler) // POST /v1/drain
		if err := start(cfg.AdminAddr, adminHandler); err != nil {
			stop()
			return nil, err
		}
	}
	return stop, nil
}

// ownAddresses are the relay's own HTTP and SMTP listen addresses, which a
// webhook must never reach. A listen address given by host name (possible
// for SMTP only) is left out: it cannot be matched at dial time anyway.
func (r *Relay) ownAddresses() []netip.AddrPort {
	var out []netip.AddrPort
	c := r.cfg
	for _, a := range []string{c.MetricsAddr, c.HealthAddr, c.AdminAddr, c.HandoffAddr, c.SMTPAddr, c.SMTPSAddr} {
		if self, err := notify.SelfAddrs(a); err == nil {
			out = append(out, self...)
		}
	}
	return out
}
