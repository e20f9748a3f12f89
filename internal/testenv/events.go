package testenv

import (
	"context"
	"fmt"
	"strings"
	"testing"

	eventsv1 "k8s.io/api/events/v1"
	ctrlclient "sigs.k8s.io/controller-runtime/pkg/client"
)

// WaitEvent waits for an events.k8s.io Event in namespace ns about the
// object named name with the reason, and returns it. The client's scheme
// must know events.k8s.io/v1.
func WaitEvent(t testing.TB, c ctrlclient.Reader, ns, name, reason string) eventsv1.Event {
	t.Helper()
	var found eventsv1.Event
	Eventually(t, func() string {
		var list eventsv1.EventList
		err := c.List(context.Background(), &list, ctrlclient.InNamespace(ns))
		var seen []string
		for _, e := range list.Items {
			if e.Regarding.Name == name && e.Reason == reason {
				found = e
				return ""
			}
			seen = append(seen, e.Regarding.Name+"/"+e.Reason)
		}
		return fmt.Sprintf("no Event %s for %s (list error %v); events: %s", reason, name, err, strings.Join(seen, ", "))
	})
	return found
}
