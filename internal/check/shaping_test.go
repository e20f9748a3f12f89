package check_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postgate/postgate/internal/check"
	"github.com/postgate/postgate/internal/relay/shaping"
)

// TestJudgeShaping: the shipped policy is valid; an invalid one prints the
// parser's errors, naming the rules and fields; a missing file is an error.
func TestJudgeShaping(t *testing.T) {
	dir := t.TempDir()
	shipped, bad := filepath.Join(dir, "shipped.yaml"), filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(shipped, []byte(shaping.DefaultPolicyYAML()), 0o600); err != nil {
		t.Fatal(err)
	}
	const invalid = `default:
  maxConnections: 10
  suspension: {initial: 5m, max: 2h, resetAfter: 1h}
sites:
  - name: google
    match: {sites: [google.com]}
    throttleReplies:
      - {code: 250}
  - name: slow
    match: {mxHostSuffixes: [.slow.example]}
    maxMessagesPerMinute: -1
`
	if err := os.WriteFile(bad, []byte(invalid), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	valid, err := check.JudgeShaping(&out, shipped)
	if !valid || err != nil || !strings.Contains(out.String(), "valid shaping policy: the default rule and 5 site rules (google, microsoft, yahoo, apple, gmx-webde)") {
		t.Errorf("shipped policy: valid %t, err %v, output %q", valid, err, out.String())
	}
	out.Reset()
	valid, err = check.JudgeShaping(&out, bad)
	if valid || err != nil {
		t.Errorf("invalid policy: valid %t, err %v", valid, err)
	}
	for _, want := range []string{
		bad + `: shaping policy: sites[0] ("google").throttleReplies[0].code: 250 is not a failure reply code (400..599)`,
		`sites[1] ("slow").maxMessagesPerMinute: -1 is not in 0..1000000`,
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if _, err := check.JudgeShaping(&out, filepath.Join(dir, "missing.yaml")); err == nil {
		t.Error("a missing file is no error")
	}
}
