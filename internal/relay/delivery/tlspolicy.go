package delivery

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/dane"
	"github.com/postgate/postgate/internal/relay/mtasts"
	"github.com/postgate/postgate/internal/relay/tlsrpt"
)

// PolicyKind names what decided the TLS of a connection. For MX delivery
// the recipient domain's policies come first, DANE before MTA-STS (RFC
// 8461 section 2), and the sender domain's mxTLSPolicy is the floor under
// both; a RelayRoute's connection always follows the route's own policy.
type PolicyKind string

const (
	// PolicyDomain: the sender domain's mxTLSPolicy, or the route's
	// tlsPolicy; no policy of the recipient domain applied.
	PolicyDomain PolicyKind = "tls-policy"
	// PolicyDANE: usable DNSSEC-secure TLSA records of the MX host (RFC
	// 7672): TLS is mandatory and the certificate must match them.
	PolicyDANE PolicyKind = "dane"
	// PolicySTS: the recipient domain's MTA-STS policy in mode enforce
	// (RFC 8461): only MX hosts the policy names, only over TLS with a
	// certificate valid for the MX host name.
	PolicySTS PolicyKind = "mta-sts"
	// PolicySTSTesting: an MTA-STS policy in mode testing: delivery as the
	// sender domain's policy says, failures reported (RFC 8461 section 5).
	PolicySTSTesting PolicyKind = "mta-sts-testing"
)

// STSPolicies gives a recipient domain's MTA-STS policy in force;
// mtasts.Cache implements it.
type STSPolicies interface {
	Lookup(ctx context.Context, domain string) mtasts.Result
}

// TLSReporter counts TLS sessions for TLS-RPT (RFC 8460); tlsrpt.Reporter
// implements it. Record must not block.
type TLSReporter interface {
	Record(s tlsrpt.Session)
}

// connPolicy is the TLS one connection must have.
type connPolicy struct {
	kind PolicyKind
	// domainPolicy is the sender domain's (or route's) TLSPolicy.
	domainPolicy v1alpha1.TLSPolicy
	// tls: STARTTLS is attempted (every policy but None).
	tls bool
	// require: without TLS, nothing is sent (DANE, MTA-STS enforce, a
	// Required or Verify floor).
	require bool
	// tlsa are DANE's usable records, names the reference identifiers a
	// DANE-TA certificate must match (RFC 7672 section 3.2.2), sni the
	// TLSA base domain, sent as SNI (RFC 7672 section 8.1).
	tlsa  []dane.Record
	names []string
	sni   string
	// pkix: the certificate must chain to roots and be valid for
	// pkixName (MTA-STS: the MX host name, RFC 8461 section 4.2; policy
	// Verify).
	pkix     bool
	pkixName string
	roots    *x509.CertPool
	// enforce: a failed check refuses the session; false for MTA-STS
	// testing, whose failures are reported and delivery goes on.
	enforce bool
	// report is what TLS-RPT counts the session under; nil when it is
	// not counted (routes, policy None).
	report *tlsrpt.Policy
	// key tells connections verified alike apart in the pool.
	key string
}

// plainAllowed reports whether a failed STARTTLS handshake may be retried
// in plaintext: only where nothing requires TLS.
func (p *connPolicy) plainAllowed() bool { return p.tls && !p.require }

// routePolicy is the policy of a connection to a RelayRoute's target relay
// (or of MX delivery when no recipient policy applies): the configured
// TLSPolicy alone.
func (w *Worker) routePolicy(d *destination, name string) connPolicy {
	p := connPolicy{
		kind: PolicyDomain, domainPolicy: d.policy, tls: d.policy != v1alpha1.TLSPolicyNone,
		require: d.policy == v1alpha1.TLSPolicyRequired || d.policy == v1alpha1.TLSPolicyVerify,
	}
	if d.policy == v1alpha1.TLSPolicyVerify {
		p.pkix, p.pkixName, p.enforce = true, name, true
		p.roots = d.roots
		if p.roots == nil {
			p.roots = w.opts.RootCAs
		}
	}
	return p
}

