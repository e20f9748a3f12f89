package relay_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/postgate/postgate/internal/operator"
	"github.com/postgate/postgate/internal/relay"
	"github.com/postgate/postgate/internal/relay/shaping"
	"github.com/postgate/postgate/internal/routing"
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
		{[]string{"--manifests", "x", "--shaping-policy", good}, nil}, // shaping is on by default
		{[]string{"--manifests", "x", "--shaping=false", "--shaping-policy", good}, []string{"--shaping-policy needs --shaping"}},
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

// TestShapingPolicyReachesRelays: the operator publishes the guardrail
// ConfigMap's shaping.yaml with the table, and a running relay applies it,
// and each change of it, without a restart (docs/design.md "How the policy
// reaches relays").
func TestShapingPolicyReachesRelays(t *testing.T) {
	api, c := operatorCluster(t)
	policy := func(maxConnections int) string {
		return fmt.Sprintf("default: {maxConnections: %d, suspension: {initial: 1m, max: 1h, resetAfter: 1h}}\n", maxConnections)
	}
	hash := func(y string) string {
		p, err := shaping.Parse([]byte(y))
		if err != nil {
			t.Fatal(err)
		}
		b, err := p.Canonical()
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		return hex.EncodeToString(sum[:])
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "postgate-system", Name: "postgate-policy"},
		Data: map[string]string{routing.ShapingConfigMapKey: policy(3)}}
	if err := c.Create(context.Background(), cm); err != nil {
		t.Fatal(err)
	}
	startOperator(t, api, func(o *operator.Options) { o.PolicyConfigMap = "postgate-policy" })
	r := startRelayInProcess(t, api.Config, "--relay-namespace", "postgate-system", "--pod-name", "relay-0",
		"--spool-dir", t.TempDir(), "--shaping")
	r.log.WaitFor(t, `msg="Applied the shaping policy" version=1 published=true sha256=`+hash(policy(3)), 1)

	cm.Data[routing.ShapingConfigMapKey] = policy(5)
	if err := c.Update(context.Background(), cm); err != nil {
		t.Fatal(err)
	}
	r.log.WaitFor(t, `msg="Applied the shaping policy" version=2 published=true sha256=`+hash(policy(5)), 1)
}
