package delivery

import (
	"strings"
	"testing"
)

// FuzzRecipientDomain: the domain a recipient's MX is looked up by, from
// any address that passed the SMTP server (or one that did not): no panic,
// and what comes out is what DNS is asked for: lowercase ASCII with no '@',
// no empty label, never an address literal.
func FuzzRecipientDomain(f *testing.F) {
	for _, s := range []string{"bob@dest.test", "Bob@DEST.Test.", "a@[127.0.0.1]", "@", "a@", "@b", "x@例え.jp", "x@xn--r8jz45g.jp", "a@b@c.d", "ä@bücher.de", "a@\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		domain, fail := recipientDomain(addr)
		if fail != nil {
			if domain != "" {
				t.Fatalf("%q: failure %v with domain %q", addr, fail, domain)
			}
			return
		}
		if domain == "" || domain != strings.ToLower(domain) || strings.Contains(domain, "@") || strings.HasPrefix(domain, "[") ||
			strings.HasPrefix(domain, ".") || strings.HasSuffix(domain, ".") || strings.Contains(domain, "..") {
			t.Fatalf("%q: domain %q", addr, domain)
		}
		for i := range len(domain) {
			if domain[i] >= 0x80 {
				t.Fatalf("%q: domain %q is not ASCII", addr, domain)
			}
		}
	})
}
