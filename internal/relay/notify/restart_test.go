package notify

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/delivery"
	"github.com/postgate/postgate/internal/testenv"
)

// jobsSent lists the job IDs of the requests a receiver got, in order.
func jobsSent(r *receiver) []string {
	var jobs []string
	for _, rq := range r.requests() {
		jobs = append(jobs, rq.parsed.Meta.JobID)
	}
	return jobs
}

// TestNotificationSurvivesRestarts is the sequence that lost a
// notification: a drained journal, two clean restarts (SIGTERM: Run's
// context ends), then a new notification, which must be delivered. It
// goes on with more restarts and notifications: nothing is sent twice and
// nothing stays behind.
func TestNotificationSurvivesRestarts(t *testing.T) {
	rcv := newReceiver(t)
	var src tables
	src.set(t, hook{"example.test", rcv.url(), key1})
	dir := t.TempDir()

	e := start(t, fastOptions(dir, &src))
	e.n.Observe(attempt("Q1", "example.test", delivery.StatusSent))
	testenv.EventuallyTrue(t, "still waiting for Q1 sent and acknowledged", func() bool { return e.count(resultSent) == 1 && e.n.pendingDisk.Load() == 0 })
	e.stop()

	// First restart: the drained segment is deleted; the cursor still
	// names it.
	e = start(t, fastOptions(dir, &src))
	testenv.EventuallyTrue(t, "still waiting for the drained segment deleted", func() bool { return e.n.diskBytes.Load() == 0 })
	e.stop()
	if segs, _ := filepath.Glob(filepath.Join(dir, "example.test", "*.seg")); len(segs) != 0 {
		t.Fatalf("segments left after the drain: %v", segs)
	}

	for i, id := range []string{"Q2", "Q3", "Q4"} {
		e = start(t, fastOptions(dir, &src))
		e.n.Observe(attempt(id, "example.test", delivery.StatusSent))
		testenv.EventuallyTrue(t, "still waiting for "+id+" sent", func() bool { return e.count(resultSent) == 1 && e.n.pendingDisk.Load() == 0 })
		e.stop()
		if i == 0 {
			// One more restart in between with nothing new.
			e = start(t, fastOptions(dir, &src))
			testenv.EventuallyTrue(t, "still waiting for the drained segment deleted", func() bool { return e.n.diskBytes.Load() == 0 })
			e.stop()
		}
	}
	if got := jobsSent(rcv); !slices.Equal(got, []string{"Q1", "Q2", "Q3", "Q4"}) {
		t.Errorf("jobs sent: %v", got)
	}
}

// TestNotificationSurvivesHalfReadRestarts: restarts while a segment is half
// sent, twice, then once drained: every notification arrives once.
func TestNotificationSurvivesHalfReadRestarts(t *testing.T) {
	rcv := newReceiver(t)
	rcv.rejectJob, rcv.rejectStatus = "Q2", 503 // held up at Q2, retried
	var src tables
	src.set(t, hook{"example.test", rcv.url(), key1})
	dir := t.TempDir()

	e := start(t, fastOptions(dir, &src))
	for _, id := range []string{"Q1", "Q2", "Q3"} {
		e.n.Observe(attempt(id, "example.test", delivery.StatusSent))
	}
	testenv.EventuallyTrue(t, "still waiting for Q1 sent, Q2 retried", func() bool { return e.count(resultSent) == 1 && len(rcv.requests()) >= 2 })
	e.stop()
	e = start(t, fastOptions(dir, &src))
	if p := e.n.pendingDisk.Load(); p != 2 {
		t.Errorf("pending after a restart half-way: %d, want 2", p)
	}
	e.n.Observe(attempt("Q4", "example.test", delivery.StatusSent))
	testenv.EventuallyTrue(t, "still waiting for Q4 journaled", func() bool { return e.n.pendingDisk.Load() == 3 })
	e.stop()

	rcv.mu.Lock()
	rcv.rejectJob = ""
	rcv.mu.Unlock()
	e = start(t, fastOptions(dir, &src))
	testenv.EventuallyTrue(t, "still waiting for all sent", func() bool { return e.count(resultSent) == 3 && e.n.pendingDisk.Load() == 0 })
	e.stop()
	e = start(t, fastOptions(dir, &src))
	e.n.Observe(attempt("Q5", "example.test", delivery.StatusSent))
	testenv.EventuallyTrue(t, "still waiting for Q5 sent", func() bool { return e.count(resultSent) == 1 })
	e.stop()

	sent := jobsSent(rcv)
	others := slices.DeleteFunc(slices.Clone(sent), func(id string) bool { return id == "Q2" })
	if !slices.Equal(others, []string{"Q1", "Q3", "Q4", "Q5"}) || !slices.Contains(sent, "Q2") {
		t.Errorf("jobs sent: %v", sent)
	}
}

// journalRecord is one framed journal record of job id, as the writer
// makes it.
func journalRecord(t *testing.T, id string) []byte {
	t.Helper()
	a := attempt(id, "example.test", delivery.StatusSent)
	nt, _ := notificationOf(&a, &a.Recipients[0])
	p, err := json.Marshal(record{Enqueued: time.Now().UnixMilli(), Domain: a.Domain.Key(),
		Job: BodyMeta{ReceivedTs: formatTime(a.Arrival), JobID: id, Version: "1"}, N: nt})
	if err != nil {
		t.Fatal(err)
	}
	return appendRecord(nil, p)
}

