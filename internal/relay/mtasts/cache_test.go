package mtasts

import (
	"context"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/postgate/postgate/internal/testenv"
)

func TestLookupModes(t *testing.T) {
	e := newEnv(t, "example.test", "testing.test", "none.test")
	e.publish("example.test", "id1", enforcePolicy)
	e.publish("testing.test", "20261206T090000", testingPolicy)
	e.publish("none.test", "n1", nonePolicy)
	c := e.cache()

	p := e.lookup(c, "example.test", ModeEnforce)
	want := Policy{Domain: "example.test", ID: "id1", Mode: ModeEnforce, MX: []string{"mx1.example.test", "*.mail.example.test"},
		MaxAge: 24 * time.Hour, Fetched: start, Text: enforcePolicy}
	if p.Domain != want.Domain || p.ID != want.ID || !slices.Equal(p.MX, want.MX) || p.MaxAge != want.MaxAge ||
		!p.Fetched.Equal(want.Fetched) || p.Text != want.Text {
		t.Errorf("policy %+v, want %+v", *p, want)
	}
	if !p.Match("mx1.example.test") || !p.Match("a.mail.example.test") || p.Match("mx2.example.test") {
		t.Errorf("the enforce policy matches the wrong hosts: %v", p.MX)
	}
	p = e.lookup(c, "testing.test", ModeTesting)
	if p.MaxAge != 7*24*time.Hour || !slices.Equal(p.Lines(), strings.Split(strings.TrimSuffix(testingPolicy, "\n"), "\n")) {
		t.Errorf("testing policy %+v, lines %q", *p, p.Lines())
	}
	if res := c.Lookup(t.Context(), "none.test"); res.Policy != nil || res.Err != nil {
		t.Errorf("mode none: %+v, want no policy and no error", res)
	}
	// A domain without the TXT record has no policy and costs no request.
	if res := c.Lookup(t.Context(), "nosts.test"); res.Policy != nil || res.Err != nil {
		t.Errorf("no TXT record: %+v, want no policy and no error", res)
	}
	e.wantRequests("example.test", 1)
	e.wantRequests("testing.test", 1)
	e.wantRequests("none.test", 1)
	e.wantRequests("nosts.test", 0)
}

func TestSameIDNoRefetchNewIDRefetches(t *testing.T) {
	e := newEnv(t, "example.test")
	e.publish("example.test", "id1", enforcePolicy)
	c := e.cache()

	first := e.lookup(c, "example.test", ModeEnforce)
	for range 3 {
		e.clock.Add(time.Hour)
		if p := e.lookup(c, "example.test", ModeEnforce); p != first {
			t.Fatalf("same id: policy %+v, want the cached one", *p)
		}
	}
	e.wantRequests("example.test", 1)

	e.publish("example.test", "id2", testingPolicy)
	p := e.lookup(c, "example.test", ModeTesting)
	if p.ID != "id2" || !p.Fetched.Equal(e.clock.Now()) {
		t.Errorf("after the id changed: %+v", *p)
	}
	e.wantRequests("example.test", 2)
	e.lookup(c, "example.test", ModeTesting)
	e.wantRequests("example.test", 2)
}

func TestModeNoneRemovesThePolicy(t *testing.T) {
	e := newEnv(t, "example.test")
	e.publish("example.test", "id1", enforcePolicy)
	c := e.cache()
	e.lookup(c, "example.test", ModeEnforce)

	// RFC 8461 section 8.3: a domain leaves MTA-STS by publishing mode none
	// under a new id.
	e.publish("example.test", "id2", nonePolicy)
	for range 2 {
		if res := c.Lookup(t.Context(), "example.test"); res.Policy != nil || res.Err != nil {
			t.Fatalf("after mode none: %+v, want no policy", res)
		}
	}
	e.wantRequests("example.test", 2)
	// A restart does not bring the enforce policy back.
	c.Close()
	c = e.cache()
	if res := c.Lookup(t.Context(), "example.test"); res.Policy != nil || res.Err != nil {
		t.Fatalf("after a restart: %+v, want no policy", res)
	}
	e.wantRequests("example.test", 2)
}

