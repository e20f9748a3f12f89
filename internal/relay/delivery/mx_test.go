package delivery

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/testenv"
)

// MX hosts are tried in preference order, each of their addresses in turn:
// dead ones are skipped, and a live lower-preference host is not used
// while a better one answers.
func TestMXOrderAndFallback(t *testing.T) {
	e := newEnv(t)
	port := e.MXPort()
	best := e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{})
	second := e.mxSink("127.0.0.6", testenv.SMTPSinkOptions{})
	last := e.mxSink("127.0.0.7", testenv.SMTPSinkOptions{})
	e.dnsAdd(
		"rcpt.test. MX 30 mx3.rcpt.test.", "rcpt.test. MX 10 mx1.rcpt.test.", "rcpt.test. MX 20 mx2.rcpt.test.",
		"mx1.rcpt.test. A 127.0.0.3",
		// mx2's first address has no server: the next one takes it.
		"mx2.rcpt.test. A 127.0.0.4", "mx2.rcpt.test. A 127.0.0.6",
		"mx3.rcpt.test. A 127.0.0.7",
	)
	e.start()

	id := e.enqueue("app@sender.test", "user@rcpt.test")
	e.waitGone(id)
	if len(best.Messages()) != 1 || second.Stats().Connections+last.Stats().Connections != 0 {
		t.Fatalf("with the best MX up: %d %d %d connections", best.Stats().Connections, second.Stats().Connections, last.Stats().Connections)
	}

	best.Close() // refused from now on
	e.stop()     // no idle session left to the closed sink
	e.start()
	id = e.enqueue("app@sender.test", "user@rcpt.test")
	e.waitGone(id)
	if len(second.Messages()) != 1 || last.Stats().Connections != 0 {
		t.Fatalf("with the best MX down: second got %d, last had %d connections", len(second.Messages()), last.Stats().Connections)
	}
	dials := e.wire.Dials()
	want := []string{"127.0.0.3", "127.0.0.3", "127.0.0.4", "127.0.0.6"}
	var got []string
	for _, d := range dials {
		got = append(got, d.Addr().String())
		if int(d.Port()) != port {
			t.Errorf("dialed port %d, want the MX port %d", d.Port(), port)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("dialed %v, want %v", got, want)
	}
}

// When every address fails, more than one is tried before the attempt is
// deferred, and the reply says what the last one did.
func TestAllMXDownDefers(t *testing.T) {
	e := newEnv(t)
	e.MXPort()
	e.dnsAdd("rcpt.test. MX 10 mx1.rcpt.test.", "rcpt.test. MX 20 mx2.rcpt.test.",
		"mx1.rcpt.test. A 127.0.0.3", "mx2.rcpt.test. A 127.0.0.4", "mx2.rcpt.test. A 127.0.0.6")
	e.start()
	id := e.enqueue("app@sender.test", "user@rcpt.test")
	a := e.attempt(1)
	if a.Status != StatusDeferred || a.Cause != CauseConnect || a.Reply.Enhanced != "4.4.1" || !strings.Contains(a.Reply.Text, "127.0.0.6") {
		t.Errorf("attempt: %+v", a)
	}
	if n := len(e.wire.Dials()); n != 3 {
		t.Errorf("%d addresses tried, want 3", n)
	}
	m, _ := e.message(id)
	if m.Recipients[0].State != queue.Pending || m.Recipients[0].Attempts != 1 {
		t.Errorf("recipient: %+v", m.Recipients[0])
	}
}

// Without MX records, the domain is its own mail host (RFC 5321 5.1).
func TestImplicitMX(t *testing.T) {
	e := newEnv(t)
	sink := e.mxSink("127.0.0.8", testenv.SMTPSinkOptions{})
	e.dnsAdd("implicit.test. A 127.0.0.8")
	e.start()
	id := e.enqueue("app@sender.test", "user@implicit.test")
	e.waitGone(id)
	if len(sink.Messages()) != 1 {
		t.Fatal("the domain's own address got no message")
	}
}

// CNAMEs are followed for the MX lookup and the hosts, and RCPT TO at
// the next hop is exactly what the client gave.
func TestCNAMEFollowedRecipientUnchanged(t *testing.T) {
	e := newEnv(t)
	sink := e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{})
	e.dnsAdd("alias.test. CNAME real.test.", "real.test. MX 10 mx.real.test.",
		"mx.real.test. CNAME host.real.test.", "host.real.test. A 127.0.0.3",
		"plain.test. CNAME host.real.test.")
	e.start()
	id := e.enqueue("app@sender.test", "Some.User+tag@Alias.TEST", "x@plain.test")
	e.waitGone(id)
	var raw []string
	for _, m := range sink.Messages() {
		raw = append(raw, m.RawRcpts...)
	}
	slices.Sort(raw)
	want := []string{"RCPT TO:<Some.User+tag@Alias.TEST>", "RCPT TO:<x@plain.test>"}
	if !slices.Equal(raw, want) {
		t.Errorf("RCPT lines %q, want %q", raw, want)
	}
}

