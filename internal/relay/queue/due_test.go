package queue_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
)

// TestDueLimit: whatever the limit, Due returns the first messages of the
// full order (due time, then ID), including among messages due at the
// same instant, and skips the leased ones.
func TestDueLimit(t *testing.T) {
	clock := newClock()
	q := openQueue(t, openDir(t, t.TempDir()), options(clock))
	type queued struct {
		id      queue.ID
		arrival time.Time
	}
	var all []queued
	for i := range 40 {
		if i%3 == 0 { // runs of up to three messages arrive at the same instant
			clock.Add(time.Second)
		}
		all = append(all, queued{enqueue(t, q, envelope(), body(i, 10)), clock.Now()})
	}
	// Enqueue order is not the order within an instant: IDs break ties.
	slices.SortFunc(all, func(a, b queued) int {
		if c := a.arrival.Compare(b.arrival); c != 0 {
			return c
		}
		return strings.Compare(string(a.id), string(b.id))
	})
	want := make([]queue.ID, len(all))
	for i, m := range all {
		want[i] = m.id
	}
	for _, limit := range []int{-1, 0, 1, 2, 7, 39, 40, 41, 1000} {
		got := q.Due(clock.Now(), limit)
		if w := want[:min(max(limit, 0), len(want))]; !slices.Equal(got, w) {
			t.Errorf("Due(%d) = %v, want %v", limit, got, w)
		}
	}
	// The earliest, leased, gives way to the next.
	l := mustLease(t, q, want[0])
	defer l.Close()
	if got := q.Due(clock.Now(), 3); !slices.Equal(got, want[1:4]) {
		t.Errorf("Due(3) with the first leased = %v, want %v", got, want[1:4])
	}
	if got := q.Due(all[0].arrival, 10); !slices.Equal(got, want[1:3]) {
		t.Errorf("Due at the first instant = %v, want %v", got, want[1:3])
	}
}

// BenchmarkDue: the delivery loop's question under a backlog, a batch of
// the earliest due messages out of thousands.
//
//	go test -run '^$' -bench Due ./internal/relay/queue/
func BenchmarkDue(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("queued=%d", n), func(b *testing.B) {
			clock := newClock()
			q := openQueue(b, openDir(b, b.TempDir()), options(clock))
			for i := range n {
				enqueue(b, q, envelope(), body(i, 10))
				clock.Add(time.Millisecond)
			}
			b.ResetTimer()
			for b.Loop() {
				if got := q.Due(clock.Now(), 100); len(got) != 100 {
					b.Fatalf("Due returned %d", len(got))
				}
			}
		})
	}
}

// TestDueTakesTurnsBetweenTenants: a sender with a backlog and a sender
// whose mail came after it share each batch, one message each in turn,
// each sender's earliest first; the null sender's DSNs count under their
// From field's domain, case aside; after a restart the same (the tenant
// is read back from the spool).
func TestDueTakesTurnsBetweenTenants(t *testing.T) {
	clock := newClock()
	dir := t.TempDir()
	q := openQueue(t, openDir(t, dir), options(clock))
	from := func(addr string) queue.Envelope {
		env := envelope()
		env.From = addr
		return env
	}
	var bulk, reset []queue.ID
	for i := range 30 {
		bulk = append(bulk, enqueue(t, q, from("news@Bulk.example"), body(i, 10)))
		clock.Add(time.Second)
	}
	for i := range 3 {
		reset = append(reset, enqueue(t, q, from("noreply@app.example"), body(i, 10)))
		clock.Add(time.Second)
	}
	dsn := envelope()
	dsn.From, dsn.HeaderFrom = "", "postmaster@BULK.example"
	last := enqueue(t, q, dsn, body(99, 10))
	want := []queue.ID{bulk[0], reset[0], bulk[1], reset[1], bulk[2], reset[2], bulk[3], bulk[4]}
	check := func(q *queue.Queue, when string) {
		t.Helper()
		if got := q.Due(clock.Now(), len(want)); !slices.Equal(got, want) {
			t.Errorf("%s: Due = %v\nwant %v", when, got, want)
		}
		got := q.Due(clock.Now(), 1000)
		if len(got) != 34 || got[len(got)-1] != last {
			t.Errorf("%s: all due: %d, last %v, want 34 ending with the DSN %v", when, len(got), got[len(got)-1], last)
		}
	}
	check(q, "before restart")
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	check(openQueue(t, openDir(t, dir), options(clock)), "after restart")
}

