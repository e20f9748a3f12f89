package tlsrpt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/miekg/dns"
	"github.com/postgate/postgate/internal/testenv"
)

// submitted is one call of Options.Submit.
type submitted struct {
	from string
	to   []string
	msg  []byte
}

// TestDailyReportByMail follows a day in fake time: sessions are counted,
// nothing goes out before the day is over, the report goes out within the
// delay after midnight (and a session of the next day is not in it), a
// restart does not send it again, and the next day's report follows.
func TestDailyReportByMail(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		day := dayOf(time.Now())
		msgs := make(chan submitted, 8)
		opts := testOptions()
		opts.Dir = t.TempDir()
		opts.MaxDelay = time.Hour
		opts.LookupTXT = func(_ context.Context, name string) ([]string, error) {
			if name == "_smtp._tls.example.test" {
				return []string{"v=spf1 -all", "v=TLSRPTv1; rua=mailto:tlsrpt@example.test"}, nil
			}
			return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
		}
		opts.Submit = func(_ context.Context, from string, to []string, msg []byte) error {
			msgs <- submitted{from, to, msg}
			return nil
		}
		r := open(t, opts)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()

		time.Sleep(10 * time.Hour)
		for range 3 {
			r.Record(Session{Policy: stsPolicy})
		}
		r.Record(Session{Policy: stsPolicy, Failure: &hostMismatch})
		r.Record(Session{Policy: noPolicy}) // other.test has no record: no report
		time.Sleep(time.Until(day.AddDate(0, 0, 1).Add(-time.Second)))
		r.Record(Session{Policy: stsPolicy}) // 23:59:59
		synctest.Wait()
		if len(msgs) != 0 {
			t.Fatalf("a report went out before the end of the day")
		}
		time.Sleep(2 * time.Second)
		r.Record(Session{Policy: stsPolicy}) // the next day's
		time.Sleep(opts.MaxDelay + opts.SaveInterval)
		synctest.Wait()
		if len(msgs) != 1 {
			t.Fatalf("%d reports within the delay after midnight, want 1", len(msgs))
		}
		m := <-msgs
		if m.from != "tlsrpt@sender.test" || len(m.to) != 1 || m.to[0] != "tlsrpt@example.test" {
			t.Errorf("envelope %q -> %q", m.from, m.to)
		}
		h, name, report := mailReportParts(t, m.msg)
		checkSchema(t, report)
		var rep reportJSON
		_ = json.Unmarshal(report, &rep)
		if s := rep.Policies[0].Summary; s.Successful != 4 || s.Failure != 1 || rep.DateRange.Start != day.Format(time.RFC3339) {
			t.Errorf("report %s", report)
		}
		wantSubject := "Report Domain: example.test Submitter: relay.sender.test Report-ID: <" + rep.ReportID + ">"
		if h.Get("Subject") != wantSubject || h.Get("TLS-Report-Domain") != "example.test" || h.Get("TLS-Report-Submitter") != "relay.sender.test" {
			t.Errorf("Subject %q (want %q), TLS-Report-Domain %q, TLS-Report-Submitter %q",
				h.Get("Subject"), wantSubject, h.Get("TLS-Report-Domain"), h.Get("TLS-Report-Submitter"))
		}
		wantName := fmt.Sprintf(`^relay\.sender\.test!example\.test!%d!%d![0-9a-f]{32}\.json\.gz$`, day.Unix(), day.Unix()+86399)
		if !regexp.MustCompile(wantName).MatchString(name) {
			t.Errorf("attachment name %q, want %s", name, wantName)
		}

		// A restart: the report was sent, and is not sent again.
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		r = open(t, opts)
		ctx, cancel = context.WithCancel(t.Context())
		defer cancel()
		go func() { done <- r.Run(ctx) }()
		time.Sleep(time.Hour)
		synctest.Wait()
		if len(msgs) != 0 {
			t.Fatalf("the report went out again after a restart")
		}
		time.Sleep(24 * time.Hour)
		synctest.Wait()
		if len(msgs) != 1 {
			t.Fatalf("%d reports of the next day, want 1", len(msgs))
		}
		_, _, report = mailReportParts(t, (<-msgs).msg)
		_ = json.Unmarshal(report, &rep)
		if s := rep.Policies[0].Summary; s.Successful != 1 || rep.DateRange.Start != day.AddDate(0, 0, 1).Format(time.RFC3339) {
			t.Errorf("the next day's report %s", report)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

// receiver is an HTTPS report receiver on loopback.
type receiver struct {
	srv      *httptest.Server
	mu       sync.Mutex
	statuses []int // the answers to give, in order; 200 once used up
	got      chan *http.Request
	bodies   chan []byte
	strays   int // requests to any other path
}

func startReceiver(t *testing.T, ca *testenv.CA, statuses ...int) *receiver {
	rc := &receiver{statuses: statuses, got: make(chan *http.Request, 16), bodies: make(chan []byte, 16)}
	rc.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/tlsrpt" {
			rc.mu.Lock()
			rc.strays++
			rc.mu.Unlock()
			return
		}
		body, _ := io.ReadAll(req.Body)
		rc.mu.Lock()
		status := http.StatusOK
		if len(rc.statuses) > 0 {
			status, rc.statuses = rc.statuses[0], rc.statuses[1:]
		}
		rc.mu.Unlock()
		if status/100 == 3 {
			w.Header().Set("Location", "/elsewhere")
		}
		w.WriteHeader(status)
		rc.got <- req
		rc.bodies <- body
	}))
	rc.srv.TLS = ca.Issue(t, "reports.example.test").ServerConfig()
	rc.srv.StartTLS()
	t.Cleanup(rc.srv.Close)
	return rc
}

