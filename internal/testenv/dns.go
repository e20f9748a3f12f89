package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// DNSFault is what the DNS server does with a query instead of answering it.
type DNSFault int

const (
	// DNSNoFault answers from the zone.
	DNSNoFault DNSFault = iota
	// DNSServFail answers SERVFAIL (RFC 1035 rcode 2): a temporary failure.
	DNSServFail
	// DNSTimeout drops the query: the client hears nothing and times out.
	DNSTimeout
	// DNSTruncate answers a UDP query with an empty truncated response (TC
	// set), so the client must retry over TCP (RFC 7766), which answers from
	// the zone.
	DNSTruncate
)

// DNSOptions configure a DNSServer; the zero value is usable.
type DNSOptions struct {
	// Addr is the UDP and TCP address, a 127.0.0.x literal with a port;
	// DefaultAddr when empty. With port 0 both transports share one port.
	Addr string
	// NegativeTTL is the SOA minimum sent with NXDOMAIN and empty answers,
	// which bounds negative caching (RFC 2308); 60 seconds when zero.
	NegativeTTL uint32
}

// DNSServer is a real DNS server on loopback, over UDP and TCP, answering
// from a zone the test edits while it runs. It is authoritative for every
// name and follows CNAME chains within its zone as a recursive resolver
// would, so the relay can use it as its only resolver (--dns-server).
type DNSServer struct {
	addr   string
	negTTL uint32
	udp    *dns.Server
	tcp    *dns.Server
	served sync.WaitGroup
	close  sync.Once
	closed chan struct{}

	mu      sync.Mutex
	zone    map[string][]dns.RR // by canonical owner name
	signed  map[string]bool     // zones whose answers are "validated"
	faults  map[dnsKey]DNSFault
	queries map[dnsKey]int
}

// dnsKey is a canonical owner name and an RR type; type 0 stands for every
// type in faults.
type dnsKey struct {
	name  string
	qtype uint16
}

// maxCNAMEChain bounds how many CNAMEs one answer follows, so a loop in the
// zone ends in SERVFAIL rather than spinning.
const maxCNAMEChain = 8

// StartDNSServer starts a DNS server for the test and stops it when the test
// ends.
func StartDNSServer(tb testing.TB, opts DNSOptions) *DNSServer {
	tb.Helper()
	return startFixture(tb, NewDNSServer, opts)
}

// NewDNSServer starts a DNS server that stops when ctx is done or Close is
// called.
func NewDNSServer(ctx context.Context, opts DNSOptions) (*DNSServer, error) {
	addr, err := loopbackAddr(opts.Addr)
	if err != nil {
		return nil, err
	}
	pc, l, err := listenUDPAndTCP(addr)
	if err != nil {
		return nil, err
	}
	s := &DNSServer{
		addr:    l.Addr().String(),
		negTTL:  opts.NegativeTTL,
		closed:  make(chan struct{}),
		zone:    make(map[string][]dns.RR),
		signed:  make(map[string]bool),
		faults:  make(map[dnsKey]DNSFault),
		queries: make(map[dnsKey]int),
	}
	if s.negTTL == 0 {
		s.negTTL = 60
	}
	s.udp = &dns.Server{PacketConn: pc, Handler: s}
	s.tcp = &dns.Server{Listener: l, Handler: s, IdleTimeout: func() time.Duration { return 2 * time.Second }}
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		s.served.Go(func() { _ = srv.ActivateAndServe() })
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			_ = pc.Close()
			_ = l.Close()
			s.served.Wait()
			return nil, errors.New("the DNS server did not start within 10s")
		}
	}
	go closeWhenDone(ctx, s.closed, s.Close)
	return s, nil
}

// listenUDPAndTCP binds UDP and TCP on one port. With port 0 the kernel
// picks a free UDP port, which TCP may find taken: try a few ports.
func listenUDPAndTCP(addr string) (net.PacketConn, net.Listener, error) {
	var lastErr error
	for range 10 {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("DNS server: %w", err)
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, l, nil
		}
		_ = pc.Close()
		lastErr = err
		if !strings.HasSuffix(addr, ":0") {
			break
		}
	}
	return nil, nil, fmt.Errorf("DNS server: binding TCP beside UDP: %w", lastErr)
}

