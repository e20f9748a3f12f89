package testenv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// query asks the server over network ("udp" or "tcp") without EDNS0.
func query(t *testing.T, s *DNSServer, network, name string, qtype uint16) (*dns.Msg, error) {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	m := new(dns.Msg).SetQuestion(dns.Fqdn(name), qtype)
	resp, _, err := c.Exchange(m, s.Addr())
	return resp, err
}

func mustQuery(t *testing.T, s *DNSServer, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	resp, err := query(t, s, network, name, qtype)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return resp
}

func mustAdd(t *testing.T, s *DNSServer, records ...string) {
	t.Helper()
	if err := s.Add(records...); err != nil {
		t.Fatal(err)
	}
}

// answers renders the answer section without owner names' TTL noise.
func answers(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		out = append(out, strings.Join(strings.Fields(rr.String()), " "))
	}
	return out
}

func TestDNSZone(t *testing.T) {
	s := StartDNSServer(t, DNSOptions{NegativeTTL: 30})
	mustAdd(t, s,
		"example.test. 600 IN MX 20 mx2.example.test.",
		"example.test MX 10 mx1.example.test",
		"mx1.example.test. 60 A 127.0.0.3",
		"mx1.example.test. 60 AAAA ::1",
		"mx2.example.test. A 127.0.0.4",
		"alias.example.test. 120 CNAME alias2.example.test.",
		"alias2.example.test. CNAME example.test.",
		"loop1.test. CNAME loop2.test.",
		"loop2.test. CNAME loop1.test.",
		"dangling.test. CNAME nowhere.test.",
		"nullmx.test. MX 0 .",
		"deep.sub.zone.test. A 127.0.0.9",
		`sel._domainkey.example.test. TXT "v=DKIM1; k=ed25519; " "p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="`,
	)
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			tests := []struct {
				name      string
				qtype     uint16
				rcode     int
				want      []string
				negTTL    bool
				mxInOrder []uint16
			}{
				{name: "example.test", qtype: dns.TypeMX, want: []string{
					"example.test. 600 IN MX 20 mx2.example.test.",
					"example.test. 300 IN MX 10 mx1.example.test.",
				}},
				{name: "MX1.Example.Test", qtype: dns.TypeA, want: []string{"mx1.example.test. 60 IN A 127.0.0.3"}},
				{name: "mx1.example.test", qtype: dns.TypeAAAA, want: []string{"mx1.example.test. 60 IN AAAA ::1"}},
				{name: "alias.example.test", qtype: dns.TypeMX, want: []string{
					"alias.example.test. 120 IN CNAME alias2.example.test.",
					"alias2.example.test. 300 IN CNAME example.test.",
					"example.test. 600 IN MX 20 mx2.example.test.",
					"example.test. 300 IN MX 10 mx1.example.test.",
				}},
				{name: "alias.example.test", qtype: dns.TypeCNAME, want: []string{"alias.example.test. 120 IN CNAME alias2.example.test."}},
				{name: "nullmx.test", qtype: dns.TypeMX, want: []string{"nullmx.test. 300 IN MX 0 ."}},
				{name: "sel._domainkey.example.test", qtype: dns.TypeTXT, want: []string{
					`sel._domainkey.example.test. 300 IN TXT "v=DKIM1; k=ed25519; " "p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="`,
				}},
				{name: "mx2.example.test", qtype: dns.TypeAAAA, negTTL: true},                      // NODATA
				{name: "zone.test", qtype: dns.TypeA, negTTL: true},                                // empty non-terminal
				{name: "unknown.test", qtype: dns.TypeMX, rcode: dns.RcodeNameError, negTTL: true}, // NXDOMAIN
				{name: "mx1.example.test.x", qtype: dns.TypeA, rcode: dns.RcodeNameError, negTTL: true},
				{name: "dangling.test", qtype: dns.TypeA, rcode: dns.RcodeNameError, negTTL: true, want: []string{
					"dangling.test. 300 IN CNAME nowhere.test.",
				}},
				{name: "loop1.test", qtype: dns.TypeA, rcode: dns.RcodeServerFailure},
			}
			for _, tc := range tests {
				resp := mustQuery(t, s, network, tc.name, tc.qtype)
				what := fmt.Sprintf("%s %s", tc.name, dns.TypeToString[tc.qtype])
				if resp.Rcode != tc.rcode {
					t.Errorf("%s: rcode %s, want %s", what, dns.RcodeToString[resp.Rcode], dns.RcodeToString[tc.rcode])
				}
				if got := answers(resp); !slices.Equal(got, tc.want) {
					t.Errorf("%s: answer\n%s\nwant\n%s", what, strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
				}
				if tc.rcode == dns.RcodeServerFailure {
					continue
				}
				if !resp.Authoritative || !resp.RecursionAvailable {
					t.Errorf("%s: AA=%v RA=%v, want both", what, resp.Authoritative, resp.RecursionAvailable)
				}
				if tc.negTTL {
					if len(resp.Ns) != 1 || resp.Ns[0].Header().Ttl != 30 || resp.Ns[0].(*dns.SOA).Minttl != 30 {
						t.Errorf("%s: authority %v, want an SOA with TTL and minimum 30", what, resp.Ns)
					}
				}
			}
		})
	}
}

