package delivery

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/miekg/dns"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/mtasts"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/tlsrpt"
	"github.com/postgate/postgate/internal/testenv"
)

// tlsReports records what delivery reports for TLS-RPT.
type tlsReports struct{ calls[tlsrpt.Session] }

func (r *tlsReports) Record(s tlsrpt.Session) { r.add(s) }

// results lists the reported sessions as "policy-type result" ("" result
// for a success), in order.
func (r *tlsReports) results() []string {
	var out []string
	for _, s := range r.all() {
		res := ""
		if s.Failure != nil {
			res = s.Failure.Result
		}
		out = append(out, string(s.Policy.Type)+" "+res)
	}
	return out
}

// stsPolicies serves fixed MTA-STS lookups.
type stsPolicies map[string]mtasts.Result

func (p stsPolicies) Lookup(_ context.Context, domain string) mtasts.Result { return p[domain] }

// spkiTLSA is the DANE-EE SPKI SHA-256 record ("3 1 1") of c.
func spkiTLSA(c *testenv.Cert) string {
	sum := sha256.Sum256(c.Leaf.RawSubjectPublicKeyInfo)
	return "3 1 1 " + hex.EncodeToString(sum[:])
}

// daneEnv is a recipient domain rcpt.test whose MX hosts are sinks with
// the given TLS, on a DNS server that validates (Sign) and a resolver that
// trusts it. In records, PORT stands for the MX port.
func daneEnv(t *testing.T, sinks map[string]testenv.SMTPSinkOptions, records ...string) (*env, map[string]*testenv.SMTPSink, *tlsReports) {
	t.Helper()
	e := newEnv(t)
	res, err := NewResolver(ResolverOptions{Server: e.dns.Addr(), Clock: e.clock, TrustAD: true})
	if err != nil {
		t.Fatal(err)
	}
	e.opts.Resolver = res
	reports := &tlsReports{}
	e.opts.TLSReports = reports
	out := map[string]*testenv.SMTPSink{}
	for ip, opts := range sinks {
		out[ip] = e.mxSink(ip, opts)
	}
	for _, r := range records {
		e.dnsAdd(strings.ReplaceAll(r, "PORT", fmt.Sprint(e.MXPort())))
	}
	e.dns.Sign("rcpt.test")
	e.setTable(senderDomain("sender.test"))
	return e, out, reports
}

// DANE (RFC 7672): a matching TLSA record delivers over authenticated TLS;
// a wrong key or a stripped STARTTLS defers with nothing sent, and each
// session is reported.
func TestDANE(t *testing.T) {
	ca := testenv.NewCA(t)
	good := ca.Issue(t, "mx.rcpt.test")
	other := testenv.SelfSigned(t, "mx.rcpt.test")
	mx := []string{"rcpt.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3"}
	cases := []struct {
		name     string
		sink     testenv.SMTPSinkOptions
		tlsa     string
		status   Status
		enhanced string
		policy   PolicyKind
		report   []string
	}{
		{"EE match delivers", testenv.SMTPSinkOptions{TLS: good.ServerConfig()}, spkiTLSA(good), StatusSent, "", PolicyDANE, []string{"tlsa "}},
		{"wrong key defers", testenv.SMTPSinkOptions{TLS: other.ServerConfig()}, spkiTLSA(good), StatusDeferred, "4.7.5", PolicyDANE, []string{"tlsa validation-failure"}},
		{"no STARTTLS defers", testenv.SMTPSinkOptions{}, spkiTLSA(good), StatusDeferred, "4.7.4", PolicyDANE, []string{"tlsa starttls-not-supported"}},
		{"unusable records only: opportunistic", testenv.SMTPSinkOptions{TLS: other.ServerConfig()}, "1 1 1 " + strings.Repeat("ab", 32), StatusSent, "", PolicyDomain, []string{"no-policy-found "}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, sinks, reports := daneEnv(t, map[string]testenv.SMTPSinkOptions{"127.0.0.3": c.sink},
				append(mx, "_PORT._tcp.mx.rcpt.test. TLSA "+c.tlsa)...)
			e.start()
			e.enqueue("app@sender.test", "user@rcpt.test")
			a := e.attempt(1)
			if a.Status != c.status || (c.enhanced != "" && a.Reply.Enhanced != c.enhanced) || a.TLS.Policy != c.policy {
				t.Fatalf("attempt: %+v", a)
			}
			got := len(sinks["127.0.0.3"].Messages())
			if (c.status == StatusSent) != (got == 1) {
				t.Errorf("%d messages at the sink", got)
			}
			if c.status == StatusSent && c.policy == PolicyDANE && !a.TLS.Established {
				t.Errorf("sent without TLS: %+v", a.TLS)
			}
			if r := reports.results(); strings.Join(r, ",") != strings.Join(c.report, ",") {
				t.Errorf("TLS-RPT sessions %q, want %q", r, c.report)
			}
		})
	}
}