func TestFetchFailureKeepsTheCachedPolicy(t *testing.T) {
	e := newEnv(t, "example.test")
	e.publish("example.test", "id1", enforcePolicy)
	c := e.cache()
	cached := e.lookup(c, "example.test", ModeEnforce)

	e.server.Handle("example.test", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
	}))
	e.server.Publish(t, e.dns, "example.test", "id2")
	res := c.Lookup(t.Context(), "example.test")
	if res.Policy != cached || res.Err == nil || res.Err.Result != ResultFetchError || !strings.Contains(res.Err.Reason, "HTTP 503") {
		t.Fatalf("fetch failed: %+v (err %v), want the cached policy and a fetch error", res, res.Err)
	}
	e.logs.wait(t, "level=WARN", "MTA-STS policy fetch failed", "domain=example.test", "id=id2", "cachedID=id1")
	e.wantRequests("example.test", 2)

	// Section 3.3: a failed id is not fetched again for RetryAfter.
	e.clock.Add(DefaultRetryAfter - time.Second)
	res = c.Lookup(t.Context(), "example.test")
	if res.Policy != cached || res.Err == nil || res.Err.Result != ResultFetchError {
		t.Fatalf("within RetryAfter: %+v, want the cached policy and the same error", res)
	}
	e.wantRequests("example.test", 2)
	e.clock.Add(time.Second)
	e.server.SetPolicy("example.test", testingPolicy)
	e.lookup(c, "example.test", ModeTesting)
	e.wantRequests("example.test", 3)

	// No live TXT record (SERVFAIL, then none at all): the cached policy
	// still applies (section 5.1).
	e.dns.SetFault("_mta-sts.example.test", dns.TypeTXT, testenv.DNSServFail)
	e.lookup(c, "example.test", ModeTesting)
	e.dns.SetFault("_mta-sts.example.test", dns.TypeTXT, testenv.DNSNoFault)
	e.dns.Remove("_mta-sts.example.test", dns.TypeTXT)
	e.lookup(c, "example.test", ModeTesting)
	e.wantRequests("example.test", 3)
}

func TestFetchFailureWithoutCache(t *testing.T) {
	e := newEnv(t, "example.test")
	e.server.Publish(t, e.dns, "example.test", "id1")
	e.server.Handle("example.test", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "no policy here", http.StatusNotFound)
	}))
	c := e.cache()
	// Section 3.3: no policy can be fetched and none is cached: deliver as
	// without MTA-STS.
	wantErr(t, c.Lookup(t.Context(), "example.test"), ResultFetchError, "HTTP 404, not 200")
}

func TestRedirectRefused(t *testing.T) {
	e := newEnv(t, "example.test", "elsewhere.test")
	e.publish("elsewhere.test", "x1", enforcePolicy)
	e.server.Publish(t, e.dns, "example.test", "id1")
	e.server.Handle("example.test", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "https://mta-sts.elsewhere.test/.well-known/mta-sts.txt", http.StatusMovedPermanently)
	}))
	c := e.cache(func(o *Options) { o.Dir = "" })
	wantErr(t, c.Lookup(t.Context(), "example.test"), ResultFetchError, "redirects are not followed")
	e.wantRequests("elsewhere.test", 0)
}

// A policy host whose address is not allowed (loopback here, as an
// internal address would be) is never connected to.
func TestFetchRefusesAddressesNotAllowed(t *testing.T) {
	e := newEnv(t, "example.test")
	e.publish("example.test", "id1", enforcePolicy)
	c := e.cache(func(o *Options) { o.Dir = ""; o.AllowAddr = func(a netip.Addr) bool { return !a.IsLoopback() } })
	wantErr(t, c.Lookup(t.Context(), "example.test"), ResultFetchError, "may not reach")
	e.wantRequests("example.test", 0)
}

func TestCertificateRefused(t *testing.T) {
	e := newEnv(t, "example.test") // the certificate does not name mta-sts.wrongname.test
	e.publish("wrongname.test", "id1", enforcePolicy)
	c := e.cache()
	wantErr(t, c.Lookup(t.Context(), "wrongname.test"), ResultWebPKIInvalid, "not valid for mta-sts.wrongname.test")

	// A certificate for the right name from a CA the relay does not trust.
	e.publish("example.test", "id1", enforcePolicy)
	other := e.cache(func(o *Options) { o.RootCAs = testenv.NewCA(t).Pool(); o.Dir = "" })
	wantErr(t, other.Lookup(t.Context(), "example.test"), ResultWebPKIInvalid, "certificate")
	e.wantRequests("example.test", 0)
	e.wantRequests("wrongname.test", 0)
}

