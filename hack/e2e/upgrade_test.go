package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postgate/postgate/internal/testenv"
)

// crdNames are the CRDs the chart renders (crds.enabled).
var crdNames = []string{"crd/relayroutes.postgate.io", "crd/senderdomains.postgate.io", "crd/trustednetworks.postgate.io"}

// upgradeTenant is the namespace of a team's TrustedNetwork, which must
// outlive the release when crds.keep is on.
const upgradeTenant = "tenant-upgrade"

// chartWithPrinterColumn copies the chart with one more printer column in
// the TrustedNetwork CRD, as a release with a changed CRD would have.
func chartWithPrinterColumn(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "postgate")
	if err := os.CopyFS(dir, os.DirFS(filepath.Join(api.Root, "charts", "postgate"))); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "files", "crds", "postgate.io_trustednetworks.yaml")
	b, err := os.ReadFile(path) //nolint:gosec // the test's own copy of the chart
	if err != nil {
		t.Fatal(err)
	}
	const columns = "  - additionalPrinterColumns:\n"
	if !bytes.Contains(b, []byte(columns)) {
		t.Fatalf("%s: no %q to add a column to", path, columns)
	}
	b = bytes.Replace(b, []byte(columns), []byte(columns+"    - jsonPath: .metadata.generation\n      name: Generation\n      type: integer\n"), 1)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// The life of a Helm install, on an API server of its own without the CRDs
