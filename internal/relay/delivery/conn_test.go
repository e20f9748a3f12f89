package delivery

import (
	"crypto/tls"
	"net/netip"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/testenv"
)

// A domain with a source IP connects from it: a target relay that accepts
// only that address takes the mail, and refuses a domain without it.
func TestSourceIPSeenByTarget(t *testing.T) {
	e := newEnv(t)
	sink := e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{AllowedClients: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}})
	e.dnsAdd("rcpt.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3")
	e.setTable(senderDomain("sender.test", sourceIP("127.0.0.2")), senderDomain("plain.test"))
	e.start()

	id := e.enqueue("app@sender.test", "user@rcpt.test")
	e.waitGone(id)
	msgs := sink.Messages()
	if len(msgs) != 1 || msgs[0].Client.Addr().String() != "127.0.0.2" || msgs[0].Hello != "relay.postgate.test" {
		t.Fatalf("sink got %+v", msgs)
	}
	if a := e.attempt(1); a.SourceAddr.Addr().String() != "127.0.0.2" {
		t.Errorf("attempt source %v", a.SourceAddr)
	}

	e.enqueue("app@plain.test", "user@rcpt.test")
	a := e.attempt(2)
	if a.Status != StatusDeferred || a.Cause != CauseConnect || a.Reply.Code != 554 || !strings.Contains(a.Reply.Text, "not accepting mail from 127.0.0.1") {
		t.Errorf("without the source IP: %+v", a)
	}
}

// A source IP that is not this host's fails temporarily, naming it, and
// nothing else is tried.
func TestUnusableSourceIP(t *testing.T) {
	e := newEnv(t)
	e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{})
	e.dnsAdd("rcpt.test. MX 10 mx1.rcpt.test.", "rcpt.test. MX 20 mx2.rcpt.test.", "mx1.rcpt.test. A 127.0.0.3", "mx2.rcpt.test. A 127.0.0.3")
	e.setTable(senderDomain("sender.test", sourceIP("192.0.2.1")))
	e.start()
	id := e.enqueue("app@sender.test", "user@rcpt.test")
	a := e.attempt(1)
	if a.Status != StatusDeferred || a.Cause != CauseSourceIP || !strings.Contains(a.Reply.Text, "192.0.2.1") {
		t.Fatalf("attempt: %+v", a)
	}
	if n := len(e.wire.Dials()); n != 1 {
		t.Errorf("%d dials, want 1", n)
	}
	if m, _ := e.message(id); m.Recipients[0].State != queue.Pending {
		t.Errorf("recipient %+v", m.Recipients[0])
	}
	if !strings.Contains(e.logs.String(), "192.0.2.1") {
		t.Error("the log line does not name the address")
	}
}

// tlsEnv is a routed domain whose target relay is a sink at 127.0.0.5
// named smart.relay.test, with the route as given.
func tlsEnv(t *testing.T, sinkOpts testenv.SMTPSinkOptions, secrets []any, opts ...rrOpt) (*env, *testenv.SMTPSink) {
	e := newEnv(t)
	sinkOpts.Addr = "127.0.0.5:0"
	sink := testenv.StartSMTPSink(t, sinkOpts)
	e.dnsAdd("smart.relay.test. A 127.0.0.5")
	e.setTable(append([]any{senderDomain("sender.test"), relayRoute("sender.test", "smart.relay.test", sink.Port(), opts...)}, secrets...)...)
	e.start()
	e.enqueue("app@sender.test", "user@rcpt.test")
	return e, sink
}

