package controllers

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/postgate/postgate/internal/relay/shaping"
	"github.com/postgate/postgate/internal/routing"
	"github.com/postgate/postgate/internal/testenv"
)

const shapingYAML = `# the platform team's policy
default:
  maxConnections: %d
  suspension: {initial: 5m, max: 1h, resetAfter: 1h}
sites:
  - name: big
    match: {mxHostSuffixes: [.big.example]}
    maxMessagesPerMinute: 60
`

// compiledAfter counts, at the end of each reconcile, the compiles done so
// far: a test waits for a pass that compiled after its change and ended,
// publication included.
func compiledAfter(n *atomic.Int64) operatorOpt {
	return func(_ *Options, r *Reconciler) {
		if r != nil {
			r.afterReconcile = func(uint64, bool) { n.Store(r.stats.Compiles.Load()) }
		}
	}
}

// publishedShapingOf reads the index Secret's shaping policy: its bytes
// (nil when there is none), checked against the index.
func publishedShapingOf(t *testing.T, ns string) (*routing.Index, []byte) {
	t.Helper()
	c := newClient(t)
	idx := readIndex(t, c, ns)
	data := get(t, c, ns, routing.IndexSecretName, &corev1.Secret{}).Data[routing.ShapingDataKey]
	if err := idx.VerifyShaping(data); err != nil {
		t.Fatalf("version %d: %v", idx.Version, err)
	}
	return idx, data
}

