package mtasts

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/postgate/postgate/internal/testenv"
)

// The policies the tests serve.
const (
	enforcePolicy = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmx: *.mail.example.test\r\nmax_age: 86400\r\n"
	testingPolicy = "version: STSv1\nmode: testing\nmx: mx.testing.test\nmax_age: 604800\n"
	nonePolicy    = "version: STSv1\nmode: none\nmax_age: 86400\n"
)

// start is the fixed time the tests' clocks start at.
var start = time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)

// env is one test's world: the loopback DNS server with the _mta-sts
// records, a policy host with a certificate from a test CA, a clock that
// moves only when the test moves it, a policy directory and the logs.
type env struct {
	t      *testing.T
	dns    *testenv.DNSServer
	ca     *testenv.CA
	server *testenv.PolicyServer
	clock  *testenv.Clock
	dir    string
	logs   *logBuffer
}

// newEnv starts the fixtures; the policy host's certificate names
// mta-sts.<domain> for each of certDomains.
func newEnv(t *testing.T, certDomains ...string) *env {
	t.Helper()
	ca := testenv.NewCA(t)
	return &env{
		t:      t,
		dns:    testenv.StartDNSServer(t, testenv.DNSOptions{}),
		ca:     ca,
		server: testenv.StartPolicyServer(t, ca, certDomains...),
		clock:  testenv.NewClock(start),
		dir:    t.TempDir(),
		logs:   &logBuffer{},
	}
}

// publish serves text as domain's policy and announces it with id.
func (e *env) publish(domain, id, text string) {
	e.t.Helper()
	e.server.SetPolicy(domain, text)
	e.server.Publish(e.t, e.dns, domain, id)
}

// options are the Options of a cache in this env: the test DNS server's
// lookups, the policy host's port and CA, the env's clock, directory and
// logs.
func (e *env) options() Options {
	return Options{
		LookupTXT:  lookupTXT(e.dns.Addr()),
		LookupHost: lookupHost(e.dns.Addr()),
		Port:       e.server.Port(),
		RootCAs:    e.ca.Pool(),
		Dir:        e.dir,
		Clock:      e.clock.Now,
		Logger:     slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// cache returns a new Cache with options() changed by mods, closed when the
// test ends.
func (e *env) cache(mods ...func(*Options)) *Cache {
	e.t.Helper()
	opts := e.options()
	for _, m := range mods {
		m(&opts)
	}
	c, err := New(opts)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(c.Close)
	return c
}

// lookup looks domain up and fails the test unless a policy of mode want
// applies without an error.
func (e *env) lookup(c *Cache, domain string, want Mode) *Policy {
	e.t.Helper()
	res := c.Lookup(e.t.Context(), domain)
	if res.Err != nil {
		e.t.Fatalf("Lookup(%s): %v", domain, res.Err)
	}
	if res.Policy == nil {
		e.t.Fatalf("Lookup(%s): no policy, want mode %s", domain, want)
	}
	if res.Policy.Mode != want {
		e.t.Fatalf("Lookup(%s): mode %s, want %s", domain, res.Policy.Mode, want)
	}
	return res.Policy
}

// wantRequests fails the test unless the policy host had n requests for
// domain.
func (e *env) wantRequests(domain string, n int) {
	e.t.Helper()
	if got := e.server.Requests(domain); got != n {
		e.t.Fatalf("%d policy requests for %s, want %d", got, domain, n)
	}
}

// wantErr fails the test unless res has no policy and an Err of result
// whose reason contains reason.
func wantErr(t *testing.T, res Result, result, reason string) {
	t.Helper()
	if res.Policy != nil {
		t.Errorf("policy %+v applies, want none", res.Policy)
	}
	if res.Err == nil {
		t.Fatalf("no error, want %s", result)
	}
	if res.Err.Result != result || !strings.Contains(res.Err.Reason, reason) {
		t.Fatalf("error %v, want %s with %q", res.Err, result, reason)
	}
}

// lookupTXT and lookupHost are the small resolvers the tests inject: the
// relay passes its own (delivery's Resolver.LookupTXT and LookupHost, which
// a test here cannot import: delivery imports this package). As delivery's,
// lookupTXT answers NXDOMAIN with no records and no error.
func lookupTXT(server string) func(context.Context, string) ([]string, error) {
	return func(ctx context.Context, name string) ([]string, error) {
		resp, err := exchange(ctx, server, name, dns.TypeTXT)
		if errors.Is(err, errNXDOMAIN) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		var out []string
		for _, rr := range resp.Answer {
			if txt, ok := rr.(*dns.TXT); ok {
				out = append(out, strings.Join(txt.Txt, ""))
			}
		}
		return out, nil
	}
}

func lookupHost(server string) func(context.Context, string) ([]netip.Addr, error) {
	return func(ctx context.Context, host string) ([]netip.Addr, error) {
		var out []netip.Addr
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
			resp, err := exchange(ctx, server, host, qtype)
			if err != nil {
				return nil, err
			}
			for _, rr := range resp.Answer {
				switch rr := rr.(type) {
				case *dns.A:
					a, _ := netip.AddrFromSlice(rr.A)
					out = append(out, a.Unmap())
				case *dns.AAAA:
					a, _ := netip.AddrFromSlice(rr.AAAA)
					out = append(out, a)
				}
			}
		}
		return out, nil
	}
}

var errNXDOMAIN = errors.New("no such name")

func exchange(ctx context.Context, server, name string, qtype uint16) (*dns.Msg, error) {
	c := &dns.Client{Net: "tcp", Timeout: 10 * time.Second}
	resp, _, err := c.ExchangeContext(ctx, new(dns.Msg).SetQuestion(dns.Fqdn(name), qtype), server)
	if err != nil {
		return nil, err
	}
	switch resp.Rcode {
	case dns.RcodeSuccess:
		return resp, nil
	case dns.RcodeNameError:
		return nil, fmt.Errorf("%s: %w", name, errNXDOMAIN)
	default:
		return nil, fmt.Errorf("%s %s: %s", name, dns.TypeToString[qtype], dns.RcodeToString[resp.Rcode])
	}
}

// logBuffer collects the cache's log lines and wakes a test that waits for
// one.
type logBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changes testenv.Changes
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	n, err := l.buf.Write(p)
	l.mu.Unlock()
	l.changes.Changed()
	return n, err
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// wait waits for a log line holding all of parts.
func (l *logBuffer) wait(t *testing.T, parts ...string) {
	t.Helper()
	l.changes.Wait(t, func() string {
		for line := range strings.Lines(l.String()) {
			if containsAll(line, parts) {
				return ""
			}
		}
		return fmt.Sprintf("no log line with %q in:\n%s", parts, l.String())
	})
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}
