package operator_test

import (
	"flag"
	"io"
	"strings"
	"testing"

	"github.com/postgate/postgate/internal/operator"
)

// TestOptionsFlags: both namespaces default to $POD_NAMESPACE (the chart
// sets it from the downward API), and neither may end up empty.
func TestOptionsFlags(t *testing.T) {
	for _, tc := range []struct {
		podNamespace string
		args         []string
		wantErr      string
	}{
		{"postgate-system", nil, ""},
		{"", nil, "--relay-namespace and --operator-namespace are required"},
		{"", []string{"--relay-namespace", "relays"}, "--relay-namespace and --operator-namespace are required"},
		{"", []string{"--relay-namespace", "relays", "--operator-namespace", "operator"}, ""},
		{"postgate-system", []string{"--relay-namespace", ""}, "--relay-namespace and --operator-namespace are required"},
	} {
		t.Setenv("POD_NAMESPACE", tc.podNamespace)
		var o operator.Options
		fs := flag.NewFlagSet("operator", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		o.BindFlags(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		err := o.Check()
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("POD_NAMESPACE=%q %q: %v, want %q", tc.podNamespace, tc.args, err, tc.wantErr)
		}
		if tc.wantErr == "" && tc.podNamespace != "" && (o.Namespace != tc.podNamespace || o.RelayNamespace != tc.podNamespace) {
			t.Errorf("POD_NAMESPACE=%q: namespaces %q and %q", tc.podNamespace, o.Namespace, o.RelayNamespace)
		}
	}
}
