package report

import (
	"fmt"
	"strings"
	"testing"
	"time"

	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// TestBounceEvents: 300 bounces in a burst become one or two Warning
// Events (reason Bounced) on the route, through the real client-go events
// broadcaster, never one per message; deliveries make none.
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
	r, err := New(live, Options{Replica: "relay-0", Interval: time.Second,
		Events: b.NewRecorder(scheme, "postgate-relay")})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)

	for range 50 {
		r.Observe(sent(domain, route, time.Now()))
	}
	const n = 300
	for range n {
		r.Observe(bounced(domain, route, time.Now()))
	}
	var got []eventsv1.Event
	eventually(t, 20*time.Second, "no Bounced Event on the route", func() bool {
		var list eventsv1.EventList
		if err := live.List(t.Context(), &list, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		got = got[:0]
		for _, e := range list.Items {
			if e.Regarding.Kind == "RelayRoute" && e.Regarding.Name == route.Name {
				got = append(got, e)
			}
		}
		return len(got) > 0
	})
	time.Sleep(2 * time.Second) // a second write would come within the interval
	var list eventsv1.EventList
	if err := live.List(t.Context(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
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