// An MX host whose certificate does not match is passed over for the next
// one that does; mail goes only to the matching server.
func TestDANETriesTheNextMX(t *testing.T) {
	ca := testenv.NewCA(t)
	good := ca.Issue(t, "mx2.rcpt.test")
	bad := testenv.SelfSigned(t, "mx1.rcpt.test")
	e, sinks, reports := daneEnv(t, map[string]testenv.SMTPSinkOptions{
		"127.0.0.3": {TLS: bad.ServerConfig()}, "127.0.0.4": {TLS: good.ServerConfig()},
	},
		"rcpt.test. MX 10 mx1.rcpt.test.", "rcpt.test. MX 20 mx2.rcpt.test.",
		"mx1.rcpt.test. A 127.0.0.3", "mx2.rcpt.test. A 127.0.0.4",
		"_PORT._tcp.mx1.rcpt.test. TLSA "+spkiTLSA(good), "_PORT._tcp.mx2.rcpt.test. TLSA "+spkiTLSA(good))
	e.start()
	e.enqueue("app@sender.test", "user@rcpt.test")
	if a := e.attempt(1); a.Status != StatusSent || a.RelayHost != "mx2.rcpt.test" || a.TLS.Policy != PolicyDANE {
		t.Fatalf("attempt: %+v", a)
	}
	if n1, n2 := len(sinks["127.0.0.3"].Messages()), len(sinks["127.0.0.4"].Messages()); n1 != 0 || n2 != 1 {
		t.Errorf("messages: mx1 %d, mx2 %d", n1, n2)
	}
	if r := reports.results(); strings.Join(r, ",") != "tlsa validation-failure,tlsa " {
		t.Errorf("TLS-RPT sessions %q", r)
	}
}

// A man in the middle that strips STARTTLS from the EHLO reply gets
// nothing under DANE: not one byte after EHLO but QUIT.
func TestDANERefusesAStrippedSTARTTLS(t *testing.T) {
	ca := testenv.NewCA(t)
	good := ca.Issue(t, "mx.rcpt.test")
	e := newEnv(t)
	res, err := NewResolver(ResolverOptions{Server: e.dns.Addr(), Clock: e.clock, TrustAD: true})
	if err != nil {
		t.Fatal(err)
	}
	e.opts.Resolver = res
	reports := &tlsReports{}
	e.opts.TLSReports = reports
	sink := testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: "127.0.0.6:0", TLS: good.ServerConfig()})
	mitm := testenv.StartSTARTTLSStripper(t, fmt.Sprintf("127.0.0.3:%d", e.MXPort()), sink.Addr())
	e.dnsAdd("rcpt.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3",
		fmt.Sprintf("_%d._tcp.mx.rcpt.test. TLSA %s", e.MXPort(), spkiTLSA(good)))
	e.dns.Sign("rcpt.test")
	e.setTable(senderDomain("sender.test"))
	e.start()
	e.enqueue("app@sender.test", "user@rcpt.test")
	a := e.attempt(1)
	if a.Status != StatusDeferred || a.Cause != CauseTLS || !strings.Contains(a.Reply.Text, "DANE") {
		t.Fatalf("attempt: %+v", a)
	}
	if mitm.Conns() != 1 || len(sink.Messages()) != 0 {
		t.Errorf("%d connections through the stripper, %d messages", mitm.Conns(), len(sink.Messages()))
	}
	if n := mitm.BytesAfterEHLO(); n > int64(len("QUIT\r\n")) {
		t.Errorf("%d bytes sent in plaintext after EHLO", n)
	}
	if r := reports.results(); strings.Join(r, ",") != "tlsa starttls-not-supported" {
		t.Errorf("TLS-RPT sessions %q", r)
	}
}

