package relay_test

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postgate/postgate/internal/relay"
)

// TestShapingPolicyFlag: --shaping-policy is the standalone relay's, needs
// --shaping, and must be readable and valid at start; every refusal names
// the flag, and an invalid policy names the rule and the field.
func TestShapingPolicyFlag(t *testing.T) {
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good.yaml"), filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(good, []byte("default: {maxConnections: 2, suspension: {initial: 1m, max: 1h, resetAfter: 1h}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("default: {maxConnections: 2, suspension: {initial: 1m, max: 1h, resetAfter: 1h}}\nsites: [{name: x, match: {sites: [x.example]}, maxConections: 1}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want []string // in the error; none: valid
	}{
		{[]string{"--manifests", "x", "--shaping", "--shaping-policy", good}, nil},
		{[]string{"--manifests", "x", "--shaping", "--shaping-policy", bad}, []string{"--shaping-policy", bad, `sites[0] ("x")`, `unknown field "maxConections"`}},
		{[]string{"--manifests", "x", "--shaping", "--shaping-policy", filepath.Join(dir, "missing.yaml")}, []string{"--shaping-policy", "no such file"}},
		{[]string{"--manifests", "x", "--shaping-policy", good}, []string{"--shaping-policy needs --shaping"}},
		{[]string{"--relay-namespace", "postgate-system", "--shaping", "--shaping-policy", good}, []string{"--shaping-policy is for a standalone relay", "shaping.yaml"}},
	} {
		var cfg relay.Config
		fs := flag.NewFlagSet("relay", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		cfg.BindFlags(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		err := cfg.Check()
		if tc.want == nil {
			if err != nil {
				t.Errorf("relay %q: %v", tc.args, err)
			}
			continue
		}
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("relay %q: %v, want an error with %q", tc.args, err, w)
			}
		}
	}
}
