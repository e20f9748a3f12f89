package check_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/postgate/postgate/internal/check"
	"github.com/postgate/postgate/internal/manifest"
	"github.com/postgate/postgate/internal/routing"
)

func judge(t *testing.T, yaml string) *check.Report {
	t.Helper()
	l, err := manifest.NewLoader(manifest.WithNamespace("app"))
	if err != nil {
		t.Fatal(err)
	}
	set, err := l.Parse("in.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return check.Judge(set, routing.Policy{})
}

// TestJudge: a conflicted SenderDomain is refused and fails the report; a
// Secret that is not among the manifests is Unknown and fails only strict.
func TestJudge(t *testing.T) {
	const sd = "apiVersion: postgate.io/v1alpha1\nkind: SenderDomain\nmetadata: {name: %s}\nspec: {domain: example.com}\n"
	r := judge(t, strings.ReplaceAll(sd, "%s", "first")+"---\n"+strings.ReplaceAll(sd, "%s", "second")+"---\nkind: ConfigMap\napiVersion: v1\nmetadata: {name: c}\n")
	if len(r.Verdicts) != 2 || r.Verdicts[0].Verdict != "Accepted" || r.Verdicts[1].Verdict != "Refused" || r.Verdicts[1].Reason != "Conflicted" {
		t.Fatalf("verdicts: %+v", r.Verdicts)
	}
	if !r.Failed(false) {
		t.Error("a refused object does not fail the report")
	}
	var out bytes.Buffer
	r.WriteText(&out)
	if !strings.Contains(out.String(), "in.yaml:6: SenderDomain app/second: Refused Conflicted: ") ||
		!strings.HasSuffix(out.String(), "\n2 objects: 1 accepted, 1 refused, 0 unresolved, 0 unknown, 0 pending; 1 other documents skipped\n") {
		t.Errorf("text:\n%s", out.String())
	}

	r = judge(t, "apiVersion: postgate.io/v1alpha1\nkind: SenderDomain\nmetadata: {name: d}\nspec:\n  domain: example.com\n  signing: {selector: s1, keySecretRef: {name: elsewhere}}\n")
	if len(r.Verdicts) != 1 || r.Verdicts[0].Verdict != "Unknown" || r.Failed(false) || !r.Failed(true) {
		t.Errorf("missing Secret: %+v, failed %t, strict %t", r.Verdicts, r.Failed(false), r.Failed(true))
	}
}

// TestWriteJSONEmpty: no objects is an empty array, which CI tools read,
// rather than null.
func TestWriteJSONEmpty(t *testing.T) {
	var out bytes.Buffer
	if err := judge(t, "kind: ConfigMap\napiVersion: v1\nmetadata: {name: c}\n").WriteJSON(&out); err != nil || out.String() != "[]\n" {
		t.Errorf("json: %q %v", out.String(), err)
	}
}
