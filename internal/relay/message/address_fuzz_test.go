package message

import "testing"

// FuzzFromAddress: the sender a notification names, from any From field:
// no panic, and nothing but printable ASCII of at most 998 octets.
func FuzzFromAddress(f *testing.F) {
	for _, s := range []string{"Alice <alice@example.com>", "alice@example.com, bob@example.com", `"a@b" <c@d.e>`, "=?utf-8?q?=C3=A4?= <a@b.c>", "<>", "\xff\xfe", " (comment) a@b.c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, value string) {
		a := fromAddress(value)
		if len(a) > 998 {
			t.Fatalf("%q: %d octets", value, len(a))
		}
		for i := range len(a) {
			if a[i] < ' ' || a[i] >= 0x7f {
				t.Fatalf("%q: %q is not printable ASCII", value, a)
			}
		}
	})
}
