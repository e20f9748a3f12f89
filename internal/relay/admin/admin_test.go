package admin_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay"
	"github.com/postgate/postgate/internal/relay/admin"
	"github.com/postgate/postgate/internal/relay/delivery"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/testenv"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// fixture is a real queue in a temporary directory behind the handler.
type fixture struct {
	t   *testing.T
	q   *queue.Queue
	clk *testenv.Clock
	srv *httptest.Server
}

func newFixture(t *testing.T) *fixture { return newFixtureBounce(t, false) }

// newFixtureBounce makes a fixture whose handler bounces deleted mail with
// the relay's Bouncer into the same queue, as the relay does, when bounces is set.
func newFixtureBounce(t *testing.T, bounces bool) *fixture { return newFixtureWith(t, bounces, nil) }

// newFixtureWith is newFixtureBounce with traffic shaping's sites (nil:
// shaping off).
func newFixtureWith(t *testing.T, bounces bool, sites admin.Sites) *fixture {
	t.Helper()
	dir, err := queue.OpenDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	clk := testenv.NewClock(t0)
	q, err := queue.Open(context.Background(), dir, queue.Options{Clock: clk, MinFreeBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	opts := admin.Options{Now: clk.Now, Sites: sites}
	if bounces {
		bo := &relay.Bouncer{Queue: q, Hostname: "relay.test", Now: clk.Now}
		opts.Bounce = func(ctx context.Context, m queue.Message, rcpts []int) error {
			return bo.Bounce(ctx, delivery.Bounce{Message: m, Recipients: rcpts, Time: clk.Now()})
		}
	}
	srv := httptest.NewServer(admin.New(q, opts))
	t.Cleanup(srv.Close)
	return &fixture{t: t, q: q, clk: clk, srv: srv}
}

func (f *fixture) enqueue(from string, to ...string) queue.ID {
	f.t.Helper()
	env := queue.Envelope{From: from}
	for _, a := range to {
		env.To = append(env.To, queue.Rcpt{Addr: a})
	}
	id, err := f.q.Enqueue(context.Background(), env, strings.NewReader("Subject: x\r\n\r\nbody\r\n"))
	if err != nil {
		f.t.Fatal(err)
	}
	f.clk.Add(time.Minute)
	return id
}

// defer_ records a temporary failure for every recipient of id.
func (f *fixture) defer_(id queue.ID) {
	f.t.Helper()
	l, err := f.q.Lease(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	defer l.Close()
	var a queue.Attempt
	for i := range l.Message().Envelope.To {
		a.Results = append(a.Results, queue.Result{Recipient: i, State: queue.Pending, Reply: queue.Reply{Code: 451, Enhanced: "4.4.1", Text: "try later"}})
	}
	if _, err := l.Update(context.Background(), a); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) do(method, path, body string, want int, out any) {
	f.t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
	if err != nil {
		f.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		f.t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, b, want)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			f.t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
}

func (f *fixture) list(query string) (ids []queue.ID, next string) {
	f.t.Helper()
	var resp admin.ListResponse
	f.do("GET", "/v1/messages"+query, "", http.StatusOK, &resp)
	for _, m := range resp.Messages {
		ids = append(ids, queue.ID(m.ID))
	}
	return ids, resp.Next
}

func equal(a, b []queue.ID) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestListFilters(t *testing.T) {
	f := newFixture(t)
	a := f.enqueue("alice@example.com", "bob@dest.test")
	b := f.enqueue("bob@example.org", "carol@other.test", "dave@DEST.test")
	c := f.enqueue("", "alice@example.com")
	f.clk.Add(time.Hour)
	d := f.enqueue("alice@example.com", "erin@other.test")

	for _, tc := range []struct {
		query string
		want  []queue.ID
	}{
		{"", []queue.ID{a, b, c, d}},
		{"?sender=ALICE", []queue.ID{a, d}},
		{"?domain=dest.test", []queue.ID{a, b}},
		{"?domain=dest.test.", []queue.ID{a, b}},
		{"?older=30m", []queue.ID{a, b, c}},
		{"?older=30m&sender=alice&domain=dest.test", []queue.ID{a}},
		{"?domain=nowhere.test", nil},
	} {
		if got, _ := f.list(tc.query); !equal(got, tc.want) {
			t.Errorf("list%s = %v, want %v", tc.query, got, tc.want)
		}
	}

	// Paging: two by two, with a filter.
	got, next := f.list("?limit=2")
	if !equal(got, []queue.ID{a, b}) || next != b.String() {
		t.Fatalf("first page: %v next %q", got, next)
	}
	got, next = f.list("?limit=2&after=" + next)
	if !equal(got, []queue.ID{c, d}) || next != d.String() {
		t.Fatalf("second page: %v next %q", got, next)
	}
	if got, next = f.list("?limit=2&after=" + next); len(got) != 0 || next != "" {
		t.Fatalf("third page: %v next %q", got, next)
	}

	for _, bad := range []string{"?older=soon", "?limit=0", "?limit=1001", "?after=nope"} {
		f.do("GET", "/v1/messages"+bad, "", http.StatusBadRequest, nil)
	}
}

func TestShowHoldReleaseFlushDelete(t *testing.T) {
	f := newFixture(t)
	a := f.enqueue("alice@example.com", "bob@dest.test", "carol@dest.test")
	b := f.enqueue("alice@example.com", "dave@dest.test")
	f.defer_(a)
	f.defer_(b)

	var m admin.Message
	f.do("GET", "/v1/messages/"+a.String(), "", http.StatusOK, &m)
	if m.ID != a.String() || m.From != "alice@example.com" || m.Held || len(m.Recipients) != 2 {
		t.Fatalf("show: %+v", m)
	}
	r := m.Recipients[1]
	if r.Addr != "carol@dest.test" || r.State != "pending" || r.Attempts != 1 || r.LastReply != "451 4.4.1 try later" ||
		!r.NextAttempt.After(f.clk.Now()) || r.LastAttempt.IsZero() {
		t.Fatalf("show: recipient %+v", r)
	}
	f.do("GET", "/v1/messages/"+strings.Repeat("0", 26), "", http.StatusNotFound, nil)
	f.do("GET", "/v1/messages/x", "", http.StatusBadRequest, nil)

	// Hold survives in the queue; a held message is not flushed.
	f.do("POST", "/v1/messages/"+a.String()+"/hold", "", http.StatusOK, nil)
	f.do("GET", "/v1/messages/"+a.String(), "", http.StatusOK, &m)
	if !m.Held {
		t.Fatal("hold: not held")
	}
	var fr admin.FlushResponse
	f.do("POST", "/v1/flush", `{}`, http.StatusOK, &fr)
	if fr.Flushed != 1 {
		t.Fatalf("flush all with one held: %d flushed, want 1", fr.Flushed)
	}
	if got, err := f.q.Get(context.Background(), b); err != nil || got.Recipients[0].NextAttempt.After(f.clk.Now()) {
		t.Fatalf("flushed message not due now: %+v %v", got, err)
	}
	f.do("POST", "/v1/messages/"+a.String()+"/release", "", http.StatusOK, nil)
	f.do("POST", "/v1/flush", `{"ids":["`+a.String()+`"]}`, http.StatusOK, &fr)
	if fr.Flushed != 1 {
		t.Fatalf("flush of a: %d flushed", fr.Flushed)
	}
	if len(f.q.Due(f.clk.Now(), 10)) != 2 {
		t.Fatalf("after flushes, due: %v", f.q.Due(f.clk.Now(), 10))
	}
	f.do("POST", "/v1/flush", `{"ids":["`+strings.Repeat("0", 26)+`"]}`, http.StatusNotFound, nil)
	f.do("POST", "/v1/flush", `{"ids":["bad"]}`, http.StatusBadRequest, nil)
	f.do("POST", "/v1/flush", `{"ids":`+strings.Repeat(" ", admin.MaxRequestBytes)+`[]}`, http.StatusBadRequest, nil)

	f.do("DELETE", "/v1/messages/"+a.String(), "", http.StatusOK, nil)
	f.do("DELETE", "/v1/messages/"+a.String(), "", http.StatusNotFound, nil)
	if got, _ := f.list(""); !equal(got, []queue.ID{b}) {
		t.Fatalf("after delete: %v", got)
	}
	f.do("GET", "/v1/messages/"+a.String()+"/hold", "", http.StatusMethodNotAllowed, nil)
}

func TestDeleteWithBounce(t *testing.T) {
	f := newFixture(t)
	a := f.enqueue("alice@example.com", "bob@dest.test")
	f.do("DELETE", "/v1/messages/"+a.String()+"?bounce=true", "", http.StatusNotImplemented, nil)
	f.do("DELETE", "/v1/messages/"+a.String()+"?bounce=maybe", "", http.StatusBadRequest, nil)
	if _, err := f.q.Get(context.Background(), a); err != nil {
		t.Fatalf("a refused delete removed the message: %v", err)
	}

	f = newFixtureBounce(t, true)
	a = f.enqueue("alice@example.com", "bob@dest.test", "carol@dest.test")
	var resp admin.DeleteResponse
	f.do("DELETE", "/v1/messages/"+a.String()+"?bounce=true", "", http.StatusOK, &resp)
	if resp.Bounced != 2 {
		t.Fatalf("bounced %d recipients, want 2", resp.Bounced)
	}
	msgs, err := f.q.List(context.Background(), "", 10)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("queue after a delete with bounce: %v %v", msgs, err)
	}
	dsn := msgs[0]
	if dsn.ID == a || dsn.Envelope.From != "" || len(dsn.Envelope.To) != 1 || dsn.Envelope.To[0].Addr != "alice@example.com" {
		t.Fatalf("want one DSN from <> to the sender, got %+v", dsn)
	}
	body, err := f.q.Body(context.Background(), dsn.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = body.Close() }()
	b, _ := io.ReadAll(body)
	for _, want := range []string{"bob@dest.test", "carol@dest.test", "5.0.0", "deleted from the queue"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("DSN lacks %q:\n%s", want, b)
		}
	}
}
