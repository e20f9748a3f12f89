package v1alpha1_test

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// TestDefaultDKIMKeySecretName checks the default Secret name of a generated
// DKIM key: unchanged when it fits (existing installations keep their keys),
// cut with a hash suffix when it does not, and a valid Secret name either
// way, so that two long domains never share a key.
func TestDefaultDKIMKeySecretName(t *testing.T) {
	if got, want := v1alpha1.DefaultDKIMKeySecretName("example.com", "s1"), "postgate-dkim-s1.example.com"; got != want {
		t.Errorf("short name: got %q, want %q", got, want)
	}
	if got, want := v1alpha1.DefaultDKIMKeySecretName("example.com", "eu.s2024"), "postgate-dkim-eu.s2024.example.com"; got != want {
		t.Errorf("dotted selector: got %q, want %q", got, want)
	}
	// Two domains of 253 characters that differ only at their end.
	base := strings.Repeat("abcdefghi.", 24) + "example.tes"
	a, b := "a"+base+"a", "a"+base+"b"
	if len(a) != 253 {
		t.Fatalf("fixture: %d characters, want 253", len(a))
	}
	na, nb := v1alpha1.DefaultDKIMKeySecretName(a, "s1"), v1alpha1.DefaultDKIMKeySecretName(b, "s1")
	if na == nb {
		t.Errorf("two domains share the Secret %q", na)
	}
	for _, n := range []string{na, nb} {
		if errs := validation.IsDNS1123Subdomain(n); len(errs) > 0 {
			t.Errorf("%q is not a valid Secret name: %v", n, errs)
		}
		if !strings.HasPrefix(n, "postgate-dkim-s1.aabcdefghi.") {
			t.Errorf("%q does not start with the selector and domain", n)
		}
	}
	if again := v1alpha1.DefaultDKIMKeySecretName(a, "s1"); again != na {
		t.Errorf("not stable: %q then %q", na, again)
	}
	// A cut that ends on a dot or a hyphen drops them before the suffix.
	for i := 1; i <= 12; i++ {
		d := strings.Repeat("a", i) + "." + strings.Repeat("b-", 118) + "c.example.com"
		if errs := validation.IsDNS1123Subdomain(v1alpha1.DefaultDKIMKeySecretName(d, "s1")); len(errs) > 0 {
			t.Errorf("domain %q: %v", d, errs)
		}
	}
}