func TestBodyLimit(t *testing.T) {
	e := newEnv(t, "big.test", "fits.test")
	const limit = 1024
	// A valid policy padded with an extension field to exactly n bytes,
	// streamed without a Content-Length (so the reader's bound is what
	// refuses it), and a second time with one.
	padded := func(n int) string {
		base := enforcePolicy + "pad: "
		return base + strings.Repeat("x", n-len(base)-2) + "\r\n"
	}
	serve := func(body string, withLength bool) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			if withLength {
				w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			}
			for chunk := range slices.Chunk([]byte(body), 100) {
				_, _ = w.Write(chunk)
				w.(http.Flusher).Flush()
			}
		})
	}
	e.server.Publish(t, e.dns, "fits.test", "id1")
	e.server.Publish(t, e.dns, "big.test", "id1")
	for _, withLength := range []bool{false, true} {
		e.server.Handle("fits.test", serve(padded(limit), withLength))
		e.server.Handle("big.test", serve(padded(limit+1), withLength))
		c := e.cache(func(o *Options) { o.MaxBody = limit; o.Dir = "" })
		e.lookup(c, "fits.test", ModeEnforce)
		wantErr(t, c.Lookup(t.Context(), "big.test"), ResultFetchError, "over the limit of 1024")
	}
}

func TestFetchTimeout(t *testing.T) {
	e := newEnv(t, "slow.test", "trickle.test")
	e.server.Publish(t, e.dns, "slow.test", "id1")
	e.server.Publish(t, e.dns, "trickle.test", "id1")
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) }) // before the server's Close, which waits for its handlers
	e.server.Handle("slow.test", http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-stop }))
	e.server.Handle("trickle.test", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "version: STSv1\n")
		w.(http.Flusher).Flush()
		<-stop
	}))
	c := e.cache(func(o *Options) { o.Timeout = 500 * time.Millisecond })
	// Whatever part a loaded machine spends the time in, the fetch ends
	// with its bound.
	wantErr(t, c.Lookup(t.Context(), "slow.test"), ResultFetchError, "within 500ms")
	wantErr(t, c.Lookup(t.Context(), "trickle.test"), ResultFetchError, "within 500ms")
}

func TestInvalidPolicy(t *testing.T) {
	e := newEnv(t, "syntax.test", "html.test")
	e.publish("syntax.test", "id1", "version: STSv1\nmode: enforce\nmax_age: soon\nmx: mx1.example.test\n")
	e.server.Publish(t, e.dns, "html.test", "id1")
	e.server.Handle("html.test", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = io.WriteString(w, enforcePolicy)
	}))
	c := e.cache()
	wantErr(t, c.Lookup(t.Context(), "syntax.test"), ResultInvalid, `line 3: max_age "soon" is not a number of seconds`)
	wantErr(t, c.Lookup(t.Context(), "html.test"), ResultInvalid, `media type is "text/html"`)
}

func TestTXTRecords(t *testing.T) {
	e := newEnv(t, "several.test", "mixed.test", "badid.test")
	e.publish("several.test", "id1", enforcePolicy)
	if err := e.dns.Add(`_mta-sts.several.test. TXT "v=STSv1; id=id2"`); err != nil {
		t.Fatal(err)
	}
	e.publish("mixed.test", "id1", enforcePolicy)
	if err := e.dns.Add(`_mta-sts.mixed.test. TXT "v=spf1 -all"`, `_mta-sts.mixed.test. TXT "v=STSv10; id=x"`); err != nil {
		t.Fatal(err)
	}
	e.publish("badid.test", "id1", enforcePolicy)
	e.dns.Remove("_mta-sts.badid.test", dns.TypeTXT)
	if err := e.dns.Add(`_mta-sts.badid.test. TXT "v=STSv1; id=not-alnum;"`); err != nil {
		t.Fatal(err)
	}
	c := e.cache()
	// Section 3.1: several v=STSv1 records, or an invalid one, mean no
	// policy and no fetch; records of other kinds are discarded.
	for _, domain := range []string{"several.test", "badid.test"} {
		if res := c.Lookup(t.Context(), domain); res.Policy != nil || res.Err != nil {
			t.Errorf("%s: %+v, want no policy", domain, res)
		}
		e.wantRequests(domain, 0)
	}
	e.logs.wait(t, "No MTA-STS record in force", "2 v=STSv1 records")
	e.lookup(c, "mixed.test", ModeEnforce)
	// A record split into strings is their concatenation.
	e.dns.Remove("_mta-sts.mixed.test", dns.TypeTXT)
	if err := e.dns.Add(`_mta-sts.mixed.test. TXT "v=STSv1; " "id=id9"`); err != nil {
		t.Fatal(err)
	}
	if p := e.lookup(c, "mixed.test", ModeEnforce); p.ID != "id9" {
		t.Errorf("id %q, want id9", p.ID)
	}
}

