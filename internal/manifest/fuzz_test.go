package manifest_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/postgate/postgate/internal/manifest"
	"github.com/postgate/postgate/internal/testenv"
)

// FuzzParse feeds arbitrary bytes to Parse: whatever the input, it must not
// panic, every error must be a positioned *Error, and every object must be
// named and placed.
func FuzzParse(f *testing.F) {
	samples, err := filepath.Glob(filepath.Join(testenv.Samples(f), "*.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	for _, name := range samples {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, c := range schemaCases() {
		f.Add(c.doc)
	}
	f.Add([]byte("apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  metadata: {name: a}\n  data: {k: '!!'}\n"))
	f.Add([]byte("a: &x [*x]\n---\n--- {b: 1}\n"))
	f.Add([]byte("apiVersion: postgate.io/v1alpha1\nkind: TrustedNetwork\nmetadata: {name: x, labels: 5}\nspec: {cidrs: [1]}\n"))

	loader := newLoader(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		set, err := loader.Parse("fuzz.yaml", data)
		if set == nil {
			t.Fatal("nil Set")
		}
		if err != nil {
			var errs interface{ Unwrap() []error }
			if !errors.As(err, &errs) {
				t.Fatalf("error %v is not a join", err)
			}
			for _, e := range errs.Unwrap() {
				var me *manifest.Error
				if !errors.As(e, &me) || me.Pos.File != "fuzz.yaml" {
					t.Fatalf("error %q is not a positioned *manifest.Error", e)
				}
			}
		}
		for _, o := range set.Objects {
			if o.Resource == nil || o.Resource.GetName() == "" || o.Resource.GetNamespace() == "" {
				t.Fatalf("object %+v without a name", o)
			}
			switch o.Kind {
			case "SenderDomain", "RelayRoute", "TrustedNetwork", "Secret":
			default:
				t.Fatalf("object of kind %q", o.Kind)
			}
			if o.Pos.Line < 1 {
				t.Fatalf("%s at line %d", o, o.Pos.Line)
			}
			for _, e := range o.Errors {
				if p := o.FieldPos(e.Field); p.Line < 1 {
					t.Fatalf("%s: error %v at line %d", o, e, p.Line)
				}
			}
		}
	})
}
