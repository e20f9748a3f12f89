package handoff

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
)

var testKey = bytes.Repeat([]byte{7}, KeyBytes)

func openQueue(t *testing.T) *queue.Queue {
	t.Helper()
	fsys, err := queue.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	q, err := queue.Open(context.Background(), fsys, queue.Options{MinFreeBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	return q
}

func enqueue(t *testing.T, q *queue.Queue, to string) queue.ID {
	t.Helper()
	id, err := q.Enqueue(context.Background(), queue.Envelope{From: "a@example.com", To: []queue.Rcpt{{Addr: to}}},
		strings.NewReader("Subject: x\r\n\r\nbody\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// serve starts a peer named name on 127.0.0.1 over its own queue.
func serve(t *testing.T, name string, now func() time.Time) (*queue.Queue, Peer) {
	t.Helper()
	q := openQueue(t)
	srv, err := NewServer(ServerOptions{Name: name, Key: testKey, Queue: q, TempDir: t.TempDir(), MaxBytes: 1 << 20, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &httptest.Server{Listener: ln, Config: &http.Server{Handler: srv, ReadHeaderTimeout: 5 * time.Second}}
	hs.Start()
	t.Cleanup(hs.Close)
	return q, Peer{Name: name, Addr: ln.Addr().String()}
}

func export(t *testing.T, q *queue.Queue, id queue.ID) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := q.Export(context.Background(), id, &b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestAuth: only a fresh request signed with the key for this replica is
// taken; a replay, a stale or future timestamp, another target, a body
// changed after signing or a wrong key are refused (401) and queue
// nothing.
func TestAuth(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	dst, peer := serve(t, "relay-1", func() time.Time { return now })
	src := openQueue(t)
	rec := export(t, src, enqueue(t, src, "bob@dest.test"))
	digest := sha256.Sum256(rec)
	otherKey := bytes.Repeat([]byte{8}, KeyBytes)
	post := func(ts int64, target, sig string, body []byte) int {
		t.Helper()
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, "http://"+peer.Addr+Path, bytes.NewReader(body))
		req.Header.Set(HeaderTimestamp, strconv.FormatInt(ts, 10))
		req.Header.Set(HeaderTarget, target)
		req.Header.Set(HeaderSignature, sig)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	ts := now.Unix()
	tampered := bytes.Clone(rec)
	tampered[len(tampered)/2] ^= 1
	for _, c := range []struct {
		name   string
		ts     int64
		target string
		sig    string
		body   []byte
	}{
		{"no signature", ts, "relay-1", "", rec},
		{"bad signature", ts, "relay-1", strings.Repeat("0", 64), rec},
		{"other key", ts, "relay-1", signature(otherKey, ts, "relay-1", digest[:]), rec},
		{"stale timestamp", ts - 3*60, "relay-1", signature(testKey, ts-3*60, "relay-1", digest[:]), rec},
		{"future timestamp", ts + 3*60, "relay-1", signature(testKey, ts+3*60, "relay-1", digest[:]), rec},
		{"signed for another replica", ts, "relay-2", signature(testKey, ts, "relay-2", digest[:]), rec},
		{"body changed after signing", ts, "relay-1", signature(testKey, ts, "relay-1", digest[:]), tampered},
	} {
		if code := post(c.ts, c.target, c.sig, c.body); code != http.StatusUnauthorized {
			t.Errorf("%s: %d, want 401", c.name, code)
		}
	}
	if n := dst.Stats().Messages; n != 0 {
		t.Fatalf("refused requests queued %d messages", n)
	}
	good := signature(testKey, ts, "relay-1", digest[:])
	if code := post(ts, "relay-1", good, rec); code != http.StatusOK {
		t.Fatalf("signed request: %d, want 200", code)
	}
	if code := post(ts, "relay-1", good, rec); code != http.StatusUnauthorized {
		t.Errorf("replayed request: %d, want 401", code)
	}
	if n := dst.Stats().Messages; n != 1 {
		t.Errorf("peer holds %d messages, want 1", n)
	}
}

// TestDrainIdempotent hands a queue to two peers: every message moves once,
// spread over both, keeping ID, arrival and history; a message the peer
// already holds (a hand-off retried after its answer was lost) counts as
// handed off and is not queued twice.
func TestDrainIdempotent(t *testing.T) {
	ctx := context.Background()
	src := openQueue(t)
	var ids []queue.ID
	for i := range 6 {
		ids = append(ids, enqueue(t, src, "r"+strconv.Itoa(i)+"@dest.test"))
	}
	l, err := src.Lease(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	before, err := l.Update(ctx, queue.Attempt{Results: []queue.Result{{Recipient: 0, State: queue.Pending,
		Reply: queue.Reply{Code: 451, Enhanced: "4.3.0", Text: "try later"}}}})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if err := src.Hold(ctx, ids[1]); err != nil {
		t.Fatal(err)
	}
	q1, p1 := serve(t, "relay-1", time.Now)
	q2, p2 := serve(t, "relay-2", time.Now)
	// relay-1 has ids[2] already.
	if _, err := q1.Import(ctx, bytes.NewReader(export(t, src, ids[2]))); err != nil {
		t.Fatal(err)
	}

	s := &Sender{Key: testKey, Queue: src, TempDir: t.TempDir(),
		Peers: func(context.Context) ([]Peer, error) { return []Peer{p1}, nil }}
	res, err := s.Drain(ctx)
	if err != nil || res.HandedOff != 6 || res.Remaining != 0 {
		t.Fatalf("Drain = %+v, %v; want 6 handed off", res, err)
	}
	ms, err := q1.List(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []queue.ID
	for _, m := range ms {
		got = append(got, m.ID)
		switch m.ID {
		case ids[0]:
			if !m.Arrival.Equal(before.Arrival) || !slices.Equal(m.Recipients, before.Recipients) {
				t.Errorf("history not kept: %+v, want %+v", m, before)
			}
		case ids[1]:
			if !m.Held {
				t.Error("held message arrived released")
			}
		}
	}
	// IDs made in the same millisecond order by their random bits, so
	// compare as sets: each message once.
	want := slices.Clone(ids)
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("peer holds %v, want %v once each", got, want)
	}

	// Spread over the peers.
	for i := range 4 {
		enqueue(t, src, "s"+strconv.Itoa(i)+"@dest.test")
	}
	s.Peers = func(context.Context) ([]Peer, error) { return []Peer{p1, p2}, nil }
	res, err = s.Drain(ctx)
	if err != nil || res.HandedOff != 4 || res.Peers["relay-1"] != 2 || res.Peers["relay-2"] != 2 || q2.Stats().Messages != 2 {
		t.Fatalf("Drain over two peers = %+v, %v; want 2 each", res, err)
	}

	// Nobody to take them: the queue stays.
	id := enqueue(t, src, "late@dest.test")
	s.Peers = func(context.Context) ([]Peer, error) { return nil, nil }
	if res, err := s.Drain(ctx); err == nil || res.Remaining != 1 {
		t.Errorf("Drain with no peer = %+v, %v; want an error and the message kept", res, err)
	}
	if _, err := src.Get(ctx, id); err != nil {
		t.Errorf("message lost without peers: %v", err)
	}
}

// recorder is a transport that keeps the headers of the requests it
// carries to the real peer.
type recorder struct {
	mu      sync.Mutex
	headers []http.Header
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.headers = append(r.headers, req.Header.Clone())
	r.mu.Unlock()
	return http.DefaultTransport.RoundTrip(req)
}

// TestHeaderNames: the hand-off signs under its own header names, distinct
// from the webhook's X-Postgate-Timestamp and X-Postgate-Signature. A
// request signed the webhook's way is refused under either set of names,
// and a request never mixes the sets. During this release's rollout the
// previous names still work both ways: a sender adds them with the same
// values (for a peer still on the old version) and a server takes a
// request that has only them (from a peer still on the old version).
func TestHeaderNames(t *testing.T) {
	if HeaderTimestamp == legacyHeaderTimestamp || HeaderSignature == legacyHeaderSignature || HeaderTarget == legacyHeaderTarget {
		t.Fatal("the hand-off signs under the webhook's header names")
	}
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	dst, peer := serve(t, "relay-1", func() time.Time { return now })
	src := openQueue(t)
	ts := now.Unix()
	type names struct{ ts, target, sig string }
	current := names{HeaderTimestamp, HeaderTarget, HeaderSignature}
	legacy := names{"X-Postgate-Timestamp", "X-Postgate-Target", "X-Postgate-Signature"}
	post := func(set []names, sig func(body []byte) string, body []byte) int {
		t.Helper()
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, "http://"+peer.Addr+Path, bytes.NewReader(body))
		for _, n := range set {
			req.Header.Set(n.ts, strconv.FormatInt(ts, 10))
			req.Header.Set(n.target, "relay-1")
			req.Header.Set(n.sig, sig(body))
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	handoffSig := func(body []byte) string {
		d := sha256.Sum256(body)
		return signature(testKey, ts, "relay-1", d[:])
	}
	// The webhook's scheme, with the same key: "v1=" and the hex
	// HMAC-SHA256 of the timestamp, a dot and the body.
	webhookSig := func(body []byte) string {
		m := hmac.New(sha256.New, testKey)
		m.Write([]byte(strconv.FormatInt(ts, 10) + "." + string(body)))
		return "v1=" + hex.EncodeToString(m.Sum(nil))
	}
	webhookSigBare := func(body []byte) string { return strings.TrimPrefix(webhookSig(body), "v1=") }
	record := func() []byte { return export(t, src, enqueue(t, src, "bob@dest.test")) }

	for _, c := range []struct {
		name string
		set  []names
		sig  func([]byte) string
	}{
		{"webhook-style request", []names{legacy}, webhookSig},
		{"webhook-style hex under the old names", []names{legacy}, webhookSigBare},
		{"webhook scheme under the hand-off's names", []names{current}, webhookSigBare},
	} {
		if code := post(c.set, c.sig, record()); code != http.StatusUnauthorized {
			t.Errorf("%s: %d, want 401", c.name, code)
		}
	}
	// New timestamp and target, the signature only under the old name.
	mixed := record()
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, "http://"+peer.Addr+Path, bytes.NewReader(mixed))
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(ts, 10))
	req.Header.Set(HeaderTarget, "relay-1")
	req.Header.Set("X-Postgate-Signature", handoffSig(mixed))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("sets of names mixed: %d, want 401", resp.StatusCode)
	}
	if n := dst.Stats().Messages; n != 0 {
		t.Fatalf("refused requests queued %d messages", n)
	}

	if code := post([]names{current}, handoffSig, record()); code != http.StatusOK {
		t.Errorf("signed under the hand-off's names: %d, want 200", code)
	}
	if code := post([]names{legacy}, handoffSig, record()); code != http.StatusOK {
		t.Errorf("signed by a previous-release sender (old names only): %d, want 200", code)
	}

	// The Sender's requests carry the hand-off's names, and the old names
	// with the same values for a peer still on the previous release.
	rec := &recorder{}
	s := &Sender{Key: testKey, Queue: src, TempDir: t.TempDir(), Now: func() time.Time { return now },
		HTTP:  &http.Client{Transport: rec},
		Peers: func(context.Context) ([]Peer, error) { return []Peer{peer}, nil }}
	if res, err := s.Drain(context.Background()); err != nil || res.Remaining != 0 {
		t.Fatalf("Drain = %+v, %v", res, err)
	}
	if len(rec.headers) == 0 {
		t.Fatal("the sender sent nothing")
	}
	for _, h := range rec.headers {
		if h.Get(HeaderTimestamp) == "" || h.Get(HeaderTarget) != "relay-1" || len(h.Get(HeaderSignature)) != 2*sha256.Size {
			t.Errorf("sender's request lacks the hand-off's header names: %v", h)
		}
		for i, n := range []string{legacy.ts, legacy.target, legacy.sig} {
			if h.Get(n) != h.Get([]string{current.ts, current.target, current.sig}[i]) {
				t.Errorf("%s = %q, want the value of its new name for the rollout", n, h.Get(n))
			}
		}
	}
}
