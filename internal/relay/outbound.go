package relay

// Outbound TLS: the recipient domains' policies for MX delivery (DANE,
// MTA-STS) and TLS reporting, wired from the relay's flags
// (docs/design.md, "Outbound TLS").

import (
	"cmp"
	"context"
	"crypto/x509"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postgate/postgate/internal/relay/admin"
	"github.com/postgate/postgate/internal/relay/delivery"
	"github.com/postgate/postgate/internal/relay/mtasts"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/smtpd"
	"github.com/postgate/postgate/internal/relay/tlsrpt"
)

// OutboundTLS configures what MX delivery does about the recipient
// domains' TLS policies. Each part can be turned off.
type OutboundTLS struct {
	DANE       bool   // --dane
	DNSSEC     bool   // --dns-dnssec: the DNS server validates; trust its AD bit
	MTASTS     bool   // --mta-sts
	MTASTSPort int    // --mta-sts-port (443; tests)
	CAFile     string // --tls-ca-file: roots added to the system's

	TLSRPT          bool   // --tls-rpt
	TLSRPTOrg       string // --tls-rpt-org
	TLSRPTContact   string // --tls-rpt-contact
	TLSRPTFrom      string // --tls-rpt-from
	TLSRPTSubmitter string // --tls-rpt-submitter
}

func (o *OutboundTLS) bindFlags(fs *flag.FlagSet) {
	fs.BoolVar(&o.DANE, "dane", true, "delivery: DANE (RFC 7672) for MX delivery: a host with DNSSEC-signed TLSA records gets mail only over TLS with a matching certificate; needs a validating resolver (--dns-dnssec)")
	fs.BoolVar(&o.DNSSEC, "dns-dnssec", false, "delivery: the DNS server (--dns-server, or those of /etc/resolv.conf) validates DNSSEC, so its AD bit is trusted; it must be on loopback (a validating resolver beside the relay, such as unbound)")
	fs.BoolVar(&o.MTASTS, "mta-sts", true, "delivery: MTA-STS (RFC 8461): recipient domains' policies are fetched, cached under the spool and applied to MX delivery")
	fs.IntVar(&o.MTASTSPort, "mta-sts-port", mtasts.DefaultPort, "delivery: HTTPS port of MTA-STS policy hosts (tests)")
	fs.StringVar(&o.CAFile, "tls-ca-file", "", "delivery: PEM CA certificates trusted besides the system roots, for TLS policy Verify, MTA-STS policy hosts and MX hosts, and TLS-RPT receivers (private deployments, tests)")
	fs.BoolVar(&o.TLSRPT, "tls-rpt", true, "delivery: TLS reporting (RFC 8460): count MX delivery's TLS sessions and send each recipient domain that asks (_smtp._tls) a daily report")
	fs.StringVar(&o.TLSRPTOrg, "tls-rpt-org", "", "TLS reports: organization-name (default: --hostname)")
	fs.StringVar(&o.TLSRPTContact, "tls-rpt-contact", "", "TLS reports: contact-info, an address or URI (default: --tls-rpt-from, else postmaster@ the submitter)")
	fs.StringVar(&o.TLSRPTSubmitter, "tls-rpt-submitter", "", "TLS reports: the submitting domain in the report's name and headers (default: --hostname)")
	fs.StringVar(&o.TLSRPTFrom, "tls-rpt-from", "", "TLS reports: sender address of reports by mail (mailto: rua), in a signing SenderDomain, as RFC 8460 section 5.3 wants them DKIM-signed; empty: reports go to https: rua only")
}

// check judges the outbound TLS flags before anything starts, so a
// mistake is a usage error (exit 2) naming the flag. dnsServer is
// --dns-server.
func (o *OutboundTLS) check(dnsServer string) error {
	switch {
	case o.MTASTS && (o.MTASTSPort < 1 || o.MTASTSPort > 65535):
		return fmt.Errorf("--mta-sts-port %d: give a TCP port, 1 to 65535", o.MTASTSPort)
	case o.DNSSEC && dnsServer != "" && !isLoopback(dnsServer):
		return fmt.Errorf("--dns-dnssec: the AD bit is trusted only from a validating resolver on loopback, and --dns-server %s is not one (run a validating resolver such as unbound beside the relay)", dnsServer)
	case strings.ContainsAny(o.TLSRPTSubmitter, "!@ \t\r\n<>"):
		return fmt.Errorf("--tls-rpt-submitter %q: give a domain name (RFC 8460 section 5.3)", o.TLSRPTSubmitter)
	case o.TLSRPTFrom != "" && !strings.Contains(o.TLSRPTFrom, "@"):
		return fmt.Errorf("--tls-rpt-from %q: give an address, such as tlsrpt-noreply@example.com, in a signing SenderDomain", o.TLSRPTFrom)
	}
	return nil
}

// outboundEnv is what the wiring takes from the rest of the relay's
// configuration.
type outboundEnv struct {
	SpoolDir, Hostname, StageDir string
	WebhookAllow                 []netip.Prefix
	Resolver                     *delivery.Resolver
	Queue                        *queue.Queue
	Tables                       smtpd.TableSource
	Logger                       *slog.Logger
	Registerer                   prometheus.Registerer
}

// outbound is the wiring of OutboundTLS for one run.
type outbound struct {
	dane     bool
	roots    *x509.CertPool
	sts      *mtasts.Cache
	reporter *tlsrpt.Reporter
	sessions *prometheus.CounterVec
	lookups  *prometheus.CounterVec
}

