package relay

import (
	"cmp"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/postgate/postgate/internal/relay/inflow"
	"github.com/postgate/postgate/internal/relay/queue"
)

// BindFlags binds c to fs under the flags of `postgate relay`, with their
// defaults; their names are a contract with the chart, the scripts and the
// docs. After fs.Parse, Check judges the flags together; the networks the
// command line gives as text are parsed by New. The API server's
// configuration (--kubeconfig) is the command's to resolve.
func (c *Config) BindFlags(fs *flag.FlagSet) {
	host, _ := os.Hostname()
	fs.StringVar(&c.SMTPAddr, "smtp-bind-address", ":2525", "address of the SMTP listener (STARTTLS when a key pair is given)")
	fs.StringVar(&c.SMTPSAddr, "smtps-bind-address", "", "address of the implicit-TLS listener, as on port 465 (off when empty)")
	fs.StringVar(&c.SpoolDir, "spool-dir", "./postgate-spool", "directory of the durable queue, generated keys, staging of messages being signed, and the last good table")
	fs.Int64Var(&c.SpoolSegmentBytes, "spool-segment-bytes", queue.DefaultSegmentBytes, "size at which the queue starts a new segment file (at least 1 MiB)")
	fs.Int64Var(&c.SpoolSegmentMaxBody, "spool-segment-max-body", queue.DefaultSegmentBodyBytes, "largest message body the queue stores in its shared segment files (at most 16 MiB); a larger one gets a file of its own; negative: every message in a file of its own, the format before segments")
	fs.StringVar(&c.Hostname, "hostname", host, "host name in the greeting and in Received headers")
	fs.Var((*stringList)(&c.Manifests), "manifests", "standalone mode: a manifest file or directory (repeatable)")
	fs.StringVar(&c.Namespace, "relay-namespace", "", "cluster mode: the namespace where the operator publishes the table")
	fs.StringVar(&c.TLSCertFile, "tls-cert-file", "", "PEM certificate chain for STARTTLS and implicit TLS (reloaded when it changes)")
	fs.StringVar(&c.TLSKeyFile, "tls-key-file", "", "PEM private key for --tls-cert-file (reloaded when it changes)")
	fs.StringVar(&c.proxyCIDRsFlag, "proxy-protocol-cidrs", "", "comma-separated networks of load balancers that must send a PROXY protocol header; nobody else may")
	fs.Int64Var(&c.MaxMessageBytes, "max-message-bytes", 25<<20, "largest message accepted (552 5.3.4 above)")
	fs.IntVar(&c.MaxRecipients, "max-recipients", 100, "most recipients of one message (452 4.5.3 above)")
	fs.IntVar(&c.MaxConnections, "max-connections", 1000, "most open SMTP connections (421 above)")
	fs.IntVar(&c.MaxConnectionsPerClient, "max-connections-per-client", 50, "most open SMTP connections from one client address (421 above)")
	fs.Int64Var(&c.MinDataRate, "min-data-rate", 100, "least average rate of a message body in bytes/s once the idle timeout has passed since it began; slower bodies get 421 4.4.2 (slow-loris guard; negative: off)")
	fs.DurationVar(&c.InFlowDelay, "in-flow-delay", inflow.DefaultDelay, "while delivery is behind acceptance (more accepted messages not yet taken by delivery than it works on at once), the longest a new transaction waits at MAIL FROM for delivery to take a message, first come first served; never refused (Postfix's in_flow_delay; 0: off, at most 10s)")
	fs.StringVar(&c.MetricsAddr, "metrics-bind-address", "", "address of the Prometheus /metrics endpoint (off when empty)")
	fs.BoolVar(&c.Pprof, "pprof", false, "serve Go's CPU and heap profiles and execution traces (net/http/pprof) under /debug/pprof/ on the metrics listener, for performance work; off by default: a profile shows message data in memory")
	fs.StringVar(&c.HealthAddr, "health-probe-bind-address", "", "address of /healthz and /readyz (off when empty)")
	fs.StringVar(&c.AdminAddr, "admin-bind-address", "127.0.0.1:8025", "address of the queue admin API that `postgate queue` uses (off when empty); it can delete mail, so it must be loopback unless --admin-allow-non-loopback")
	fs.BoolVar(&c.AdminAllowNonLoopback, "admin-allow-non-loopback", false, "let --admin-bind-address be a non-loopback address: the admin API has no authentication, anyone who reaches it can delete queued mail")
	fs.StringVar(&c.DNSServer, "dns-server", "", "delivery: DNS server host:port for MX lookups (default: the system resolver)")
	fs.IntVar(&c.MXPort, "mx-port", 25, "delivery: port of the recipients' MX hosts")
	c.Outbound.bindFlags(fs)
	fs.BoolVar(&c.Shaping, "shaping", true, "delivery: traffic shaping per site of MX delivery (connection and rate limits, suspension on throttle replies, fair turns between senders), with the policy the operator publishes (cluster), --shaping-policy (standalone) or the shipped default; --shaping=false turns it off")
	fs.StringVar(&c.ShapingPolicy, "shaping-policy", "", "standalone mode, with --shaping: the traffic shaping policy file (YAML or JSON, as the operator's shaping.yaml), watched and reloaded live; default: the shipped policy")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", 25*time.Second, "how long in-flight SMTP sessions may take to finish on SIGTERM")
	fs.StringVar(&c.PodName, "pod-name", cmp.Or(os.Getenv("POD_NAME"), host), "cluster mode: this replica's name, for its Lease postgate-relay-<pod name> (default $POD_NAME)")
	fs.StringVar(&c.webhookAllowFlag, "webhook-allow-cidrs", "", "comma-separated networks that delivery-notification webhooks, MTA-STS policy fetches and TLS report POSTs may reach although they are loopback, link-local, cloud metadata or otherwise internal (refused by default: SSRF guard)")
	// Drain and hand-off (internal/relay/lifecycle).
	fs.StringVar(&c.StatefulSet, "statefulset-name", "", "cluster mode: the relay's StatefulSet; on SIGTERM a replica whose ordinal is at or past its spec.replicas hands its queue to the other replicas (without it every SIGTERM is a restart that keeps the queue)")
	fs.StringVar(&c.HandoffAddr, "handoff-bind-address", "", "cluster mode: address of the authenticated endpoint where peers hand over queued mail (off when empty)")
	fs.StringVar(&c.HandoffAdvertise, "handoff-advertise-address", "", "host:port peers use to reach --handoff-bind-address (default: $POD_IP with its port, else the bound address)")
	fs.DurationVar(&c.HandoffTimeout, "handoff-timeout", time.Minute, "how long a leaving replica may take to hand its queue over, after --shutdown-grace")
	fs.BoolVar(&c.SpoolEphemeral, "spool-ephemeral", false, "cluster mode: the spool does not outlive the pod (an emptyDir), so every SIGTERM hands the queue over, restarts included")
}

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// parseFlagText adds the networks of the flags BindFlags binds as text.
func (c *Config) parseFlagText() error {
	var err error
	// Clipped: what is appended must not land in the caller's array.
	if c.ProxyCIDRs, err = appendPrefixes(slices.Clip(c.ProxyCIDRs), "--proxy-protocol-cidrs", c.proxyCIDRsFlag); err != nil {
		return err
	}
	c.WebhookAllow, err = appendPrefixes(slices.Clip(c.WebhookAllow), "--webhook-allow-cidrs", c.webhookAllowFlag)
	return err
}

// appendPrefixes appends the comma-separated networks of list, the value
// of flag name, to out.
func appendPrefixes(out []netip.Prefix, name, list string) ([]netip.Prefix, error) {
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
