package delivery

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/postgate/postgate/internal/relay/shaping"
)

// Options configure a Worker. The zero value of each field takes the
// default given; Hostname has none when the system has no host name.
type Options struct {
	// Hostname is the name in EHLO (RFC 5321 section 4.1.1.1): the relay's
	// --hostname. Default: os.Hostname().
	Hostname string
	// Clock is the queue's clock: retries, cache TTLs and idle
	// connections follow it. Default: SystemClock.
	Clock Clock
	// Logger receives one line per recipient and attempt, and errors.
	// Default: discard.
	Logger *slog.Logger
	// Resolver looks up MX and address records. Default: NewResolver with
	// /etc/resolv.conf and Clock.
	Resolver *Resolver
	// MXPort is the port of MX hosts (the relay's --mx-port). Default 25.
	MXPort int
	// Dial opens connections. Default: a net.Dialer bound to the local
	// address when it is valid. Tests wrap it to watch the wire.
	Dial DialFunc
	// Bouncer is asked for a DSN when recipients fail for good. nil: no
	// DSN is sent (the failures are logged and recorded).
	Bouncer Bouncer
	// Observer sees every attempt. nil: none.
	Observer Observer
	// MaskLocalPart logs recipients as ***@domain.
	MaskLocalPart bool
	// MaxMessages is how many messages are in delivery at once. Default 100.
	MaxMessages int
	// MaxConnections bounds the SMTP transactions under way, all
	// destinations together. Default 100.
	MaxConnections int
	// MaxPerDestination bounds the transactions under way to one
	// destination: a recipient domain (MX) or a target relay, per source
	// IP. Default 20, Postfix's default_destination_concurrency_limit: at
	// 10, a relay with one busy destination (a smart host) delivered at
	// half the rate it accepted, every other attempt waiting for a slot
	// (docs/design.md section 5, Delivery).
	MaxPerDestination int
	// MaxAddresses is how many host addresses one attempt to one
	// destination tries before it defers (RFC 5321 section 5.1 asks for at
	// least two). Default 5.
	MaxAddresses int
	// IdleTimeout is how long a connection is kept for the next message to
	// the same host after a transaction. Default 5s; negative: no reuse.
	IdleTimeout time.Duration
	// RootCAs verify TLS policy Verify when a route has no CA bundle, and
	// MX hosts whose domain asks for Verify. Default: the system roots.
	RootCAs *x509.CertPool
	// DisableIPv6 connects to IPv4 addresses only.
	DisableIPv6 bool
	// DisableDANE turns DANE (RFC 7672) off: TLSA records are not looked
	// up. DANE also needs a Resolver that trusts the AD bit.
	DisableDANE bool
	// STS gives recipient domains' MTA-STS policies (RFC 8461); nil: MTA-STS
	// is off.
	STS STSPolicies
	// TLSReports counts TLS sessions of MX delivery for TLS-RPT (RFC
	// 8460); nil: none are counted.
	TLSReports TLSReporter
	// Shaping limits connections and messages per site of MX delivery and
	// suspends a site on its throttle replies (docs/design.md, "Traffic
	// shaping"); nil: no shaping. Experimental: the relay's --shaping.
	Shaping *shaping.Limiter
	// Timeouts bound each step of a session.
	Timeouts Timeouts
	// Rand orders MX hosts of equal preference. Default: seeded randomly.
	// Used under the worker's lock.
	Rand *rand.Rand
}

// Timeouts bound each step of an SMTP session (RFC 5321 section 4.5.3.2).
// One timeout covers every command (as go-smtp's client, which sets the
// session up, has it), so the RFC's shorter DATA initiation timeout (2
// minutes) is the command timeout here.
type Timeouts struct {
	// Connect bounds the TCP connection. Default 30s.
	Connect time.Duration
	// Command bounds the greeting, each command's reply (EHLO, STARTTLS
	// and its TLS handshake, AUTH, MAIL, RCPT, DATA, RSET) and QUIT.
	// Default 5m (sections 4.5.3.2.1 to 4.5.3.2.4).
	Command time.Duration
	// DataBlock bounds each write of the message. Default 3m (section
	// 4.5.3.2.5).
	DataBlock time.Duration
	// DataTermination bounds the reply to the final dot. Default 10m
	// (section 4.5.3.2.6).
	DataTermination time.Duration
}

// DialFunc opens a TCP connection to remote from local (the zero Addr:
// any local address).
type DialFunc func(ctx context.Context, local netip.Addr, remote netip.AddrPort) (net.Conn, error)

// DefaultDial dials with a net.Dialer, bound to local when it is valid.
func DefaultDial(ctx context.Context, local netip.Addr, remote netip.AddrPort) (net.Conn, error) {
	var d net.Dialer
	if local.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 0))
	}
	return d.DialContext(ctx, "tcp", remote.String())
}

func (o Options) withDefaults() (Options, error) {
	if o.Hostname == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			return o, fmt.Errorf("delivery needs a host name for EHLO: %w", errors.Join(err, errors.New("none set")))
		}
		o.Hostname = h
	}
	if o.Clock == nil {
		o.Clock = SystemClock{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Resolver == nil {
		r, err := NewResolver(ResolverOptions{Clock: o.Clock})
		if err != nil {
			return o, err
		}
		o.Resolver = r
	}
	if o.Dial == nil {
		o.Dial = DefaultDial
	}
	if o.Rand == nil {
		o.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())) //nolint:gosec // MX order needs no secrecy
	}
	ints := []struct {
		v   *int
		def int
	}{
		{&o.MXPort, 25}, {&o.MaxMessages, 100}, {&o.MaxConnections, 100},
		{&o.MaxPerDestination, 20}, {&o.MaxAddresses, 5},
	}
	for _, d := range ints {
		if *d.v == 0 {
			*d.v = d.def
		}
		if *d.v < 0 {
			return o, fmt.Errorf("delivery option %d is negative", *d.v)
		}
	}
	if o.MXPort > 65535 {
		return o, fmt.Errorf("MX port %d is not from 1 to 65535", o.MXPort)
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = 5 * time.Second
	}
	durations := []struct {
		v   *time.Duration
		def time.Duration
	}{
		{&o.Timeouts.Connect, 30 * time.Second}, {&o.Timeouts.Command, 5 * time.Minute},
		{&o.Timeouts.DataBlock, 3 * time.Minute}, {&o.Timeouts.DataTermination, 10 * time.Minute},
	}
	for _, d := range durations {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
	return o, nil
}