func TestTLSPolicies(t *testing.T) {
	ca := testenv.NewCA(t)
	good := ca.Issue(t, "smart.relay.test")
	requireClientCert := good.ServerConfig()
	requireClientCert.ClientAuth = tls.RequireAnyClientCert
	cases := []struct {
		name      string
		sink      testenv.SMTPSinkOptions
		route     []rrOpt
		status    Status
		enhanced  string
		encrypted bool
	}{
		{"Required without STARTTLS defers", testenv.SMTPSinkOptions{},
			[]rrOpt{tlsPolicy(v1alpha1.TLSPolicyRequired, v1alpha1.TLSModeSTARTTLS)}, StatusDeferred, "4.7.4", false},
		{"Required with a self-signed certificate passes", testenv.SMTPSinkOptions{TLS: testenv.SelfSigned(t, "other.test").ServerConfig()},
			[]rrOpt{tlsPolicy(v1alpha1.TLSPolicyRequired, v1alpha1.TLSModeSTARTTLS)}, StatusSent, "", true},
		{"Verify with a wrong name defers", testenv.SMTPSinkOptions{TLS: ca.IssueWrongName(t).ServerConfig()},
			[]rrOpt{tlsPolicy(v1alpha1.TLSPolicyVerify, v1alpha1.TLSModeSTARTTLS), caBundle()}, StatusDeferred, "4.7.5", false},
		{"Verify without the route's CA defers", testenv.SMTPSinkOptions{TLS: good.ServerConfig()},
			[]rrOpt{tlsPolicy(v1alpha1.TLSPolicyVerify, v1alpha1.TLSModeSTARTTLS)}, StatusDeferred, "4.7.5", false},
		{"Verify with the route's CA passes", testenv.SMTPSinkOptions{TLS: good.ServerConfig()},
			[]rrOpt{tlsPolicy(v1alpha1.TLSPolicyVerify, v1alpha1.TLSModeSTARTTLS), caBundle()}, StatusSent, "", true},
		{"Opportunistic uses STARTTLS", testenv.SMTPSinkOptions{TLS: good.ServerConfig()},
			[]rrOpt{tlsPolicy(v1alpha1.TLSPolicyOpportunistic, v1alpha1.TLSModeSTARTTLS)}, StatusSent, "", true},
		{"Opportunistic falls back without STARTTLS", testenv.SMTPSinkOptions{},
			[]rrOpt{tlsPolicy(v1alpha1.TLSPolicyOpportunistic, v1alpha1.TLSModeSTARTTLS)}, StatusSent, "", false},
		{"Opportunistic falls back after a failed handshake", testenv.SMTPSinkOptions{TLS: requireClientCert},
			[]rrOpt{tlsPolicy(v1alpha1.TLSPolicyOpportunistic, v1alpha1.TLSModeSTARTTLS)}, StatusSent, "", false},
		{"None never starts TLS", testenv.SMTPSinkOptions{TLS: good.ServerConfig()},
			[]rrOpt{tlsPolicy(v1alpha1.TLSPolicyNone, v1alpha1.TLSModeSTARTTLS)}, StatusSent, "", false},
		{"Implicit TLS verified", testenv.SMTPSinkOptions{TLS: good.ServerConfig(), ImplicitTLS: true},
			[]rrOpt{tlsPolicy(v1alpha1.TLSPolicyVerify, v1alpha1.TLSModeImplicit), caBundle()}, StatusSent, "", true},
		{"Implicit TLS with a wrong name defers", testenv.SMTPSinkOptions{TLS: ca.IssueWrongName(t).ServerConfig(), ImplicitTLS: true},
			[]rrOpt{tlsPolicy(v1alpha1.TLSPolicyVerify, v1alpha1.TLSModeImplicit), caBundle()}, StatusDeferred, "4.7.5", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, sink := tlsEnv(t, c.sink, []any{caSecret(ca)}, c.route...)
			a := e.attempt(1)
			if a.Status != c.status || (c.enhanced != "" && a.Reply.Enhanced != c.enhanced) {
				t.Fatalf("attempt: %+v", a)
			}
			if c.status == StatusDeferred {
				if a.Cause != CauseTLS || len(sink.Messages()) != 0 {
					t.Errorf("cause %q, %d messages at the sink", a.Cause, len(sink.Messages()))
				}
				return
			}
			msgs := sink.Messages()
			if len(msgs) != 1 || (msgs[0].TLS != nil) != c.encrypted || a.TLS.Established != c.encrypted {
				t.Fatalf("sink TLS %v, attempt TLS %+v, want encrypted %v", msgs[0].TLS != nil, a.TLS, c.encrypted)
			}
			if c.encrypted {
				if a.TLS.Protocol != "TLSv1.3" || a.TLS.CipherSuite == "" || msgs[0].TLS.ServerName != "smart.relay.test" {
					t.Errorf("TLS recorded %+v, SNI %q", a.TLS, msgs[0].TLS.ServerName)
				}
			}
			if !strings.Contains(e.logs.String(), "tls="+map[bool]string{true: "TLSv1.3", false: "none"}[c.encrypted]) {
				t.Errorf("log lacks the TLS protocol:\n%s", e.logs.String())
			}
		})
	}
}

// The MX TLS policy of the sender's domain applies to MX delivery.
func TestMXTLSPolicyOfDomain(t *testing.T) {
	e := newEnv(t)
	sink := e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{})
	e.dnsAdd("rcpt.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3")
	e.setTable(senderDomain("sender.test", mxPolicy(v1alpha1.TLSPolicyRequired)))
	e.start()
	e.enqueue("app@sender.test", "user@rcpt.test")
	if a := e.attempt(1); a.Status != StatusDeferred || a.Cause != CauseTLS || a.TLS.Requested != v1alpha1.TLSPolicyRequired {
		t.Fatalf("attempt: %+v", a)
	}
	if len(sink.Messages()) != 0 {
		t.Fatal("sent without TLS")
	}
}