func TestDNSEditAndCount(t *testing.T) {
	s := StartDNSServer(t, DNSOptions{})
	mustAdd(t, s, "example.test. MX 10 old.example.test.", "example.test. A 127.0.0.5")
	if got := answers(mustQuery(t, s, "udp", "example.test", dns.TypeMX)); len(got) != 1 || !strings.HasSuffix(got[0], "old.example.test.") {
		t.Fatalf("before the edit: %v", got)
	}
	s.Remove("EXAMPLE.test.", dns.TypeMX)
	mustAdd(t, s, "example.test. MX 10 new.example.test.")
	if got := answers(mustQuery(t, s, "tcp", "example.test", dns.TypeMX)); len(got) != 1 || !strings.HasSuffix(got[0], "new.example.test.") {
		t.Fatalf("after the edit: %v", got)
	}
	if got := answers(mustQuery(t, s, "udp", "example.test", dns.TypeA)); len(got) != 1 {
		t.Fatalf("removing MX removed A too: %v", got)
	}
	s.Remove("example.test", 0)
	if resp := mustQuery(t, s, "udp", "example.test", dns.TypeA); resp.Rcode != dns.RcodeNameError {
		t.Fatalf("after removing every record: %s, want NXDOMAIN", dns.RcodeToString[resp.Rcode])
	}

	if got := s.Queries("Example.Test", dns.TypeMX); got != 2 {
		t.Errorf("MX queries = %d, want 2", got)
	}
	if got := s.Queries("example.test.", dns.TypeA); got != 2 {
		t.Errorf("A queries = %d, want 2", got)
	}
	if got := s.Queries("example.test", 0); got != 4 {
		t.Errorf("all queries = %d, want 4", got)
	}
	s.ResetQueries()
	if got := s.Queries("example.test", 0); got != 0 {
		t.Errorf("after reset: %d queries", got)
	}

	if err := s.Add("example.test. MX ten mx.example.test."); err == nil {
		t.Error("a malformed record was accepted")
	}
}

func TestDNSFaults(t *testing.T) {
	s := StartDNSServer(t, DNSOptions{})
	mustAdd(t, s, "example.test. MX 10 mx.example.test.", "example.test. A 127.0.0.3", "mx.example.test. A 127.0.0.3")

	s.SetFault("example.test", dns.TypeMX, DNSServFail)
	for _, network := range []string{"udp", "tcp"} {
		if resp := mustQuery(t, s, network, "example.test", dns.TypeMX); resp.Rcode != dns.RcodeServerFailure {
			t.Errorf("MX over %s: %s, want SERVFAIL", network, dns.RcodeToString[resp.Rcode])
		}
	}
	if resp := mustQuery(t, s, "udp", "example.test", dns.TypeA); resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
		t.Errorf("a fault for MX broke A: %v", resp)
	}

	// A fault for the exact type wins over one for every type.
	s.SetFault("example.test", 0, DNSTimeout)
	for _, network := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: network, Timeout: 300 * time.Millisecond}
		_, _, err := c.Exchange(new(dns.Msg).SetQuestion("example.test.", dns.TypeA), s.Addr())
		var nerr net.Error
		if !errors.As(err, &nerr) || !nerr.Timeout() {
			t.Errorf("A over %s with a dropped query: %v, want a timeout", network, err)
		}
	}
	if resp := mustQuery(t, s, "udp", "example.test", dns.TypeMX); resp.Rcode != dns.RcodeServerFailure {
		t.Errorf("MX: %s, want the type's own fault, SERVFAIL", dns.RcodeToString[resp.Rcode])
	}

	s.SetFault("example.test", 0, DNSNoFault)
	s.SetFault("example.test", dns.TypeMX, DNSTruncate)
	udp := mustQuery(t, s, "udp", "example.test", dns.TypeMX)
	if !udp.Truncated || len(udp.Answer) != 0 {
		t.Errorf("UDP under DNSTruncate: TC=%v with %d answers, want TC and none", udp.Truncated, len(udp.Answer))
	}
	tcp := mustQuery(t, s, "tcp", "example.test", dns.TypeMX)
	if tcp.Truncated || len(tcp.Answer) != 1 {
		t.Errorf("TCP under DNSTruncate: TC=%v with %d answers, want the full answer", tcp.Truncated, len(tcp.Answer))
	}

	s.SetFault("example.test", dns.TypeMX, DNSNoFault)
	if resp := mustQuery(t, s, "udp", "example.test", dns.TypeMX); resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
		t.Errorf("after clearing the faults: %v", resp)
	}
	// Faulted queries count too.
	if got := s.Queries("example.test", dns.TypeMX); got != 6 {
		t.Errorf("MX queries = %d, want 6", got)
	}
}

