package e2e

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// metricNamePattern matches postgate's metric names and kube-state-metrics'
// in PromQL expressions and in the Go source that defines them.
var metricNamePattern = regexp.MustCompile(`\b(?:postgate|kube)_[a-z0-9_]+\b`)

// externalMetrics are the metrics the alerts and the dashboard read from
// elsewhere: kube-state-metrics, as kube-prometheus-stack installs it.
var externalMetrics = []string{"kube_statefulset_replicas", "kube_statefulset_status_replicas_ready"}

// codeMetrics returns the metric names that the Go code outside tests
// defines (string constants under internal/), with the series a histogram
// exposes.
func codeMetrics(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	literal := regexp.MustCompile(`"(postgate_[a-z0-9_]+)"`)
	err := filepath.WalkDir(filepath.Join(api.Root, "internal"), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		b, err := os.ReadFile(path) //nolint:gosec // the repository's own files
		if err != nil {
			return err
		}
		for _, m := range literal.FindAllSubmatch(b, -1) {
			n := string(m[1])
			names[n] = true
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[n+s] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !names["postgate_relay_queue_oldest_message_age_seconds"] || !names["postgate_operator_table_version"] {
		t.Fatalf("the metric names were not found in internal/: %v", names)
	}
	for _, n := range externalMetrics {
		names[n] = true
	}
	return names
}

// unknownMetrics returns the metric names in expr that the code does not
// export.
func unknownMetrics(expr string, known map[string]bool) []string {
	var out []string
	for _, n := range metricNamePattern.FindAllString(expr, -1) {
		if !known[n] && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// The PrometheusRule the chart renders passes `promtool check rules` and
// the unit tests of testdata/alerts_test.yaml; its expressions read only
// metrics the code exports; each alert is tested and has a runbook in the
// README, where its runbook_url points.
func TestChartAlertRules(t *testing.T) {
	rendered := helmTemplate(t, "--set", "prometheusRule.enabled=true", "--show-only", "templates/prometheusrule.yaml")
	rule := parse(t, rendered)["PrometheusRule "+namespace+"/postgate"]
	if rule == nil {
		t.Fatalf("no PrometheusRule rendered:\n%s", rendered)
	}
	spec, err := yaml.Marshal(rule["spec"])
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "alerts.yaml"), spec, 0o600); err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile(filepath.Join(api.Root, "hack/e2e/testdata/alerts_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "alerts_test.yaml"), tests, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("promtool check rules:\n%s", run(t, nil, "promtool", "check", "rules", filepath.Join(dir, "alerts.yaml")))
	t.Logf("promtool test rules:\n%s", run(t, nil, "promtool", "test", "rules", filepath.Join(dir, "alerts_test.yaml")))

	readme, err := os.ReadFile(filepath.Join(api.Root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	known := codeMetrics(t)
	var groups struct {
		Groups []struct {
			Rules []struct {
				Alert       string
				Expr        string
				Annotations map[string]string
			}
		}
	}
	if err := yaml.Unmarshal(spec, &groups); err != nil {
		t.Fatal(err)
	}
	var alerts []string
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			if u := unknownMetrics(r.Expr, known); len(u) > 0 {
				t.Errorf("%s reads metrics the code does not export: %v", r.Alert, u)
			}
			if !bytes.Contains(readme, []byte("\n#### "+r.Alert+"\n")) {
				t.Errorf("README.md has no runbook heading %q", "#### "+r.Alert)
			}
			if want := "https://github.com/postgate/postgate/blob/main/README.md#" + strings.ToLower(r.Alert); r.Annotations["runbook_url"] != want {
				t.Errorf("%s: runbook_url %q, want %q", r.Alert, r.Annotations["runbook_url"], want)
			}
			if !bytes.Contains(tests, []byte("alertname: "+r.Alert+"\n")) {
				t.Errorf("%s has no unit test in hack/e2e/testdata/alerts_test.yaml", r.Alert)
			}
		}
	}
	if len(alerts) < 10 {
		t.Errorf("rendered alerts %v: want the 10 of values.yaml", alerts)
	}

	// An alert turned off is not rendered; another's overrides and the
	// labels of every alert are.
	changed := helmTemplate(t, "--set", "prometheusRule.enabled=true", "--set", "prometheusRule.alerts.PostgateSpoolFull.enabled=false",
		"--set", "prometheusRule.alerts.PostgateQueueOldMessage.threshold=7200", "--set", "prometheusRule.alerts.PostgateQueueOldMessage.for=1h",
		"--set", "prometheusRule.alerts.PostgateQueueOldMessage.severity=critical", "--set", "prometheusRule.alertLabels.team=mail",
		"--show-only", "templates/prometheusrule.yaml")
	var got struct {
		Spec struct {
			Groups []struct{ Rules []map[string]any }
		}
	}
	if err := yaml.Unmarshal(changed, &got); err != nil {
		t.Fatal(err)
	}
	rules := map[string]map[string]any{}
	for _, g := range got.Spec.Groups {
		for _, r := range g.Rules {
			rules[fmt.Sprint(r["alert"])] = r
		}
	}
	if _, ok := rules["PostgateSpoolFull"]; ok || len(rules) != len(alerts)-1 {
		t.Errorf("PostgateSpoolFull.enabled=false: rendered %v", slices.Sorted(maps.Keys(rules)))
	}
	old := rules["PostgateQueueOldMessage"]
	if e := fmt.Sprint(old["expr"]); !strings.HasSuffix(e, "> 7200") || old["for"] != "1h" ||
		field(old, "labels", "severity") != "critical" || field(old, "labels", "team") != "mail" ||
		field(rules["PostgateRelayNoTable"], "labels", "team") != "mail" {
		t.Errorf("overrides of PostgateQueueOldMessage and alertLabels not rendered:\n%s", changed)
	}
}