// domainPolicies is what an attempt to one recipient domain found out
// about its policies once, for all its MX hosts.
type domainPolicies struct {
	mxSecure bool
	sts      *mtasts.Policy
	stsErr   *mtasts.Error
}

// lookupDomainPolicies asks for the domain's MTA-STS policy. DANE is
// decided per host (hostPolicy); the MTA-STS policy is asked for even
// when DANE may apply, since hosts without TLSA records fall back to it.
func (w *Worker) lookupDomainPolicies(ctx context.Context, d *destination, mxSecure bool) domainPolicies {
	dp := domainPolicies{mxSecure: mxSecure}
	if d.policy == v1alpha1.TLSPolicyNone || d.tlsOptional || w.opts.STS == nil {
		return dp
	}
	r := w.opts.STS.Lookup(ctx, d.domain)
	dp.sts, dp.stsErr = r.Policy, r.Err
	if dp.sts != nil && dp.sts.Mode == mtasts.ModeNone {
		dp.sts = nil
	}
	return dp
}

// hostPolicy decides the TLS for connections to one MX host: DANE when
// the host has usable secure TLSA records (RFC 7672), else the domain's
// MTA-STS policy (RFC 8461), else the sender domain's policy; never below
// the sender domain's policy (a Required or Verify floor). A failure
// means the host must not be used in this attempt.
func (w *Worker) hostPolicy(ctx context.Context, d *destination, dp *domainPolicies, h mxHost, ha hostAddrs) (connPolicy, *failure) {
	base := w.routePolicy(d, strings.TrimSuffix(h.name, "."))
	if d.policy == v1alpha1.TLSPolicyNone || d.tlsOptional {
		// The sender domain chose no TLS, explicitly, or the message
		// is a TLS report that must get through TLS failures (RFC 8460
		// section 5.3): no recipient policy, nothing reported.
		return base, nil
	}
	base.report = &tlsrpt.Policy{Type: tlsrpt.PolicyNotFound, Domain: d.domain}
	if p, ok, f := w.danePolicy(ctx, d, dp, h, ha); f != nil || ok {
		return p, f
	}
	switch {
	case dp.sts != nil && dp.sts.Mode == mtasts.ModeEnforce:
		host := strings.TrimSuffix(h.name, ".")
		report := stsReport(d.domain, dp.sts)
		if !dp.sts.Match(host) {
			// RFC 8461 section 4.1: a host the policy does not name is
			// not delivered to.
			f := localFailure(false, CauseTLS, "4.7.5", "MX host %s is not among the MX hosts of the MTA-STS policy of %s (%s): not delivering to it", host, d.domain, strings.Join(dp.sts.MX, ", "))
			w.report(report, tlsrpt.ResultValidationFailure, f.reply.Text, h.name, nil)
			return connPolicy{}, f
		}
		return connPolicy{
			kind: PolicySTS, domainPolicy: d.policy, tls: true, require: true, pkix: true, pkixName: host,
			roots: w.opts.RootCAs, enforce: true, report: report, key: "sts",
		}, nil
	case dp.sts != nil && dp.sts.Mode == mtasts.ModeTesting:
		p := base
		p.kind, p.report = PolicySTSTesting, stsReport(d.domain, dp.sts)
		if !p.pkix {
			// Checked and reported, not enforced (RFC 8461 section 5).
			p.pkix, p.pkixName, p.roots = true, strings.TrimSuffix(h.name, "."), w.opts.RootCAs
		}
		p.key = "sts-testing"
		return p, nil
	case dp.stsErr != nil:
		// A policy that could not be fetched is reported once per
		// attempt and host, and delivery goes on as without one (RFC 8461
		// section 5: no cached policy, no policy).
		w.report(&tlsrpt.Policy{Type: tlsrpt.PolicySTS, Domain: d.domain}, dp.stsErr.Result, dp.stsErr.Reason, h.name, nil)
	}
	return base, nil
}

