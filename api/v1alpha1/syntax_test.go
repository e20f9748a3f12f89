package v1alpha1_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// celString writes s as the body of a single-quoted CEL string literal, as
// the CRD's rules hold the patterns.
func celString(s string) string {
	return strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s)
}

// TestPatternsInCRDs checks that the CEL rules of the generated CRDs use the
// patterns the Go code judges with: one definition of an address, a DKIM
// selector and an object name serves the schema, the compiler and the SMTP
// server.
func TestPatternsInCRDs(t *testing.T) {
	// crd returns the CEL rules of a CRD, one a line.
	crd := func(name string) string {
		b, err := os.ReadFile(filepath.Join(apiServer.Root, "config", "crd", "bases", name))
		if err != nil {
			t.Fatal(err)
		}
		var doc any
		if err := yaml.Unmarshal(b, &doc); err != nil {
			t.Fatal(err)
		}
		var rules []string
		var walk func(any)
		walk = func(v any) {
			switch v := v.(type) {
			case map[string]any:
				if r, ok := v["rule"].(string); ok {
					rules = append(rules, r)
				}
				for _, e := range v {
					walk(e)
				}
			case []any:
				for _, e := range v {
					walk(e)
				}
			}
		}
		walk(doc)
		return strings.Join(rules, "\n")
	}
	routes, domains, networks := crd("postgate.io_relayroutes.yaml"), crd("postgate.io_senderdomains.yaml"), crd("postgate.io_trustednetworks.yaml")
	for _, tt := range []struct {
		what, crd, pattern string
	}{
		{"EmailAddressPattern in RelayRoute", routes, v1alpha1.EmailAddressPattern},
		{"DKIMSelectorPattern in SenderDomain", domains, v1alpha1.DKIMSelectorPattern},
		{"ObjectNamePattern in RelayRoute", routes, v1alpha1.ObjectNamePattern},
		{"ObjectNamePattern in SenderDomain", domains, v1alpha1.ObjectNamePattern},
		{"ObjectNamePattern in TrustedNetwork", networks, v1alpha1.ObjectNamePattern},
	} {
		if want := "self.matches('" + celString(tt.pattern) + "')"; !strings.Contains(tt.crd, want) {
			t.Errorf("%s: no rule %s", tt.what, want)
		}
	}
	for _, p := range []string{"0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4", "ff00::/8"} {
		if !strings.Contains(domains, "'"+p+"'") {
			t.Errorf("the sourceIP rule does not list %s", p)
		}
	}
}

func TestIsEmailAddress(t *testing.T) {
	for addr, want := range map[string]bool{
		"o'brien@billing.example.com":          true,
		"a!#$%&'*+-/=?^_`{|}~z@example.com":    true,
		"first.last@Example.COM":               true,
		strings.Repeat("a", 64) + "@a.example": true,
		strings.Repeat("a", 65) + "@a.example": false,
		"a,b@example.com":                      false,
		"a..b@example.com":                     false,
		".a@example.com":                       false,
		"josé@example.com":                     false,
		`"a b"@example.com`:                    false,
		"a@[192.0.2.1]":                        false,
		"a@localhost":                          false,
		"a@example.123":                        false,
	} {
		if got := v1alpha1.IsEmailAddress(addr); got != want {
			t.Errorf("IsEmailAddress(%q) = %v, want %v", addr, got, want)
		}
	}
}

func TestIsDKIMSelector(t *testing.T) {
	for s, want := range map[string]bool{
		"s1": true, "eu.s2024": true, "a-b.c-d.e": true,
		"": false, "Sel": false, "s_1": false, "eu..s1": false, ".s1": false, "s1.": false, "-s1": false,
	} {
		if got := v1alpha1.IsDKIMSelector(s); got != want {
			t.Errorf("IsDKIMSelector(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestIsSourceAddress(t *testing.T) {
	for s, want := range map[string]bool{
		"192.0.2.10": true, "2001:db8::10": true, "127.0.0.2": true, "::1": true, "169.254.1.1": true,
		"0.0.0.0": false, "::": false, "0.1.2.3": false, "224.0.0.1": false, "239.255.255.255": false,
		"240.0.0.1": false, "255.255.255.255": false, "ff02::1": false, "::ffff:192.0.2.10": false,
	} {
		if got := v1alpha1.IsSourceAddress(netip.MustParseAddr(s)); got != want {
			t.Errorf("IsSourceAddress(%s) = %v, want %v", s, got, want)
		}
	}
}

func TestCheckWebhookURL(t *testing.T) {
	for u, want := range map[string]string{
		"https://hooks.example.com/postgate":       "",
		"https://hooks.example.com:65535/p?q=1#f":  "",
		"https://[2001:db8::1]/hook":               "",
		"http://127.0.0.1:8080/hook":               "",
		"http://localhost/hook":                    "",
		"http://[::1]:8080/hook":                   "",
		"http://hooks.example.com/hook":            "must use https",
		"https://hooks.example.com:99999/hook":     "port from 1 to 65535",
		"https://hooks.example.com:0/hook":         "port from 1 to 65535",
		"https://hooks.example.com/post gate":      "spaces",
		"https://127.999.999.999/hook":             "host",
		"https://user:pw@hooks.example.com/":       "credentials",
		"/postgate/hook":                           "absolute",
		"ftp://hooks.example.com/":                 "absolute",
		"https://hooks.example.com\x00.evil.test/": "control",
	} {
		err := v1alpha1.CheckWebhookURL(u)
		switch {
		case want == "" && err != nil:
			t.Errorf("CheckWebhookURL(%q) = %v, want nil", u, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("CheckWebhookURL(%q) = %v, want an error with %q", u, err, want)
		}
	}
}