// port is the receiver's port on 127.0.0.1.
func (rc *receiver) port() int { return rc.srv.Listener.Addr().(*net.TCPAddr).Port }

// loopbackOptions send reports to the loopback DNS server's record.
func loopbackOptions(t *testing.T, ca *testenv.CA, rua string) (Options, *testenv.DNSServer) {
	srv := testenv.StartDNSServer(t, testenv.DNSOptions{})
	if err := srv.Add(`_smtp._tls.example.test. TXT "v=TLSRPTv1; rua=`+rua+`"`, "reports.example.test. A 127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	// Go's resolver asking the loopback server (delivery's Resolver, which
	// the relay passes, imports this package).
	res := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, srv.Addr())
	}}
	opts := testOptions()
	opts.Clock = testenv.NewClock(day0.AddDate(0, 0, 1).Add(time.Minute))
	opts.MaxDelay = -1
	opts.LookupTXT = res.LookupTXT
	opts.LookupHost = func(ctx context.Context, host string) ([]netip.Addr, error) { return res.LookupNetIP(ctx, "ip", host) }
	opts.RootCAs = ca.Pool()
	opts.AllowAddr = func(a netip.Addr) bool { return a.IsLoopback() }
	return opts, srv
}

func wait[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(time.Minute):
		t.Fatalf("no %s within a minute", what)
		panic("unreachable")
	}
}

