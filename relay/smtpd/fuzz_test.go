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
