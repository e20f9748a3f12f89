package testenv

import (
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// PolicyPath is where an MTA-STS policy is served (RFC 8461 section 3.3).
const PolicyPath = "/.well-known/mta-sts.txt"

// PolicyServer is an MTA-STS policy host for tests: an HTTPS server on
// 127.0.0.1 that answers for https://mta-sts.<domain>/.well-known/mta-sts.txt
// of each domain it is given, with one certificate from the test's CA
// naming mta-sts.<domain> for each (a domain served but left off the
// certificate gets a certificate for the wrong name). It counts the
// requests per domain, so a test proves a policy was cached, or fetched
// again, by counting.
type PolicyServer struct {
	srv *httptest.Server

	mu       sync.Mutex
	handlers map[string]http.Handler // by policy domain
	requests map[string]int
}

// StartPolicyServer starts a policy host whose certificate, issued by ca,
// names mta-sts.<domain> for each of domains; it stops when the test ends.
// Clients reach it on 127.0.0.1 at Port, trusting ca.Pool().
func StartPolicyServer(tb testing.TB, ca *CA, domains ...string) *PolicyServer {
	tb.Helper()
	names := make([]string, 0, len(domains))
	for _, d := range domains {
		names = append(names, "mta-sts."+d)
	}
	s := &PolicyServer{handlers: make(map[string]http.Handler), requests: make(map[string]int)}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	s.srv.TLS = ca.Issue(tb, names...).ServerConfig()
	// Handshakes that the client refuses (wrong name, unknown CA) are what
	// some tests are about: not worth a line on stderr each.
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.srv.StartTLS()
	tb.Cleanup(s.srv.Close)
	return s
}

// Port returns the TCP port the server listens on, on 127.0.0.1.
func (s *PolicyServer) Port() int { return s.srv.Listener.Addr().(*net.TCPAddr).Port }

// SetPolicy serves text as domain's policy: 200, text/plain.
func (s *PolicyServer) SetPolicy(domain, text string) {
	s.Handle(domain, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, text)
	}))
}

// Handle answers domain's policy requests with h: a redirect, an error, a
// body too large, a response that waits for the test.
func (s *PolicyServer) Handle(domain string, h http.Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handlers[domain] = h
}

// Requests returns how many policy requests for domain arrived.
func (s *PolicyServer) Requests(domain string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[domain]
}

// Publish adds the DNS records that announce domain's policy to zone: the
// TXT record _mta-sts.<domain> with id and the address of mta-sts.<domain>,
// 127.0.0.1, each replacing the records of its name and type.
func (s *PolicyServer) Publish(tb testing.TB, zone *DNSServer, domain, id string) {
	tb.Helper()
	zone.Remove("_mta-sts."+domain, dns.TypeTXT)
	zone.Remove("mta-sts."+domain, dns.TypeA)
	if err := zone.Add(`_mta-sts.`+domain+`. TXT "v=STSv1; id=`+id+`;"`, "mta-sts."+domain+". A 127.0.0.1"); err != nil {
		tb.Fatal(err)
	}
}

func (s *PolicyServer) serve(w http.ResponseWriter, r *http.Request) {
	host, _, err := net.SplitHostPort(r.Host)
	if err != nil {
		host = r.Host
	}
	domain, ok := strings.CutPrefix(strings.ToLower(host), "mta-sts.")
	s.mu.Lock()
	h := s.handlers[domain]
	if ok {
		s.requests[domain]++
	}
	s.mu.Unlock()
	if !ok || h == nil || r.URL.Path != PolicyPath {
		http.NotFound(w, r)
		return
	}
	h.ServeHTTP(w, r)
}
