package notify

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/delivery"
	"github.com/postgate/postgate/internal/routing"
	"github.com/postgate/postgate/internal/testenv"
	"github.com/postgate/postgate/webhook"
)

// TestOutcomes: one notification per recipient outcome, in one signed
// request for the message, with the field names of the reference.
func TestOutcomes(t *testing.T) {
	rcv := newReceiver(t)
	var src tables
	src.setAnnotated(t, map[string]string{routing.AccountKey: "m4a_test_user", routing.CustomerNoKey: "99999"}, hook{"example.test", rcv.url(), key1})
	e := start(t, fastOptions(t.TempDir(), &src))

	a := attempt("Q1", "example.test", delivery.StatusSent, delivery.StatusDeferred, delivery.StatusBounced, delivery.StatusExpired)
	a.Tag = testTag
	e.n.Observe(a)
	testenv.EventuallyTrue(t, "still waiting for 4 notifications", func() bool { return len(rcv.notifications(key1)) == 4 })
	if reqs := rcv.requests(); len(reqs) != 1 {
		t.Errorf("%d requests, want 1 for one message", len(reqs))
	}
	rq := rcv.requests()[0]

	want := map[string][4]string{ // email: type, state, subType, dsn
		"sent@rcpt.test":     {TypeDelivered, StateFinished, SubTypeOK, "2.0.0"},
		"deferred@rcpt.test": {TypeDeferred, StateRetrying, SubTypeSoftBounce, "4.3.0"},
		"bounced@rcpt.test":  {TypeBounced, StateFinished, SubTypeHardBounce, "5.1.1"},
		"expired@rcpt.test":  {TypeExpired, StateFinished, SubTypeSoftBounce, "4.4.1"},
	}
	if got := rq.parsed.Meta; got != (BodyMeta{Account: "m4a_test_user", CustomerNo: "99999", Tenant: "team",
		ReceivedTs: "2026-11-23T10:00:00.000Z", JobID: "Q1", Version: "1"}) {
		t.Errorf("meta = %+v", got)
	}
	for i, n := range rq.parsed.Notifications {
		w, ok := want[n.Meta.Mail.Email]
		if !ok {
			t.Fatalf("notification for %q", n.Meta.Mail.Email)
		}
		ev := n.Meta.Event
		if got := [4]string{ev.Type, ev.State, ev.SubType, n.Content.SMTP.DSN}; got != w {
			t.Errorf("%s: %v, want %v", n.Meta.Mail.Email, got, w)
		}
		if ev.Phase != PhaseDeliver || ev.Ts != "2026-11-23T10:00:07.043Z" || ev.Description == "" {
			t.Errorf("%s: event %+v", n.Meta.Mail.Email, ev)
		}
		if id := fmt.Sprintf("Q1.%d", i); n.Meta.Mail.ID != id {
			t.Errorf("mail.id = %q, want %q", n.Meta.Mail.ID, id)
		}
	}

	// The field names and JSON types, as users of the reference read them.
	var raw map[string]any
	if err := json.Unmarshal(rq.body, &raw); err != nil {
		t.Fatal(err)
	}
	first := raw["notifications"].([]any)[0].(map[string]any)
	wantJSON := map[string]any{
		"meta": map[string]any{
			"tag":   testTag,
			"mail":  map[string]any{"id": "Q1.0", "email": "sent@rcpt.test", "from": "bounces@example.test", "mimeFrom": "news@example.test"},
			"event": map[string]any{"type": "DELIVERED", "phase": "DELIVER", "state": "FINISHED", "subType": "OK", "ts": "2026-11-23T10:00:07.043Z", "description": "mail delivered"},
		},
		"content": map[string]any{
			"mime": map[string]any{"messageId": "<Q1@example.test>", "size": "884"},
			"smtp": map[string]any{
				"responseCode": "250", "reason": "sent (250 2.0.0 Ok: queued as 3yFnZW2mNlzPk9y)", "relay": "mx.target.test", "dsn": "2.0.0",
				"transportEncryption": map[string]any{"requested": true, "established": true,
					"properties": map[string]any{"protocol": "TLS1.3", "cipherSuite": "TLS_AES_128_GCM_SHA256"}},
			},
		},
	}
	if !reflect.DeepEqual(first, wantJSON) {
		got, _ := json.MarshalIndent(first, "", "  ")
		t.Errorf("first notification:\n%s", got)
	}
	if top := raw["meta"].(map[string]any); !reflect.DeepEqual(top, map[string]any{"account": "m4a_test_user", "customerNo": "99999", "tenant": "team",
		"receivedTs": "2026-11-23T10:00:00.000Z", "jobId": "Q1", "version": "1"}) {
		t.Errorf("meta = %v", top)
	}
	testenv.EventuallyTrue(t, "still waiting for sent counted", func() bool { return e.count(resultSent) == 4 })
	if v := counterValue(e.n.m.requests.WithLabelValues("2xx")); v != 1 {
		t.Errorf("2xx requests = %v", v)
	}
}

