package notify

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/delivery"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/routing"
	"github.com/postgate/postgate/internal/testenv"
	"github.com/postgate/postgate/webhook"
)

var loopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

// tables is a delivery.TableSource the test swaps.
type tables struct {
	p atomic.Pointer[routing.Table]

	misses  atomic.Int64 // lookups that found no table
	changes testenv.Changes
}

func (s *tables) Table() *routing.Table {
	t := s.p.Load()
	if t == nil {
		s.misses.Add(1)
		s.changes.Changed()
	}
	return t
}

// waitMisses waits until n lookups found no table.
func (s *tables) waitMisses(t *testing.T, n int64) {
	t.Helper()
	s.changes.Wait(t, func() string {
		if got := s.misses.Load(); got < n {
			return fmt.Sprintf("the table was looked up without success %d times, want %d", got, n)
		}
		return ""
	})
}

// hook is one domain's webhook in a test table.
type hook struct {
	domain, url, key string
}

// setTable compiles SenderDomains (namespace "team", named after the
// domain) with the given webhooks; an empty url leaves a domain without one.
func (s *tables) set(t testing.TB, hooks ...hook) {
	t.Helper()
	s.setAnnotated(t, nil, hooks...)
}

// setAnnotated is set with these annotations on every SenderDomain.
func (s *tables) setAnnotated(t testing.TB, annotations map[string]string, hooks ...hook) {
	t.Helper()
	var in routing.Input
	for _, h := range hooks {
		name := strings.ReplaceAll(h.domain, ".", "-")
		sd := v1alpha1.SenderDomain{
			ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: name, Generation: 1, UID: types.UID("uid-" + name),
				CreationTimestamp: metav1.NewTime(time.Unix(1e9, 0)), Annotations: annotations},
			Spec: v1alpha1.SenderDomainSpec{Domain: v1alpha1.DomainName(h.domain)},
		}
		if h.url != "" {
			sd.Spec.Delivery = &v1alpha1.DeliveryPolicy{Webhook: &v1alpha1.NotificationWebhook{
				URL: h.url, HMACSecretRef: v1alpha1.SecretKeyReference{Name: name + "-hook"},
			}}
			in.Secrets = append(in.Secrets, corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: name + "-hook"},
				Data:       map[string][]byte{"key": []byte(h.key)},
			})
		}
		in.SenderDomains = append(in.SenderDomains, sd)
	}
	res := routing.Compile(in, nil)
	for _, v := range res.Verdicts {
		if v.Refused() || !v.InTable {
			t.Fatalf("%s not in the table: %+v", v.Object.Key(), v)
		}
	}
	s.p.Store(res.Table)
}

const (
	key1 = "0123456789abcdef-key-one"
	key2 = "fedcba9876543210-key-two"
)

// request is one request a receiver got.
type request struct {
	ts, sig string
	body    []byte
	parsed  Body
	status  int // the answer, 0 for a request left hanging
}

// receiver is a webhook endpoint on 127.0.0.1.
type receiver struct {
	t   testing.TB
	srv *httptest.Server

	mu       sync.Mutex
	reqs     []request
	status   int           // answer; 200 when 0
	hang     chan struct{} // when set, requests wait for it to close
	failures int           // answer 503 to this many requests first
	// rejectJob answers rejectStatus to every request of that job.
	rejectJob    string
	rejectStatus int
}

func newReceiver(t testing.TB) *receiver {
	r := &receiver{t: t}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.close)
	return r
}

func (r *receiver) close() {
	r.mu.Lock()
	if r.hang != nil {
		select {
		case <-r.hang:
		default:
			close(r.hang)
		}
	}
	r.mu.Unlock()
	r.srv.Close()
}

func (r *receiver) url() string { return r.srv.URL + "/hook?token=s3cret-query" }

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	hang := r.hang
	status := cmpOr(r.status, http.StatusOK)
	if r.failures > 0 {
		r.failures--
		status = http.StatusServiceUnavailable
	}
	rq := request{ts: req.Header.Get(webhook.HeaderTimestamp), sig: req.Header.Get(webhook.HeaderSignature), body: body}
	if err := json.Unmarshal(body, &rq.parsed); err != nil {
		r.t.Errorf("body is not JSON: %v: %s", err, body)
	}
	if r.rejectJob != "" && rq.parsed.Meta.JobID == r.rejectJob {
		status = r.rejectStatus
	}
	if hang == nil {
		rq.status = status
	}
	r.reqs = append(r.reqs, rq)
	r.mu.Unlock()
	if hang != nil {
		select {
		case <-hang:
		case <-req.Context().Done():
		}
		return
	}
	w.WriteHeader(status)
}

