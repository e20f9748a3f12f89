package e2e

import (
	"bytes"
	"strings"
	"testing"
)

// The spool's volume claim templates cannot change once the StatefulSet
// exists, so an upgrade that changes relay.persistence fails at the API
// server; the README's recipe (Install, "Changing the spool volumes")
// deletes the StatefulSet without its pods and claims, after which the
// new templates are taken. The retention policy, though, may change.
func TestChartSpoolVolumesChangeOnlyByTheRecipe(t *testing.T) {
	// A namespace of its own: the StatefulSet is created for real.
	const ns = "postgate-spool-change"
	run(t, []byte("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: "+ns+"\n"), "kubectl", "apply", "--server-side", "-f", "-")
	render := func(set ...string) []byte {
		args := []string{"template", "postgate", "charts/postgate", "--namespace", ns, "--show-only", "templates/relay.yaml"}
		for _, s := range set {
			args = append(args, "--set", s)
		}
		return run(t, nil, "helm", args...)
	}
	apply := func(manifests []byte, extra ...string) ([]byte, error) {
		args := append([]string{"apply", "--server-side", "--force-conflicts", "--field-manager=postgate-e2e", "-f", "-"}, extra...)
		_, stderr, err := tryRun(manifests, "kubectl", args...)
		return stderr, err
	}
	if stderr, err := apply(render()); err != nil {
		t.Fatalf("installing the relay: %v\n%s", err, stderr)
	}

	for _, set := range []string{
		"relay.persistence.size=5Gi",
		"relay.persistence.storageClass=fast-ssd",
		"relay.persistence.accessModes[0]=ReadWriteOncePod",
		"relay.persistence.annotations.backup=yes",
	} {
		stderr, err := apply(render(set), "--dry-run=server")
		if err == nil || !bytes.Contains(stderr, []byte("spec.volumeClaimTemplates")) || !bytes.Contains(stderr, []byte("field is immutable")) {
			t.Errorf("upgrade with %s: want the API server to refuse the changed volume claim templates, got %v:\n%s", set, err, stderr)
		}
	}
	if stderr, err := apply(render("relay.persistentVolumeClaimRetentionPolicy.whenScaled=Delete"), "--dry-run=server"); err != nil {
		t.Errorf("upgrade with a retention policy: %v\n%s", err, stderr)
	}

	// The recipe: the StatefulSet goes, its pods and claims stay; the
	// upgrade creates it again with the new templates. --cascade=orphan
	// leaves the orphan finalizer to the garbage collector, which envtest
	// does not run: the test removes it as the collector would, once it has
	// released the dependents (there are none without a kubelet).
	run(t, nil, "kubectl", "delete", "statefulset", "-n", ns, "postgate-relay", "--cascade=orphan", "--wait=false")
	run(t, nil, "kubectl", "patch", "statefulset", "-n", ns, "postgate-relay", "--type=merge", "-p", `{"metadata":{"finalizers":null}}`)
	run(t, nil, "kubectl", "wait", "--for=delete", "-n", ns, "statefulset/postgate-relay", "--timeout=60s")
	if stderr, err := apply(render("relay.persistence.size=5Gi")); err != nil {
		t.Fatalf("upgrade after deleting the StatefulSet with --cascade=orphan: %v\n%s", err, stderr)
	}
	got := run(t, nil, "kubectl", "get", "statefulset", "-n", ns, "postgate-relay", "-o", "jsonpath={.spec.volumeClaimTemplates[0].spec.resources.requests.storage}")
	if strings.TrimSpace(string(got)) != "5Gi" {
		t.Errorf("after the recipe the spool claims ask for %q, want 5Gi", got)
	}
}