func TestMaxAgeExpiry(t *testing.T) {
	e := newEnv(t, "example.test")
	short := strings.Replace(enforcePolicy, "max_age: 86400", "max_age: 3600", 1)
	e.publish("example.test", "id1", short)
	c := e.cache(func(o *Options) { o.RefreshAfter = -1 })
	first := e.lookup(c, "example.test", ModeEnforce)

	// The id does not change: the policy applies until Fetched+max_age,
	// then is fetched again, and its max_age counts from the new fetch.
	e.clock.Add(time.Hour - time.Second)
	if p := e.lookup(c, "example.test", ModeEnforce); p != first {
		t.Fatal("the policy was replaced before it expired")
	}
	e.wantRequests("example.test", 1)
	e.clock.Add(time.Second)
	second := e.lookup(c, "example.test", ModeEnforce)
	if second == first || !second.Fetched.Equal(start.Add(time.Hour)) {
		t.Fatalf("at expiry: %+v, want a new fetch", *second)
	}
	e.wantRequests("example.test", 2)

	// Expired and no live record: no policy, and its file is gone.
	e.dns.SetFault("_mta-sts.example.test", dns.TypeTXT, testenv.DNSServFail)
	e.clock.Add(time.Hour - time.Second)
	e.lookup(c, "example.test", ModeEnforce)
	e.clock.Add(time.Second)
	if res := c.Lookup(t.Context(), "example.test"); res.Policy != nil {
		t.Fatalf("expired: %+v, want no policy", res)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "example.test.json")); !os.IsNotExist(err) {
		t.Errorf("the expired policy's file: %v, want it removed", err)
	}
	e.logs.wait(t, "MTA-STS policy expired", "domain=example.test")
}

func TestPersistenceAcrossRestart(t *testing.T) {
	e := newEnv(t, "example.test", "testing.test", "old.test")
	e.publish("example.test", "id1", enforcePolicy)
	e.publish("testing.test", "id1", testingPolicy)
	e.publish("old.test", "id1", strings.Replace(enforcePolicy, "max_age: 86400", "max_age: 60", 1))
	c := e.cache()
	before := e.lookup(c, "example.test", ModeEnforce)
	e.lookup(c, "testing.test", ModeTesting)
	e.lookup(c, "old.test", ModeEnforce)
	c.Close()

	// Damage: a corrupt file, a foreign file, a leftover temporary file.
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(e.dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("corrupt.test.json", `{"version":1,"domain":"corrupt.test","id":"x`)
	write("README", "not a policy")
	write(tmpPrefix+"example.test-123", "half a write")
	write("renamed.test.json", strings.Replace(readFile(t, filepath.Join(e.dir, "testing.test.json")), "testing.test", "other.test", 1))

	e.clock.Add(time.Minute) // old.test expires
	c = e.cache()
	e.logs.wait(t, "Skipping a corrupt MTA-STS policy file", "corrupt.test.json")
	e.logs.wait(t, "Skipping a corrupt MTA-STS policy file", "renamed.test.json")
	e.logs.wait(t, "MTA-STS policy expired", "domain=old.test")
	for _, gone := range []string{tmpPrefix + "example.test-123", "old.test.json"} {
		if _, err := os.Stat(filepath.Join(e.dir, gone)); !os.IsNotExist(err) {
			t.Errorf("%s: %v, want it removed", gone, err)
		}
	}

	// The same id: the policy read back applies without a request, and so
	// it does when the TXT lookup fails.
	after := e.lookup(c, "example.test", ModeEnforce)
	if after.ID != before.ID || !after.Fetched.Equal(before.Fetched) || after.Text != before.Text || !slices.Equal(after.MX, before.MX) {
		t.Errorf("read back %+v, want %+v", *after, *before)
	}
	e.dns.SetFault("_mta-sts.testing.test", 0, testenv.DNSServFail)
	e.lookup(c, "testing.test", ModeTesting)
	e.wantRequests("example.test", 1)
	e.wantRequests("testing.test", 1)
}

func TestConcurrentLookupsShareOneFetch(t *testing.T) {
	e := newEnv(t, "example.test")
	e.server.Publish(t, e.dns, "example.test", "id1")
	arrived := make(chan struct{}, 10)
	release := make(chan struct{})
	e.server.Handle("example.test", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		arrived <- struct{}{}
		<-release
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, enforcePolicy)
	}))
	c := e.cache()

	const n = 8
	results := make([]Result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { results[i] = c.Lookup(t.Context(), "example.test") })
	}
	<-arrived
	// Every Lookup has asked for the TXT record, so each either waits on the
	// fetch under way or would start its own.
	testenv.EventuallyTrue(t, "not every Lookup asked for the TXT record", func() bool {
		return e.dns.Queries("_mta-sts.example.test", dns.TypeTXT) >= n
	})
	close(release)
	wg.Wait()
	for i, res := range results {
		if res.Policy == nil || res.Err != nil || res.Policy != results[0].Policy {
			t.Errorf("Lookup %d: %+v, want the one policy fetched", i, res)
		}
	}
	e.wantRequests("example.test", 1)
}

