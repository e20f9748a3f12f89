package admin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/admin"
	"github.com/postgate/postgate/internal/relay/tlsrpt"
	"github.com/postgate/postgate/internal/testenv"
)

// tlsReportsFixture is the admin API over an in-memory TLS reporter whose
// mailto: reports are collected, at t0.
func tlsReportsFixture(t *testing.T) (*admin.Client, *tlsrpt.Reporter, *[]string) {
	t.Helper()
	var submitted []string
	r, err := tlsrpt.Open(tlsrpt.Options{
		Clock: testenv.NewClock(t0), OrganizationName: "Example", Submitter: "relay.test", From: "tlsrpt@relay.test",
		LookupTXT: func(_ context.Context, name string) ([]string, error) {
			return []string{"v=TLSRPTv1; rua=mailto:rua@" + strings.TrimPrefix(name, "_smtp._tls.")}, nil
		},
		Submit: func(_ context.Context, _ string, to []string, _ []byte) error {
			submitted = append(submitted, to...)
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(admin.New(newFixture(t).q, admin.Options{Now: func() time.Time { return t0 }, TLSReports: r}))
	t.Cleanup(srv.Close)
	return admin.NewClient(srv.URL, 10*time.Second), r, &submitted
}

// TestTLSReports: `postgate queue tls-reports` shows a day's counts per
// domain and one domain's report JSON; --send sends them now, once, and
// says when the day is not over.
func TestTLSReports(t *testing.T) {
	c, r, submitted := tlsReportsFixture(t)
	yesterday := t0.AddDate(0, 0, -1)
	pol := tlsrpt.Policy{Type: tlsrpt.PolicyTLSA, Domain: "dane.test", Strings: []string{"3 1 1 00"}}
	r.Record(tlsrpt.Session{Policy: pol, Time: yesterday})
	r.Record(tlsrpt.Session{Policy: pol, Time: yesterday, Failure: &tlsrpt.Failure{Result: tlsrpt.ResultValidationFailure}})
	r.Record(tlsrpt.Session{Policy: tlsrpt.Policy{Type: tlsrpt.PolicyNotFound, Domain: "plain.test"}, Time: yesterday})
	r.Record(tlsrpt.Session{Policy: pol, Time: t0})
	ctx := t.Context()
	run := func(a admin.Action) (string, error) {
		var out bytes.Buffer
		if err := a.Check(); err != nil {
			return "", err
		}
		err := a.Run(ctx, c, &out)
		return out.String(), err
	}

	out, err := run(admin.Action{Verb: "tls-reports", Day: "yesterday"})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out, "\n")
	if !strings.HasPrefix(lines[0], "Day:      2026-02-28 UTC") || strings.Contains(lines[0], "not over") ||
		!strings.HasPrefix(lines[2], "DOMAIN ") || !strings.HasPrefix(strings.Join(strings.Fields(lines[3]), " "), "dane.test 1 1 waiting 0") ||
		!strings.HasPrefix(lines[4], "plain.test") {
		t.Errorf("tls-reports --day yesterday:\n%s", out)
	}
	out, err = run(admin.Action{Verb: "tls-reports", List: admin.ListQuery{Domain: "dane.test"}, Day: "2026-02-28"})
	var rep struct {
		Org      string `json:"organization-name"`
		Policies []struct {
			Summary map[string]int `json:"summary"`
		} `json:"policies"`
	}
	if err != nil || json.Unmarshal([]byte(out), &rep) != nil || rep.Org != "Example" || len(rep.Policies) != 1 ||
		rep.Policies[0].Summary["total-failure-session-count"] != 1 {
		t.Errorf("tls-reports --domain dane.test: %v\n%s", err, out)
	}
	if _, err := run(admin.Action{Verb: "tls-reports", List: admin.ListQuery{Domain: "nowhere.test"}}); err == nil || !strings.Contains(err.Error(), "no sessions") {
		t.Errorf("a domain without sessions: %v", err)
	}

	// Sending: yesterday's dane.test, then again (nothing more goes out).
	for range 2 {
		out, err = run(admin.Action{Verb: "tls-reports", Send: true, Day: "2026-02-28", List: admin.ListQuery{Domain: "dane.test"}})
		if err != nil || !strings.Contains(strings.Join(strings.Fields(out), " "), "dane.test 1 1 sent 0 to mailto:rua@dane.test") || strings.Contains(out, "plain.test") {
			t.Errorf("tls-reports --send: %v\n%s", err, out)
		}
		if strings.Join(*submitted, ",") != "rua@dane.test" {
			t.Errorf("reports submitted: %q", *submitted)
		}
	}
	// Today's: partial.
	st, err := c.SendTLSReports(ctx, "today", "")
	if err != nil || !st.Partial || len(st.Domains) != 1 || st.Domains[0].State != tlsrpt.StateSent {
		t.Errorf("sending today's: %+v %v", st, err)
	}

	for _, tc := range []struct {
		action admin.Action
		want   string
	}{
		{admin.Action{Verb: "tls-reports", Send: true}, "--send needs --day"},
		{admin.Action{Verb: "tls-reports", IDs: []string{"x"}}, "unexpected arguments"},
		{admin.Action{Verb: "tls-reports", Day: "2026-03-02"}, "has not begun"},
		{admin.Action{Verb: "tls-reports", Day: "March 1"}, "want YYYY-MM-DD"},
	} {
		if _, err := run(tc.action); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.action, err, tc.want)
		}
	}
	if err := c.Do(ctx, http.MethodPost, "/v1/tls-reports/send", nil, nil); err == nil || !strings.Contains(err.Error(), "day= is required") {
		t.Errorf("a send without day=: %v", err)
	}
}

// TestTLSReportsOff: a relay without TLS reporting says so: 404 to a look,
// 409 to a send.
func TestTLSReportsOff(t *testing.T) {
	srv := httptest.NewServer(admin.New(newFixture(t).q, admin.Options{}))
	defer srv.Close()
	for _, tc := range []struct {
		method, path string
		code         int
	}{
		{http.MethodGet, "/v1/tls-reports", http.StatusNotFound},
		{http.MethodPost, "/v1/tls-reports/send?day=today", http.StatusConflict},
	} {
		req, _ := http.NewRequestWithContext(t.Context(), tc.method, srv.URL+tc.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]string
		_ = json.NewDecoder(resp.Body).Decode(&body)
		_ = resp.Body.Close()
		if resp.StatusCode != tc.code || !strings.Contains(body["error"], "--tls-rpt=false") {
			t.Errorf("%s %s: %d %q, want %d and why", tc.method, tc.path, resp.StatusCode, body["error"], tc.code)
		}
	}
}
