package relay_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/postgate/postgate/internal/relay/admin"
	"github.com/postgate/postgate/internal/relay/tlsrpt"
	"github.com/postgate/postgate/internal/testenv"
)

// TestOutboundTLSDoneWhen is the "Done when" of the outbound TLS issue,
// against a relay in this process, a validating loopback DNS server, an
// MTA-STS policy host and loopback sinks sharing the MX port:
//
//   - DANE: a message to a domain whose first MX presents a key its TLSA
//     records do not name reaches only the second, matching MX; a domain
//     whose only MX sits behind a STARTTLS stripper stays queued (4.7.4),
//     and nothing but QUIT crosses the stripper after EHLO;
//   - MTA-STS: an enforce domain's mail goes only to the MX host its policy
//     names (the other, preferred MX never sees a connection); a testing
//     domain whose MX shows a wrong-name certificate still gets its mail;
//   - TLS-RPT: today's reports sent on demand through the admin API arrive
//     at the mailto: sink DKIM-signed by the reporting domain with the RFC
//     8460 JSON of each domain's sessions, and at the https: receiver as
//     application/tlsrpt+gzip POSTs.
func TestOutboundTLSDoneWhen(t *testing.T) {
	ca := testenv.NewCA(t)
	dns := testenv.StartDNSServer(t, testenv.DNSOptions{})

	// The MX sinks share one port, the relay's --mx-port: the first picks it.
	daneGood := ca.Issue(t, "mx2.dane.test")
	daneMX1 := testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: "127.0.20.1:0", TLS: testenv.SelfSigned(t, "mx1.dane.test").ServerConfig()})
	port := daneMX1.Port()
	at := func(ip string) string { return fmt.Sprintf("%s:%d", ip, port) }
	daneMX2 := testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: at("127.0.20.2"), TLS: daneGood.ServerConfig()})
	stripGood := ca.Issue(t, "mx.strip.test")
	stripBehind := testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: "127.0.20.4:0", TLS: stripGood.ServerConfig()})
	stripper := testenv.StartSTARTTLSStripper(t, at("127.0.20.3"), stripBehind.Addr())
	stsRogue := testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: at("127.0.20.5"), TLS: ca.Issue(t, "rogue.sts.test").ServerConfig()})
	stsMX := testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: at("127.0.20.6"), TLS: ca.Issue(t, "mx.sts.test").ServerConfig()})
	testingMX := testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: at("127.0.20.7"), TLS: ca.IssueWrongName(t).ServerConfig()})
	reportsMX := testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: at("127.0.20.9")})
	rua := startRUAReceiver(t, ca, "127.0.20.10:0", "rua.reports.test")

	tlsrptRecord := fmt.Sprintf(`TXT "v=TLSRPTv1; rua=mailto:rpt@reports.test,https://rua.reports.test:%d/path"`, rua.port())
	records := []string{
		"dane.test. MX 10 mx1.dane.test.", "dane.test. MX 20 mx2.dane.test.",
		"mx1.dane.test. A 127.0.20.1", "mx2.dane.test. A 127.0.20.2",
		fmt.Sprintf("_%d._tcp.mx1.dane.test. TLSA %s", port, spkiTLSA(daneGood)),
		fmt.Sprintf("_%d._tcp.mx2.dane.test. TLSA %s", port, spkiTLSA(daneGood)),
		"strip.test. MX 10 mx.strip.test.", "mx.strip.test. A 127.0.20.3",
		fmt.Sprintf("_%d._tcp.mx.strip.test. TLSA %s", port, spkiTLSA(stripGood)),
		"sts.test. MX 10 rogue.sts.test.", "sts.test. MX 20 mx.sts.test.",
		"rogue.sts.test. A 127.0.20.5", "mx.sts.test. A 127.0.20.6",
		"testing.test. MX 10 mx.testing.test.", "mx.testing.test. A 127.0.20.7",
		"reports.test. MX 10 mx.reports.test.", "mx.reports.test. A 127.0.20.9", "rua.reports.test. A 127.0.20.10",
	}
	for _, d := range []string{"dane.test", "strip.test", "sts.test", "testing.test"} {
		records = append(records, "_smtp._tls."+d+". "+tlsrptRecord)
	}
	if err := dns.Add(records...); err != nil {
		t.Fatal(err)
	}
	dns.Sign("dane.test")
	dns.Sign("strip.test")
	policies := testenv.StartPolicyServer(t, ca, "sts.test", "testing.test")
	policies.SetPolicy("sts.test", "version: STSv1\nmode: enforce\nmx: mx.sts.test\nmax_age: 86400\n")
	policies.SetPolicy("testing.test", "version: STSv1\nmode: testing\nmx: mx.testing.test\nmax_age: 86400\n")
	policies.Publish(t, dns, "sts.test", "1")
	policies.Publish(t, dns, "testing.test", "1")

	keyPEM, dkimTXT := ed25519Key()
	dir := t.TempDir()
	manifests := fmt.Sprintf(`apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: sender}
spec:
  domain: sender.test
  signing: {selector: s1, algorithm: Ed25519, keySecretRef: {name: dkim}}
---
apiVersion: v1
kind: Secret
metadata: {name: dkim}
stringData:
  private.key: |
%s---
apiVersion: postgate.io/v1alpha1
kind: TrustedNetwork
metadata: {name: lo}
spec: {cidrs: [127.0.0.1/32]}
`, indent(string(keyPEM), "    "))
	if err := os.WriteFile(filepath.Join(dir, "relay.yaml"), []byte(manifests), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startRelayInProcess(t, nil, "--manifests", dir, "--spool-dir", t.TempDir(), "--hostname", "relay.sender.test",
		"--dns-server", dns.Addr(), "--dns-dnssec", "--mx-port", fmt.Sprint(port),
		"--mta-sts-port", fmt.Sprint(policies.Port()), "--tls-ca-file", ca.WriteBundle(t, ""),
		"--webhook-allow-cidrs", "127.0.0.0/8", "--tls-rpt-from", "tlsrpt@sender.test", "--tls-rpt-org", "Example Relays")

	for _, to := range []string{"user@dane.test", "user@strip.test", "user@sts.test", "user@testing.test"} {
		if line, err := testenv.SubmitMail(p.addr, "127.0.0.1", "app@sender.test", to, "to "+to); err != nil || !queuedID.MatchString(line) {
			t.Fatalf("submitting to %s: %q %v\n%s", to, line, err, p.logs())
		}
	}
	// Each attempt's log line comes after its sessions were counted.
	attempt := func(to, rest string) *regexp.Regexp {
		return regexp.MustCompile(`msg="Delivery attempt" id=\S+ to=` + regexp.QuoteMeta(to) + ` relay=(\S+) delay=\S+ ` + rest)
	}
	if m := p.log.WaitMatch(t, attempt("user@dane.test", `dsn=2\.0\.0 status=sent`)); !strings.HasPrefix(m[1], "mx2.dane.test[") {
		t.Errorf("dane.test delivered through %s, want mx2.dane.test", m[1])
	}
	p.log.WaitMatch(t, attempt("user@strip.test", `dsn=4\.7\.4 status=deferred`))
	if m := p.log.WaitMatch(t, attempt("user@sts.test", `dsn=2\.0\.0 status=sent`)); !strings.HasPrefix(m[1], "mx.sts.test[") {
		t.Errorf("sts.test delivered through %s, want mx.sts.test", m[1])
	}
	p.log.WaitMatch(t, attempt("user@testing.test", `dsn=2\.0\.0 status=sent`))

	// DANE: only the matching server got the message, over TLS.
	if n1, n2 := len(daneMX1.Messages()), len(daneMX2.Messages()); n1 != 0 || n2 != 1 || daneMX2.Messages()[0].TLS == nil {
		t.Errorf("dane.test: %d messages at the mismatching MX, %d at the matching one (want 0 and 1, over TLS)", n1, n2)
	}
	// The stripped domain stays queued, deferred with 4.7.4, and nothing
	// but QUIT went through the stripper after EHLO.
	c := admin.NewClient(p.adminAddr, 30*time.Second)
	ctx := t.Context()
	page, err := c.List(ctx, admin.ListQuery{Domain: "strip.test", Limit: 10})
	if err != nil || len(page.Messages) != 1 || page.Messages[0].Recipients[0].State != "pending" ||
		!strings.Contains(page.Messages[0].Recipients[0].LastReply, "4.7.4") {
		t.Errorf("strip.test in the queue: %+v %v", page, err)
	}
	if n := stripper.BytesAfterEHLO(); n > int64(len("QUIT\r\n")) || stripper.Conns() == 0 || len(stripBehind.Messages()) != 0 {
		t.Errorf("stripper: %d connections, %d bytes after EHLO (at most QUIT), %d messages behind it", stripper.Conns(), n, len(stripBehind.Messages()))
	}
	// MTA-STS enforce: the MX host outside the policy never got a
	// connection; testing: delivered despite the wrong name.
	if n := len(stsRogue.Conns()); n != 0 || len(stsMX.Messages()) != 1 {
		t.Errorf("sts.test: %d connections to the MX outside the policy, %d messages at the policy's", n, len(stsMX.Messages()))
	}
	if n := len(testingMX.Messages()); n != 1 {
		t.Errorf("testing.test: %d messages at the wrong-name MX, want 1", n)
	}

	// Today's reports, now.
	st, err := c.SendTLSReports(ctx, "today", "")
	if err != nil {
		t.Fatal(err)
	}
	if !st.Partial || len(st.Domains) != 4 {
		t.Fatalf("send: %+v", st)
	}
	for _, d := range st.Domains {
		want := []string{fmt.Sprintf("https://rua.reports.test:%d/path", rua.port()), "mailto:rpt@reports.test"}
		if d.State != tlsrpt.StateSent || !slices.Equal(d.Sent, want) {
			t.Errorf("%s: %+v, want sent to %q", d.Domain, d, want)
		}
	}

	// What each domain's report must say: sessions by outcome.
	type counts struct{ ok, failed int }
	wantReports := map[string]struct {
		policy  string
		c       counts
		results []string
	}{
		"dane.test":    {"tlsa", counts{1, 1}, []string{tlsrpt.ResultValidationFailure}},
		"strip.test":   {"tlsa", counts{0, -1}, []string{tlsrpt.ResultSTARTTLSNotSupported}},
		"sts.test":     {"sts", counts{1, 1}, []string{tlsrpt.ResultValidationFailure}},
		"testing.test": {"sts", counts{0, 1}, []string{tlsrpt.ResultCertificateHostMismatch}},
	}
	checkReport := func(how string, domain string, data []byte) {
		t.Helper()
		var rep struct {
			Org      string `json:"organization-name"`
			Policies []struct {
				Policy struct {
					Type   string `json:"policy-type"`
					Domain string `json:"policy-domain"`
				} `json:"policy"`
				Summary struct {
					OK     int `json:"total-successful-session-count"`
					Failed int `json:"total-failure-session-count"`
				} `json:"summary"`
				Details []struct {
					Result string `json:"result-type"`
				} `json:"failure-details"`
			} `json:"policies"`
		}
		if err := json.Unmarshal(data, &rep); err != nil {
			t.Errorf("%s report of %s: %v\n%s", how, domain, err, data)
			return
		}
		want, ok := wantReports[domain]
		if !ok || rep.Org != "Example Relays" {
			t.Errorf("%s report of %q:\n%s", how, domain, data)
			return
		}
		var got counts
		var results []string
		for _, p := range rep.Policies {
			if p.Policy.Type != want.policy || p.Policy.Domain != domain {
				t.Errorf("%s report of %s: policy %+v", how, domain, p.Policy)
			}
			got.ok += p.Summary.OK
			got.failed += p.Summary.Failed
			for _, d := range p.Details {
				if !slices.Contains(results, d.Result) {
					results = append(results, d.Result)
				}
			}
		}
		if want.c.failed < 0 { // the stripped domain: as many as the attempts so far
			want.c.failed = max(got.failed, 1)
		}
		if got != want.c || !slices.Equal(results, want.results) {
			t.Errorf("%s report of %s: sessions %+v, results %q; want %+v, %q\n%s", how, domain, got, results, want.c, want.results, data)
		}
	}

	// https: one POST per domain, as application/tlsrpt+gzip.
	testenv.EventuallyTrue(t, "4 reports at the https: receiver", func() bool { return len(rua.posts()) == 4 })
	for _, post := range rua.posts() {
		if post.contentType != "application/tlsrpt+gzip" || post.path != "/path" {
			t.Errorf("POST %s with Content-Type %q", post.path, post.contentType)
		}
		data := gunzipped(t, bytes.NewReader(post.body))
		var rep struct {
			Policies []struct {
				Policy struct {
					Domain string `json:"policy-domain"`
				} `json:"policy"`
			} `json:"policies"`
		}
		if err := json.Unmarshal(data, &rep); err != nil || len(rep.Policies) == 0 {
			t.Fatalf("POSTed report: %v\n%s", err, data)
		}
		checkReport("https:", rep.Policies[0].Policy.Domain, data)
	}

	// mailto: one message per domain, through the relay's own queue,
	// signed by sender.test.
	wait, cancel := context.WithTimeout(ctx, testenv.WaitTimeout)
	defer cancel()
	msgs, err := reportsMX.WaitMessages(wait, 4)
	if err != nil {
		t.Fatalf("reports by mail: %v\n%s", err, p.logs())
	}
	for _, m := range msgs {
		if m.From != "tlsrpt@sender.test" || strings.Join(m.Rcpts, ",") != "rpt@reports.test" {
			t.Errorf("report envelope %s -> %q", m.From, m.Rcpts)
		}
		verifications, err := dkim.VerifyWithOptions(bytes.NewReader(m.Data), &dkim.VerifyOptions{
			LookupTXT: func(name string) ([]string, error) {
				if name != "s1._domainkey.sender.test" {
					return nil, fmt.Errorf("no TXT record at %s", name)
				}
				return []string{dkimTXT}, nil
			},
		})
		if err != nil || len(verifications) != 1 || verifications[0].Err != nil || verifications[0].Domain != "sender.test" ||
			!slices.ContainsFunc(verifications[0].HeaderKeys, func(k string) bool { return strings.EqualFold(k, "TLS-Report-Domain") }) {
			t.Errorf("DKIM of a report: %v %+v\n%s", err, verifications, m.Data)
		}
		domain, data := mailedReport(t, m.Data)
		checkReport("mailto:", domain, data)
	}
}

