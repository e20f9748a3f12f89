package manifest_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/postgate/postgate/api/v1alpha1/schematest"
)

// TestSchemaValidation runs the table of api/v1alpha1's TestSchemaValidation,
// whose expected fragments were taken from the real API server's answers,
// through the offline validator: the same objects must be accepted, and the
// refused ones refused with messages that contain the same fragments.
func TestSchemaValidation(t *testing.T) {
	loader := newLoader(t)
	for _, tt := range schemaCases() {
		t.Run(tt.desc, func(t *testing.T) {
			set, err := loader.Parse("case.json", tt.doc)
			if err != nil {
				t.Fatalf("unreadable: %v", err)
			}
			if len(set.Objects) != 1 {
				t.Fatalf("got %d objects, want 1", len(set.Objects))
			}
			errs := set.Objects[0].Errors
			if len(tt.wantError) == 0 {
				if len(errs) > 0 {
					t.Fatalf("want accepted, got %v", errs.ToAggregate())
				}
				return
			}
			if len(errs) == 0 {
				t.Fatalf("want refused with %q, got accepted", tt.wantError)
			}
			got := errs.ToAggregate().Error()
			for _, want := range tt.wantError {
				if !strings.Contains(got, want) {
					t.Errorf("errors do not contain %q:\n%s", want, got)
				}
			}
			for _, bad := range tt.forbidError {
				if strings.Contains(got, bad) {
					t.Errorf("errors contain %q:\n%s", bad, got)
				}
			}
		})
	}
}

// object builds a manifest of kind from a YAML spec, as the table of
// api/v1alpha1/validation_test.go builds its objects for the API server.
func object(kind, spec string) []byte {
	var s map[string]any
	if err := yaml.Unmarshal([]byte(spec), &s); err != nil {
		panic(fmt.Sprintf("bad test spec %q: %v", spec, err))
	}
	doc, err := json.Marshal(map[string]any{
		"apiVersion": "postgate.io/v1alpha1",
		"kind":       kind,
		"metadata":   map[string]any{"name": "case", "namespace": "validation"},
		"spec":       s,
	})
	if err != nil {
		panic(err)
	}
	return doc
}

// schemaCases is api/v1alpha1's table, built into documents.
func schemaCases() []schemaCase {
	var out []schemaCase
	for _, c := range schematest.Cases() {
		out = append(out, schemaCase{desc: c.Desc, doc: object(c.Object.Kind, c.Object.Spec), wantError: c.WantError, forbidError: c.ForbidError})
	}
	return out
}

// schemaCase is a row of the table of schematest: a document, and the
// fragments of the API server's refusal (none when it accepts the object),
// and fragments it must not contain.
type schemaCase struct {
	desc        string
	doc         []byte
	wantError   []string
	forbidError []string
}
