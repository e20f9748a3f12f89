package queue_test

import (
	"bytes"
	"context"
	"slices"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/testenv"
)

// suspended is the reply of a deferral that traffic shaping makes.
var suspended = queue.Reply{Code: 451, Enhanced: "4.7.0", Text: "site example.net suspended"}

// TestDeferWithoutAttempt, in a segment and in a message file: a
// deferral with NoAttempt leaves the attempt count and the last attempt
// as they were, records the reply and makes the recipient due at
// NotBefore, within [now, end of lifetime]; replay after a restart and a
// hand-off to the other storage keep it; the retry schedule resumes where
// it was; the lifetime still ends it.
func TestDeferWithoutAttempt(t *testing.T) {
	for _, st := range storages {
		t.Run(st.name, func(t *testing.T) { deferWithoutAttempt(t, st) })
	}
}

func deferWithoutAttempt(t *testing.T, st storage) {
	ctx := context.Background()
	clock := newClock()
	opts := func(c *testenv.Clock) queue.Options {
		o := st.options(c)
		o.Retry = queue.Retry{Delays: []time.Duration{time.Minute, 10 * time.Minute}}
		return o
	}
	const lifetime = 5 * time.Hour
	dir := t.TempDir()
	q := openQueue(t, openDir(t, dir), opts(clock))
	env := envelope("a@example.net", "b@example.net", "c@example.net", "d@example.net")
	b := body(1, 2000)
	id := enqueue(t, q, env, b)
	update := func(q *queue.Queue, results ...queue.Result) queue.Message {
		t.Helper()
		l := mustLease(t, q, id)
		defer l.Close()
		m, err := l.Update(ctx, queue.Attempt{Lifetime: lifetime, Results: results})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}

	clock.Add(time.Minute) // t0+1m: recipient 0 attempted once
	update(q, queue.Result{Recipient: 0, State: queue.Pending, Reply: temp451})
	clock.Add(time.Minute) // t0+2m: the site is suspended
	m := update(q,
		queue.Result{Recipient: 0, State: queue.Pending, Reply: suspended, NotBefore: t0.Add(time.Hour), NoAttempt: true},
		queue.Result{Recipient: 1, State: queue.Pending, Reply: suspended, NotBefore: t0.Add(time.Hour), NoAttempt: true},
		// Past the lifetime: cut to its end.
		queue.Result{Recipient: 2, State: queue.Pending, Reply: suspended, NotBefore: t0.Add(9 * time.Hour), NoAttempt: true},
		// NotBefore alone counts the attempt and replaces the schedule.
		queue.Result{Recipient: 3, State: queue.Pending, Reply: temp451, NotBefore: t0.Add(2 * time.Hour)},
	)
	want := []queue.RecipientStatus{
		{State: queue.Pending, Attempts: 1, LastAttempt: t0.Add(time.Minute), NextAttempt: t0.Add(time.Hour), Reply: suspended},
		{State: queue.Pending, NextAttempt: t0.Add(time.Hour), Reply: suspended},
		{State: queue.Pending, NextAttempt: t0.Add(lifetime), Reply: suspended},
		{State: queue.Pending, Attempts: 1, LastAttempt: t0.Add(2 * time.Minute), NextAttempt: t0.Add(2 * time.Hour), Reply: temp451},
	}
	if !slices.Equal(m.Recipients, want) {
		t.Fatalf("after the deferral:\n got %+v\nwant %+v", m.Recipients, want)
	}
	if due := q.Due(clock.Now(), 10); len(due) != 0 {
		t.Errorf("deferred message is due: %v", due)
	}
	if next, ok := q.NextDue(); !ok || !next.Equal(t0.Add(time.Hour)) {
		t.Errorf("NextDue = %v, %v; want arrival+1h", next, ok)
	}

	// Replay after a restart.
	closeQueue(t, q)
	q = openQueue(t, openDir(t, dir), opts(clock))
	if got := checkMessage(t, q, id, env, b); !slices.Equal(got.Recipients, want) {
		t.Fatalf("after restart:\n got %+v\nwant %+v", got.Recipients, want)
	}
	if next, ok := q.NextDue(); !ok || !next.Equal(t0.Add(time.Hour)) {
		t.Errorf("NextDue after restart = %v, %v; want arrival+1h", next, ok)
	}

	// A hand-off to the other storage, and back.
	other := fileOptions
	if st.name == "file" {
		other = options
	}
	peer := openQueue(t, openDir(t, t.TempDir()), other(clock))
	for _, hop := range []struct{ from, to *queue.Queue }{{q, peer}, {peer, q}} {
		var rec bytes.Buffer
		if err := hop.from.Export(ctx, id, &rec); err != nil {
			t.Fatal(err)
		}
		if err := hop.from.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
		if _, err := hop.to.Import(ctx, &rec); err != nil {
			t.Fatal(err)
		}
		if got := checkMessage(t, hop.to, id, env, b); !slices.Equal(got.Recipients, want) {
			t.Fatalf("after a hand-off:\n got %+v\nwant %+v", got.Recipients, want)
		}
	}

	// At the suspension's end: the schedule goes on from the second
	// attempt (10m), not from the first again; a NotBefore already past is
	// now.
	clock.Set(t0.Add(time.Hour))
	m = update(q,
		queue.Result{Recipient: 0, State: queue.Pending, Reply: temp451},
		queue.Result{Recipient: 1, State: queue.Pending, Reply: suspended, NotBefore: t0, NoAttempt: true},
	)
	if s := m.Recipients[0]; s.Attempts != 2 || !s.NextAttempt.Equal(t0.Add(70*time.Minute)) {
		t.Errorf("counted attempt after the suspension: %+v, want attempt 2, next at arrival+70m", s)
	}
	if s := m.Recipients[1]; s.Attempts != 0 || !s.NextAttempt.Equal(clock.Now()) {
		t.Errorf("NotBefore in the past: %+v, want due now", s)
	}

	// The lifetime still runs: at its end a deferral without attempt
	// expires the recipient, attempts as they were, the reply kept.
	clock.Set(t0.Add(lifetime))
	m = update(q, queue.Result{Recipient: 2, State: queue.Pending, Reply: suspended, NotBefore: t0.Add(6 * time.Hour), NoAttempt: true})
	if s := m.Recipients[2]; s.State != queue.Expired || s.Attempts != 0 || !s.LastAttempt.IsZero() || !s.NextAttempt.IsZero() || s.Reply != suspended {
		t.Errorf("deferred without attempt at the end of the lifetime: %+v, want expired, 0 attempts", s)
	}
	closeQueue(t, q)
	q = openQueue(t, openDir(t, dir), opts(clock))
	if got := checkMessage(t, q, id, env, b); !slices.Equal(got.Recipients, m.Recipients) {
		t.Fatalf("after the second restart:\n got %+v\nwant %+v", got.Recipients, m.Recipients)
	}
}