func TestProactiveRefresh(t *testing.T) {
	e := newEnv(t, "example.test")
	e.publish("example.test", "id1", enforcePolicy) // max_age: one day
	c := e.cache(func(o *Options) { o.RefreshAfter = 6 * time.Hour })
	first := e.lookup(c, "example.test", ModeEnforce)

	e.clock.Add(6*time.Hour - time.Second)
	e.lookup(c, "example.test", ModeEnforce)
	e.wantRequests("example.test", 1)

	// Past RefreshAfter the cached policy still answers, and a fetch in the
	// background renews it: max_age counts from the new fetch.
	e.clock.Add(time.Second)
	if p := e.lookup(c, "example.test", ModeEnforce); p != first {
		t.Fatal("the refresh made Lookup wait")
	}
	e.logs.wait(t, "MTA-STS policy refreshed", "domain=example.test")
	e.wantRequests("example.test", 2)
	p := e.lookup(c, "example.test", ModeEnforce)
	if !p.Fetched.Equal(start.Add(6 * time.Hour)) {
		t.Errorf("refreshed policy fetched at %v, want %v", p.Fetched, start.Add(6*time.Hour))
	}
}

func TestNewValidatesOptions(t *testing.T) {
	if _, err := New(Options{}); err == nil || !strings.Contains(err.Error(), "LookupTXT and LookupHost are required") {
		t.Errorf("New without lookups: %v", err)
	}
	if _, err := New(Options{LookupTXT: lookupTXT("127.0.0.1:1"), LookupHost: lookupHost("127.0.0.1:1"), Port: 70000}); err == nil {
		t.Error("New with port 70000: no error")
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestGivingUpKeepsTheFetch(t *testing.T) {
	e := newEnv(t, "example.test")
	e.server.Publish(t, e.dns, "example.test", "id1")
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	e.server.Handle("example.test", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		arrived <- struct{}{}
		<-release
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, enforcePolicy)
	}))
	c := e.cache()

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan Result)
	go func() { done <- c.Lookup(ctx, "example.test") }()
	<-arrived
	cancel()
	wantErr(t, <-done, ResultFetchError, "gave up waiting for the policy of example.test: context canceled")
	// The fetch goes on without its caller, and its policy is cached.
	close(release)
	e.logs.wait(t, "MTA-STS policy fetched", "domain=example.test")
	e.lookup(c, "example.test", ModeEnforce)
	e.wantRequests("example.test", 1)
}

func TestMaxEntries(t *testing.T) {
	e := newEnv(t, "a.test", "b.test", "c.test")
	e.publish("a.test", "id1", strings.Replace(enforcePolicy, "86400", "7200", 1))
	e.publish("b.test", "id1", strings.Replace(enforcePolicy, "86400", "3600", 1)) // expires first
	e.publish("c.test", "id1", enforcePolicy)
	c := e.cache(func(o *Options) { o.MaxEntries = 2 })
	for _, d := range []string{"a.test", "b.test", "c.test"} {
		e.lookup(c, d, ModeEnforce)
	}
	e.logs.wait(t, "MTA-STS policy evicted", "domain=b.test")
	if _, err := os.Stat(filepath.Join(e.dir, "b.test.json")); !os.IsNotExist(err) {
		t.Errorf("the evicted policy's file: %v, want it removed", err)
	}
	e.lookup(c, "a.test", ModeEnforce)
	e.lookup(c, "c.test", ModeEnforce)
	e.lookup(c, "b.test", ModeEnforce)
	e.wantRequests("a.test", 1)
	e.wantRequests("c.test", 1)
	e.wantRequests("b.test", 2)
}

func TestClosed(t *testing.T) {
	e := newEnv(t, "example.test", "other.test")
	e.publish("example.test", "id1", enforcePolicy)
	e.publish("other.test", "id1", enforcePolicy)
	c := e.cache()
	e.lookup(c, "example.test", ModeEnforce)
	c.Close()
	c.Close()
	// What is cached still applies; nothing new is fetched.
	e.lookup(c, "example.test", ModeEnforce)
	wantErr(t, c.Lookup(t.Context(), "other.test"), ResultFetchError, "closed")
	e.wantRequests("other.test", 0)
}