// With Options.Team, Due takes turns between teams first: a team of two
// busy sender domains gets one message in a round, as the team of one
// does, its two domains taking that turn in turn.
func TestDueTakesTurnsBetweenTeams(t *testing.T) {
	clock := newClock()
	opts := options(clock)
	teams := map[string]string{"a.example": "shop", "b.example": "shop", "c.example": "billing"}
	opts.Team = func(tenant string) string { return teams[tenant] }
	q := openQueue(t, openDir(t, t.TempDir()), opts)
	ids := map[string][]queue.ID{}
	for _, domain := range []string{"a.example", "b.example", "c.example"} {
		env := envelope()
		env.From = "app@" + domain
		for i := range 5 {
			ids[domain] = append(ids[domain], enqueue(t, q, env, body(i, 10)))
			clock.Add(time.Second)
		}
	}
	a, b, c := ids["a.example"], ids["b.example"], ids["c.example"]
	want := []queue.ID{a[0], c[0], b[0], c[1], a[1], c[2], b[1], c[3], a[2], c[4], b[2], a[3], b[3], a[4], b[4]}
	if got := q.Due(clock.Now(), len(want)); !slices.Equal(got, want) {
		t.Errorf("Due = %v\nwant %v", got, want)
	}
	if got := q.Due(clock.Now(), 4); !slices.Equal(got, want[:4]) {
		t.Errorf("Due(4) = %v, want %v", got, want[:4])
	}
}

func TestEnvelopeTenant(t *testing.T) {
	for _, c := range []struct{ from, headerFrom, want string }{
		{"a@Example.ORG", "b@other.example", "example.org"},
		{"", "Postmaster@Example.net", "example.net"},
		{"", "", ""},
		{"user@sub.example.com", "", "sub.example.com"},
	} {
		env := queue.Envelope{From: c.from, HeaderFrom: c.headerFrom}
		if got := env.Tenant(); got != c.want {
			t.Errorf("Tenant(from %q, header from %q) = %q, want %q", c.from, c.headerFrom, got, c.want)
		}
	}
}

// Snooze keeps a message from being due until its time, in memory only:
// nothing is recorded, a Flush makes it due at once, and a restart forgets
// the snooze.
func TestLeaseSnooze(t *testing.T) {
	clock := newClock()
	dir := t.TempDir()
	q := openQueue(t, openDir(t, dir), options(clock))
	id := enqueue(t, q, envelope(), body(1, 10))
	until := clock.Now().Add(time.Minute)
	l := mustLease(t, q, id)
	l.Snooze(until.Add(-time.Second))
	l.Snooze(until) // the later wins
	l.Close()
	if got := q.Due(clock.Now(), 10); len(got) != 0 {
		t.Fatalf("Due = %v while snoozed", got)
	}
	if next, ok := q.NextDue(); !ok || !next.Equal(until) {
		t.Fatalf("NextDue = %s %v, want %s", next, ok, until)
	}
	m, err := q.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	if r := m.Recipients[0]; r.Attempts != 0 || r.Reply != (queue.Reply{}) {
		t.Fatalf("recipient %+v: a snooze recorded something", r)
	}
	clock.Add(time.Minute)
	if got := q.Due(clock.Now(), 10); !slices.Equal(got, []queue.ID{id}) {
		t.Fatalf("Due at the snooze's end = %v", got)
	}

	l = mustLease(t, q, id)
	l.Snooze(clock.Now().Add(time.Hour))
	l.Close()
	if _, err := q.Flush(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	if got := q.Due(clock.Now(), 10); !slices.Equal(got, []queue.ID{id}) {
		t.Fatalf("Due after a flush = %v", got)
	}
	l = mustLease(t, q, id)
	l.Snooze(clock.Now().Add(time.Hour))
	l.Close()
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q = openQueue(t, openDir(t, dir), options(clock))
	if got := q.Due(clock.Now(), 10); !slices.Equal(got, []queue.ID{id}) {
		t.Fatalf("Due after a restart = %v, want the snooze forgotten", got)
	}
}