// (the CRDs and ClusterRoles are cluster-wide, and the suite's server has
// the CRDs from envtest and a release of another test): `kubectl apply -k`
// first, then helm install, which fails on ownership metadata until
// --take-ownership (or the label and annotation recipe) lets Helm adopt
// the objects; helm upgrade with a changed CRD applies it (Helm never
// upgrades a chart's crds/, hence the CRDs as templates); helm uninstall
// leaves the CRDs and a team's objects with crds.keep, and deletes both
// without it (README: Upgrade).
func TestChartTakesOverUpgradesAndKeepsTheCRDs(t *testing.T) {
	s := testenv.StartAPIServerWithoutCRDs(t)
	run := func(stdin []byte, name string, args ...string) []byte {
		t.Helper()
		return runOn(t, s, stdin, name, args...)
	}
	jsonpath := func(obj, path string, extra ...string) string {
		t.Helper()
		return strings.TrimSpace(string(run(nil, "kubectl", append([]string{"get", obj, "-o", "jsonpath=" + path}, extra...)...)))
	}
	release := []string{"postgate", "charts/postgate", "--namespace", namespace}

	// kubectl apply -k, as the README's other install; then helm install
	// is refused: the objects exist without Helm's ownership metadata.
	run(nil, "kubectl", "apply", "-k", "config/default")
	_, stderr, err := tryRunOn(s, nil, "helm", append([]string{"install"}, release...)...)
	if err == nil || !bytes.Contains(stderr, []byte("invalid ownership metadata")) {
		t.Fatalf("helm install after kubectl apply -k: want a refusal on ownership metadata, got %v:\n%s", err, stderr)
	}
	run(nil, "helm", append([]string{"install", "--take-ownership"}, release...)...)
	for _, obj := range []string{"deployment/postgate-operator", "statefulset/postgate-relay", crdNames[0]} {
		if got := jsonpath(obj, `{.metadata.annotations.meta\.helm\.sh/release-name}`, "-n", namespace); got != "postgate" {
			t.Errorf("%s after helm install --take-ownership: release-name annotation %q, want postgate", obj, got)
		}
	}
	for _, crd := range crdNames {
		if got := jsonpath(crd, `{.metadata.annotations.helm\.sh/resource-policy}`); got != "keep" {
			t.Errorf("%s: helm.sh/resource-policy %q, want keep (crds.keep defaults to true)", crd, got)
		}
	}

	// A team's object, which the CRDs must not take with them.
	run([]byte("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: "+upgradeTenant+"\n"), "kubectl", "apply", "--server-side", "-f", "-")
	run(nil, "kubectl", "wait", "--for=condition=Established", "--timeout=60s", crdNames[2])
	run([]byte("apiVersion: postgate.io/v1alpha1\nkind: TrustedNetwork\nmetadata: {name: office}\nspec: {cidrs: [192.0.2.0/24]}\n"),
		"kubectl", "apply", "--server-side", "-n", upgradeTenant, "-f", "-")

	// helm upgrade with a CRD that has one more printer column.
	run(nil, "helm", "upgrade", "postgate", chartWithPrinterColumn(t), "--namespace", namespace)
	if got := jsonpath(crdNames[2], "{.spec.versions[0].additionalPrinterColumns[*].name}"); !strings.Contains(got, "Generation") {
		t.Errorf("after helm upgrade with a changed CRD, its printer columns are %q: no Generation", got)
	}
	if got := string(run(nil, "kubectl", "get", "trustednetworks", "-n", upgradeTenant)); !strings.Contains(got, "GENERATION") {
		t.Errorf("kubectl get trustednetworks after the upgrade shows no GENERATION column:\n%s", got)
	}

	// helm uninstall with crds.keep: the workloads go, the CRDs and the
	// team's TrustedNetwork stay.
	out := run(nil, "helm", "uninstall", "postgate", "--namespace", namespace)
	t.Logf("helm uninstall:\n%s", out)
	if _, stderr, err := tryRunOn(s, nil, "kubectl", "get", "-n", namespace, "deployment/postgate-operator"); err == nil || !bytes.Contains(stderr, []byte("NotFound")) {
		t.Errorf("after helm uninstall the operator Deployment is still there (%v):\n%s", err, stderr)
	}
	run(nil, "kubectl", append([]string{"get"}, crdNames...)...)
	run(nil, "kubectl", "get", "-n", upgradeTenant, "trustednetwork/office")

	// The recipe without --take-ownership: label and annotate what
	// `kubectl apply -k` made as Helm's, then helm install adopts it, and
	// the CRDs that the last release kept.
	run(nil, "kubectl", "apply", "-k", "config/default")
	manifests := run(nil, "kubectl", "kustomize", "config/default")
	run(manifests, "kubectl", "label", "-f", "-", "--overwrite", "app.kubernetes.io/managed-by=Helm")
	run(manifests, "kubectl", "annotate", "-f", "-", "--overwrite", "meta.helm.sh/release-name=postgate", "meta.helm.sh/release-namespace="+namespace)
	run(nil, "helm", append([]string{"install"}, release...)...)

	// crds.keep=false: uninstall deletes the CRDs.
	run(nil, "helm", "upgrade", "postgate", "charts/postgate", "--namespace", namespace, "--reuse-values", "--set", "crds.keep=false")
	if got := jsonpath(crdNames[2], `{.metadata.annotations.helm\.sh/resource-policy}`); got != "" {
		t.Errorf("crds.keep=false: helm.sh/resource-policy is still %q", got)
	}
	// The team's objects go first: the API server's CRD finalizer deletes
	// a CRD's remaining objects itself, but retries on a rate-limited
	// queue, so on a loaded machine a CRD with objects has taken more than
	// 180 s to go (Kubernetes' doing, not the chart's, which is what
	// this test checks: that uninstall deletes the CRDs at all).
	run(nil, "kubectl", "delete", "--all", "--all-namespaces", "--wait=true", "--timeout=120s", "trustednetworks.postgate.io,senderdomains.postgate.io,relayroutes.postgate.io")
	run(nil, "helm", "uninstall", "postgate", "--namespace", namespace)
	if _, stderr, err := tryRunOn(s, nil, "kubectl", append([]string{"wait", "--for=delete", "--timeout=180s"}, crdNames...)...); err != nil {
		left, _, _ := tryRunOn(s, nil, "kubectl", append([]string{"get", "-o", "yaml", "--ignore-not-found"}, crdNames...)...)
		t.Fatalf("crds.keep=false: the CRDs outlive helm uninstall: %v\n%s\n%s", err, stderr, left)
	}
	if _, stderr, err := tryRunOn(s, nil, "kubectl", "get", "-n", upgradeTenant, "trustednetworks"); err == nil {
		t.Errorf("the TrustedNetwork kind is still served after its CRD was deleted:\n%s", stderr)
	}
}
