package delivery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// ResolverOptions configure a Resolver. The zero value asks the name
// servers of /etc/resolv.conf.
type ResolverOptions struct {
	// Server is the DNS server as host:port (the relay's --dns-server);
	// empty: the name servers of /etc/resolv.conf, in order.
	Server string
	// Clock times the cache. Default: SystemClock.
	Clock Clock
	// Timeout bounds one query to one server. Default: 5s.
	Timeout time.Duration
	// MaxEntries bounds the cache. Default: 10000.
	MaxEntries int
	// TrustAD trusts the AD bit of the servers' answers (RFC 4035 section
	// 3.2.3): they are validating resolvers, reached over a path no one
	// else can write to (loopback), as RFC 7672 section 2.1 and Postfix
	// require for DANE. Without it every answer counts as insecure, and
	// DANE never applies.
	TrustAD bool
}

// Resolver looks up MX and address records for delivery, over UDP with a
// retry over TCP when the answer is truncated, and caches each answer
// (negative ones included, RFC 2308) for its TTL and no longer. It is safe
// for concurrent use.
type Resolver struct {
	servers  []string
	udp, tcp *dns.Client
	clock    Clock
	timeout  time.Duration
	max      int
	trustAD  bool

	mu    sync.Mutex
	cache map[cacheKey]cacheEntry
}

type cacheKey struct {
	name  string
	qtype uint16
}

type cacheEntry struct {
	a       answer
	expires time.Time
}

// answer is the outcome of one lookup once CNAMEs are followed.
type answer struct {
	// name is the owner of rrs: the name asked, or the target of its
	// CNAME chain.
	name string
	// rrs are the records of the type asked; empty for NODATA.
	rrs []dns.RR
	// nxdomain: the name (or the end of its CNAME chain) does not exist.
	nxdomain bool
	// secure: every response along the chain was validated by the
	// (trusted) resolver, its AD bit set (RFC 4035 section 3.2.3), for
	// the records and for a denial of existence alike.
	secure bool
}

// lookupError is a lookup that gave no answer: a timeout, SERVFAIL,
// REFUSED, a malformed response. It is always temporary.
type lookupError struct {
	name  string
	qtype uint16
	err   error
}

func (e *lookupError) Error() string {
	return fmt.Sprintf("DNS lookup of %s %s: %v", e.name, dns.TypeToString[e.qtype], e.err)
}

func (e *lookupError) Unwrap() error { return e.err }

// maxCNAMEs bounds the CNAME chain followed for one lookup (and so the
// queries it takes), as resolvers do, so a loop ends.
const maxCNAMEs = 8

// NewResolver returns a resolver as opts say.
func NewResolver(opts ResolverOptions) (*Resolver, error) {
	r := &Resolver{
		clock:   opts.Clock,
		timeout: opts.Timeout,
		max:     opts.MaxEntries,
		trustAD: opts.TrustAD,
		cache:   make(map[cacheKey]cacheEntry),
		udp:     &dns.Client{Net: "udp"},
		tcp:     &dns.Client{Net: "tcp"},
	}
	if r.clock == nil {
		r.clock = SystemClock{}
	}
	if r.timeout <= 0 {
		r.timeout = 5 * time.Second
	}
	if r.max <= 0 {
		r.max = 10000
	}
	if opts.Server != "" {
		if _, _, err := net.SplitHostPort(opts.Server); err != nil {
			return nil, fmt.Errorf("DNS server %q: %w", opts.Server, err)
		}
		r.servers = []string{opts.Server}
		return r, r.checkTrust()
	}
	cfg, err := dns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil {
		return nil, fmt.Errorf("system resolver: %w", err)
	}
	for _, s := range cfg.Servers {
		r.servers = append(r.servers, net.JoinHostPort(s, cfg.Port))
	}
	if len(r.servers) == 0 {
		return nil, errors.New("system resolver: /etc/resolv.conf names no server")
	}
	return r, r.checkTrust()
}

