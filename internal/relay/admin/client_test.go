package admin_test

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/admin"
	"github.com/postgate/postgate/internal/relay/queue"
)

// TestClient: the client decodes answers, and reports the API's own error
// message when there is one.
func TestClient(t *testing.T) {
	f := newFixture(t)
	id := f.enqueue("alice@example.com", "bob@dest.test")
	c := admin.NewClient(strings.TrimPrefix(f.srv.URL, "http://"), 10*time.Second)
	var m admin.Message
	if err := c.Do(context.Background(), http.MethodGet, "/v1/messages/"+string(id), nil, &m); err != nil || m.ID != string(id) {
		t.Fatalf("show %s: %+v %v", id, m, err)
	}
	err := c.Do(context.Background(), http.MethodGet, "/v1/messages/nosuchid", nil, &m)
	if err == nil || strings.Contains(err.Error(), "GET /v1/messages") {
		t.Errorf("unknown message: %v, want the API's error message", err)
	}
	if err := admin.NewClient(f.srv.URL+"/", 10*time.Second).Do(context.Background(), http.MethodPost, "/v1/flush", admin.FlushRequest{}, nil); err != nil {
		t.Errorf("flush through a URL: %v", err)
	}
}

// TestClientActions: each method of the client reaches its endpoint, and
// the text rendering shows what `postgate queue` prints.
func TestClientActions(t *testing.T) {
	f := newFixture(t)
	firstID := f.enqueue("alice@example.com", "bob@dest.test")
	first := string(firstID)
	second := string(f.enqueue("carol@example.com", "dave@other.test"))
	// Deferred last, after every move of the fixture's clock, so that its
	// next attempt (a minute, give or take the jitter) is still ahead when
	// the flush comes: a flush has something to make due.
	f.defer_(firstID)
	c := admin.NewClient(strings.TrimPrefix(f.srv.URL, "http://"), 10*time.Second)
	ctx := context.Background()

	page, err := c.List(ctx, admin.ListQuery{Sender: "alice", Domain: "dest.test", Limit: 1})
	if err != nil || len(page.Messages) != 1 || page.Messages[0].ID != first {
		t.Fatalf("list: %+v %v", page, err)
	}
	var out bytes.Buffer
	admin.WriteList(&out, page)
	if lines := strings.Split(out.String(), "\n"); !strings.HasPrefix(lines[0], "ID ") || !strings.Contains(lines[1], "<alice@example.com>  1/1") {
		t.Errorf("list text:\n%s", out.String())
	}
	page, err = c.List(ctx, admin.ListQuery{Limit: 1})
	if err != nil || page.Next != first {
		t.Fatalf("list --limit 1: %+v %v, want the next page after %s", page, err, first)
	}
	out.Reset()
	admin.WriteList(&out, page)
	if !strings.HasSuffix(out.String(), "more: --after "+first+"\n") {
		t.Errorf("list text of a first page:\n%s", out.String())
	}

	if err := c.Hold(ctx, first); err != nil {
		t.Fatal(err)
	}
	m, err := c.Show(ctx, first)
	if err != nil || !m.Held {
		t.Fatalf("show after hold: %+v %v", m, err)
	}
	out.Reset()
	admin.WriteMessage(&out, m)
	if !strings.Contains(out.String(), "Held:     true\n") || !strings.Contains(out.String(), "<bob@dest.test>") {
		t.Errorf("show text:\n%s", out.String())
	}
	if err := c.Release(ctx, first); err != nil {
		t.Fatal(err)
	}
	if m, err := c.Show(ctx, first); err != nil || m.Held {
		t.Fatalf("show after release: %+v %v", m, err)
	}
	if n, err := c.Flush(ctx, []string{first}); err != nil || n != 1 {
		t.Errorf("flush %s: %d %v, want 1", first, n, err)
	}
	if err := c.Delete(ctx, second, false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Show(ctx, second); err == nil {
		t.Errorf("show %s after delete: no error", second)
	}
	if err := c.Delete(ctx, second, false); err == nil {
		t.Errorf("second delete of %s: no error", second)
	}
}

// `postgate queue show` prints the DSN parameters the client gave (RFC
// 3461), and no DSN line when it gave none.
func TestWriteMessageDSN(t *testing.T) {
	m := &admin.Message{ID: "01jq0000000000000000000000", From: "alice@example.com", Envelope: queue.Envelope{
		From: "alice@example.com", Ret: "HDRS", EnvID: "order-4711",
		To: []queue.Rcpt{{Addr: "bob@dest.test", Notify: []string{"SUCCESS", "FAILURE"}}, {Addr: "carol@dest.test"}},
	}}
	var out bytes.Buffer
	admin.WriteMessage(&out, m)
	if want := "DSN:      RET=HDRS ENVID=order-4711 <bob@dest.test> NOTIFY=SUCCESS,FAILURE\n"; !strings.Contains(out.String(), want) {
		t.Errorf("show text lacks %q:\n%s", want, out.String())
	}
	out.Reset()
	m.Envelope = queue.Envelope{From: "alice@example.com", To: []queue.Rcpt{{Addr: "bob@dest.test"}}}
	admin.WriteMessage(&out, m)
	if strings.Contains(out.String(), "DSN:") {
		t.Errorf("a DSN line without parameters:\n%s", out.String())
	}
}

// With no relay at the address, the client says what to check, not only
// the URL it could not reach.
func TestClientNoRelayThere(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // nothing listens there now
	_, err = admin.NewClient(addr, 5*time.Second).List(context.Background(), admin.ListQuery{})
	if err == nil || !strings.Contains(err.Error(), "no relay admin API at http://"+addr) || !strings.Contains(err.Error(), "--admin-address") {
		t.Fatalf("List with nothing listening: %v", err)
	}
}
