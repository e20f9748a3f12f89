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
	"github.com/postgate/postgate/internal/relay/shaping"
	"github.com/postgate/postgate/internal/testenv"
)

// domainSites is a real limiter and the domain -> site memory delivery
// keeps (delivery.Worker.SiteOf), here a map.
type domainSites struct {
	*shaping.Limiter
	domains map[string]string
}

func (s domainSites) SiteOf(domain string) string { return s.domains[strings.ToLower(domain)] }

// TestSites: GET /v1/sites shows each site of a real limiter with its rule,
// limits, counters and suspension, and the queued mail that waits for it
// (pending, not held) by the domains' sites; list?site= selects the
// messages with a pending recipient at the site; both are refused when
// shaping is off.
func TestSites(t *testing.T) {
	sites := domainSites{
		Limiter: shaping.NewLimiter(shaping.DefaultPolicy(), testenv.NewClock(t0)),
		domains: map[string]string{"gmail.test": "google.com", "workspace.test": "google.com", "small.test": "small.test"},
	}
	f := newFixtureWith(t, false, sites)

	google := shaping.SiteOf([]string{"aspmx.l.google.com"})
	small := shaping.SiteOf([]string{"mx.small.test"})
	conn, dec := sites.AcquireConn(google)
	if !dec.OK || !conn.AcquireMessage().OK {
		t.Fatalf("AcquireConn: %+v", dec)
	}
	if _, dec := sites.AcquireConn(small); !dec.OK {
		t.Fatalf("AcquireConn: %+v", dec)
	}
	sites.Observe(google, shaping.Reply{Code: 421, Enhanced: "4.7.28", Text: "unusual rate of unsolicited mail"})
	if _, dec := sites.AcquireConn(google); dec.Reason != shaping.ReasonSuspended {
		t.Fatalf("AcquireConn of a suspended site: %+v", dec)
	}
	sites.NoteDeferred(google, 1)
	conn.Release()

	a := f.enqueue("alice@example.com", "bob@gmail.test", "carol@Workspace.test", "dave@small.test")
	b := f.enqueue("alice@example.com", "erin@gmail.test")
	f.enqueue("alice@example.com", "frank@unknown.test")
	held := f.enqueue("alice@example.com", "gina@gmail.test")
	if err := f.q.Hold(t.Context(), held); err != nil {
		t.Fatal(err)
	}
	f.enqueue("alice@example.com", "hal@forgotten.test")
	sites.domains["forgotten.test"] = "forgotten.test"

	var resp admin.SitesResponse
	f.do("GET", "/v1/sites", "", http.StatusOK, &resp)
	if len(resp.Sites) != 3 {
		t.Fatalf("sites %+v, want forgotten.test, google.com and small.test", resp.Sites)
	}
	g, fg, sm := resp.Sites[1], resp.Sites[0], resp.Sites[2]
	if g.Name != "google.com" || g.Rule != "google" || g.Limits == nil || g.Limits.MaxConnections == 0 ||
		g.ConnectionsOpened != 1 || g.MessagesGranted != 1 || g.OpenConnections != 0 || g.ThrottleReplies != 1 ||
		g.Suspensions != 1 || g.DeferredWithoutAttempt != 1 || g.Refused["Suspended"] != 1 || g.SuspendedUntil.IsZero() ||
		!strings.Contains(g.SuspendedReason, "unusual rate") || g.QueuedMessages != 2 || g.QueuedRecipients != 3 {
		t.Errorf("google.com: %+v", g)
	}
	if sm.Name != "small.test" || sm.Rule != "default" || sm.OpenConnections != 1 || sm.QueuedMessages != 1 || sm.QueuedRecipients != 1 {
		t.Errorf("small.test: %+v", sm)
	}
	if fg.Name != "forgotten.test" || fg.Rule != "" || fg.Limits != nil || fg.QueuedMessages != 1 {
		t.Errorf("a site only delivery knows: %+v", fg)
	}
	if resp.UnknownMessages != 1 || resp.UnknownRecipients != 1 {
		t.Errorf("unknown %d/%d, want 1/1 (frank@unknown.test)", resp.UnknownMessages, resp.UnknownRecipients)
	}

	if ids, _ := f.list("?site=google.com"); !equal(ids, []queue.ID{a, b, held}) {
		t.Errorf("list?site=google.com: %v, want %v", ids, []queue.ID{a, b, held})
	}
	if ids, _ := f.list("?site=small.test&sender=alice"); !equal(ids, []queue.ID{a}) {
		t.Errorf("list?site=small.test: %v, want %v", ids, []queue.ID{a})
	}
	// A recipient no longer pending does not wait for its site.
	f.deliverAll(b)
	if ids, _ := f.list("?site=google.com"); !equal(ids, []queue.ID{a, held}) {
		t.Errorf("list?site=google.com after %s was delivered: %v", b, ids)
	}

	var out bytes.Buffer
	admin.WriteSites(&out, &resp)
	text := out.String()
	for _, want := range []string{"SITE ", "google.com ", " google ", "conns", "Suspended 1", "2/3", "until " + g.SuspendedUntil.UTC().Format(time.RFC3339),
		"site not known yet (domain not resolved since the relay started): 1 messages, 1 recipients"} {
		if !strings.Contains(text, want) {
			t.Errorf("sites text lacks %q:\n%s", want, text)
		}
	}
	t.Logf("postgate queue sites:\n%s", text)

	off := newFixture(t)
	off.do("GET", "/v1/sites", "", http.StatusNotFound, nil)
	off.do("GET", "/v1/messages?site=google.com", "", http.StatusBadRequest, nil)
}

// deliverAll records every recipient of id delivered.
func (f *fixture) deliverAll(id queue.ID) {
	f.t.Helper()
	l, err := f.q.Lease(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	defer l.Close()
	var a queue.Attempt
	for i := range l.Message().Envelope.To {
		a.Results = append(a.Results, queue.Result{Recipient: i, State: queue.Delivered, Reply: queue.Reply{Code: 250, Text: "ok"}})
	}
	if _, err := l.Update(context.Background(), a); err != nil {
		f.t.Fatal(err)
	}
}
