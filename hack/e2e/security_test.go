package e2e

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
)

// restrictedNamespace enforces the restricted Pod Security Standard and
// warns about it, so that the API server judges the pod templates of a
// Deployment or StatefulSet (it warns for workloads, enforces for pods).
const restrictedNamespace = "postgate-restricted"

// dryRunWarnings has the API server admit manifests without storing them
// and returns its warnings (kubectl prints them on stderr).
func dryRunWarnings(t *testing.T, manifests []byte) string {
	t.Helper()
	_, stderr, err := tryRun(manifests, "kubectl", "apply", "--server-side", "--force-conflicts", "--field-manager=postgate-e2e", "--dry-run=server", "-f", "-")
	if err != nil {
		t.Fatalf("server-side dry run: %v\n%s", err, stderr)
	}
	return string(stderr)
}

// The values of charts/postgate/ci/openshift-values.yaml run under
// OpenShift's restricted-v2 SCC: no fixed user, group or fsGroup (the SCC
// assigns them from the namespace's range and refuses others), and the
// rest of what restricted-v2 asks, which the restricted Pod Security
// Standard asks too (non-root, no privilege escalation, every capability
// dropped, seccomp RuntimeDefault): the API server's PodSecurity admission
// judges that part. The chart's defaults pass the same standard.
func TestChartRestrictedSecurity(t *testing.T) {
	run(t, nil, "helm", "lint", "--strict", "charts/postgate", "-f", "charts/postgate/ci/openshift-values.yaml")
	run(t, []byte(`apiVersion: v1
kind: Namespace
metadata:
  name: `+restrictedNamespace+`
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/warn: restricted
`), "kubectl", "apply", "--server-side", "-f", "-")
	render := func(args ...string) []byte {
		return run(t, nil, "helm", append([]string{"template", "postgate", "charts/postgate", "--namespace", restrictedNamespace}, args...)...)
	}

	// The check can fail: a relay in the node's network namespace breaks
	// the standard, and the API server says so.
	if w := dryRunWarnings(t, render("--set", "relay.hostNetwork=true")); !strings.Contains(w, "would violate PodSecurity") || !strings.Contains(w, "hostNetwork") {
		t.Fatalf("relay.hostNetwork=true: want a PodSecurity warning about hostNetwork, got:\n%s", w)
	}
	if w := dryRunWarnings(t, render()); strings.Contains(w, "PodSecurity") {
		t.Errorf("the chart's defaults break the restricted Pod Security Standard:\n%s", w)
	}
	// The validating resolver sidecar (relay.dnssecResolver) is judged
	// with the pod: it must not break the standard either.
	if w := dryRunWarnings(t, render("--set", "relay.dnssecResolver.enabled=true")); strings.Contains(w, "PodSecurity") {
		t.Errorf("relay.dnssecResolver.enabled breaks the restricted Pod Security Standard:\n%s", w)
	}

	// With the sidecar on: its security context fixes no user either.
	openshift := render("-f", "charts/postgate/ci/openshift-values.yaml", "--set", "relay.dnssecResolver.enabled=true")
	if fixed := regexp.MustCompile(`(?m)^\s*(runAsUser|runAsGroup|fsGroup):.*$`).FindAll(openshift, -1); len(fixed) > 0 {
		t.Errorf("with ci/openshift-values.yaml the chart still fixes %s", bytes.Join(fixed, []byte(",")))
	}
	objs := parse(t, openshift)
	for _, id := range []string{"Deployment " + restrictedNamespace + "/postgate-operator", "StatefulSet " + restrictedNamespace + "/postgate-relay"} {
		pod := field(objs[id], "spec", "template", "spec")
		if field(pod, "securityContext", "runAsNonRoot") != true {
			t.Errorf("%s: runAsNonRoot is not true", id)
		}
	}
	if w := dryRunWarnings(t, openshift); strings.Contains(w, "PodSecurity") {
		t.Errorf("with ci/openshift-values.yaml the chart breaks the restricted Pod Security Standard:\n%s", w)
	}
}