// Addr returns the server's host:port, the same for UDP and TCP: the value
// for the relay's --dns-server flag.
func (s *DNSServer) Addr() string { return s.addr }

// Close stops the server. It is safe to call more than once.
func (s *DNSServer) Close() {
	s.close.Do(func() {
		close(s.closed)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.udp.ShutdownContext(ctx)
		_ = s.tcp.ShutdownContext(ctx)
		s.served.Wait()
	})
}

// Add adds records in zone-file syntax (RFC 1035 section 5), for example
//
//	"example.test. 300 IN MX 10 mx1.example.test."
//	"example.test. MX 0 ."  (a null MX, RFC 7505)
//	"mx1.example.test A 127.0.0.3"
//	"sel._domainkey.example.test TXT \"v=DKIM1; k=ed25519; p=...\""
//
// Names are absolute whether or not they end in a dot; the TTL is 300
// seconds when omitted. Records already present stay: remove them first to
// replace them.
func (s *DNSServer) Add(records ...string) error {
	var parsed []dns.RR
	for _, rec := range records {
		zp := dns.NewZoneParser(strings.NewReader(rec), ".", "")
		zp.SetDefaultTTL(300)
		for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
			rr.Header().Name = dns.CanonicalName(rr.Header().Name)
			parsed = append(parsed, rr)
		}
		if err := zp.Err(); err != nil {
			return fmt.Errorf("DNS record %q: %w", rec, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rr := range parsed {
		name := rr.Header().Name
		s.zone[name] = append(s.zone[name], rr)
	}
	return nil
}

// Remove removes the records of name with type rrtype (dns.TypeMX, ...),
// or every record of name when rrtype is 0.
func (s *DNSServer) Remove(name string, rrtype uint16) {
	name = dns.CanonicalName(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	var kept []dns.RR
	for _, rr := range s.zone[name] {
		if rrtype != 0 && rr.Header().Rrtype != rrtype {
			kept = append(kept, rr)
		}
	}
	if len(kept) == 0 {
		delete(s.zone, name)
		return
	}
	s.zone[name] = kept
}

// Sign makes the server answer for names at or below zone as a validating
// resolver does for a signed zone whose signatures check out: with the AD
// bit (RFC 4035 section 3.2.3) when the query asked for it with AD or DO
// (RFC 6840 section 5.7), for records and denials alike. An answer whose
// CNAME chain leaves the signed zones is not authenticated. A bogus zone is
// SetFault(..., DNSServFail), which is what a validating resolver answers.
func (s *DNSServer) Sign(zone string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.signed[dns.CanonicalName(zone)] = true
}

// Unsign makes zone insecure again.
func (s *DNSServer) Unsign(zone string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.signed, dns.CanonicalName(zone))
}

// isSigned reports whether name is at or below a signed zone; s.mu is held.
func (s *DNSServer) isSigned(name string) bool {
	for z := range s.signed {
		if dns.IsSubDomain(z, name) {
			return true
		}
	}
	return false
}

// SetFault makes queries for name and rrtype (0: every type) fail as f says,
// until it is set back to DNSNoFault. A fault for the exact type wins over
// one for every type.
func (s *DNSServer) SetFault(name string, rrtype uint16, f DNSFault) {
	key := dnsKey{dns.CanonicalName(name), rrtype}
	s.mu.Lock()
	defer s.mu.Unlock()
	if f == DNSNoFault {
		delete(s.faults, key)
		return
	}
	s.faults[key] = f
}

// Queries returns how many queries for name and rrtype (0: every type)
// arrived, over both transports and faults included: a test proves the
// relay caches an answer for its TTL, and no longer, by counting them.
func (s *DNSServer) Queries(name string, rrtype uint16) int {
	name = dns.CanonicalName(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if rrtype != 0 {
		return s.queries[dnsKey{name, rrtype}]
	}
	n := 0
	for k, c := range s.queries {
		if k.name == name {
			n += c
		}
	}
	return n
}

// ResetQueries sets every query count back to zero.
func (s *DNSServer) ResetQueries() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.queries)
}

// ServeDNS answers one query; it implements dns.Handler.
func (s *DNSServer) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 {
		_ = w.WriteMsg(new(dns.Msg).SetRcode(req, dns.RcodeFormatError))
		return
	}
	q := req.Question[0]
	name := dns.CanonicalName(q.Name)
	_, overTCP := w.LocalAddr().(*net.TCPAddr)

	s.mu.Lock()
	s.queries[dnsKey{name, q.Qtype}]++
	fault, ok := s.faults[dnsKey{name, q.Qtype}]
	if !ok {
		fault = s.faults[dnsKey{name, 0}]
	}
	resp := s.answer(req)
	s.mu.Unlock()

	switch fault {
	case DNSTimeout:
		return
	case DNSServFail:
		resp = new(dns.Msg).SetRcode(req, dns.RcodeServerFailure)
		resp.RecursionAvailable = true
	case DNSTruncate:
		if !overTCP {
			resp = new(dns.Msg).SetReply(req)
			resp.Authoritative, resp.RecursionAvailable, resp.Truncated = true, true, true
		}
	case DNSNoFault:
	}
	size := dns.MaxMsgSize
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(dns.DefaultMsgSize, false)
		if !overTCP {
			size = int(opt.UDPSize())
		}
	} else if !overTCP {
		size = dns.MinMsgSize
	}
	// Answers too large for the client's UDP buffer are truncated, TC set,
	// as a real server does: the client retries over TCP.
	resp.Truncate(size)
	_ = w.WriteMsg(resp)
}