// newOutbound builds the MTA-STS cache and the TLS reporter as cfg says,
// under the spool, through the relay's resolver.
func newOutbound(o OutboundTLS, env outboundEnv) (*outbound, error) {
	resolver, logger, reg := env.Resolver, env.Logger, env.Registerer
	out := &outbound{
		dane: o.DANE,
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postgate_relay_tls_sessions_total",
			Help: "TLS sessions of MX delivery by the recipient domain's policy type (tlsa, sts, no-policy-found) and result (success or the RFC 8460 result type).",
		}, []string{"policy", "result"}),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postgate_relay_mta_sts_lookups_total",
			Help: "MTA-STS policy lookups of MX delivery by result: enforce, testing, none (no policy), or the RFC 8460 result type of a policy that could not be had.",
		}, []string{"result"}),
	}
	for _, c := range []prometheus.Collector{out.sessions, out.lookups} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	if o.CAFile != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("--tls-ca-file: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-ca-file %s holds no PEM certificate", o.CAFile)
		}
		out.roots = pool
	}
	if o.MTASTS {
		c, err := mtasts.New(mtasts.Options{
			LookupTXT: resolver.LookupTXT, LookupHost: resolver.LookupHost,
			Port: o.MTASTSPort, RootCAs: out.roots, AllowAddr: allowReceiver(env.WebhookAllow),
			Dir: filepath.Join(env.SpoolDir, "mta-sts"), Logger: logger,
		})
		if err != nil {
			return nil, fmt.Errorf("MTA-STS: %w", err)
		}
		out.sts = c
	}
	if o.TLSRPT {
		opts := tlsrpt.Options{
			Dir: filepath.Join(env.SpoolDir, "tlsrpt"), OrganizationName: cmp.Or(o.TLSRPTOrg, env.Hostname),
			ContactInfo: o.TLSRPTContact, Submitter: cmp.Or(o.TLSRPTSubmitter, env.Hostname), From: o.TLSRPTFrom,
			LookupTXT: resolver.LookupTXT, LookupHost: resolver.LookupHost, RootCAs: out.roots,
			AllowAddr: allowReceiver(env.WebhookAllow), Logger: logger,
		}
		if opts.ContactInfo == "" && opts.From == "" {
			opts.ContactInfo = "postmaster@" + opts.Submitter
		}
		if o.TLSRPTFrom != "" {
			opts.Submit = (&ReportSubmitter{Queue: env.Queue, Tables: env.Tables, Hostname: env.Hostname, StageDir: env.StageDir}).Submit
		}
		r, err := tlsrpt.Open(opts)
		if err != nil {
			out.close()
			return nil, fmt.Errorf("TLS reporting (--tls-rpt-*): %w", err)
		}
		out.reporter = r
		if err := reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "postgate_relay_tls_rpt_dropped_sessions_total",
			Help: "TLS sessions TLS reporting did not count because a bound of its state was reached.",
		}, func() float64 { return float64(r.Dropped()) })); err != nil {
			out.close()
			return nil, err
		}
	}
	if o.DANE && !o.DNSSEC {
		logger.Warn("DANE is on but cannot apply: no validating resolver is declared (--dns-dnssec with a --dns-server on loopback), so every DNS answer counts as insecure; MTA-STS and the domains' TLS policies still apply")
	}
	return out, nil
}

// allowReceiver lets TLS reports go to public unicast addresses and to the
// networks --webhook-allow-cidrs opens (the same guard as the webhooks'):
// an rua URI comes from a stranger's DNS.
func allowReceiver(allow []netip.Prefix) func(netip.Addr) bool {
	return func(a netip.Addr) bool {
		a = a.Unmap()
		for _, p := range allow {
			if p.Contains(a) {
				return true
			}
		}
		return tlsrpt.PublicUnicast(a)
	}
}

// deliveryOptions sets delivery's outbound TLS options.
func (o *outbound) deliveryOptions(opts *delivery.Options) {
	opts.DisableDANE = !o.dane
	opts.RootCAs = o.roots
	if o.sts != nil {
		opts.STS = stsCounter{o}
	}
	opts.TLSReports = sessionCounter{o}
}

// run sends the TLS reports until ctx ends, then saves the counts.
func (o *outbound) run(ctx context.Context) error {
	if o.reporter == nil {
		return nil
	}
	return o.reporter.Run(ctx)
}

// adminReports is the reporter for the admin API's TLS report endpoints:
// a nil interface, not a nil *tlsrpt.Reporter, when reporting is off.
func (o *outbound) adminReports() admin.TLSReports {
	if o.reporter == nil {
		return nil
	}
	return o.reporter
}

// close ends the MTA-STS fetches still under way.
func (o *outbound) close() {
	if o.sts != nil {
		o.sts.Close()
	}
}

// sessionCounter counts each session in the metrics and for TLS-RPT.
type sessionCounter struct{ o *outbound }

func (c sessionCounter) Record(s tlsrpt.Session) {
	result := "success"
	if s.Failure != nil {
		result = s.Failure.Result
	}
	c.o.sessions.WithLabelValues(string(s.Policy.Type), result).Inc()
	if c.o.reporter != nil {
		c.o.reporter.Record(s)
	}
}

// stsCounter counts MTA-STS lookups by result.
type stsCounter struct{ o *outbound }

func (c stsCounter) Lookup(ctx context.Context, domain string) mtasts.Result {
	r := c.o.sts.Lookup(ctx, domain)
	result := "none"
	switch {
	case r.Policy != nil:
		result = string(r.Policy.Mode)
	case r.Err != nil:
		result = r.Err.Result
	}
	c.o.lookups.WithLabelValues(result).Inc()
	return r
}