// Without DNSSEC (an unsigned zone, or a resolver not trusted) DANE does
// not apply; a TLSA lookup that fails in a signed zone makes the host
// unusable; a sender domain with TLS policy None sends in plaintext.
func TestDANEApplicability(t *testing.T) {
	ca := testenv.NewCA(t)
	good := ca.Issue(t, "mx.rcpt.test")
	other := testenv.SelfSigned(t, "mx.rcpt.test")
	records := []string{"rcpt.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3", "_PORT._tcp.mx.rcpt.test. TLSA " + spkiTLSA(good)}
	t.Run("unsigned zone", func(t *testing.T) {
		e, sinks, _ := daneEnv(t, map[string]testenv.SMTPSinkOptions{"127.0.0.3": {TLS: other.ServerConfig()}}, records...)
		e.dns.Unsign("rcpt.test")
		e.start()
		e.enqueue("app@sender.test", "user@rcpt.test")
		if a := e.attempt(1); a.Status != StatusSent || a.TLS.Policy != PolicyDomain || len(sinks["127.0.0.3"].Messages()) != 1 {
			t.Fatalf("attempt: %+v", a)
		}
	})
	t.Run("TLSA lookup fails", func(t *testing.T) {
		e, sinks, reports := daneEnv(t, map[string]testenv.SMTPSinkOptions{"127.0.0.3": {TLS: good.ServerConfig()}}, records...)
		e.dns.SetFault(tlsaName(e, "mx.rcpt.test"), dns.TypeTLSA, testenv.DNSServFail)
		e.start()
		e.enqueue("app@sender.test", "user@rcpt.test")
		if a := e.attempt(1); a.Status != StatusDeferred || a.Reply.Enhanced != "4.7.5" || len(sinks["127.0.0.3"].Messages()) != 0 {
			t.Fatalf("attempt: %+v", a)
		}
		if r := reports.results(); strings.Join(r, ",") != "tlsa dnssec-invalid" {
			t.Errorf("TLS-RPT sessions %q", r)
		}
	})
	t.Run("policy None", func(t *testing.T) {
		e, sinks, reports := daneEnv(t, map[string]testenv.SMTPSinkOptions{"127.0.0.3": {TLS: good.ServerConfig()}}, records...)
		e.setTable(senderDomain("sender.test", mxPolicy(v1alpha1.TLSPolicyNone)))
		e.start()
		e.enqueue("app@sender.test", "user@rcpt.test")
		if a := e.attempt(1); a.Status != StatusSent || a.TLS.Established || len(sinks["127.0.0.3"].Messages()) != 1 {
			t.Fatalf("attempt: %+v", a)
		}
		if r := reports.results(); len(r) != 0 {
			t.Errorf("TLS-RPT sessions %q", r)
		}
	})
}

func tlsaName(e *env, host string) string {
	return fmt.Sprintf("_%d._tcp.%s.", e.MXPort(), host)
}