func TestSmartHostAuth(t *testing.T) {
	ca := testenv.NewCA(t)
	cert := ca.Issue(t, "smart.relay.test")
	users := map[string]string{"relay": "s3cret"}
	verify := []rrOpt{tlsPolicy(v1alpha1.TLSPolicyVerify, v1alpha1.TLSModeSTARTTLS), caBundle(), credentials()}
	for _, mech := range []string{sasl.Plain, sasl.Login} {
		t.Run(mech+" over STARTTLS", func(t *testing.T) {
			_, sink := tlsEnv(t, testenv.SMTPSinkOptions{TLS: cert.ServerConfig(), Users: users, RequireAuth: true, Mechanisms: []string{mech}},
				[]any{caSecret(ca), credsSecret("relay", "s3cret")}, verify...)
			msgs, err := sink.WaitMessages(ctx(t), 1)
			if err != nil || msgs[0].AuthUser != "relay" || msgs[0].AuthMechanism != mech || msgs[0].TLS == nil {
				t.Fatalf("messages %+v: %v", msgs, err)
			}
		})
	}
	t.Run("refused credentials defer", func(t *testing.T) {
		e, sink := tlsEnv(t, testenv.SMTPSinkOptions{TLS: cert.ServerConfig(), Users: users, RequireAuth: true},
			[]any{caSecret(ca), credsSecret("relay", "wrong")}, verify...)
		a := e.attempt(1)
		if a.Status != StatusDeferred || a.Cause != CauseAuth || a.Reply.Code != 535 || sink.Stats().AuthFailures != 1 {
			t.Fatalf("attempt %+v, sink %+v", a, sink.Stats())
		}
	})
	t.Run("never without TLS", func(t *testing.T) {
		// The sink offers AUTH in plaintext and no STARTTLS: the
		// credentials stay here, the mail stays queued.
		e, sink := tlsEnv(t, testenv.SMTPSinkOptions{Users: users, InsecureAuth: true},
			[]any{credsSecret("relay", "s3cret")}, tlsPolicy(v1alpha1.TLSPolicyOpportunistic, v1alpha1.TLSModeSTARTTLS), credentials())
		a := e.attempt(1)
		if a.Status != StatusDeferred || a.Cause != CauseAuth || len(sink.AuthAttempts()) != 0 || len(sink.Messages()) != 0 {
			t.Fatalf("attempt %+v, AUTH at the sink %+v", a, sink.AuthAttempts())
		}
		for _, w := range e.wire.Written() {
			if strings.Contains(w, "AUTH") {
				t.Fatalf("AUTH on the wire in plaintext:\n%s", w)
			}
		}
	})
}

// TestNullSenderDeliveredAsItsAuthor: a message from the null sender that
// the SMTP server accepted for its From address goes with that address's
// SenderDomain (here its source IP, which the target requires), with
// MAIL FROM:<> unchanged, and a recipient that fails gets no DSN (RFC 3834,
// RFC 5321 section 4.5.5).
func TestNullSenderDeliveredAsItsAuthor(t *testing.T) {
	e := newEnv(t)
	sink := e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{AllowedClients: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}})
	sink.SetRcptFault("gone@rcpt.test", testenv.Fault{Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 1}, Text: "no such user"})
	e.dnsAdd("rcpt.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3")
	e.setTable(senderDomain("sender.test", sourceIP("127.0.0.2")))
	e.start()

	id := e.enqueueEnv(queue.Envelope{From: "", HeaderFrom: "alerts@sender.test",
		To: []queue.Rcpt{{Addr: "user@rcpt.test"}, {Addr: "gone@rcpt.test"}}}, testBody)
	e.waitGone(id)
	msgs := sink.Messages()
	if len(msgs) != 1 || msgs[0].Client.Addr().String() != "127.0.0.2" || msgs[0].From != "" || !strings.HasPrefix(msgs[0].RawMail, "MAIL FROM:<> ") {
		t.Fatalf("sink got %+v", msgs)
	}
	if a := e.attempt(1); a.Recipients[1].Status != StatusBounced {
		t.Errorf("attempt %+v", a)
	}
	if n := len(e.bouncer.Calls()); n != 0 {
		t.Errorf("%d DSN requests for a message from the null sender, want none", n)
	}
}