// danePolicy applies DANE to one MX host when it can: the MX RRset and
// the host's addresses DNSSEC-secure (RFC 7672 section 2.2.1 and 2.2.2;
// the RFC allows DANE below an insecure MX RRset, which we leave to
// MTA-STS as the design says), TLSA records at the TLSA base domain (the
// secure CNAME target first, then the host name, section 2.2.2), at least
// one usable (section 3.1.3). ok reports whether DANE applies; a failure
// is a TLSA lookup that failed, which makes the host unusable (section
// 2.2).
func (w *Worker) danePolicy(ctx context.Context, d *destination, dp *domainPolicies, h mxHost, ha hostAddrs) (connPolicy, bool, *failure) {
	if w.opts.DisableDANE || !dp.mxSecure || !ha.secure {
		return connPolicy{}, false, nil
	}
	bases := []string{dns.CanonicalName(h.name)}
	if ha.name != "" && ha.name != bases[0] {
		bases = []string{ha.name, bases[0]}
	}
	for _, base := range bases {
		rrs, secure, err := w.resolver.tlsa(ctx, base, d.port)
		if err != nil {
			f := localFailure(false, CauseTLS, "4.7.5", "TLSA lookup for MX host %s failed (%v): not delivering to it without DANE (RFC 7672 section 2.2)", strings.TrimSuffix(h.name, "."), err)
			w.report(&tlsrpt.Policy{Type: tlsrpt.PolicyTLSA, Domain: d.domain, MXHosts: []string{strings.TrimSuffix(h.name, ".")}},
				tlsrpt.ResultDNSSECInvalid, f.reply.Text, h.name, nil)
			return connPolicy{}, false, f
		}
		if !secure {
			return connPolicy{}, false, nil
		}
		if len(rrs) == 0 {
			continue
		}
		all := dane.FromDNS(rrs)
		var usable []dane.Record
		for _, r := range all {
			if dane.Usable(r) {
				usable = append(usable, r)
			}
		}
		if len(usable) == 0 {
			// Only unusable records: as if there were none (RFC 7672
			// section 2.2).
			return connPolicy{}, false, nil
		}
		strs := make([]string, len(usable))
		for i, r := range usable {
			strs[i] = r.String()
		}
		names := []string{strings.TrimSuffix(base, ".")}
		if host := strings.TrimSuffix(h.name, "."); host != names[0] {
			names = append(names, host)
		}
		if h.implicit && d.domain != names[0] {
			// No MX: the next-hop domain is a reference identifier too
			// (RFC 7672 section 3.2.2).
			names = append(names, d.domain)
		}
		return connPolicy{
			kind: PolicyDANE, domainPolicy: d.policy, tls: true, require: true, tlsa: usable, names: names,
			sni: names[0], enforce: true, key: "dane " + strings.Join(strs, ","),
			report: &tlsrpt.Policy{Type: tlsrpt.PolicyTLSA, Strings: strs, Domain: d.domain, MXHosts: []string{strings.TrimSuffix(h.name, ".")}},
		}, true, nil
	}
	return connPolicy{}, false, nil
}

func stsReport(domain string, p *mtasts.Policy) *tlsrpt.Policy {
	return &tlsrpt.Policy{Type: tlsrpt.PolicySTS, Strings: p.Lines(), Domain: domain, MXHosts: slices.Clone(p.MX)}
}

// tlsConfig returns the client TLS configuration of a connection under p;
// a check that fails is recorded in s (its TLS-RPT result) whether or not
// it refuses the session.
func (w *Worker) tlsConfig(p *connPolicy, name string, s *session) *tls.Config {
	cfg := &tls.Config{ServerName: name}
	switch {
	case len(p.tlsa) > 0:
		// DANE authenticates by the TLSA records, not by WebPKI (RFC
		// 7672 section 3.1): names and dates as dane.Verify says.
		cfg.ServerName = p.sni
		cfg.InsecureSkipVerify = true //nolint:gosec // verified against the TLSA records below
		// Certificates are judged by the wall clock, as crypto/tls judges
		// them, not by the queue's clock (Options.Clock).
		verify := dane.VerifyConnection(p.tlsa, p.names, time.Now)
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			err := verify(cs)
			s.noteCheck(err)
			return err
		}
	case p.pkix && p.enforce:
		cfg.RootCAs = p.roots
		cfg.ServerName = p.pkixName
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			// Go has verified; this only records success for TLS-RPT.
			s.noteCheck(nil)
			return nil
		}
	case p.pkix:
		// MTA-STS testing: the check runs and is reported, the session
		// goes on (RFC 8461 section 5).
		cfg.InsecureSkipVerify = true //nolint:gosec // checked by hand, reported, not enforced
		cfg.MinVersion = tls.VersionTLS10
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			s.noteCheck(verifyPKIX(cs, p.pkixName, p.roots))
			return nil
		}
	default:
		// Opportunistic and Required encrypt without authenticating the
		// peer (RFC 7435): any certificate and any TLS version beats
		// plaintext.
		cfg.InsecureSkipVerify = true //nolint:gosec // only Verify, MTA-STS and DANE authenticate the peer
		cfg.MinVersion = tls.VersionTLS10
	}
	return cfg
}