// MTA-STS (RFC 8461): enforce delivers only to MX hosts the policy names
// with a certificate valid for the name; testing delivers and reports;
// DANE wins where it applies.
func TestMTASTS(t *testing.T) {
	ca := testenv.NewCA(t)
	valid := ca.Issue(t, "mx.rcpt.test")
	wrongName := ca.IssueWrongName(t)
	policy := func(mode mtasts.Mode, mx ...string) stsPolicies {
		return stsPolicies{"rcpt.test": {Policy: &mtasts.Policy{
			Domain: "rcpt.test", ID: "1", Mode: mode, MX: mx,
			Text: "version: STSv1\nmode: " + string(mode) + "\nmx: " + strings.Join(mx, "\nmx: ") + "\nmax_age: 86400\n",
		}}}
	}
	cases := []struct {
		name     string
		sink     testenv.SMTPSinkOptions
		sts      stsPolicies
		tlsa     bool
		status   Status
		enhanced string
		policy   PolicyKind
		report   []string
	}{
		{"enforce, valid certificate", testenv.SMTPSinkOptions{TLS: valid.ServerConfig()}, policy(mtasts.ModeEnforce, "*.rcpt.test"), false,
			StatusSent, "", PolicySTS, []string{"sts "}},
		{"enforce, MX not in the policy", testenv.SMTPSinkOptions{TLS: valid.ServerConfig()}, policy(mtasts.ModeEnforce, "mail.other.test"), false,
			StatusDeferred, "4.7.5", "", []string{"sts validation-failure"}},
		{"enforce, wrong name", testenv.SMTPSinkOptions{TLS: wrongName.ServerConfig()}, policy(mtasts.ModeEnforce, "mx.rcpt.test"), false,
			StatusDeferred, "4.7.5", PolicySTS, []string{"sts certificate-host-mismatch"}},
		{"enforce, no STARTTLS", testenv.SMTPSinkOptions{}, policy(mtasts.ModeEnforce, "mx.rcpt.test"), false,
			StatusDeferred, "4.7.4", PolicySTS, []string{"sts starttls-not-supported"}},
		{"testing, wrong name", testenv.SMTPSinkOptions{TLS: wrongName.ServerConfig()}, policy(mtasts.ModeTesting, "mx.rcpt.test"), false,
			StatusSent, "", PolicySTSTesting, []string{"sts certificate-host-mismatch"}},
		{"testing, no STARTTLS", testenv.SMTPSinkOptions{}, policy(mtasts.ModeTesting, "mx.rcpt.test"), false,
			StatusSent, "", PolicySTSTesting, []string{"sts starttls-not-supported"}},
		{"DANE before MTA-STS", testenv.SMTPSinkOptions{TLS: valid.ServerConfig()}, policy(mtasts.ModeEnforce, "mail.other.test"), true,
			StatusSent, "", PolicyDANE, []string{"tlsa "}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			records := []string{"rcpt.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3"}
			if c.tlsa {
				records = append(records, "_PORT._tcp.mx.rcpt.test. TLSA "+spkiTLSA(valid))
			}
			e, sinks, reports := daneEnv(t, map[string]testenv.SMTPSinkOptions{"127.0.0.3": c.sink}, records...)
			if !c.tlsa {
				e.dns.Unsign("rcpt.test")
			}
			e.opts.STS = c.sts
			e.opts.RootCAs = ca.Pool()
			e.start()
			e.enqueue("app@sender.test", "user@rcpt.test")
			a := e.attempt(1)
			if a.Status != c.status || (c.enhanced != "" && a.Reply.Enhanced != c.enhanced) || (c.policy != "" && a.TLS.Policy != c.policy) {
				t.Fatalf("attempt: %+v", a)
			}
			if got := len(sinks["127.0.0.3"].Messages()); (c.status == StatusSent) != (got == 1) {
				t.Errorf("%d messages at the sink", got)
			}
			if r := reports.results(); strings.Join(r, ",") != strings.Join(c.report, ",") {
				t.Errorf("TLS-RPT sessions %q, want %q", r, c.report)
			}
		})
	}
}

// A TLS report ("TLS-Required: No", queue.Envelope.TLSOptional) gets
// through the TLS failure it may be reporting, and is not counted itself.
func TestTLSOptionalMessageIgnoresRecipientPolicies(t *testing.T) {
	ca := testenv.NewCA(t)
	good := ca.Issue(t, "mx.rcpt.test")
	other := testenv.SelfSigned(t, "mx.rcpt.test")
	e, sinks, reports := daneEnv(t, map[string]testenv.SMTPSinkOptions{"127.0.0.3": {TLS: other.ServerConfig()}},
		"rcpt.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3", "_PORT._tcp.mx.rcpt.test. TLSA "+spkiTLSA(good))
	e.start()
	e.enqueueEnv(queue.Envelope{From: "tlsrpt@sender.test", To: []queue.Rcpt{{Addr: "reports@rcpt.test"}}, TLSOptional: true}, "Subject: report\r\n\r\nx\r\n")
	if a := e.attempt(1); a.Status != StatusSent || a.TLS.Policy != PolicyDomain || len(sinks["127.0.0.3"].Messages()) != 1 {
		t.Fatalf("attempt: %+v", a)
	}
	if r := reports.results(); len(r) != 0 {
		t.Errorf("TLS-RPT sessions %q", r)
	}
}