// TestHTTPS: a receiver behind TLS, its certificate verified.
func TestHTTPS(t *testing.T) {
	rcv := &receiver{t: t}
	rcv.srv = httptest.NewUnstartedServer(http.HandlerFunc(rcv.serve))
	rcv.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake below
	rcv.srv.StartTLS()
	t.Cleanup(rcv.close)
	var src tables
	src.set(t, hook{"example.test", rcv.url(), key1})
	opts := fastOptions(t.TempDir(), &src)
	pool := x509.NewCertPool()
	pool.AddCert(rcv.srv.Certificate())
	opts.RootCAs = pool
	e := start(t, opts)
	e.n.Observe(attempt("Q1", "example.test", delivery.StatusSent))
	testenv.EventuallyTrue(t, "still waiting for sent over TLS", func() bool { return len(rcv.notifications(key1)) == 1 })

	// Without the CA, the certificate is refused and nothing is sent.
	opts = fastOptions(t.TempDir(), &src)
	e2 := start(t, opts)
	e2.n.Observe(attempt("Q2", "example.test", delivery.StatusSent))
	testenv.EventuallyTrue(t, "still waiting for a TLS failure", func() bool { return counterValue(e2.n.m.requests.WithLabelValues("error")) >= 1 })
	// The log line that says why comes after the counter moved.
	e2.logs.WaitFor(t, "certificate", 1)
	if n := len(rcv.requests()); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

// TestNoWebhook: a domain without a webhook, or an attempt whose
// SenderDomain is another object than the table's, queues nothing.
func TestNoWebhook(t *testing.T) {
	rcv := newReceiver(t)
	var src tables
	src.set(t, hook{"example.test", rcv.url(), key1}, hook{"quiet.test", "", ""})
	e := newEnv(t, fastOptions(t.TempDir(), &src))
	e.n.Observe(attempt("Q1", "quiet.test", delivery.StatusSent))
	other := attempt("Q2", "example.test", delivery.StatusSent)
	other.Domain.Namespace = "other-team"
	e.n.Observe(other)
	null := attempt("Q3", "example.test", delivery.StatusSent)
	null.Sender = ""
	e.n.Observe(null)
	if l := len(e.n.in); l != 0 {
		t.Errorf("%d notifications buffered, want none", l)
	}
}

// TestRefusedLoopback: without Allow, a loopback webhook is refused at
// connect time; the log says why without the URL's query string.
func TestRefusedLoopback(t *testing.T) {
	rcv := newReceiver(t)
	var src tables
	src.set(t, hook{"example.test", rcv.url(), key1})
	opts := fastOptions(t.TempDir(), &src)
	opts.Allow = nil
	e := start(t, opts)
	e.n.Observe(attempt("Q1", "example.test", delivery.StatusSent))
	testenv.EventuallyTrue(t, "still waiting for refused requests", func() bool { return counterValue(e.n.m.requests.WithLabelValues("error")) >= 2 })
	e.stop()
	if n := len(rcv.requests()); n != 0 {
		t.Errorf("receiver got %d requests", n)
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "refused: loopback") {
		t.Errorf("log does not say why:\n%s", logs)
	}
	if strings.Contains(logs, "s3cret") || strings.Contains(logs, "/hook") || strings.Contains(logs, key1) {
		t.Errorf("log shows the URL's path or query, or the key:\n%s", logs)
	}
	// Still journaled: an operator who allows the range gets it sent.
	if p := e.n.pendingDisk.Load(); p != 1 {
		t.Errorf("pending = %d, want 1", p)
	}
}

// TestNoRedirects: a 3xx is a failure, not followed.
func TestNoRedirects(t *testing.T) {
	rcv := newReceiver(t)
	redirect := httptest.NewServer(http.RedirectHandler(rcv.url(), http.StatusTemporaryRedirect))
	t.Cleanup(redirect.Close)
	var src tables
	src.set(t, hook{"example.test", redirect.URL, key1})
	e := start(t, fastOptions(t.TempDir(), &src))
	e.n.Observe(attempt("Q1", "example.test", delivery.StatusSent))
	testenv.EventuallyTrue(t, "still waiting for 3xx answers", func() bool { return counterValue(e.n.m.requests.WithLabelValues("3xx")) >= 2 })
	if n := len(rcv.requests()); n != 0 {
		t.Errorf("the redirect was followed: %d requests", n)
	}
}

func TestGuard(t *testing.T) {
	g := newGuard([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("169.254.0.0/16")},
		[]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9090"), netip.MustParseAddrPort("0.0.0.0:8025")})
	g.localAddrs = func() []netip.Addr { return []netip.Addr{netip.MustParseAddr("10.1.2.3")} }
	strict := newGuard(nil, nil)
	for _, tc := range []struct {
		g      *guard
		addr   string
		reason string // "" when allowed
	}{
		{strict, "203.0.113.7:443", ""},
		{strict, "[2001:db8::1]:443", ""},
		{strict, "10.0.0.5:443", ""},
		{strict, "127.0.0.1:443", "loopback"},
		{strict, "[::1]:443", "loopback"},
		{strict, "[::ffff:127.0.0.1]:443", "loopback"},
		{strict, "169.254.169.254:80", "cloud metadata endpoint"},
		{strict, "[fd00:ec2::254]:80", "cloud metadata endpoint"},
		{strict, "169.254.1.1:80", "link-local"},
		{strict, "[fe80::1%25eth0]:80", "link-local"},
		{strict, "0.0.0.0:80", "unspecified"},
		{strict, "0.1.2.3:80", "unspecified"},
		{strict, "[::]:80", "unspecified"},
		{strict, "224.0.0.1:80", "multicast or broadcast"},
		{strict, "[ff02::1]:80", "multicast or broadcast"},
		{strict, "255.255.255.255:80", "multicast or broadcast"},
		{g, "127.0.0.1:8080", ""},
		{g, "169.254.169.254:80", ""}, // an operator may allow it
		{g, "127.0.0.1:9090", "the relay's own listener"},
		{g, "127.0.0.2:9090", ""},
		{g, "127.0.0.5:8025", "the relay's own listener"},
		{g, "10.1.2.3:8025", "the relay's own listener"},
		{g, "10.1.2.4:8025", ""},
		{g, "[::ffff:10.1.2.3]:8025", "the relay's own listener"},
	} {
		err := tc.g.control("tcp", strings.Replace(tc.addr, "%25", "%", 1), nil)
		var re *RefusedError
		switch {
		case tc.reason == "" && err != nil:
			t.Errorf("%s: %v", tc.addr, err)
		case tc.reason != "" && (!errors.As(err, &re) || re.Reason != tc.reason):
			t.Errorf("%s: %v, want %s", tc.addr, err, tc.reason)
		}
	}
}

func TestSelfAddrs(t *testing.T) {
	got, err := SelfAddrs("127.0.0.1:8025", "", ":9090", "localhost:8081", "[::1]:1")
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.1:8025"),
		netip.MustParseAddrPort("0.0.0.0:9090"), netip.MustParseAddrPort("[::]:9090"),
		netip.MustParseAddrPort("127.0.0.1:8081"), netip.MustParseAddrPort("[::1]:8081"),
		netip.MustParseAddrPort("[::1]:1"),
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %v", got)
	}
	g := newGuard(loopback, got)
	for _, a := range []string{"127.0.0.1:8025", "127.0.0.9:9090", "[::1]:9090", "127.0.0.1:8081"} {
		if err := g.check(netip.MustParseAddrPort(a)); err == nil {
			t.Errorf("%s allowed", a)
		}
	}
	for _, bad := range []string{"8025", "relay.example.com:25", "127.0.0.1:http", "127.0.0.1:70000"} {
		if _, err := SelfAddrs(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestReceiverDown: the receiver refuses connections, the relay restarts,
// the receiver answers 503 a few times, then accepts: every notification
// arrives.
func TestReceiverDown(t *testing.T) {
	// A port nobody listens on, for now.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	url := "http://" + addr + "/hook"

	var src tables
	src.set(t, hook{"example.test", url, key1})
	dir := t.TempDir()
	opts := fastOptions(dir, &src)
	opts.BatchSize = 3
	opts.SegmentBytes = 4096 // several segments, each deleted once sent
	e := start(t, opts)
	const messages = 20
	for i := range messages {
		e.n.Observe(attempt(fmt.Sprintf("M%02d", i), "example.test", delivery.StatusSent, delivery.StatusDeferred))
	}
	testenv.EventuallyTrue(t, "still waiting for journaled and refused", func() bool {
		return e.n.pendingDisk.Load() == 2*messages && counterValue(e.n.m.requests.WithLabelValues("error")) >= 3
	})
	e.stop()

	// Restart on the same directory; the receiver comes up, failing first.
	rcv := &receiver{t: t, failures: 3}
	rcv.srv = httptest.NewUnstartedServer(http.HandlerFunc(rcv.serve))
	_ = rcv.srv.Listener.Close()
	if rcv.srv.Listener, err = net.Listen("tcp", addr); err != nil {
		t.Fatal(err)
	}
	rcv.srv.Start()
	t.Cleanup(rcv.close)
	e2 := newEnv(t, opts)
	if p := e2.n.pendingDisk.Load(); p != 2*messages {
		t.Fatalf("after restart %d pending, want %d", p, 2*messages)
	}
	e2.run()
	testenv.EventuallyTrue(t, "still waiting for all sent", func() bool { return e2.count(resultSent) == 2*messages })
	seen := map[string]int{}
	for _, n := range rcv.notifications(key1) {
		seen[n.Meta.Mail.ID+" "+n.Meta.Event.Type]++
	}
	if len(seen) != 2*messages {
		t.Errorf("%d distinct notifications, want %d", len(seen), 2*messages)
	}
	// A request holds one message's notifications (two, or one where a
	// segment ends between them).
	for _, rq := range rcv.requests() {
		if n := len(rq.parsed.Notifications); n > 2 {
			t.Errorf("request for %s holds %d notifications", rq.parsed.Meta.JobID, n)
		}
		for _, n := range rq.parsed.Notifications {
			if !strings.HasPrefix(n.Meta.Mail.ID, rq.parsed.Meta.JobID+".") {
				t.Errorf("request for %s holds %s", rq.parsed.Meta.JobID, n.Meta.Mail.ID)
			}
		}
	}
	if v := counterValue(e2.n.m.requests.WithLabelValues("5xx")); v != 3 {
		t.Errorf("5xx answers = %v, want 3", v)
	}
	// Sent notifications leave the disk while the relay runs, the segment
	// being written included.
	testenv.EventuallyTrue(t, "still waiting for journal emptied", func() bool { return e2.n.pendingDisk.Load() == 0 && e2.n.diskBytes.Load() == 0 })
	segs, _ := filepath.Glob(filepath.Join(dir, "example.test", "*.seg"))
	if len(segs) != 0 {
		t.Errorf("segments left: %v", segs)
	}
	e2.stop()
	// A third start finds nothing to send.
	if e3 := newEnv(t, opts); e3.n.pendingDisk.Load() != 0 {
		t.Errorf("after a clean run %d pending", e3.n.pendingDisk.Load())
	}
}

// TestHangingReceiver: a receiver that never answers holds up neither
// Observe nor another domain's notifications.
func TestHangingReceiver(t *testing.T) {
	slow := newReceiver(t)
	slow.hang = make(chan struct{})
	fast := newReceiver(t)
	var src tables
	src.set(t, hook{"slow.test", slow.url(), key1}, hook{"fast.test", fast.url(), key2})
	opts := fastOptions(t.TempDir(), &src)
	opts.RequestTimeout = time.Minute // longer than the test: the request stays stuck
	e := start(t, opts)

	e.n.Observe(attempt("S0", "slow.test", delivery.StatusSent))
	testenv.EventuallyTrue(t, "still waiting for a stuck request", func() bool { return len(slow.requests()) == 1 })
	const calls = 2000
	for i := range calls {
		e.n.Observe(attempt(fmt.Sprintf("S%d", i+1), "slow.test", delivery.StatusDeferred))
	}
	e.n.Observe(attempt("F1", "fast.test", delivery.StatusSent))
	// Every Observe call returned; what they queued is in the buffer or the
	// journal, or counted as dropped.
	testenv.EventuallyTrue(t, "still waiting for the other domain's notification", func() bool { return len(fast.notifications(key2)) == 1 })
	testenv.EventuallyTrue(t, "still waiting for everything journaled", func() bool {
		return len(e.n.in) == 0 && e.n.pendingDisk.Load()+int64(e.count(resultBufferFull)) >= calls
	})
	if n := len(slow.requests()); n != 1 {
		t.Errorf("slow receiver got %d requests, want the 1 stuck", n)
	}
	if g := counterValue(e.n.m.notifications.WithLabelValues(resultBufferFull)); g != 0 {
		t.Logf("%v dropped with a full buffer", g)
	}
}

// TestBufferFull: Observe drops, counts and logs when the buffer is full.
func TestBufferFull(t *testing.T) {
	var src tables
	src.set(t, hook{"example.test", "http://127.0.0.1:1/hook", key1})
	opts := fastOptions(t.TempDir(), &src)
	opts.BufferSize = 2
	e := newEnv(t, opts) // not running: nothing drains the buffer
	for i := range 5 {
		e.n.Observe(attempt(fmt.Sprintf("Q%d", i), "example.test", delivery.StatusSent))
	}
	if d := e.count(resultBufferFull); d != 3 {
		t.Errorf("dropped %v, want 3", d)
	}
	if !strings.Contains(e.logs.String(), "Dropping webhook notifications") {
		t.Errorf("no log line:\n%s", e.logs)
	}
}

// TestJournalFull: the journal's cap holds, and what exceeds it is counted.
func TestJournalFull(t *testing.T) {
	var src tables
	src.set(t, hook{"example.test", "http://127.0.0.1:1/hook", key1})
	opts := fastOptions(t.TempDir(), &src)
	opts.MaxJournalBytes = 4096
	opts.MaxDomainJournalBytes = 4096
	opts.SegmentBytes = 1024
	opts.MinBackoff = time.Hour // keep it all on disk
	opts.MaxBackoff = time.Hour
	e := start(t, opts)
	const calls = 50
	for i := range calls {
		e.n.Observe(attempt(fmt.Sprintf("Q%d", i), "example.test", delivery.StatusSent))
	}
	testenv.EventuallyTrue(t, "still waiting for all written or dropped", func() bool {
		return len(e.n.in) == 0 && e.n.pendingDisk.Load()+int64(e.count(resultJournalFull)) == calls
	})
	if got := testenv.Gather(t, e.reg)[MetricJournalLimitBytes+"{}"]; got != float64(opts.MaxJournalBytes) {
		t.Errorf("%s = %v, want the cap %d", MetricJournalLimitBytes, got, opts.MaxJournalBytes)
	}
	if b := e.n.diskBytes.Load(); b > opts.MaxJournalBytes || e.count(resultJournalFull) == 0 {
		t.Errorf("journal %d bytes (cap %d), %v dropped", b, opts.MaxJournalBytes, e.count(resultJournalFull))
	}
	var total int64
	segs, _ := filepath.Glob(filepath.Join(opts.Dir, "example.test", "*.seg"))
	for _, s := range segs {
		st, _ := os.Stat(s)
		total += st.Size()
	}
	if total != e.n.diskBytes.Load() || len(segs) < 2 {
		t.Errorf("%d segments of %d bytes, the gauge says %d", len(segs), total, e.n.diskBytes.Load())
	}
}

// TestJournalRecycled: a receiver that keeps up never lets sent
// notifications fill the journal.
func TestJournalRecycled(t *testing.T) {
	rcv := newReceiver(t)
	var src tables
	src.set(t, hook{"example.test", rcv.url(), key1})
	opts := fastOptions(t.TempDir(), &src)
	opts.MaxJournalBytes = 4096 // a few notifications
	e := start(t, opts)
	const calls = 100
	for i := range calls {
		e.n.Observe(attempt(fmt.Sprintf("Q%d", i), "example.test", delivery.StatusSent))
		testenv.EventuallyTrue(t, "still waiting for sent", func() bool { return e.count(resultSent) == float64(i+1) })
	}
	if d := e.count(resultJournalFull); d != 0 {
		t.Errorf("%v dropped as journal full", d)
	}
}

// TestJournalShare: a domain whose receiver stays down fills only its
// share of the journal; another domain's notifications are still kept.
func TestJournalShare(t *testing.T) {
	rcv := newReceiver(t)
	var src tables
	src.set(t, hook{"down.test", "http://127.0.0.1:1/hook", key1}, hook{"up.test", rcv.url(), key2})
	opts := fastOptions(t.TempDir(), &src)
	opts.MaxJournalBytes = 32 << 10
	opts.MaxDomainJournalBytes = 4 << 10 // a few notifications
	opts.MinBackoff, opts.MaxBackoff = time.Hour, time.Hour
	e := start(t, opts)
	for i := range 100 {
		e.n.Observe(attempt(fmt.Sprintf("D%d", i), "down.test", delivery.StatusDeferred))
	}
	testenv.EventuallyTrue(t, "still waiting for the down domain's share used", func() bool {
		return e.n.pendingDisk.Load()+int64(e.count(resultJournalFull)) == 100 && e.count(resultJournalFull) > 0
	})
	if b := e.n.diskBytes.Load(); b > opts.MaxDomainJournalBytes {
		t.Errorf("journal %d bytes, the domain's share is %d", b, opts.MaxDomainJournalBytes)
	}
	dropped := e.count(resultJournalFull)
	for i := range 20 {
		e.n.Observe(attempt(fmt.Sprintf("U%d", i), "up.test", delivery.StatusSent))
		testenv.EventuallyTrue(t, "still waiting for the other domain's notification", func() bool { return len(rcv.notifications(key2)) == i+1 })
	}
	if d := e.count(resultJournalFull); d != dropped {
		t.Errorf("%v more dropped", d-dropped)
	}
}

// TestKeyRotation: a request is signed with the key in the table when it
// is sent, also for notifications queued before the rotation.
func TestKeyRotation(t *testing.T) {
	rcv := newReceiver(t)
	var src tables
	src.set(t, hook{"example.test", rcv.url(), key1})
	e := start(t, fastOptions(t.TempDir(), &src))
	e.n.Observe(attempt("Q1", "example.test", delivery.StatusSent))
	testenv.EventuallyTrue(t, "still waiting for first", func() bool { return e.count(resultSent) == 1 })

	rcv.mu.Lock()
	rcv.status = http.StatusServiceUnavailable
	rcv.mu.Unlock()
	e.n.Observe(attempt("Q2", "example.test", delivery.StatusSent))
	testenv.EventuallyTrue(t, "still waiting for a refused try", func() bool { return len(rcv.requests()) >= 2 })
	src.set(t, hook{"example.test", rcv.url(), key2})
	rcv.mu.Lock()
	rcv.status = http.StatusOK
	rcv.mu.Unlock()
	testenv.EventuallyTrue(t, "still waiting for second", func() bool { return e.count(resultSent) == 2 })

	reqs := rcv.requests()
	last := reqs[len(reqs)-1]
	if err := webhook.Verify([]byte(key2), last.ts, last.sig, last.body, time.Now(), webhook.MaxSignatureAge); err != nil {
		t.Errorf("after rotation: %v", err)
	}
	if err := webhook.Verify([]byte(key1), last.ts, last.sig, last.body, time.Now(), webhook.MaxSignatureAge); err == nil {
		t.Error("after rotation the old key still verifies")
	}
	if err := webhook.Verify([]byte(key1), reqs[0].ts, reqs[0].sig, reqs[0].body, time.Now(), webhook.MaxSignatureAge); err != nil {
		t.Errorf("before rotation: %v", err)
	}
}

// TestWebhookGone: notifications of a domain whose webhook was removed (or
// whose domain moved to another object) are dropped when their turn comes.
func TestWebhookGone(t *testing.T) {
	rcv := newReceiver(t)
	rcv.status = http.StatusServiceUnavailable
	var src tables
	src.set(t, hook{"example.test", rcv.url(), key1})
	e := start(t, fastOptions(t.TempDir(), &src))
	e.n.Observe(attempt("Q1", "example.test", delivery.StatusSent, delivery.StatusBounced))
	testenv.EventuallyTrue(t, "still waiting for a refused try", func() bool { return len(rcv.requests()) >= 1 })
	src.set(t, hook{"example.test", "", ""})
	testenv.EventuallyTrue(t, "still waiting for dropped", func() bool { return e.count(resultNoWebhook) == 2 })
	testenv.EventuallyTrue(t, "still waiting for journal emptied", func() bool { return e.n.pendingDisk.Load() == 0 })
	if !strings.Contains(e.logs.String(), "no longer in the routing table") {
		t.Errorf("no log line:\n%s", e.logs)
	}
}

// TestMaxAge: notifications not accepted within MaxAge are dropped.
func TestMaxAge(t *testing.T) {
	rcv := newReceiver(t)
	rcv.status = http.StatusServiceUnavailable
	var src tables
	src.set(t, hook{"example.test", rcv.url(), key1})
	var now atomic.Int64 // Unix nanoseconds
	now.Store(time.Now().UnixNano())
	opts := fastOptions(t.TempDir(), &src)
	opts.Now = func() time.Time { return time.Unix(0, now.Load()) }
	opts.MaxAge = time.Hour
	e := start(t, opts)
	e.n.Observe(attempt("Q1", "example.test", delivery.StatusDeferred))
	testenv.EventuallyTrue(t, "still waiting for a refused try", func() bool { return len(rcv.requests()) >= 1 })
	now.Add(int64(time.Hour + time.Second))
	testenv.EventuallyTrue(t, "still waiting for expired", func() bool { return e.count(resultExpired) == 1 })
}

// TestNoTableYet: with no table loaded, queued notifications wait.
func TestNoTableYet(t *testing.T) {
	rcv := newReceiver(t)
	var src tables
	src.set(t, hook{"example.test", rcv.url(), key1})
	dir := t.TempDir()
	e := start(t, fastOptions(dir, &src))
	rcv.mu.Lock()
	rcv.status = http.StatusServiceUnavailable
	rcv.mu.Unlock()
	e.n.Observe(attempt("Q1", "example.test", delivery.StatusSent))
	testenv.EventuallyTrue(t, "still waiting for a refused try", func() bool { return len(rcv.requests()) >= 1 })
	e.stop()

	var empty tables
	e2 := start(t, fastOptions(dir, &empty))
	rcv.mu.Lock()
	rcv.status = http.StatusOK
	rcv.mu.Unlock()
	empty.waitMisses(t, 3) // some retries without a table
	if e2.count(resultNoWebhook) != 0 || e2.n.pendingDisk.Load() != 1 {
		t.Fatalf("without a table: dropped %v, pending %d", e2.count(resultNoWebhook), e2.n.pendingDisk.Load())
	}
	empty.p.Store(src.Table())
	testenv.EventuallyTrue(t, "still waiting for sent", func() bool { return e2.count(resultSent) == 1 })
}

// TestTruncatedJournal: a record cut short at the end of a segment (a
// crash during a write) and garbage after a valid one are skipped; the
// rest is sent.
func TestTruncatedJournal(t *testing.T) {
	var src tables
	src.set(t, hook{"example.test", "http://127.0.0.1:1/hook", key1})
	dir := t.TempDir()
	opts := fastOptions(dir, &src)
	opts.MinBackoff, opts.MaxBackoff = time.Hour, time.Hour
	e := start(t, opts)
	for i := range 5 {
		e.n.Observe(attempt(fmt.Sprintf("Q%d", i), "example.test", delivery.StatusSent))
	}
	testenv.EventuallyTrue(t, "still waiting for journaled", func() bool { return e.n.pendingDisk.Load() == 5 })
	e.stop()
	segs, _ := filepath.Glob(filepath.Join(dir, "example.test", "*.seg"))
	if len(segs) != 1 {
		t.Fatalf("segments: %v", segs)
	}
	st, _ := os.Stat(segs[0])
	if err := os.Truncate(segs[0], st.Size()-10); err != nil {
		t.Fatal(err)
	}

	rcv := newReceiver(t)
	src.set(t, hook{"example.test", rcv.url(), key1})
	e2 := start(t, fastOptions(dir, &src))
	if e2.count(resultCorrupt) != 1 || !strings.Contains(e2.logs.String(), "segment damaged") {
		t.Errorf("damage not reported: %v\n%s", e2.count(resultCorrupt), e2.logs)
	}
	testenv.EventuallyTrue(t, "still waiting for sent", func() bool { return e2.count(resultSent) == 4 })
	var jobs []string
	for _, rq := range rcv.requests() {
		jobs = append(jobs, rq.parsed.Meta.JobID)
	}
	if !slices.Equal(jobs, []string{"Q0", "Q1", "Q2", "Q3"}) {
		t.Errorf("jobs sent: %v", jobs)
	}
	testenv.EventuallyTrue(t, "still waiting for journal emptied", func() bool { return e2.n.pendingDisk.Load() == 0 && e2.n.diskBytes.Load() == 0 })
}

// TestCursorUnreadable: a damaged cursor file resends rather than loses.
func TestCursorUnreadable(t *testing.T) {
	var src tables
	src.set(t, hook{"example.test", "http://127.0.0.1:1/hook", key1})
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "example.test"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "example.test", "cursor"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, fastOptions(dir, &src))
	if !strings.Contains(e.logs.String(), "cursor unreadable") {
		t.Errorf("no log line:\n%s", e.logs)
	}
}

func TestOptions(t *testing.T) {
	var src tables
	if _, err := New(Options{Tables: &src}); err == nil {
		t.Error("no Dir: no error")
	}
	if _, err := New(Options{Dir: t.TempDir()}); err == nil {
		t.Error("no Tables: no error")
	}
	dir := filepath.Join(t.TempDir(), "spool", "notify")
	n, err := New(Options{Dir: dir, Tables: &src})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("Dir: %v, %v", st.Mode(), err)
	}
	if n.opts.BatchSize != DefaultBatchSize || n.opts.MaxAge != DefaultMaxAge || n.opts.RequestTimeout != DefaultRequestTimeout {
		t.Errorf("defaults not applied: %+v", n.opts)
	}
}

// TestRejectedRequest: a receiver that refuses one message's request with
// 400 gets it MaxRejections times, then it is dropped (counted) and the
// domain's later notifications flow; 429 is retried, never dropped.
func TestRejectedRequest(t *testing.T) {
	for _, tc := range []struct {
		status      int
		wantDropped bool
	}{{http.StatusBadRequest, true}, {http.StatusRequestEntityTooLarge, true}, {http.StatusTooManyRequests, false}} {
		t.Run(strconv.Itoa(tc.status), func(t *testing.T) {
			rcv := newReceiver(t)
			rcv.rejectJob, rcv.rejectStatus = "M00", tc.status
			var src tables
			src.set(t, hook{"example.test", rcv.url(), key1})
			opts := fastOptions(t.TempDir(), &src)
			opts.MaxRejections = 3
			e := start(t, opts)
			e.n.Observe(attempt("M00", "example.test", delivery.StatusSent))
			e.n.Observe(attempt("M01", "example.test", delivery.StatusSent))
			if !tc.wantDropped {
				testenv.EventuallyTrue(t, "still waiting for retried past MaxRejections", func() bool { return len(rcv.requests()) > 2*opts.MaxRejections })
				if e.count(resultRejected) != 0 || e.count(resultSent) != 0 {
					t.Fatalf("%d: dropped %v, sent %v; want it retried, the next one waiting", tc.status, e.count(resultRejected), e.count(resultSent))
				}
				rcv.mu.Lock()
				rcv.rejectJob = ""
				rcv.mu.Unlock()
				testenv.EventuallyTrue(t, "still waiting for both sent", func() bool { return e.count(resultSent) == 2 })
				return
			}
			testenv.EventuallyTrue(t, "still waiting for M01 sent after M00 was dropped", func() bool { return e.count(resultSent) == 1 && e.count(resultRejected) == 1 })
			var m00 int
			for _, rq := range rcv.requests() {
				if rq.parsed.Meta.JobID == "M00" {
					m00++
				}
			}
			if m00 != opts.MaxRejections {
				t.Errorf("M00 was posted %d times, want MaxRejections = %d", m00, opts.MaxRejections)
			}
			if !strings.Contains(e.logs.String(), "the receiver refused them 3 times: HTTP "+strconv.Itoa(tc.status)) {
				t.Errorf("no drop logged:\n%s", e.logs)
			}
		})
	}
}
