package admin_test

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/admin"
	"github.com/postgate/postgate/internal/relay/queue"
)

// TestShowDeferredWithoutAttempt: a recipient deferred without attempt (a
// suspended site) shows its attempts and last attempt as they were, the
// time it waits for as its next attempt and the reply that says why, in
// the API and in `postgate queue show` and `list`.
func TestShowDeferredWithoutAttempt(t *testing.T) {
	f := newFixture(t)
	id := f.enqueue("alice@example.com", "bob@dest.test")
	f.defer_(id) // one counted attempt
	var before admin.Message
	f.do("GET", "/v1/messages/"+id.String(), "", http.StatusOK, &before)

	until := f.clk.Now().Add(90 * time.Minute).Truncate(time.Second)
	reply := queue.Reply{Code: 451, Enhanced: "4.7.0", Text: "site dest.test suspended until " + until.Format(time.RFC3339)}
	l, err := f.q.Lease(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	_, err = l.Update(context.Background(), queue.Attempt{Results: []queue.Result{
		{Recipient: 0, State: queue.Pending, Reply: reply, NotBefore: until, NoAttempt: true},
	}})
	l.Close()
	if err != nil {
		t.Fatal(err)
	}

	var m admin.Message
	f.do("GET", "/v1/messages/"+id.String(), "", http.StatusOK, &m)
	r, was := m.Recipients[0], before.Recipients[0]
	if r.State != "pending" || r.Attempts != 1 || !r.LastAttempt.Equal(was.LastAttempt) || !r.NextAttempt.Equal(until) || r.LastReply != reply.String() {
		t.Fatalf("show: %+v, want 1 attempt, last %v, next %v, reply %q", r, was.LastAttempt, until, reply)
	}
	var out bytes.Buffer
	admin.WriteMessage(&out, &m)
	row := "<bob@dest.test>  pending  1         " + was.LastAttempt.UTC().Format(time.RFC3339) + "  " + until.UTC().Format(time.RFC3339) + "  " + reply.String()
	if !strings.Contains(out.String(), row) {
		t.Errorf("show text:\n%s\nwant the row\n%s", out.String(), row)
	}
	var page admin.ListResponse
	f.do("GET", "/v1/messages", "", http.StatusOK, &page)
	out.Reset()
	admin.WriteList(&out, &page)
	if !strings.Contains(out.String(), "451 4.7.0 site dest.test suspended") { // cut to the column
		t.Errorf("list text does not say why the message waits:\n%s", out.String())
	}
}
