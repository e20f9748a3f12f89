package testenv

import (
	"context"
	"strings"
	"testing"
	"time"

	eventsv1 "k8s.io/api/events/v1"
	ctrlclient "sigs.k8s.io/controller-runtime/pkg/client"
)

// WaitEvent waits up to within for an events.k8s.io Event in namespace ns
// about the object named name with the reason, and returns it. The
// client's scheme must know events.k8s.io/v1.
func WaitEvent(t testing.TB, c ctrlclient.Reader, ns, name, reason string, within time.Duration) eventsv1.Event {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var list eventsv1.EventList
		err := c.List(context.Background(), &list, ctrlclient.InNamespace(ns))
		var seen []string
		for _, e := range list.Items {
			if e.Regarding.Name == name && e.Reason == reason {
				return e
			}
			seen = append(seen, e.Regarding.Name+"/"+e.Reason)
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: no Event %s for %s (list error %v); events: %s", within, reason, name, err, strings.Join(seen, ", "))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