// TestShapingPolicyPublished: shaping.yaml of the guardrail ConfigMap is
// published as canonical JSON beside the index, a changed policy is a new
// version and an unchanged one (comments, layout) none; an invalid one is a
// Warning Event and the last good one stays published, across an operator
// restart too; no key, no policy.
func TestShapingPolicyPublished(t *testing.T) {
	c := newClient(t)
	ns := namespaces(t, c, "tenant", "relay", "operator")
	tenant, relayNS, opNS := ns[0], ns[1], ns[2]
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: opNS, Name: "policy"}, Data: map[string]string{
		routing.ShapingConfigMapKey: fmt.Sprintf(shapingYAML, 3),
	}}
	create(t, c, cm, senderDomain(tenant, "sd", tenant+".example.com"))
	var compiled atomic.Int64
	op := startOperator(t, relayNS, withPolicy(opNS, "policy"), compiledAfter(&compiled))

	maxConnectionsIs := func(n int) func() string {
		return func() string {
			sec := &corev1.Secret{}
			if err := c.Get(context.Background(), types.NamespacedName{Namespace: relayNS, Name: routing.IndexSecretName}, sec); err != nil {
				return err.Error()
			}
			data := sec.Data[routing.ShapingDataKey]
			if data == nil {
				return fmt.Sprintf("no %s", routing.ShapingDataKey)
			}
			p, err := shaping.Parse(data)
			if err != nil {
				return err.Error()
			}
			if got := *p.Default.MaxConnections; got != n {
				return fmt.Sprintf("maxConnections %d, want %d", got, n)
			}
			return ""
		}
	}
	testenv.Eventually(t, maxConnectionsIs(3))
	first, data := publishedShapingOf(t, relayNS)
	want, _ := shaping.Parse([]byte(fmt.Sprintf(shapingYAML, 3)))
	if canonical, _ := want.Canonical(); string(data) != string(canonical) {
		t.Errorf("published %s, want the canonical JSON %s", data, canonical)
	}
	testenv.WaitEvent(t, c, opNS, "policy", "ShapingPolicyPublished")

	// change edits shaping.yaml and waits for a pass that read it.
	change := func(edit func(map[string]string)) {
		t.Helper()
		before := op.r.Stats().Compiles.Load()
		cm := get(t, c, opNS, "policy", &corev1.ConfigMap{})
		edit(cm.Data)
		update(t, c, cm)
		testenv.Eventually(t, func() string {
			if compiled.Load() <= before {
				return "no pass compiled since the change"
			}
			return ""
		})
	}

	// The same policy in other words: no new version.
	publications := op.r.Stats().Publications.Load()
	change(func(d map[string]string) {
		d[routing.ShapingConfigMapKey] = strings.Replace(fmt.Sprintf(shapingYAML, 3), "# the platform team's policy", "# reformatted\n", 1)
	})
	if idx, _ := publishedShapingOf(t, relayNS); idx.Version != first.Version || op.r.Stats().Publications.Load() != publications {
		t.Errorf("an unchanged policy published version %d (was %d)", idx.Version, first.Version)
	}

	// A changed policy: a new version, a new hash, the same table.
	change(func(d map[string]string) { d[routing.ShapingConfigMapKey] = fmt.Sprintf(shapingYAML, 7) })
	testenv.Eventually(t, maxConnectionsIs(7))
	second, _ := publishedShapingOf(t, relayNS)
	if second.Version <= first.Version || second.Shaping == first.Shaping || second.Hash != first.Hash {
		t.Errorf("changed policy: version %d -> %d, shaping %.8s -> %.8s, table %.8s -> %.8s",
			first.Version, second.Version, first.Shaping, second.Shaping, first.Hash, second.Hash)
	}

	// Invalid: a Warning Event naming the error, the last good one stays.
	change(func(d map[string]string) {
		d[routing.ShapingConfigMapKey] = strings.Replace(fmt.Sprintf(shapingYAML, 7), "maxMessagesPerMinute", "maxMessagesPerMinut", 1)
	})
	ev := testenv.WaitEvent(t, c, opNS, "policy", "InvalidShapingPolicy")
	if ev.Type != corev1.EventTypeWarning || !strings.Contains(ev.Note, `sites[0] ("big")`) || !strings.Contains(ev.Note, "maxMessagesPerMinut") {
		t.Errorf("Event %s: %q", ev.Type, ev.Note)
	}
	if idx, _ := publishedShapingOf(t, relayNS); idx.Version != second.Version || idx.Shaping != second.Shaping {
		t.Errorf("an invalid policy replaced version %d by %d", second.Version, idx.Version)
	}

	// Valid but too large for the index Secret: refused the same way.
	var large strings.Builder
	fmt.Fprintf(&large, shapingYAML, 7)
	for i := range 120 {
		fmt.Fprintf(&large, "  - name: r%d\n    match:\n      mxHostSuffixes:\n", i)
		for j := range 100 {
			fmt.Fprintf(&large, "        - .mx%03d.some-long-provider-name-%03d.example\n", j, i)
		}
	}
	change(func(d map[string]string) { d[routing.ShapingConfigMapKey] = large.String() })
	testenv.Eventually(t, func() string {
		for _, e := range eventsOf(t, c, opNS, "policy", "InvalidShapingPolicy") {
			if strings.Contains(e, "bytes as JSON, at most") {
				return ""
			}
		}
		return "no Event for the policy too large"
	})
	if idx, _ := publishedShapingOf(t, relayNS); idx.Version != second.Version || idx.Shaping != second.Shaping {
		t.Errorf("a policy too large replaced version %d by %d", second.Version, idx.Version)
	}
	change(func(d map[string]string) {
		d[routing.ShapingConfigMapKey] = strings.Replace(fmt.Sprintf(shapingYAML, 7), "maxMessagesPerMinute", "maxMessagesPerMinut", 1)
	})

	// A restarted operator, the ConfigMap still invalid, keeps publishing
	// the last good policy it finds published.
	op.stop()
	compiled.Store(0)
	op = startOperator(t, relayNS, withPolicy(opNS, "policy"), compiledAfter(&compiled))
	testenv.Eventually(t, func() string {
		if compiled.Load() == 0 {
			return "the restarted operator has not compiled"
		}
		return ""
	})
	if idx, _ := publishedShapingOf(t, relayNS); idx.Version != second.Version || idx.Shaping != second.Shaping {
		t.Errorf("after a restart with an invalid policy: version %d (shaping %.8s), want %d (%.8s)", idx.Version, idx.Shaping, second.Version, second.Shaping)
	}

	// No key: no policy published, the relays' default.
	change(func(d map[string]string) { delete(d, routing.ShapingConfigMapKey) })
	testenv.Eventually(t, func() string {
		if idx, data := publishedShapingOf(t, relayNS); idx.Shaping != "" || data != nil {
			return fmt.Sprintf("version %d still has a shaping policy", idx.Version)
		}
		return ""
	})
}

// eventsOf returns the notes of the Events with reason about the object
// ns/name.
func eventsOf(t *testing.T, c client.Client, ns, name, reason string) []string {
	t.Helper()
	var list eventsv1.EventList
	if err := c.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	var notes []string
	for _, e := range list.Items {
		if e.Regarding.Name == name && e.Reason == reason {
			notes = append(notes, e.Note)
		}
	}
	return notes
}