// TestDNSLargeAnswer checks that an answer too big for 512 bytes of UDP is
// truncated as a real server does, and is whole over TCP or with EDNS0.
func TestDNSLargeAnswer(t *testing.T) {
	s := StartDNSServer(t, DNSOptions{})
	for i := range 40 {
		mustAdd(t, s, fmt.Sprintf("big.test. MX %d mx%02d.some-long-provider-name.example.test.", i, i))
	}
	udp := mustQuery(t, s, "udp", "big.test", dns.TypeMX)
	if !udp.Truncated || len(udp.Answer) == 40 {
		t.Errorf("UDP: TC=%v with %d answers, want a truncated answer", udp.Truncated, len(udp.Answer))
	}
	if tcp := mustQuery(t, s, "tcp", "big.test", dns.TypeMX); tcp.Truncated || len(tcp.Answer) != 40 {
		t.Errorf("TCP: TC=%v with %d answers, want all 40", tcp.Truncated, len(tcp.Answer))
	}
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second, UDPSize: 4096}
	m := new(dns.Msg).SetQuestion("big.test.", dns.TypeMX).SetEdns0(4096, false)
	resp, _, err := c.Exchange(m, s.Addr())
	if err != nil || resp.Truncated || len(resp.Answer) != 40 || resp.IsEdns0() == nil {
		t.Errorf("UDP with EDNS0 4096: %v, TC=%v with %d answers, want all 40 and an OPT", err, resp != nil && resp.Truncated, len(resp.Answer))
	}
}

// TestDNSGoResolver checks the server as the relay may use it: Go's own
// resolver dialing it for every query, with TCP fallback on truncation.
func TestDNSGoResolver(t *testing.T) {
	s := StartDNSServer(t, DNSOptions{})
	mustAdd(t, s, "example.test. MX 20 b.example.test.", "example.test. MX 10 a.example.test.", "a.example.test. A 127.0.0.3")
	s.SetFault("example.test", dns.TypeMX, DNSTruncate)
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, s.Addr())
	}}
	ctx, cancel := context.WithTimeout(t.Context(), WaitTimeout)
	defer cancel()
	mxs, err := r.LookupMX(ctx, "example.test")
	if err != nil {
		t.Fatal(err)
	}
	if len(mxs) != 2 || mxs[0].Host != "a.example.test." || mxs[0].Pref != 10 {
		t.Errorf("LookupMX = %v, want a.example.test. (10) first", mxs)
	}
	if got := s.Queries("example.test", dns.TypeMX); got < 2 {
		t.Errorf("%d MX queries, want the truncated UDP one and the TCP retry", got)
	}
	if _, err := r.LookupHost(ctx, "missing.test"); err == nil {
		t.Error("LookupHost of an unknown name succeeded")
	} else if dnsErr := (*net.DNSError)(nil); !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Errorf("LookupHost of an unknown name: %v, want not found", err)
	}
}

func TestDNSServerLifecycle(t *testing.T) {
	if _, err := NewDNSServer(t.Context(), DNSOptions{Addr: "0.0.0.0:0"}); err == nil {
		t.Fatal("a DNS server bound 0.0.0.0")
	}
	ctx, cancel := context.WithCancel(t.Context())
	s, err := NewDNSServer(ctx, DNSOptions{Addr: "127.0.0.2:0"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(s.Addr(), "127.0.0.2:") {
		t.Fatalf("Addr() = %s, want 127.0.0.2:port", s.Addr())
	}
	mustAdd(t, s, "example.test. A 127.0.0.3")
	mustQuery(t, s, "udp", "example.test", dns.TypeA)
	cancel()
	Eventually(t, func() string {
		l, err := net.Listen("tcp", s.Addr())
		if err != nil {
			return fmt.Sprintf("the server still holds its port after its context ended: %v", err)
		}
		_ = l.Close()
		return ""
	})
	s.Close() // again, after the context closed it
}