// checkTrust refuses to trust the AD bit of a server off loopback: it
// crossed a network anyone on the path can write to, so it proves nothing
// (RFC 4035 section 4.9.3, RFC 7672 section 2.1).
func (r *Resolver) checkTrust() error {
	if !r.trustAD {
		return nil
	}
	for _, s := range r.servers {
		host, _, _ := net.SplitHostPort(s)
		ip, err := netip.ParseAddr(host)
		if err != nil || !ip.Unmap().IsLoopback() {
			return fmt.Errorf("DNSSEC: the AD bit is trusted only from a validating resolver on loopback, and DNS server %s is not one (run a validating resolver such as unbound beside the relay and point --dns-server at it)", s)
		}
	}
	return nil
}

// lookup returns the records of type qtype for name, from the cache while
// they live.
func (r *Resolver) lookup(ctx context.Context, name string, qtype uint16) (answer, error) {
	name = dns.CanonicalName(name)
	key := cacheKey{name, qtype}
	now := r.clock.Now()
	r.mu.Lock()
	e, ok := r.cache[key]
	r.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.a, nil
	}
	a, ttl, err := r.resolve(ctx, name, qtype)
	if err != nil {
		return answer{}, err
	}
	if ttl > 0 {
		r.store(key, cacheEntry{a: a, expires: now.Add(time.Duration(ttl) * time.Second)}, now)
	}
	return a, nil
}

// store caches an entry, first dropping expired ones when the cache is
// full, then arbitrary ones.
func (r *Resolver) store(key cacheKey, e cacheEntry, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.cache) >= r.max {
		for k, old := range r.cache {
			if !now.Before(old.expires) {
				delete(r.cache, k)
			}
		}
		for k := range r.cache {
			if len(r.cache) < r.max*9/10 {
				break
			}
			delete(r.cache, k)
		}
	}
	r.cache[key] = e
}

// resolve asks the servers, following CNAMEs in the answer (RFC 1034
// section 3.6.2) and asking again for a target the answer leaves out. The
// TTL is the smallest along the chain; for NXDOMAIN and NODATA it is the
// SOA's (RFC 2308 section 5), or 0 (not cached) without one.
func (r *Resolver) resolve(ctx context.Context, name string, qtype uint16) (answer, uint32, error) {
	ttl := uint32(1<<31 - 1)
	cur := name
	secure := r.trustAD
	for range maxCNAMEs {
		msg, err := r.exchange(ctx, cur, qtype)
		if err != nil {
			return answer{}, 0, &lookupError{name: cur, qtype: qtype, err: err}
		}
		secure = secure && msg.AuthenticatedData
		start := cur
		var rrs []dns.RR
		for hops := 0; ; hops++ {
			var cname *dns.CNAME
			for _, rr := range msg.Answer {
				h := rr.Header()
				if dns.CanonicalName(h.Name) != cur {
					continue
				}
				switch {
				case h.Rrtype == qtype:
					rrs = append(rrs, rr)
					ttl = min(ttl, h.Ttl)
				case h.Rrtype == dns.TypeCNAME && cname == nil:
					cname = rr.(*dns.CNAME)
				}
			}
			if len(rrs) > 0 || cname == nil || hops == maxCNAMEs {
				break
			}
			ttl = min(ttl, cname.Hdr.Ttl)
			cur = dns.CanonicalName(cname.Target)
		}
		if len(rrs) > 0 {
			return answer{name: cur, rrs: rrs, secure: secure}, ttl, nil
		}
		if msg.Rcode == dns.RcodeNameError {
			return answer{name: cur, nxdomain: true, secure: secure}, min(ttl, negativeTTL(msg)), nil
		}
		if cur == start || negativeTTL(msg) > 0 {
			// NODATA for the end of the chain.
			return answer{name: cur, secure: secure}, min(ttl, negativeTTL(msg)), nil
		}
		// The answer stopped at a CNAME target: ask for it.
	}
	return answer{}, 0, &lookupError{name: name, qtype: qtype, err: errors.New("CNAME chain too long")}
}