// A null MX fails at once with 5.1.10 and no connection; NXDOMAIN fails
// with 5.1.2. Both ask for a DSN.
func TestNullMXAndNXDOMAIN(t *testing.T) {
	e := newEnv(t)
	e.MXPort()
	e.dnsAdd("nullmx.test. MX 0 .", "nullmx.test. A 127.0.0.3")
	e.start()
	id := e.enqueue("app@sender.test", "a@nullmx.test", "b@nxdomain.test")
	e.waitGone(id)
	if d := e.wire.Dials(); len(d) != 0 {
		t.Errorf("connections tried: %v", d)
	}
	got := map[string]string{}
	for _, a := range e.waitAttempts(2) {
		if a.Status != StatusBounced || a.Cause != CauseDNS {
			t.Errorf("attempt %+v", a)
		}
		got[a.Destination] = a.Reply.Enhanced
	}
	if got["nullmx.test"] != "5.1.10" || got["nxdomain.test"] != "5.1.2" {
		t.Errorf("enhanced codes %v", got)
	}
	if n := len(e.bouncer.Calls()); n != 2 {
		t.Errorf("%d DSNs asked for, want 2", n)
	}
}

// SERVFAIL and a timeout defer; once DNS answers, the mail goes.
func TestDNSTemporaryFailures(t *testing.T) {
	for _, fault := range []testenv.DNSFault{testenv.DNSServFail, testenv.DNSTimeout} {
		t.Run(map[testenv.DNSFault]string{testenv.DNSServFail: "SERVFAIL", testenv.DNSTimeout: "timeout"}[fault], func(t *testing.T) {
			e := newEnv(t)
			sink := e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{})
			e.dnsAdd("rcpt.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3")
			e.dns.SetFault("rcpt.test", dns.TypeMX, fault)
			e.start()
			id := e.enqueue("app@sender.test", "user@rcpt.test")
			a := e.attempt(1)
			if a.Status != StatusDeferred || a.Cause != CauseDNS || a.Reply.Enhanced != "4.4.3" {
				t.Fatalf("attempt: %+v", a)
			}
			e.dns.SetFault("rcpt.test", dns.TypeMX, testenv.DNSNoFault)
			e.advanceToNext()
			e.waitGone(id)
			if len(sink.Messages()) != 1 {
				t.Fatal("no delivery after DNS recovered")
			}
		})
	}
}

// An answer is used for its TTL, then asked again.
func TestDNSAnswerCachedForTTL(t *testing.T) {
	e := newEnv(t)
	e.opts.IdleTimeout = -1
	sink := e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{})
	e.dnsAdd("rcpt.test. 60 MX 10 mx.rcpt.test.", "mx.rcpt.test. 600 A 127.0.0.3")
	e.start()
	deliver := func(n int) {
		t.Helper()
		e.waitGone(e.enqueue("app@sender.test", "user@rcpt.test"))
		if len(sink.Messages()) != n {
			t.Fatalf("%d messages, want %d", len(sink.Messages()), n)
		}
	}
	deliver(1)
	e.clock.Advance(59 * time.Second)
	deliver(2)
	if n := e.dns.Queries("rcpt.test", dns.TypeMX); n != 1 {
		t.Fatalf("%d MX queries within the TTL, want 1", n)
	}
	e.clock.Advance(time.Second)
	deliver(3)
	if n := e.dns.Queries("rcpt.test", dns.TypeMX); n != 2 {
		t.Fatalf("%d MX queries after the TTL, want 2", n)
	}
	if n := e.dns.Queries("mx.rcpt.test", dns.TypeA); n != 1 {
		t.Errorf("%d A queries within its TTL, want 1", n)
	}
}

// Hosts of equal preference come in random order, the preferences in
// order.
func TestEqualPreferenceShuffled(t *testing.T) {
	e := newEnv(t)
	e.dnsAdd("rcpt.test. MX 10 a.rcpt.test.", "rcpt.test. MX 10 b.rcpt.test.", "rcpt.test. MX 10 c.rcpt.test.", "rcpt.test. MX 5 first.rcpt.test.")
	w, err := New(e.q, e.tables, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	w.opts.Rand = rand.New(rand.NewPCG(1, 2))
	seen := map[string]bool{}
	for range 30 {
		hosts, _, f := w.resolver.mx(ctx(t), "rcpt.test", w.shuffle)
		if f != nil {
			t.Fatal(f.reply)
		}
		if len(hosts) != 4 || hosts[0].name != "first.rcpt.test." {
			t.Fatalf("hosts %+v", hosts)
		}
		seen[hosts[1].name] = true
	}
	if len(seen) != 3 {
		t.Errorf("first of the equal hosts over 30 lookups: %v, want all three", seen)
	}
}
