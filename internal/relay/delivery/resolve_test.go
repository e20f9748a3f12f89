package delivery

import (
	"net"
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
	hosts, f := r.mx(ctx(t), "alias.test", nil)
	if f != nil {
		t.Fatal(f.reply)
	}
	if len(hosts) != 1 || hosts[0].name != "mx.target.test." || queries.Load() != 2 {
		t.Errorf("hosts %+v after %d queries", hosts, queries.Load())
	}
	// Cached: no more queries.
	if _, f := r.mx(ctx(t), "alias.test", nil); f != nil || queries.Load() != 2 {
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
		if addrs, _, err := r.addrs(ctx(t), name, true, false); err != nil || len(addrs) != 1 {
			t.Fatalf("%s: %v %v", name, addrs, err)
		}
	}
	r.mu.Lock()
	n := len(r.cache)
	r.mu.Unlock()
	if n > 2 {
		t.Errorf("%d cache entries, at most 2", n)
	}
}