// verifyPKIX checks a server's chain as crypto/tls would for name.
func verifyPKIX(cs tls.ConnectionState, name string, roots *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("no certificate")
	}
	opts := x509.VerifyOptions{Roots: roots, DNSName: name, Intermediates: x509.NewCertPool()}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(opts)
	return err
}

// resultOf is the TLS-RPT result type (RFC 8460 section 4.3) of a failed
// certificate check.
func resultOf(err error) string {
	var de *dane.Error
	var he x509.HostnameError
	var ie x509.CertificateInvalidError
	var ue x509.UnknownAuthorityError
	var ve *tls.CertificateVerificationError
	switch {
	case errors.As(err, &de):
		return de.Result
	case errors.As(err, &he):
		return tlsrpt.ResultCertificateHostMismatch
	case errors.As(err, &ie) && ie.Reason == x509.Expired:
		return tlsrpt.ResultCertificateExpired
	case errors.As(err, &ue):
		return tlsrpt.ResultCertificateNotTrusted
	case errors.As(err, &ve):
		return resultOf(ve.Err)
	default:
		return tlsrpt.ResultValidationFailure
	}
}

// report counts one session for TLS-RPT: a success when result is "",
// else a failure of that result type (RFC 8460 section 4.3). s is the
// session, nil when the failure came before a connection.
func (w *Worker) report(p *tlsrpt.Policy, result, reason, host string, s *session) {
	if w.opts.TLSReports == nil || p == nil {
		return
	}
	rec := tlsrpt.Session{Policy: *p, Time: w.clock.Now()}
	if result != "" {
		f := &tlsrpt.Failure{Result: result, ReceivingMXHostname: strings.TrimSuffix(host, "."), AdditionalInfo: reason}
		if s != nil {
			f.SendingMTAIP = s.local.Addr()
			f.ReceivingIP = s.key.remote.Addr()
		}
		rec.Failure = f
	}
	w.opts.TLSReports.Record(rec)
}

// reportSession counts a session that tried TLS under p, once it is open
// or has failed (f).
func (w *Worker) reportSession(p *connPolicy, host string, s *session, f *failure) {
	if p.report == nil || s == nil {
		return
	}
	switch {
	case f == nil && s.tls.Established && s.checkErr != nil:
		// MTA-STS testing: delivered, and the failed check reported.
		w.report(p.report, resultOf(s.checkErr), s.checkErr.Error(), host, s)
	case f == nil && s.tls.Established:
		w.report(p.report, "", "", host, s)
	case s.rptResult != "":
		reason := s.rptResult
		if f != nil {
			reason = f.reply.Text
		}
		w.report(p.report, s.rptResult, reason, host, s)
	}
}

// noteCheck records the outcome of the certificate check of a session's
// handshake.
func (s *session) noteCheck(err error) {
	s.checkErr = err
	if err != nil {
		s.tls.PolicyResult = resultOf(err)
	}
}

// policyName is how replies name the policy that refused a connection.
func (p *connPolicy) policyName() string {
	switch p.kind {
	case PolicyDANE:
		return "DANE (RFC 7672)"
	case PolicySTS:
		return "the MTA-STS policy (RFC 8461)"
	default:
		return "TLS policy " + string(p.domainPolicy)
	}
}