func cmpOr(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}

func (r *receiver) requests() []request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]request(nil), r.reqs...)
}

// accepted returns the notifications of requests answered 2xx, verified
// with key; it fails the test on a bad signature.
func (r *receiver) notifications(key string) []Notification {
	var out []Notification
	for _, rq := range r.requests() {
		if err := webhook.Verify([]byte(key), rq.ts, rq.sig, rq.body, time.Now(), webhook.MaxSignatureAge); err != nil {
			r.t.Errorf("request signature with key %q: %v", key, err)
		}
		out = append(out, rq.parsed.Notifications...)
	}
	return out
}

// env runs a Notifier.
type env struct {
	t      testing.TB
	n      *Notifier
	reg    *prometheus.Registry
	logs   *testenv.LogBuffer
	cancel context.CancelFunc
	done   chan error
}

// fastOptions are small timeouts and backoffs, so that tests take little
// time.
func fastOptions(dir string, src delivery.TableSource) Options {
	return Options{
		Dir: dir, Tables: src, Allow: loopback,
		RequestTimeout: 2 * time.Second, MinBackoff: 5 * time.Millisecond, MaxBackoff: 40 * time.Millisecond,
	}
}

// start creates a Notifier with opts and runs it until the test ends or
// stop is called.
func start(t *testing.T, opts Options) *env {
	t.Helper()
	e := newEnv(t, opts)
	e.run()
	return e
}

func newEnv(t testing.TB, opts Options) *env {
	t.Helper()
	e := &env{t: t, reg: prometheus.NewRegistry(), logs: &testenv.LogBuffer{}}
	opts.Registerer = e.reg
	opts.Logger = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	n, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	e.n = n
	return e
}

func (e *env) run() {
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.done = make(chan error, 1)
	go func() { e.done <- e.n.Run(ctx) }()
	e.t.Cleanup(e.stop)
}

// stop ends Run and waits for it.
func (e *env) stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	e.cancel = nil
	select {
	case err := <-e.done:
		if err != nil {
			e.t.Errorf("Run: %v", err)
		}
	case <-time.After(testenv.WaitTimeout):
		e.t.Fatal("Run did not return after its context ended")
	}
}

func (e *env) count(result string) float64 {
	return counterValue(e.n.m.notifications.WithLabelValues(result))
}

var epoch = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

// attempt is an attempt of message id from sender@domain with one
// recipient per status.
func attempt(id, domain string, statuses ...delivery.Status) delivery.Attempt {
	name := strings.ReplaceAll(domain, ".", "-")
	a := delivery.Attempt{
		QueueID: queue.ID(id), Arrival: epoch, Size: 884,
		MessageID: "<" + id + "@" + domain + ">", HeaderFrom: "news@" + domain,
		Sender:      "bounces@" + domain,
		Domain:      &routing.ObjectRef{Kind: "SenderDomain", Namespace: "team", Name: name, UID: types.UID("uid-" + name), Generation: 1},
		Destination: "target.test", RelayHost: "mx.target.test", RelayAddr: netip.MustParseAddrPort("192.0.2.25:25"),
		TLS:   delivery.TLSInfo{Requested: v1alpha1.TLSPolicyOpportunistic, Established: true, Protocol: "TLSv1.3", CipherSuite: "TLS_AES_128_GCM_SHA256"},
		Start: epoch.Add(6 * time.Second), End: epoch.Add(7*time.Second + 43*time.Millisecond),
	}
	replies := map[delivery.Status]queue.Reply{
		delivery.StatusSent:     {Code: 250, Enhanced: "2.0.0", Text: "Ok: queued as 3yFnZW2mNlzPk9y"},
		delivery.StatusDeferred: {Code: 451, Enhanced: "4.3.0", Text: "try again later"},
		delivery.StatusBounced:  {Code: 550, Enhanced: "5.1.1", Text: "no such user"},
		delivery.StatusExpired:  {Code: 451, Enhanced: "4.4.1", Text: "still unreachable"},
	}
	for i, s := range statuses {
		a.Recipients = append(a.Recipients, delivery.RecipientResult{
			Index: i, Addr: string(s) + "@rcpt.test", Status: s, Reply: replies[s],
		})
	}
	a.Reply = replies[statuses[len(statuses)-1]]
	return a
}

// counterValue reads a counter (the testutil package would add a module).
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