// answer builds the response from the zone; s.mu is held.
func (s *DNSServer) answer(req *dns.Msg) *dns.Msg {
	q := req.Question[0]
	resp := new(dns.Msg).SetReply(req)
	resp.Authoritative, resp.RecursionAvailable = true, true
	name := dns.CanonicalName(q.Name)
	do := false
	if opt := req.IsEdns0(); opt != nil {
		do = opt.Do()
	}
	// AD when asked for and every name the answer visits is signed.
	resp.AuthenticatedData = req.AuthenticatedData || do
	for range maxCNAMEChain {
		resp.AuthenticatedData = resp.AuthenticatedData && s.isSigned(name)
		rrs := s.zone[name]
		var match []dns.RR
		var cname *dns.CNAME
		for _, rr := range rrs {
			switch {
			case rr.Header().Rrtype == q.Qtype || q.Qtype == dns.TypeANY:
				match = append(match, dns.Copy(rr))
			case rr.Header().Rrtype == dns.TypeCNAME:
				cname, _ = rr.(*dns.CNAME)
			}
		}
		if len(match) > 0 {
			resp.Answer = append(resp.Answer, match...)
			return resp
		}
		if cname == nil {
			// NXDOMAIN only when no record sits at or below the name: an
			// empty non-terminal exists (RFC 8020).
			if !s.exists(name) {
				resp.Rcode = dns.RcodeNameError
			}
			resp.Ns = []dns.RR{s.soa()}
			return resp
		}
		resp.Answer = append(resp.Answer, dns.Copy(cname))
		name = dns.CanonicalName(cname.Target)
	}
	return new(dns.Msg).SetRcode(req, dns.RcodeServerFailure)
}

// exists reports whether the zone holds name or a name below it; s.mu is
// held.
func (s *DNSServer) exists(name string) bool {
	for owner := range s.zone {
		if dns.IsSubDomain(name, owner) {
			return true
		}
	}
	return false
}

// soa is the record sent with negative answers; its minimum field and TTL
// bound negative caching (RFC 2308 section 5).
func (s *DNSServer) soa() dns.RR {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: ".", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: s.negTTL},
		Ns:      "ns.testenv.invalid.",
		Mbox:    "hostmaster.testenv.invalid.",
		Serial:  1,
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  s.negTTL,
	}
}
