package admin_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/admin"
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