// negativeTTL is how long a negative answer may be cached: the SOA record's
// TTL bounded by its minimum field (RFC 2308 section 5).
func negativeTTL(msg *dns.Msg) uint32 {
	for _, rr := range msg.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return min(soa.Hdr.Ttl, soa.Minttl)
		}
	}
	return 0
}

// exchange sends one query to each server in turn until one answers with
// NOERROR or NXDOMAIN; a truncated UDP answer is asked again over TCP.
func (r *Resolver) exchange(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	q.RecursionDesired = true
	// AD in a query asks a validating resolver to say whether it validated
	// the answer (RFC 6840 section 5.7), without the RRSIGs that DO would
	// bring.
	q.AuthenticatedData = r.trustAD
	q.SetEdns0(1232, false)
	var lastErr error
	for _, server := range r.servers {
		msg, err := r.exchangeWith(ctx, q, server)
		switch {
		case err != nil:
			lastErr = err
		case msg.Rcode != dns.RcodeSuccess && msg.Rcode != dns.RcodeNameError:
			lastErr = fmt.Errorf("%s from %s", dns.RcodeToString[msg.Rcode], server)
		default:
			return msg, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

func (r *Resolver) exchangeWith(ctx context.Context, q *dns.Msg, server string) (*dns.Msg, error) {
	qctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	msg, _, err := r.udp.ExchangeContext(qctx, q, server)
	if err == nil && msg.Truncated {
		msg, _, err = r.tcp.ExchangeContext(qctx, q, server)
	}
	if err != nil {
		return nil, err
	}
	if len(msg.Question) != 1 || !dns.IsFqdn(msg.Question[0].Name) ||
		dns.CanonicalName(msg.Question[0].Name) != dns.CanonicalName(q.Question[0].Name) {
		return nil, fmt.Errorf("answer from %s does not match the question", server)
	}
	return msg, nil
}

// mxHost is one mail host of a domain.
type mxHost struct {
	name string
	pref uint16
	// implicit: the domain has no MX and is its own mail host (RFC 5321
	// section 5.1).
	implicit bool
}

// mx returns the mail hosts of domain in preference order (equal
// preferences in the order shuffle leaves them), whether the MX RRset (or
// the denial of one) is DNSSEC-secure, or why mail to it cannot be routed:
// NXDOMAIN (5.1.2) and a null MX (RFC 7505, 5.1.10) are final, a failed
// lookup temporary (4.4.3).
func (r *Resolver) mx(ctx context.Context, domain string, shuffle func([]mxHost)) ([]mxHost, bool, *failure) {
	a, err := r.lookup(ctx, domain, dns.TypeMX)
	switch {
	case err != nil:
		return nil, false, localFailure(false, CauseDNS, "4.4.3", "%v", err)
	case a.nxdomain:
		return nil, false, localFailure(true, CauseDNS, "5.1.2", "domain %s does not exist (NXDOMAIN)", domain)
	case len(a.rrs) == 0:
		// RFC 5321 section 5.1: no MX, the domain (after its CNAMEs) is
		// its own mail host, preference 0.
		return []mxHost{{name: a.name, implicit: true}}, a.secure, nil
	}
	var hosts []mxHost
	null := false
	for _, rr := range a.rrs {
		m := rr.(*dns.MX)
		if m.Mx == "." {
			null = true
			continue
		}
		hosts = append(hosts, mxHost{name: dns.CanonicalName(m.Mx), pref: m.Preference})
	}
	if len(hosts) == 0 && null {
		// RFC 7505 section 3: a null MX says the domain takes no mail.
		return nil, false, localFailure(true, CauseDNS, "5.1.10", "domain %s accepts no mail (null MX)", domain)
	}
	slices.SortStableFunc(hosts, func(x, y mxHost) int { return int(x.pref) - int(y.pref) })
	for i := 0; i < len(hosts); {
		j := i + 1
		for j < len(hosts) && hosts[j].pref == hosts[i].pref {
			j++
		}
		if j-i > 1 && shuffle != nil {
			shuffle(hosts[i:j])
		}
		i = j
	}
	return hosts, a.secure, nil
}

// hostAddrs are a host's addresses as one attempt found them.
type hostAddrs struct {
	addrs []netip.Addr
	// secure: every lookup that was made answered DNSSEC-secure (RFC 7672
	// section 2.2.2: TLSA records are looked up only for such a host).
	secure bool
	// name is the end of the host's CNAME chain (the first lookup's),
	// the host name itself without one: the TLSA base domain to try first
	// when the chain is secure (RFC 7672 section 2.2.2).
	name string
}

// addrs returns host's addresses, IPv4 first, then IPv6 unless v6 is false.
// notFound is set when neither lookup found the name or an address; err
// when no address was found and a lookup failed.
func (r *Resolver) addrs(ctx context.Context, host string, v4, v6 bool) (ha hostAddrs, notFound bool, err error) {
	notFound = true
	ha.secure = r.trustAD
	ha.name = dns.CanonicalName(host)
	var errs []error
	types := []uint16{}
	if v4 {
		types = append(types, dns.TypeA)
	}
	if v6 {
		types = append(types, dns.TypeAAAA)
	}
	for i, t := range types {
		a, lerr := r.lookup(ctx, host, t)
		if lerr != nil {
			errs = append(errs, lerr)
			notFound = false
			ha.secure = false
			continue
		}
		ha.secure = ha.secure && a.secure
		if i == 0 {
			ha.name = a.name
		}
		for _, rr := range a.rrs {
			var ip net.IP
			switch rr := rr.(type) {
			case *dns.A:
				ip = rr.A
			case *dns.AAAA:
				ip = rr.AAAA
			}
			if addr, ok := netip.AddrFromSlice(ip); ok {
				ha.addrs = append(ha.addrs, addr.Unmap())
			}
		}
	}
	if len(ha.addrs) > 0 {
		return ha, false, nil
	}
	return hostAddrs{name: ha.name}, notFound && len(errs) == 0, errors.Join(errs...)
}

// tlsa looks up the TLSA records of a host's SMTP port (RFC 7672 section
// 2.2.3: "_25._tcp.<host>", with the port actually used). secure tells
// whether the answer, records or their denial, was validated; an error is
// a failed lookup (SERVFAIL, timeout: a validating resolver answers
// SERVFAIL for bogus data), which RFC 7672 section 2.2 treats as a reason
// not to deliver to that host.
func (r *Resolver) tlsa(ctx context.Context, host string, port int) (rrs []*dns.TLSA, secure bool, err error) {
	name := "_" + strconv.Itoa(port) + "._tcp." + dns.CanonicalName(host)
	a, err := r.lookup(ctx, name, dns.TypeTLSA)
	if err != nil {
		return nil, false, err
	}
	for _, rr := range a.rrs {
		if t, ok := rr.(*dns.TLSA); ok {
			rrs = append(rrs, t)
		}
	}
	return rrs, a.secure, nil
}

// LookupTXT returns the TXT records of name, each record's strings joined
// (RFC 7208 section 3.3 and RFC 8461 section 3.1 read them so); none, and
// no error, for NXDOMAIN and NODATA. MTA-STS and TLS-RPT ask through it, so
// they use the relay's DNS server and cache.
func (r *Resolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	a, err := r.lookup(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range a.rrs {
		if t, ok := rr.(*dns.TXT); ok {
			out = append(out, strings.Join(t.Txt, ""))
		}
	}
	return out, nil
}

// LookupHost returns host's IPv4 and IPv6 addresses (IPv4 first), for the
// HTTPS clients of MTA-STS and TLS-RPT.
func (r *Resolver) LookupHost(ctx context.Context, host string) ([]netip.Addr, error) {
	ha, notFound, err := r.addrs(ctx, host, true, true)
	switch {
	case len(ha.addrs) > 0:
		return ha.addrs, nil
	case err != nil:
		return nil, err
	case notFound:
		return nil, fmt.Errorf("host %s not found", strings.TrimSuffix(host, "."))
	default:
		return nil, fmt.Errorf("host %s has no address", strings.TrimSuffix(host, "."))
	}
}
