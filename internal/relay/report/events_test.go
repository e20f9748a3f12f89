package report

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/testenv"
)

// TestBounceEvents: 300 bounces in a burst become one or two Warning
// Events (reason Bounced) on the route, through the real client-go events
// broadcaster, never one per message; deliveries make none. The
// Reporter's clock is the test's and does not move during the burst: one
// write may come during it, one more an interval later.
func TestBounceEvents(t *testing.T) {
	live := newClient(t, apiServer.Config)
	ns, domain, route := fixture(t, live)
	cs, err := kubernetes.NewForConfig(apiServer.Config)
	if err != nil {
		t.Fatal(err)
	}
	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: cs.EventsV1()})
	b.StartRecordingToSink(t.Context().Done())
	t.Cleanup(b.Shutdown)
	rec := &countingRecorder{next: b.NewRecorder(scheme, "postgate-relay")}
	clk := testenv.NewClock(time.Now())
	const interval = time.Second
	r, err := New(live, Options{Replica: "relay-0", Interval: interval, Now: clk.Now, Events: rec})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)

	for range 50 {
		r.Observe(sent(domain, route, clk.Now()))
	}
	const n = 300
	for range n {
		r.Observe(bounced(domain, route, clk.Now()))
	}
	advance(r, clk, interval)
	// Every bounce is in an Event the Reporter asked for: no more will come.
	calls := rec.waitBounces(t, n)
	if calls < 1 || calls > 2 {
		t.Errorf("%d Events asked for %d bounces, want 1 or 2", calls, n)
	}
	var list eventsv1.EventList
	testenv.EventuallyTrue(t, "no Bounced Event on the route", func() bool {
		if err := live.List(t.Context(), &list, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		for _, e := range list.Items {
			if e.Regarding.Kind == "RelayRoute" && e.Regarding.Name == route.Name {
				return true
			}
		}
		return false
	})
	var counted int
	var notes []string
	for _, e := range list.Items {
		if e.Regarding.Name != route.Name {
			continue
		}
		if e.Reason != v1alpha1.EventReasonBounced || e.Type != "Warning" || e.ReportingController != "postgate-relay" {
			t.Errorf("event %s: reason %q type %q controller %q", e.Name, e.Reason, e.Type, e.ReportingController)
		}
		if e.Regarding.UID != route.UID {
			t.Errorf("event regards UID %q, want %q", e.Regarding.UID, route.UID)
		}
		var k int
		if _, err := fmt.Sscanf(e.Note, "Relay relay-0: %d recipient(s)", &k); err != nil {
			t.Errorf("note %q: %v", e.Note, err)
		}
		counted += k
		notes = append(notes, e.Note)
	}
	if len(notes) == 0 || len(notes) > 2 {
		t.Fatalf("%d Events for %d bounces, want 1 or 2: %q", len(notes), n, notes)
	}
	// client-go merges isomorphic Events (same object, reason, action)
	// into a series of the first within minutes: the note then tells the
	// first batch, and series.count how many batches there were.
	if counted < 1 || counted > n {
		t.Errorf("the Events count %d bounces, want 1 to %d: %q", counted, n, notes)
	}
	if !strings.Contains(notes[len(notes)-1], "550 5.1.1 no such user") {
		t.Errorf("note %q does not give the last reply", notes[len(notes)-1])
	}
}

// countingRecorder counts the bounces in the Events a Reporter asks for
// (its note names them) and passes the Events on.
type countingRecorder struct {
	next events.EventRecorder

	mu             sync.Mutex
	calls, bounces int
	changes        testenv.Changes
}

func (r *countingRecorder) Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any) {
	var k int
	_, _ = fmt.Sscanf(fmt.Sprintf(note, args...), "Relay relay-0: %d recipient(s)", &k)
	r.mu.Lock()
	r.calls++
	r.bounces += k
	r.mu.Unlock()
	r.changes.Changed()
	r.next.Eventf(regarding, related, eventtype, reason, action, note, args...)
}

// waitBounces waits until the Events asked for count n bounces, and
// returns how many Events that took.
func (r *countingRecorder) waitBounces(t *testing.T, n int) int {
	t.Helper()
	var calls int
	r.changes.Wait(t, func() string {
		r.mu.Lock()
		defer r.mu.Unlock()
		calls = r.calls
		if r.bounces < n {
			return fmt.Sprintf("%d Events name %d of %d bounces", r.calls, r.bounces, n)
		}
		return ""
	})
	return calls
}