// TestJournalStates starts the notifier on each state a stop, a crash or an
// older version can leave a queue in (the cursor is written without fsync
// and segment removals are not synced, so after a power loss the cursor
// may be older, gone or torn, and a removed segment may be back), then
// restarts it twice with a new notification each time. Every notification
// not acknowledged by the state is delivered: the ones the cursor has not
// passed, all of a segment the cursor does not fit, and each new one.
func TestJournalStates(t *testing.T) {
	q1, q2, q3 := journalRecord(t, "Q1"), journalRecord(t, "Q2"), journalRecord(t, "Q3")
	cat := func(bs ...[]byte) []byte { return slices.Concat(bs...) }
	len1 := int64(len(q1))
	for _, tc := range []struct {
		name   string
		cursor *position
		segs   map[uint64][]byte
		want   []string // jobs resent from the state, in order
	}{
		{name: "empty queue directory"},
		{name: "cursor only, its segment deleted", cursor: &position{1, len1}},
		{name: "cursor only, far on", cursor: &position{7, 12345}},
		{name: "drained, segment not yet deleted", cursor: &position{1, len1}, segs: map[uint64][]byte{1: q1}},
		{name: "half read", cursor: &position{1, len1}, segs: map[uint64][]byte{1: cat(q1, q2)}, want: []string{"Q2"}},
		{name: "nothing read", segs: map[uint64][]byte{1: cat(q1, q2)}, want: []string{"Q1", "Q2"}},
		{name: "cursor lost, segment numbered on", segs: map[uint64][]byte{3: q1}, want: []string{"Q1"}},
		{name: "cursor past the end of its segment", cursor: &position{1, 4 * len1}, segs: map[uint64][]byte{1: cat(q1, q2)},
			want: []string{"Q1", "Q2"}},
		{name: "cursor just past the end of its segment", cursor: &position{1, 2*len1 + 1}, segs: map[uint64][]byte{1: cat(q1, q2)},
			want: []string{"Q1", "Q2"}},
		{name: "cursor inside a record", cursor: &position{1, len1 + 3}, segs: map[uint64][]byte{1: cat(q1, q2)},
			want: []string{"Q1", "Q2"}},
		{name: "removed segment back", cursor: &position{2, len1}, segs: map[uint64][]byte{1: q1, 2: cat(q2, q3)},
			want: []string{"Q3"}},
		{name: "cursor past every segment", cursor: &position{4, 10}, segs: map[uint64][]byte{1: q1, 2: q2}},
		{name: "drained segment and a new one", cursor: &position{1, len1}, segs: map[uint64][]byte{1: q1, 2: cat(q2, q3)},
			want: []string{"Q2", "Q3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			qdir := filepath.Join(dir, "example.test")
			if err := os.MkdirAll(qdir, 0o700); err != nil {
				t.Fatal(err)
			}
			for id, b := range tc.segs {
				if err := os.WriteFile(filepath.Join(qdir, segmentName(id)), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if tc.cursor != nil {
				if err := os.WriteFile(filepath.Join(qdir, "cursor"), formatCursor(*tc.cursor), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			rcv := newReceiver(t)
			var src tables
			src.set(t, hook{"example.test", rcv.url(), key1})
			want := tc.want
			for _, id := range []string{"N1", "N2", "N3"} {
				e := start(t, fastOptions(dir, &src))
				e.n.Observe(attempt(id, "example.test", delivery.StatusSent))
				want = append(want, id)
				testenv.EventuallyTrue(t, "still waiting for "+id+" sent", func() bool { return len(rcv.requests()) >= len(want) && e.n.pendingDisk.Load() == 0 })
				e.stop()
				if got := jobsSent(rcv); !slices.Equal(got, want) {
					t.Fatalf("after %s: jobs sent %v, want %v", id, got, want)
				}
			}
		})
	}
}

// TestGuardThisHost: with every address allowed (--webhook-allow-cidrs
// 0.0.0.0/0,::/0), a webhook to 0.0.0.0, :: or ::ffff:0.0.0.0 at the port
// of a listener bound to 127.0.0.1 would reach that listener (Linux
// connects the unspecified address to the local host): refused as the
// relay's own, always.
func TestGuardThisHost(t *testing.T) {
	self, err := SelfAddrs("127.0.0.1:8081", "[::1]:8082", "10.1.2.3:8083")
	if err != nil {
		t.Fatal(err)
	}
	g := newGuard([]netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}, self)
	g.localAddrs = func() []netip.Addr { return []netip.Addr{netip.MustParseAddr("10.1.2.3")} }
	for _, a := range []string{
		"0.0.0.0:8081", "[::]:8081", "[::ffff:0.0.0.0]:8081", "0.1.2.3:8081",
		"0.0.0.0:8082", "[::]:8082", "0.0.0.0:8083", "[::ffff:0.0.0.0]:8083",
		"127.0.0.1:8081", "[::1]:8082", "10.1.2.3:8083",
	} {
		err := g.control("tcp", a, nil)
		var re *RefusedError
		if !errors.As(err, &re) || re.Reason != "the relay's own listener" {
			t.Errorf("%s: %v, want refused as the relay's own listener", a, err)
		}
	}
	// Other ports stay as the operator allowed them.
	for _, a := range []string{"0.0.0.0:8443", "[::]:8443", "127.0.0.1:8443", "203.0.113.7:8081"} {
		if err := g.control("tcp", a, nil); err != nil {
			t.Errorf("%s: %v", a, err)
		}
	}
	if err := g.control("tcp", fmt.Sprintf("[::ffff:0.0.0.0]:%d", 8443), nil); err != nil {
		t.Errorf("::ffff:0.0.0.0 at another port: %v", err)
	}
}
