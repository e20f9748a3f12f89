package tlsrpt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/testenv"
)

var (
	stsPolicy = Policy{Type: PolicySTS, Domain: "Example.TEST.",
		Strings: []string{"version: STSv1", "mode: enforce", "mx: *.mx.example.test", "max_age: 86400"},
		MXHosts: []string{"*.mx.example.test"}}
	tlsaPolicy = Policy{Type: PolicyTLSA, Domain: "example.test",
		Strings: []string{"_25._tcp.mx1.example.test. IN TLSA 3 1 1 0123456789abcdef"}}
	noPolicy     = Policy{Type: PolicyNotFound, Domain: "other.test"}
	hostMismatch = Failure{Result: ResultCertificateHostMismatch, SendingMTAIP: netip.MustParseAddr("192.0.2.10"),
		ReceivingIP: netip.MustParseAddr("198.51.100.7"), ReceivingMXHostname: "mx1.mx.example.test",
		ReceivingMXHelo: "mx1", AdditionalInfo: "x509: certificate is valid for other.test"}
)

// TestReport counts sessions of two policies and a failure kind twice, and
// reads them back as one RFC 8460 section 4.4 report per policy domain.
func TestReport(t *testing.T) {
	r := open(t, Options{Clock: testenv.NewClock(day0.Add(12 * time.Hour)),
		OrganizationName: "Example Relay Operators", ContactInfo: "tlsrpt-contact@sender.test", Submitter: "relay.sender.test"})
	at := day0.Add(10 * time.Hour)
	for range 3 {
		r.Record(Session{Policy: stsPolicy, Time: at})
	}
	r.Record(Session{Policy: stsPolicy, Failure: &hostMismatch, Time: at})
	r.Record(Session{Policy: stsPolicy, Failure: &hostMismatch, Time: at})
	r.Record(Session{Policy: tlsaPolicy, Failure: &Failure{Result: ResultTLSAInvalid, ReceivingMXHostname: "mx1.example.test"}, Time: at})
	r.Record(Session{Policy: noPolicy}) // the clock's now: the same day
	r.Record(Session{Policy: stsPolicy, Time: day0.Add(36 * time.Hour)})

	data, err := r.Report("example.test", day0.Add(5*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	m := checkSchema(t, data)
	var got reportJSON
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(got.ReportID, "@relay.sender.test") || len(got.ReportID) < 32 {
		t.Errorf("report-id %q", got.ReportID)
	}
	got.ReportID = ""
	want := reportJSON{
		OrganizationName: "Example Relay Operators", ContactInfo: "tlsrpt-contact@sender.test",
		DateRange: dateRangeJSON{Start: "2026-12-05T00:00:00Z", End: "2026-12-05T23:59:59Z"},
		Policies: []policyResult{{
			Policy:  policyJSON{Type: PolicySTS, String: stsPolicy.Strings, Domain: "example.test", MXHost: stsPolicy.MXHosts},
			Summary: summaryJSON{Successful: 3, Failure: 2},
			FailureDetails: []failureJSON{{ResultType: ResultCertificateHostMismatch, SendingMTAIP: "192.0.2.10", ReceivingIP: "198.51.100.7",
				ReceivingMXHostname: "mx1.mx.example.test", ReceivingMXHelo: "mx1", FailedSessionCount: 2,
				AdditionalInfo: "x509: certificate is valid for other.test"}},
		}, {
			Policy:         policyJSON{Type: PolicyTLSA, String: tlsaPolicy.Strings, Domain: "example.test"},
			Summary:        summaryJSON{Failure: 1},
			FailureDetails: []failureJSON{{ResultType: ResultTLSAInvalid, ReceivingMXHostname: "mx1.example.test", FailedSessionCount: 1}},
		}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("report\n got %+v\nwant %+v\n%s", got, want, data)
	}
	if _, ok := m["policies"].([]any)[1].(map[string]any)["policy"].(map[string]any)["mx-host"]; ok {
		t.Errorf("a TLSA policy has an mx-host: %s", data)
	}

	other, err := r.Report("other.test", day0)
	if err != nil {
		t.Fatal(err)
	}
	checkSchema(t, other)
	if !strings.Contains(string(other), `"policy":{"policy-type":"no-policy-found","policy-domain":"other.test"}`) {
		t.Errorf("no-policy-found report: %s", other)
	}
	next, err := r.Report("example.test", day0.AddDate(0, 0, 1))
	if err != nil || !strings.Contains(string(next), `"total-successful-session-count":1,`) {
		t.Errorf("the next day's report: %s, %v", next, err)
	}
	if _, err := r.Report("example.test", day0.AddDate(0, 0, -1)); !errors.Is(err, ErrNoSessions) {
		t.Errorf("a day without sessions: %v", err)
	}
}

// TestBounds: the state stays bounded, and what is past a bound is counted
// as dropped (or, for failure details, in the summary only).
func TestBounds(t *testing.T) {
	opts := testOptions()
	opts.Clock = testenv.NewClock(day0.Add(time.Hour))
	opts.MaxDomains, opts.MaxPolicies, opts.MaxFailureDetails = 2, 1, 1
	r := open(t, opts)
	for i := range 3 {
		r.Record(Session{Policy: Policy{Type: PolicyNotFound, Domain: fmt.Sprintf("d%d.test", i)}})
	}
	r.Record(Session{Policy: Policy{Type: PolicySTS, Domain: "d0.test"}}) // a second policy
	for _, res := range []string{ResultValidationFailure, ResultSTARTTLSNotSupported} {
		r.Record(Session{Policy: Policy{Type: PolicyNotFound, Domain: "d0.test"}, Failure: &Failure{Result: res, AdditionalInfo: strings.Repeat("é", 400)}})
	}
	r.Record(Session{Policy: Policy{Type: PolicyNotFound, Domain: "d0.test"}, Time: day0.AddDate(0, 0, -2)}) // too old
	r.Record(Session{Policy: Policy{Type: PolicyNotFound, Domain: ""}})
	if got := r.Dropped(); got != 4 {
		t.Errorf("Dropped() = %d, want 4", got)
	}
	if _, err := r.Report("d2.test", day0); !errors.Is(err, ErrNoSessions) {
		t.Errorf("the third domain: %v", err)
	}
	data, err := r.Report("d0.test", day0)
	if err != nil {
		t.Fatal(err)
	}
	checkSchema(t, data)
	var rep reportJSON
	_ = json.Unmarshal(data, &rep)
	if len(rep.Policies) != 1 || rep.Policies[0].Summary.Failure != 2 || len(rep.Policies[0].FailureDetails) != 1 {
		t.Fatalf("bounded report: %s", data)
	}
	if info := rep.Policies[0].FailureDetails[0].AdditionalInfo; len(info) > maxField || !strings.HasPrefix(info, "éé") {
		t.Errorf("additional-information of %d bytes: %q", len(info), info)
	}
}

// TestDayBytes: MaxDayBytes bounds what a day's strings take, whatever the
// sessions bring.
func TestDayBytes(t *testing.T) {
	opts := testOptions()
	opts.Clock = testenv.NewClock(day0.Add(time.Hour))
	opts.MaxDayBytes = 4000
	r := open(t, opts)
	long := strings.Repeat("x", 1000)
	for i := range 20 {
		r.Record(Session{Policy: Policy{Type: PolicySTS, Domain: fmt.Sprintf("d%d.test", i%4), Strings: []string{long, long, fmt.Sprint(i)}}})
	}
	r.mu.Lock()
	size := r.days[day0.Format(time.DateOnly)].Size
	r.mu.Unlock()
	if size > opts.MaxDayBytes || r.Dropped() == 0 {
		t.Errorf("a day of %d bytes (max %d), %d sessions dropped", size, opts.MaxDayBytes, r.Dropped())
	}
	if data, err := r.Report("d0.test", day0); err != nil || len(data) > int(opts.MaxDayBytes) {
		t.Errorf("report of %d bytes: %v", len(data), err)
	}
}

// TestConcurrentRecord: Record from many goroutines loses no count (go test
// -race checks the locking).
func TestConcurrentRecord(t *testing.T) {
	opts := testOptions()
	opts.Clock = testenv.NewClock(day0.Add(time.Hour))
	r := open(t, opts)
	const workers, each = 8, 500
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				s := Session{Policy: stsPolicy}
				if i%5 == 0 {
					s.Failure = &Failure{Result: ResultSTARTTLSNotSupported, ReceivingMXHostname: fmt.Sprintf("mx%d.example.test", w)}
				}
				r.Record(s)
				if i%100 == 0 {
					if _, err := r.Report("example.test", day0); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
	wg.Wait()
	data, err := r.Report("example.test", day0)
	if err != nil {
		t.Fatal(err)
	}
	var rep reportJSON
	_ = json.Unmarshal(data, &rep)
	s := rep.Policies[0].Summary
	var details int64
	for _, d := range rep.Policies[0].FailureDetails {
		details += d.FailedSessionCount
	}
	if s.Successful != workers*each*4/5 || s.Failure != workers*each/5 || details != s.Failure || len(rep.Policies[0].FailureDetails) != workers {
		t.Errorf("summary %+v, %d failure details counting %d", s, len(rep.Policies[0].FailureDetails), details)
	}
}

// TestPersistence: the counts and the report-id survive a restart; a
// damaged file is set aside and the relay starts.
func TestPersistence(t *testing.T) {
	dir := t.TempDir()
	opts := testOptions()
	opts.Dir = dir
	opts.Clock = testenv.NewClock(day0.Add(time.Hour))
	r := open(t, opts)
	r.Record(Session{Policy: stsPolicy})
	r.Record(Session{Policy: stsPolicy, Failure: &hostMismatch})
	r.Record(Session{Policy: noPolicy})
	before, err := r.Report("example.test", day0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "2026-12-04.json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}

	again := open(t, opts)
	after, err := again.Report("example.test", day0)
	if err != nil {
		t.Fatal(err)
	}
	if string(after) != string(before) {
		t.Errorf("after a restart\n got %s\nwant %s", after, before)
	}
	again.Record(Session{Policy: stsPolicy})
	if data, _ := again.Report("example.test", day0); !strings.Contains(string(data), `"total-successful-session-count":2,`) {
		t.Errorf("counting on after a restart: %s", data)
	}
	if _, err := os.Stat(filepath.Join(dir, "2026-12-04.json.corrupt")); err != nil {
		t.Errorf("the damaged file was not set aside: %v", err)
	}
}

// TestParseRecord: section 3's record syntax.
func TestParseRecord(t *testing.T) {
	for _, tc := range []struct {
		txts    []string
		want    []string
		wantErr string
	}{
		{txts: []string{"v=TLSRPTv1;rua=mailto:reports@example.test"}, want: []string{"mailto:reports@example.test"}},
		{txts: []string{"v=TLSRPTv1 ; rua=mailto:a@example.test , https://reports.example.test/v1 ;", "v=spf1 -all"},
			want: []string{"mailto:a@example.test", "https://reports.example.test/v1"}},
		{txts: []string{"v=TLSRPTv1; ext=1; rua=https://r.test/,ftp://x.test/,mailto:R%2bx@example.test,https://r.test/"},
			want: []string{"https://r.test/", "mailto:R+x@example.test"}},
		{txts: []string{"v=TLSRPTv1; rua=mailto:,https://r.test/"}, wantErr: "no address"},
		{txts: []string{"v=TLSRPTv1; rua=mailto:a@b@example.test"}, wantErr: "rua URI"},
		{txts: []string{"v=TLSRPTv1; rua=mailto:r@example.test", "v=TLSRPTv1; rua=mailto:s@example.test"}, wantErr: "2 TXT records"},
		{txts: []string{"v=TLSRPTv10; rua=mailto:r@example.test"}, wantErr: "0 TXT records"},
		{txts: []string{"v=TLSRPTv1;"}, wantErr: "no rua"},
		{txts: []string{"v=TLSRPTv1; rua=ftp://x.test/"}, wantErr: "no mailto: or https:"},
		{txts: []string{"v=TLSRPTv1; rua"}, wantErr: "not name=value"},
		{txts: []string{"v=TLSRPTv1; rua=https://user@r.test/"}, wantErr: "no user"},
	} {
		got, err := ParseRecord(tc.txts)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: %v, %v; want an error with %q", tc.txts, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q: %q, %v; want %q", tc.txts, got, err, tc.want)
		}
	}
}

// TestOptions: what is required is named.
func TestOptions(t *testing.T) {
	for _, tc := range []struct {
		mutate func(*Options)
		want   string
	}{
		{func(o *Options) { o.OrganizationName = "" }, "organization name"},
		{func(o *Options) { o.Submitter = "a!b" }, "submitter"},
		{func(o *Options) {
			o.From = ""
			o.Submit = func(context.Context, string, []string, []byte) error { return nil }
		}, "From address"},
		{func(o *Options) { o.From, o.ContactInfo = "", "" }, "contact info"},
	} {
		opts := testOptions()
		tc.mutate(&opts)
		if _, err := Open(opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open: %v, want an error naming %q", err, tc.want)
		}
	}
}

// TestPublicUnicast: the default AllowAddr.
func TestPublicUnicast(t *testing.T) {
	for addr, want := range map[string]bool{
		"192.0.2.1": true, "2001:db8::1": true, "8.8.8.8": true, "::ffff:8.8.8.8": true,
		"127.0.0.1": false, "::1": false, "10.1.2.3": false, "172.16.0.1": false, "192.168.1.1": false,
		"fd00:ec2::254": false, "169.254.169.254": false, "fe80::1": false, "0.0.0.0": false, "0.1.2.3": false,
		"100.100.100.200": false, "224.0.0.1": false, "255.255.255.255": false, "::": false,
	} {
		if got := PublicUnicast(netip.MustParseAddr(addr)); got != want {
			t.Errorf("PublicUnicast(%s) = %v, want %v", addr, got, want)
		}
	}
}

// BenchmarkRecord: the cost delivery pays per session, in parallel.
func BenchmarkRecord(b *testing.B) {
	opts := testOptions()
	opts.Clock = testenv.NewClock(day0.Add(time.Hour))
	r, err := Open(opts)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			s := Session{Policy: stsPolicy, Time: day0.Add(time.Hour)}
			if i%10 == 0 {
				s.Failure = &hostMismatch
			}
			r.Record(s)
			i++
		}
	})
}