// TestReportsOverHTTPSAndMail: Run sends a due report to every rua URI of
// the record on the loopback DNS server: a POST to the HTTPS receiver with
// the test CA, and a message to Submit; the domain is done and stays done
// after a restart.
func TestReportsOverHTTPSAndMail(t *testing.T) {
	ca := testenv.NewCA(t)
	rc := startReceiver(t, ca)
	opts, _ := loopbackOptions(t, ca, fmt.Sprintf("https://reports.example.test:%d/tlsrpt, mailto:tlsrpt@example.test", rc.port()))
	opts.Dir = t.TempDir()
	msgs := make(chan submitted, 4)
	opts.Submit = func(_ context.Context, from string, to []string, msg []byte) error {
		msgs <- submitted{from, to, msg}
		return nil
	}
	r := open(t, opts)
	r.Record(Session{Policy: tlsaPolicy, Time: day0.Add(time.Hour), Failure: &Failure{Result: ResultDANERequired, ReceivingMXHostname: "mx1.example.test"}})
	r.Record(Session{Policy: tlsaPolicy, Time: day0.Add(time.Hour)})

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	req := wait(t, rc.got, "POST")
	body := <-rc.bodies
	if req.Method != http.MethodPost || req.Header.Get("Content-Type") != "application/tlsrpt+gzip" {
		t.Errorf("%s with Content-Type %q", req.Method, req.Header.Get("Content-Type"))
	}
	posted := gunzip(t, strings.NewReader(string(body)))
	checkSchema(t, posted)
	m := wait(t, msgs, "report by mail")
	_, _, mailed := mailReportParts(t, m.msg)
	if string(mailed) != string(posted) {
		t.Errorf("the mailed report differs from the posted one:\n%s\n%s", mailed, posted)
	}
	var rep reportJSON
	_ = json.Unmarshal(posted, &rep)
	if len(rep.Policies) != 1 || rep.Policies[0].Summary != (summaryJSON{Successful: 1, Failure: 1}) || rep.Policies[0].Policy.Type != PolicyTLSA {
		t.Errorf("report %s", posted)
	}
	testenv.EventuallyTrue(t, "the report marked sent", func() bool { return isDone(r, day0, "example.test") })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if again := open(t, opts); !isDone(again, day0, "example.test") {
		t.Error("after a restart the report is owed again")
	}
}

func isDone(r *Reporter, day time.Time, domain string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := r.days[day.Format(time.DateOnly)]
	return d != nil && d.Domains[domain] != nil && d.Domains[domain].Done
}

// TestRetry: a redirect and a 5xx are failures, retried with doubling
// back-off; a URI that took the report does not get it again; a redirect
// is never followed.
func TestRetry(t *testing.T) {
	ca := testenv.NewCA(t)
	rc := startReceiver(t, ca, http.StatusFound, http.StatusServiceUnavailable)
	opts, _ := loopbackOptions(t, ca, fmt.Sprintf("https://reports.example.test:%d/tlsrpt,mailto:tlsrpt@example.test", rc.port()))
	clock := opts.Clock.(*testenv.Clock)
	var submits int
	opts.Submit = func(context.Context, string, []string, []byte) error {
		submits++
		if submits == 1 {
			return errors.New("queue full")
		}
		return nil
	}
	r := open(t, opts)
	r.Record(Session{Policy: stsPolicy, Time: day0})
	ctx := t.Context()

	next := r.sendDue(ctx) // 302 and a failed Submit
	if want := clock.Now().Add(r.opts.RetryBackoff); !next.Equal(want) {
		t.Fatalf("first retry at %v, want %v", next, want)
	}
	if again := r.sendDue(ctx); !again.Equal(next) || len(rc.got) != 1 {
		t.Fatalf("an attempt before the retry time: next %v, %d POSTs", again, len(rc.got))
	}
	clock.Set(next)
	next = r.sendDue(ctx) // 503; Submit takes it
	if want := clock.Now().Add(2 * r.opts.RetryBackoff); !next.Equal(want) || submits != 2 {
		t.Fatalf("second retry at %v, want %v; %d submits", next, want, submits)
	}
	clock.Set(next)
	if next = r.sendDue(ctx); !next.IsZero() || !isDone(r, day0, "example.test") {
		t.Fatalf("after a 200: next attempt %v, done %v", next, isDone(r, day0, "example.test"))
	}
	if len(rc.got) != 3 || submits != 2 || rc.strays != 0 {
		t.Errorf("%d POSTs (want 3), %d submits (want 2), %d requests elsewhere (want 0)", len(rc.got), submits, rc.strays)
	}
}

