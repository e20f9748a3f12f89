package smtpd

import (
	"strings"
	"testing"
)

// FuzzCheckAddress: no panic, and nothing that passes can route through a
// third host or hide a second address.
func FuzzCheckAddress(f *testing.F) {
	for _, s := range []string{"alice@example.com", "a%b@example.com", `"a@b"@example.com`, "@hop:a@b.c", "a@[1.2.3.4]", "a..b@x.y", "ä@例え.jp"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		if checkAddress(addr) != nil {
			return
		}
		if strings.Count(addr, "@") != 1 || strings.ContainsAny(addr, "%!:\"\\[] \r\n\x00") {
			t.Fatalf("accepted %q", addr)
		}
	})
}

// TestCheckAddressLocalPart: an unquoted local part is a dot-atom (RFC 5322
// section 3.2.3); the specials are refused, atext and UTF-8 pass.
func TestCheckAddressLocalPart(t *testing.T) {
	for addr, ok := range map[string]bool{
		"o'brien@example.com": true, "a+tag@example.com": true, "x_y=z~{}|@example.com": true, "ä@example.com": true,
		"[@0.0": false, "a[b]@example.com": false, "a(b)@example.com": false, "a<b>@example.com": false,
		"a,b@example.com": false, "a;b@example.com": false, "a b@example.com": false, ".a@example.com": false,
	} {
		if err := checkAddress(addr); (err == nil) != ok {
			t.Errorf("checkAddress(%q) = %v, want accepted %v", addr, err, ok)
		}
	}
}
