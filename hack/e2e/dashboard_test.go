package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// expressions returns the PromQL of a Grafana dashboard: the panels'
// targets and the template variables' queries, with where each is.
func expressions(v any, where string, out map[string]string) {
	switch v := v.(type) {
	case map[string]any:
		title, _ := v["title"].(string)
		if title != "" {
			where = title
		}
		if name, ok := v["name"].(string); ok && v["type"] == "query" {
			where = "variable " + name
		}
		for k, e := range v {
			switch s, _ := e.(string); {
			case k == "expr" && s != "":
				out[where+": "+s] = s
			case (k == "query" || k == "definition") && strings.Contains(s, "("):
				out[where+": "+s] = s
			default:
				expressions(e, where, out)
			}
		}
	case []any:
		for _, e := range v {
			expressions(e, where, out)
		}
	}
}

// The dashboard is JSON whose every expression reads metrics the code
// exports; the chart ships it unchanged in a ConfigMap with the sidecar's
// label.
func TestChartGrafanaDashboard(t *testing.T) {
	file, err := os.ReadFile(filepath.Join(api.Root, "charts/postgate/files/dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(file, &dash); err != nil {
		t.Fatalf("files/dashboard.json: %v", err)
	}
	exprs := map[string]string{}
	expressions(dash, "dashboard", exprs)
	known := codeMetrics(t)
	covered := map[string]bool{}
	for where, e := range exprs {
		names := metricNamePattern.FindAllString(e, -1)
		if len(names) == 0 {
			t.Errorf("%s reads no postgate metric", where)
		}
		if u := unknownMetrics(e, known); len(u) > 0 {
			t.Errorf("%s reads metrics the code does not export: %v", where, u)
		}
		for _, n := range names {
			covered[n] = true
		}
	}
	// What the dashboard is for (README: Alerts and runbooks).
	for _, want := range []string{
		"postgate_relay_smtp_messages_accepted_total", "postgate_relay_smtp_rejections_total",
		"postgate_relay_queue_messages", "postgate_relay_queue_oldest_message_age_seconds",
		"postgate_relay_delivery_attempts_total", "postgate_relay_delivery_attempt_duration_seconds_bucket",
		"postgate_relay_table_version", "postgate_operator_table_version",
	} {
		if !covered[want] {
			t.Errorf("no panel shows %s", want)
		}
	}

	for _, tc := range []struct {
		set                   []string
		ns, label, labelValue string
	}{
		{nil, namespace, "grafana_dashboard", "1"},
		{[]string{"--set", "grafanaDashboard.namespace=monitoring", "--set", "grafanaDashboard.label=dashboards"}, "monitoring", "dashboards", "1"},
	} {
		rendered := helmTemplate(t, append([]string{"--set", "grafanaDashboard.enabled=true", "--show-only", "templates/dashboard.yaml"}, tc.set...)...)
		cm := parse(t, rendered)["ConfigMap "+tc.ns+"/postgate-dashboard"]
		if cm == nil {
			t.Fatalf("%v: no ConfigMap %s/postgate-dashboard in\n%s", tc.set, tc.ns, rendered)
		}
		if got := field(cm, "metadata", "labels", tc.label); got != tc.labelValue {
			t.Errorf("%v: label %s=%v, want %q", tc.set, tc.label, got, tc.labelValue)
		}
		if got, _ := field(cm, "data", "postgate.json").(string); got != strings.TrimSuffix(string(file), "\n") {
			t.Errorf("%v: the ConfigMap's postgate.json is not files/dashboard.json:\n%s", tc.set, got)
		}
	}
}