// spkiTLSA is the DANE-EE SPKI SHA-256 record data ("3 1 1 ...") of c.
func spkiTLSA(c *testenv.Cert) string {
	sum := sha256.Sum256(c.Leaf.RawSubjectPublicKeyInfo)
	return "3 1 1 " + hex.EncodeToString(sum[:])
}

// mailedReport reads a report message as a receiver does: its
// TLS-Report-Domain and the gunzipped JSON of its application/tlsrpt+gzip
// part (RFC 8460 section 5.3).
func mailedReport(t *testing.T, data []byte) (domain string, report []byte) {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("report message: %v", err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "tlsrpt" {
		t.Fatalf("report Content-Type %q", m.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if pt, _, _ := mime.ParseMediaType(part.Header.Get("Content-Type")); pt == "application/tlsrpt+gzip" {
			report = gunzipped(t, base64.NewDecoder(base64.StdEncoding, part))
		}
	}
	if report == nil {
		t.Fatalf("no application/tlsrpt+gzip part in\n%s", data)
	}
	return m.Header.Get("TLS-Report-Domain"), report
}

func gunzipped(t *testing.T, r io.Reader) []byte {
	t.Helper()
	zr, err := gzip.NewReader(r)
	if err != nil {
		t.Fatalf("gzip: %v", err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("gzip: %v", err)
	}
	return data
}

// ruaReceiver is an https: rua receiver on loopback (RFC 8460 section 5.4).
type ruaReceiver struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []ruaPost
}

type ruaPost struct {
	path, contentType string
	body              []byte
}

// startRUAReceiver serves HTTPS on addr with a certificate of ca for name.
func startRUAReceiver(t *testing.T, ca *testenv.CA, addr, name string) *ruaReceiver {
	t.Helper()
	rc := &ruaReceiver{}
	rc.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		if req.Method == http.MethodPost {
			rc.mu.Lock()
			rc.got = append(rc.got, ruaPost{path: req.URL.Path, contentType: req.Header.Get("Content-Type"), body: body})
			rc.mu.Unlock()
		}
	}))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = rc.srv.Listener.Close()
	rc.srv.Listener = ln
	rc.srv.TLS = ca.Issue(t, name).ServerConfig()
	rc.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	rc.srv.StartTLS()
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *ruaReceiver) port() int { return rc.srv.Listener.Addr().(*net.TCPAddr).Port }

func (rc *ruaReceiver) posts() []ruaPost {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.got)
}
