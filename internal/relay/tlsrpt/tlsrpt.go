package tlsrpt

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// PolicyType is a section 4.3 policy-type.
type PolicyType string

// The policy types of RFC 8460 section 4.3.
const (
	PolicyTLSA     PolicyType = "tlsa"
	PolicySTS      PolicyType = "sts"
	PolicyNotFound PolicyType = "no-policy-found"
)

// The result types of RFC 8460 section 4.3: negotiation failures, then
// policy failures.
const (
	ResultSTARTTLSNotSupported    = "starttls-not-supported"
	ResultCertificateHostMismatch = "certificate-host-mismatch"
	ResultCertificateExpired      = "certificate-expired"
	ResultCertificateNotTrusted   = "certificate-not-trusted"
	ResultValidationFailure       = "validation-failure"
	ResultTLSAInvalid             = "tlsa-invalid"
	ResultDNSSECInvalid           = "dnssec-invalid"
	ResultDANERequired            = "dane-required"
	ResultSTSPolicyFetchError     = "sts-policy-fetch-error"
	ResultSTSPolicyInvalid        = "sts-policy-invalid"
	ResultSTSWebPKIInvalid        = "sts-webpki-invalid"
)

// Policy is the policy that applied to a session (section 4.4 "policy").
type Policy struct {
	Type PolicyType
	// Strings is the policy-string: the TLSA records in presentation
	// format, or the lines of the STS policy; none for no-policy-found.
	Strings []string
	// Domain is the policy-domain: the domain whose _smtp._tls record
	// names where the report goes.
	Domain string
	// MXHosts is the mx-host list: the STS policy's mx patterns.
	MXHosts []string
}

// Session is one delivery session's TLS outcome towards a policy domain
// (the recipient domain).
type Session struct {
	Policy Policy
	// Failure is nil for a successful session.
	Failure *Failure
	// Time places the session in its UTC day; the zero Time means now.
	Time time.Time
}

// Failure is a failed session's failure-details (section 4.4).
type Failure struct {
	// Result is a section 4.3 result-type (the Result constants); ""
	// counts as validation-failure.
	Result                            string
	SendingMTAIP, ReceivingIP         netip.Addr
	ReceivingMXHostname               string
	ReceivingMXHelo                   string
	AdditionalInfo, FailureReasonCode string
}

// Clock tells the time.
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Options configure a Reporter. OrganizationName, Submitter and, for
// mailto: reports, From and Submit are required; the rest have defaults.
type Options struct {
	// Dir keeps the counts and the sending state; "" keeps them in memory.
	Dir string
	// Clock dates sessions without a Time and decides when a day is over;
	// default the system clock. Run waits with the time package's timers
	// (tests of Run use testing/synctest).
	Clock Clock
	// OrganizationName and ContactInfo are the report's organization-name
	// and contact-info (section 4.4); ContactInfo defaults to From.
	OrganizationName, ContactInfo string
	// Submitter is the reporting domain, the relay's host name or its
	// organisation's domain: the Subject's and TLS-Report-Submitter's
	// submitter and the first part of the attachment's name (section 5.3).
	Submitter string
	// From is the address reports by mail come from (From field and
	// envelope sender).
	From string
	// Submit takes a complete mailto: report message; nil leaves mailto:
	// URIs unused.
	Submit func(ctx context.Context, from string, to []string, message []byte) error
	// LookupTXT finds the _smtp._tls record (each record's strings
	// joined; none or a *net.DNSError that IsNotFound for a name without
	// one), LookupHost the addresses of an https: URI's host. The relay
	// passes its delivery.Resolver's; default net.DefaultResolver's.
	LookupTXT  func(ctx context.Context, name string) ([]string, error)
	LookupHost func(ctx context.Context, host string) ([]netip.Addr, error)
	// RootCAs verify https: receivers; nil: the system roots.
	RootCAs *x509.CertPool
	// AllowAddr decides which addresses an https: POST may go to; nil
	// allows public unicast addresses only (not loopback, private,
	// link-local, unspecified or multicast).
	AllowAddr func(netip.Addr) bool
	// HTTPTimeout bounds one POST, connection included; default 30s.
	HTTPTimeout time.Duration
	// SubmitTimeout bounds one Submit and one TXT lookup; default 30s.
	SubmitTimeout time.Duration
	// MaxDelay bounds the random delay after the end of a day before its
	// reports go out; 0 means 4 hours, a negative value no delay.
	MaxDelay time.Duration
	// SaveInterval is how often changed counts are written; default 5s.
	SaveInterval time.Duration
	// RetryBackoff is the wait after a report's first failed attempt,
	// doubled after each further one; default 10 minutes.
	RetryBackoff time.Duration
	// MaxAttempts bounds the attempts per report; default 6.
	MaxAttempts int
	// KeepDays is how many days past its end a day's counts are kept
	// (sent or not); default 3.
	KeepDays int
	// MaxDomains, MaxPolicies and MaxFailureDetails bound the state: policy
	// domains a day (default 10000), policies a domain and day (default 8),
	// failure-details a policy (default 32).
	MaxDomains, MaxPolicies, MaxFailureDetails int
	// MaxDayBytes bounds the strings a day's counts hold, roughly its
	// memory and file size; default 32 MiB.
	MaxDayBytes int64
	// Logger receives what happens to reports; nil discards it.
	Logger *slog.Logger
}