// TestGiveUp: a report whose destination cannot be looked up is retried
// MaxAttempts times, then dropped; a domain without a record is done at
// once; by default an https: URI on a loopback address gets nothing.
func TestGiveUp(t *testing.T) {
	ca := testenv.NewCA(t)
	rc := startReceiver(t, ca)
	opts, srv := loopbackOptions(t, ca, fmt.Sprintf("https://127.0.0.1:%d/tlsrpt", rc.port()))
	clock := opts.Clock.(*testenv.Clock)
	opts.MaxAttempts = 3
	srv.SetFault("_smtp._tls.example.test", dns.TypeTXT, testenv.DNSServFail)
	r := open(t, opts)
	r.Record(Session{Policy: stsPolicy, Time: day0})
	r.Record(Session{Policy: noPolicy, Time: day0})
	for i := range opts.MaxAttempts {
		next := r.sendDue(t.Context())
		if !isDone(r, day0, "other.test") {
			t.Fatal("a domain without a record is not done")
		}
		if done := isDone(r, day0, "example.test"); done != (i == opts.MaxAttempts-1) || done != next.IsZero() {
			t.Fatalf("attempt %d: done %v, next %v", i+1, done, next)
		}
		clock.Set(next)
	}

	// The default AllowAddr: public unicast only.
	opts = testOptions()
	opts.RootCAs = ca.Pool()
	r = open(t, opts)
	err := r.post(t.Context(), fmt.Sprintf("https://127.0.0.1:%d/tlsrpt", rc.port()), gzipped([]byte("{}")))
	if err == nil || !strings.Contains(err.Error(), "loopback") || len(rc.got) != 0 {
		t.Errorf("a POST to loopback: %v, %d received", err, len(rc.got))
	}
}

// TestSendOnDemand: Send sends a report of the day itself at once, partial
// (its date-range ends at the send, later sessions of the day are not
// counted), and Run does not send it again; a failed on-demand attempt is
// retried by Run with the back-off before the day's own time; a report
// already sent is not sent again; Summary shows each state.
func TestSendOnDemand(t *testing.T) {
	ca := testenv.NewCA(t)
	rc := startReceiver(t, ca, http.StatusServiceUnavailable)
	opts, srv := loopbackOptions(t, ca, fmt.Sprintf("https://reports.example.test:%d/tlsrpt", rc.port()))
	if err := srv.Add(`_smtp._tls.other.test. TXT "v=TLSRPTv1; rua=https://reports.example.test:` + fmt.Sprint(rc.port()) + `/tlsrpt"`); err != nil {
		t.Fatal(err)
	}
	clock := opts.Clock.(*testenv.Clock)
	now := day0.Add(10*time.Hour + 30*time.Second)
	clock.Set(now)
	opts.MaxDelay = time.Hour
	r := open(t, opts)
	r.Record(Session{Policy: stsPolicy})
	r.Record(Session{Policy: stsPolicy, Failure: &hostMismatch})
	r.Record(Session{Policy: noPolicy})

	st := r.Summary(day0)
	if !st.Partial || len(st.Domains) != 2 || !reflect.DeepEqual(st.Domains[0], Status{Domain: "example.test", Successful: 1, Failed: 1,
		State: StateWaiting, ReportID: st.Domains[0].ReportID}) || st.Domains[1].Domain != "other.test" {
		t.Fatalf("summary %+v", st)
	}
	if _, err := r.Send(t.Context(), day0, "nowhere.test"); !errors.Is(err, ErrNoSessions) {
		t.Errorf("Send of a domain without sessions: %v", err)
	}
	if _, err := r.Send(t.Context(), day0.AddDate(0, 0, -1), ""); !errors.Is(err, ErrNoSessions) {
		t.Errorf("Send of a day without sessions: %v", err)
	}

	// The first POST gets a 503: retrying, the counts final from now on.
	st, err := r.Send(t.Context(), day0, "Example.test")
	if err != nil || len(st.Domains) != 1 {
		t.Fatalf("Send: %+v %v", st, err)
	}
	s := st.Domains[0]
	if s.State != StateRetrying || s.Attempts != 1 || !s.NextAttempt.Equal(now.Add(r.opts.RetryBackoff)) ||
		len(s.Pending) != 1 || !strings.Contains(s.Reason, "503") || !st.Partial {
		t.Fatalf("after a 503: %+v", st)
	}
	r.Record(Session{Policy: stsPolicy})
	if r.Dropped() != 1 {
		t.Errorf("a session after the report started going out was counted (dropped %d)", r.Dropped())
	}
	if next := r.sendDue(t.Context()); !next.Equal(s.NextAttempt) || len(rc.got) != 1 {
		t.Fatalf("Run before the retry time: next %v, %d POSTs", next, len(rc.got))
	}
	// Run retries at the back-off, long before the day's own time.
	clock.Set(s.NextAttempt)
	r.sendDue(t.Context())
	if len(rc.got) != 2 {
		t.Fatalf("%d POSTs after the retry time, want 2", len(rc.got))
	}
	<-rc.got
	<-rc.bodies
	<-rc.got
	var rep reportJSON
	if err := json.Unmarshal(gunzip(t, strings.NewReader(string(<-rc.bodies))), &rep); err != nil {
		t.Fatal(err)
	}
	if want := now.Truncate(time.Second).Format(time.RFC3339); rep.DateRange.End != want || rep.Policies[0].Summary != (summaryJSON{Successful: 1, Failure: 1}) {
		t.Errorf("partial report: end %s (want %s), %+v", rep.DateRange.End, want, rep.Policies[0].Summary)
	}
	st = r.Summary(day0)
	if s := st.Domains[0]; s.State != StateSent || len(s.Sent) != 1 || len(s.Pending) != 0 {
		t.Errorf("after the retry: %+v", s)
	}

	// Sent: neither Send nor Run sends it again, the next day either.
	if st, err = r.Send(t.Context(), day0, "example.test"); err != nil || st.Domains[0].State != StateSent {
		t.Errorf("Send again: %+v %v", st, err)
	}
	clock.Set(day0.AddDate(0, 0, 1).Add(2 * time.Hour))
	r.sendDue(t.Context())
	if len(rc.got) != 1 { // other.test's report, by Run
		t.Fatalf("%d POSTs after the day's time, want 1 (other.test)", len(rc.got))
	}
	if s := r.Summary(day0); s.Partial || s.Domains[0].State != StateSent || s.Domains[1].State != StateSent {
		t.Errorf("the day over: %+v", s)
	}
}

