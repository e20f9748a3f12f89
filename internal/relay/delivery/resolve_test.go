package delivery

import (
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
)

// A resolver that answers a CNAME without its target's records (as some
// forwarders do) makes the client ask for the target itself.
func TestResolverAsksForCNAMETarget(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var queries atomic.Int32
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		queries.Add(1)
		resp := new(dns.Msg).SetReply(req)
		switch q := req.Question[0]; q.Name {
		case "alias.test.":
			rr, _ := dns.NewRR("alias.test. 300 IN CNAME target.test.")
			resp.Answer = append(resp.Answer, rr)
		case "target.test.":
			rr, _ := dns.NewRR("target.test. 300 IN MX 10 mx.target.test.")
			resp.Answer = append(resp.Answer, rr)
		default:
			resp.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(resp)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })

	r, err := NewResolver(ResolverOptions{Server: pc.LocalAddr().String(), Clock: newFakeClock()})
	if err != nil {
		t.Fatal(err)
	}
	hosts, _, f := r.mx(ctx(t), "alias.test", nil)
	if f != nil {
		t.Fatal(f.reply)
	}
	if len(hosts) != 1 || hosts[0].name != "mx.target.test." || queries.Load() != 2 {
		t.Errorf("hosts %+v after %d queries", hosts, queries.Load())
	}
	// Cached: no more queries.
	if _, _, f := r.mx(ctx(t), "alias.test", nil); f != nil || queries.Load() != 2 {
		t.Errorf("%d queries, want the cached answer", queries.Load())
	}
}

func TestResolverCacheBounded(t *testing.T) {
	e := newEnv(t)
	for _, name := range []string{"a.test", "b.test", "c.test", "d.test"} {
		e.dnsAdd(name + ". A 127.0.0.9")
	}
	r, err := NewResolver(ResolverOptions{Server: e.dns.Addr(), Clock: e.clock, MaxEntries: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a.test", "b.test", "c.test", "d.test"} {
		if ha, _, err := r.addrs(ctx(t), name, true, false); err != nil || len(ha.addrs) != 1 {
			t.Fatalf("%s: %v %v", name, ha.addrs, err)
		}
	}
	r.mu.Lock()
	n := len(r.cache)
	r.mu.Unlock()
	if n > 2 {
		t.Errorf("%d cache entries, at most 2", n)
	}
}

// The resolver carries the AD bit of a trusted validating resolver into
// each answer: signed MX, address and TLSA records are secure, a CNAME that
// leaves the signed zone or an untrusted server is not (RFC 7672 section
// 2.1, 2.2).
func TestResolverSecureAnswers(t *testing.T) {
	e := newEnv(t)
	e.dnsAdd(
		"signed.test. MX 10 mx.signed.test.",
		"mx.signed.test. A 127.0.0.9",
		"_25._tcp.mx.signed.test. TLSA 3 1 1 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		"alias.signed.test. CNAME mx.plain.test.",
		"mx.plain.test. A 127.0.0.10",
		"plain.test. MX 10 mx.plain.test.",
		"_mta-sts.plain.test. TXT \"v=STSv1; \" \"id=20240101\"",
	)
	e.dns.Sign("signed.test")
	trusting, err := NewResolver(ResolverOptions{Server: e.dns.Addr(), Clock: e.clock, TrustAD: true})
	if err != nil {
		t.Fatal(err)
	}
	untrusting, err := NewResolver(ResolverOptions{Server: e.dns.Addr(), Clock: e.clock})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		r                *Resolver
		domain, host     string
		mxSecure, secure bool
	}{
		{trusting, "signed.test", "mx.signed.test.", true, true},
		{trusting, "plain.test", "mx.plain.test.", false, false},
		{untrusting, "signed.test", "mx.signed.test.", false, false},
	} {
		hosts, secure, f := c.r.mx(ctx(t), c.domain, nil)
		if f != nil || len(hosts) != 1 || hosts[0].name != c.host || secure != c.mxSecure {
			t.Errorf("%s (trust %v): MX %+v secure %v %v", c.domain, c.r.trustAD, hosts, secure, f)
		}
		ha, _, err := c.r.addrs(ctx(t), c.host, true, true)
		if err != nil || len(ha.addrs) != 1 || ha.secure != c.secure {
			t.Errorf("%s (trust %v): addresses %+v: %v", c.host, c.r.trustAD, ha, err)
		}
	}
	rrs, secure, err := trusting.tlsa(ctx(t), "mx.signed.test.", 25)
	if err != nil || len(rrs) != 1 || !secure || rrs[0].Usage != 3 {
		t.Errorf("TLSA: %v secure %v %v", rrs, secure, err)
	}
	// A secure denial: no TLSA at another port.
	if rrs, secure, err := trusting.tlsa(ctx(t), "mx.signed.test.", 2525); err != nil || len(rrs) != 0 || !secure {
		t.Errorf("TLSA at 2525: %v secure %v %v", rrs, secure, err)
	}
	// The chain leaves the signed zone: not secure, and the base domain
	// is the chain's end.
	ha, _, err := trusting.addrs(ctx(t), "alias.signed.test", true, false)
	if err != nil || ha.secure || ha.name != "mx.plain.test." {
		t.Errorf("alias: %+v %v", ha, err)
	}
	txt, err := trusting.LookupTXT(ctx(t), "_mta-sts.plain.test")
	if err != nil || len(txt) != 1 || txt[0] != "v=STSv1; id=20240101" {
		t.Errorf("TXT %q %v", txt, err)
	}
	if txt, err := trusting.LookupTXT(ctx(t), "_smtp._tls.plain.test"); err != nil || len(txt) != 0 {
		t.Errorf("no TXT: %q %v", txt, err)
	}
	if addrs, err := trusting.LookupHost(ctx(t), "mx.plain.test"); err != nil || len(addrs) != 1 || addrs[0].String() != "127.0.0.10" {
		t.Errorf("LookupHost %v %v", addrs, err)
	}
	if _, err := trusting.LookupHost(ctx(t), "nowhere.test"); err == nil {
		t.Error("LookupHost of a missing host: no error")
	}
}

// The AD bit is trusted only from loopback.
func TestResolverTrustsADOnlyOnLoopback(t *testing.T) {
	if _, err := NewResolver(ResolverOptions{Server: "192.0.2.1:53", TrustAD: true}); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("a remote validating resolver: %v", err)
	}
	if _, err := NewResolver(ResolverOptions{Server: "[::1]:53", TrustAD: true}); err != nil {
		t.Errorf("::1: %v", err)
	}
	if _, err := NewResolver(ResolverOptions{Server: "192.0.2.1:53"}); err != nil {
		t.Errorf("a remote resolver, AD not trusted: %v", err)
	}
}