// maxField bounds each string a session adds to the state.
const maxField = 256

// maxPolicyStrings bounds the policy-string lines and mx-host patterns of
// one policy.
const maxPolicyStrings = 16

// entryOverhead is what an entry of the counts costs besides its strings,
// for MaxDayBytes.
const entryOverhead = 64

// retryWindow is how long after its first attempt a report may still be
// retried (RFC 8460 section 5.5: "for up to 24 hours").
const retryWindow = 24 * time.Hour

// ErrNoSessions is Report's error for a domain and day without counts.
var ErrNoSessions = errors.New("tlsrpt: no sessions recorded")

// Reporter counts sessions and sends the reports.
type Reporter struct {
	opts    Options
	dropped atomic.Int64
	save    sync.Mutex // one writer of the files at a time

	mu   sync.Mutex
	days map[string]*dayState // by YYYY-MM-DD
	// sending are the reports an attempt is under way for, by Run or by
	// Send: one attempt at a time per report.
	sending map[jobKey]bool
}

// Open checks opts and loads the counts kept in opts.Dir.
func Open(opts Options) (*Reporter, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	r := &Reporter{opts: opts, days: make(map[string]*dayState), sending: make(map[jobKey]bool)}
	if opts.Dir != "" {
		if err := r.load(); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func (o *Options) defaults() error {
	switch {
	case o.OrganizationName == "":
		return errors.New("tlsrpt: the organization name is required (RFC 8460 section 4.4 organization-name)")
	case o.Submitter == "" || strings.ContainsAny(o.Submitter, "!@ \t\r\n<>"):
		return fmt.Errorf("tlsrpt: the submitter %q is not a domain name (RFC 8460 section 5.3)", o.Submitter)
	case o.Submit != nil && o.From == "":
		return errors.New("tlsrpt: reports by mail need a From address")
	}
	if o.ContactInfo == "" {
		o.ContactInfo = o.From
	}
	if o.ContactInfo == "" {
		return errors.New("tlsrpt: the contact info is required (RFC 8460 section 4.4 contact-info)")
	}
	if o.Clock == nil {
		o.Clock = systemClock{}
	}
	if o.LookupTXT == nil {
		o.LookupTXT = net.DefaultResolver.LookupTXT
	}
	if o.LookupHost == nil {
		o.LookupHost = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	if o.AllowAddr == nil {
		o.AllowAddr = PublicUnicast
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	setDefault(&o.HTTPTimeout, 30*time.Second)
	setDefault(&o.SubmitTimeout, 30*time.Second)
	setDefault(&o.MaxDelay, 4*time.Hour)
	setDefault(&o.SaveInterval, 5*time.Second)
	setDefault(&o.RetryBackoff, 10*time.Minute)
	setDefault(&o.MaxAttempts, 6)
	setDefault(&o.KeepDays, 3)
	setDefault(&o.MaxDomains, 10000)
	setDefault(&o.MaxPolicies, 8)
	setDefault(&o.MaxFailureDetails, 32)
	if o.MaxDayBytes == 0 {
		o.MaxDayBytes = 32 << 20
	}
	return nil
}

func setDefault[T time.Duration | int](v *T, def T) {
	if *v == 0 {
		*v = def
	}
}

// notPublic are ranges that IsGlobalUnicast lets through but that reach
// no receiver on the internet: 0.0.0.0/8 connects to the local host on
// Linux (RFC 1122 section 3.2.1.3), 100.64.0.0/10 is carrier-grade NAT
// (RFC 6598) and holds a cloud metadata endpoint (100.100.100.200).
var notPublic = [...]netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
}

// PublicUnicast is the default AllowAddr, and the relay's rule for every
// address a stranger's DNS gives it (MTA-STS policy hosts too): not
// loopback, private (RFC 1918, RFC 4193), link-local (the metadata
// endpoints at 169.254.169.254), unspecified, multicast or one of
// notPublic.
func PublicUnicast(a netip.Addr) bool {
	a = a.Unmap()
	if !a.IsGlobalUnicast() || a.IsPrivate() {
		return false
	}
	for _, p := range notPublic {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

// Dropped returns how many sessions were not counted: past a bound, too
// far from today, or late for a report already going out.
func (r *Reporter) Dropped() int64 { return r.dropped.Load() }

// Record counts one session. It takes a mutex and touches a few maps, and
// never waits on I/O.
func (r *Reporter) Record(s Session) {
	domain := normalizeDomain(s.Policy.Domain)
	if domain == "" {
		r.dropped.Add(1)
		return
	}
	now := r.opts.Clock.Now()
	t := s.Time
	if t.IsZero() {
		t = now
	}
	day := dayOf(t)
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.count(day, now, domain, s) {
		r.dropped.Add(1)
	}
}

// count adds s to its day's counts, or reports false.
func (r *Reporter) count(day time.Time, now time.Time, domain string, s Session) bool {
	today := dayOf(now)
	if day.Before(today.AddDate(0, 0, -1)) || day.After(today.AddDate(0, 0, 1)) {
		return false
	}
	var kb [len(time.DateOnly)]byte
	key := day.AppendFormat(kb[:0], time.DateOnly)
	d := r.days[string(key)]
	if d == nil {
		d = r.newDay(day)
		r.days[d.Day] = d
	}
	b := budget{d: d, max: r.opts.MaxDayBytes}
	dom := d.Domains[domain]
	if dom == nil {
		if len(d.Domains) >= r.opts.MaxDomains || !b.admit(len(domain)+entryOverhead) {
			return false
		}
		dom = &domainState{UniqueID: newUniqueID()}
		d.Domains[domain] = dom
	}
	if !dom.First.IsZero() {
		return false // the report is going out: its counts are final
	}
	p := dom.policy(s.Policy, domain, r.opts.MaxPolicies, b)
	if p == nil {
		return false
	}
	d.dirty = true
	if s.Failure == nil {
		p.Success++
		return true
	}
	p.Failure++
	f := *s.Failure
	if f.Result == "" {
		f.Result = ResultValidationFailure // result-type is required (section 4.4)
	}
	p.detail(f, r.opts.MaxFailureDetails, b)
	return true
}

func (r *Reporter) newDay(day time.Time) *dayState {
	var delay time.Duration
	if r.opts.MaxDelay > 0 {
		delay = mrand.N(r.opts.MaxDelay) //nolint:gosec // spreading the load needs no secrecy
	}
	return &dayState{Day: day.Format(time.DateOnly), SendAt: day.AddDate(0, 0, 1).Add(delay), Domains: make(map[string]*domainState)}
}

// budget admits what a day's strings may still take (MaxDayBytes).
type budget struct {
	d   *dayState
	max int64
}

func (b budget) admit(n int) bool {
	if b.d.Size+int64(n) > b.max {
		return false
	}
	b.d.Size += int64(n)
	return true
}

// dayOf is the start of t's UTC day.
func dayOf(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

func normalizeDomain(d string) string {
	d = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(d), "."))
	if len(d) > 253 || strings.ContainsAny(d, " \t\r\n/!@") {
		return ""
	}
	return d
}

func bounded(p Policy, domain string) Policy {
	out := Policy{Type: PolicyType(cut(string(p.Type))), Domain: domain}
	for i, s := range p.Strings {
		if i == maxPolicyStrings {
			break
		}
		out.Strings = append(out.Strings, cut(s))
	}
	for i, s := range p.MXHosts {
		if i == maxPolicyStrings {
			break
		}
		out.MXHosts = append(out.MXHosts, cut(s))
	}
	return out
}

func boundedFailure(f Failure) Failure {
	f.Result = cut(f.Result)
	f.ReceivingMXHostname = cut(f.ReceivingMXHostname)
	f.ReceivingMXHelo = cut(f.ReceivingMXHelo)
	f.AdditionalInfo = cut(f.AdditionalInfo)
	f.FailureReasonCode = cut(f.FailureReasonCode)
	return f
}

// cut shortens s to maxField bytes, dropping a rune cut in two.
func cut(s string) string {
	if len(s) <= maxField {
		return s
	}
	return strings.ToValidUTF8(s[:maxField], "")
}

func newUniqueID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

// Report returns the section 4 JSON report of domain for the UTC day that
// holds day, with the counts so far; ErrNoSessions when there are none.
func (r *Reporter) Report(domain string, day time.Time) ([]byte, error) {
	domain = normalizeDomain(domain)
	day = dayOf(day)
	r.mu.Lock()
	defer r.mu.Unlock()
	d := r.days[day.Format(time.DateOnly)]
	if d == nil || d.Domains[domain] == nil {
		return nil, fmt.Errorf("%w for %s on %s", ErrNoSessions, domain, day.Format(time.DateOnly))
	}
	return r.reportJSON(day, d.Domains[domain])
}