// TestSendWhileRunSends: Run and Send never make two attempts at one
// report at once: while an on-demand attempt is under way, Run leaves the
// report alone, and it goes out once.
func TestSendWhileRunSends(t *testing.T) {
	opts := testOptions()
	opts.Clock = testenv.NewClock(day0.AddDate(0, 0, 1).Add(time.Minute))
	opts.MaxDelay = -1
	opts.LookupTXT = func(context.Context, string) ([]string, error) {
		return []string{"v=TLSRPTv1; rua=mailto:tlsrpt@example.test"}, nil
	}
	entered, release := make(chan struct{}, 4), make(chan struct{})
	var mu sync.Mutex
	submits := 0
	opts.Submit = func(context.Context, string, []string, []byte) error {
		mu.Lock()
		submits++
		first := submits == 1
		mu.Unlock()
		if first { // the on-demand attempt waits for the test
			entered <- struct{}{}
			<-release
		}
		return nil
	}
	r := open(t, opts)
	r.Record(Session{Policy: stsPolicy, Time: day0})
	sent := make(chan DayStatus, 1)
	go func() {
		st, err := r.Send(t.Context(), day0, "")
		if err != nil {
			t.Error(err)
		}
		sent <- st
	}()
	wait(t, entered, "on-demand attempt")
	if st := r.Summary(day0); st.Domains[0].State != StateSending {
		t.Errorf("during the attempt: %+v", st.Domains[0])
	}
	if next := r.sendDue(t.Context()); !next.IsZero() {
		t.Errorf("Run during the attempt: next %v", next)
	}
	close(release)
	if st := wait(t, sent, "Send's answer"); st.Domains[0].State != StateSent {
		t.Errorf("after the attempt: %+v", st.Domains[0])
	}
	r.sendDue(t.Context())
	mu.Lock()
	defer mu.Unlock()
	if submits != 1 {
		t.Errorf("%d reports submitted, want 1", submits)
	}
}
