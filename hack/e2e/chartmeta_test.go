package e2e

import (
	"bytes"
	"cmp"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// readYAML reads a file of the repository into v.
func readYAML(t *testing.T, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(api.Root, name))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
}

// Chart.yaml's Artifact Hub annotations name the image of the appVersion
// and the validating resolver's (relay.dnssecResolver), and exactly the
// chart's CRDs, and its kubeVersion refuses a cluster
// without the preStop sleep action (Kubernetes 1.30).
func TestChartMetadata(t *testing.T) {
	var chart struct {
		AppVersion  string            `json:"appVersion"`
		Annotations map[string]string `json:"annotations"`
	}
	readYAML(t, "charts/postgate/Chart.yaml", &chart)
	var values struct {
		Image struct {
			Repository string `json:"repository"`
		} `json:"image"`
		Relay struct {
			DNSSECResolver struct {
				Image struct {
					Repository string `json:"repository"`
					Tag        string `json:"tag"`
				} `json:"image"`
			} `json:"dnssecResolver"`
		} `json:"relay"`
	}
	readYAML(t, "charts/postgate/values.yaml", &values)

	var images []struct {
		Image string `json:"image"`
	}
	if err := yaml.Unmarshal([]byte(chart.Annotations["artifacthub.io/images"]), &images); err != nil {
		t.Fatal(err)
	}
	resolver := values.Relay.DNSSECResolver.Image
	want := []string{values.Image.Repository + ":" + chart.AppVersion, resolver.Repository + ":" + resolver.Tag}
	var listedImages []string
	for _, i := range images {
		listedImages = append(listedImages, i.Image)
	}
	if !slices.Equal(listedImages, want) {
		t.Errorf("artifacthub.io/images lists %q, want %q", listedImages, want)
	}

	type crd struct {
		Kind    string `json:"kind"`
		Version string `json:"version"`
	}
	var listed []crd
	if err := yaml.Unmarshal([]byte(chart.Annotations["artifacthub.io/crds"]), &listed); err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(api.Root, "charts", "postgate", "files", "crds", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no CRDs in charts/postgate/files/crds: %v", err)
	}
	var have []crd
	for _, f := range files {
		var c struct {
			Spec struct {
				Names struct {
					Kind string `json:"kind"`
				} `json:"names"`
				Versions []struct {
					Name   string `json:"name"`
					Served bool   `json:"served"`
				} `json:"versions"`
			} `json:"spec"`
		}
		rel, _ := filepath.Rel(api.Root, f)
		readYAML(t, rel, &c)
		for _, v := range c.Spec.Versions {
			if v.Served {
				have = append(have, crd{c.Spec.Names.Kind, v.Name})
			}
		}
	}
	byKind := func(a, b crd) int {
		return cmp.Or(strings.Compare(a.Kind, b.Kind), strings.Compare(a.Version, b.Version))
	}
	slices.SortFunc(listed, byKind)
	slices.SortFunc(have, byKind)
	if !slices.Equal(listed, have) {
		t.Errorf("artifacthub.io/crds lists %+v; the chart's CRDs serve %+v", listed, have)
	}

	_, stderr, err := tryRun(nil, "helm", "template", "postgate", "charts/postgate", "--kube-version", "1.29.9")
	if err == nil || !bytes.Contains(stderr, []byte("kubeVersion")) {
		t.Errorf("helm template for Kubernetes 1.29: want a refusal naming kubeVersion, got %v:\n%s", err, stderr)
	}
	run(t, nil, "helm", "template", "postgate", "charts/postgate", "--kube-version", "1.30.0")
}
