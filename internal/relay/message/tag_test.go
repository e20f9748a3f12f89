package message

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

// TestTag: the client's X-Postgate-Tag is read and removed, whatever its
// case and folding; the rest of the message is intact, byte for byte.
func TestTag(t *testing.T) {
	hex64 := strings.Repeat("a813f47bca9ded6b", 4)
	tests := []struct{ name, msg, want, left string }{
		{"none", "From: a@example.com\r\n\r\nbody\r\n", "", "From: a@example.com\r\n\r\nbody\r\n"},
		{"first field", "X-Postgate-Tag: " + hex64 + "\r\nFrom: a@example.com\r\n\r\nbody\r\n", hex64, "From: a@example.com\r\n\r\nbody\r\n"},
		{"last field", "From: a@example.com\r\nx-postgate-tag:campaign-7\r\n\r\nbody\r\n", "campaign-7", "From: a@example.com\r\n\r\nbody\r\n"},
		{"folded", "From: a@example.com\r\nX-Postgate-Tag:\r\n  order:42/b\r\nSubject: s\r\n\r\n", "order:42/b", "From: a@example.com\r\nSubject: s\r\n\r\n"},
		{"space before the colon", "X-Postgate-Tag : t1\r\nFrom: a@example.com\r\n\r\n", "t1", "From: a@example.com\r\n\r\n"},
		{"empty value", "X-Postgate-Tag:  \r\nFrom: a@example.com\r\n\r\n", "", "From: a@example.com\r\n\r\n"},
		{"in the body only", "From: a@example.com\r\n\r\nX-Postgate-Tag: t1\r\n", "", "From: a@example.com\r\n\r\nX-Postgate-Tag: t1\r\n"},
		{"look-alike kept", "X-Postgate-Tags: t1\r\nX-Postgate-Tag-2: t2\r\n\r\n", "", "X-Postgate-Tags: t1\r\nX-Postgate-Tag-2: t2\r\n\r\n"},
		{"no body", "From: a@example.com\r\nX-Postgate-Tag: t1", "t1", "From: a@example.com\r\n"},
		{"longest", "X-Postgate-Tag: " + strings.Repeat("x", MaxTagBytes) + "\r\n\r\n", strings.Repeat("x", MaxTagBytes), "\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, got := prepare(t, []byte(tt.msg), baseParams(t))
			if out.Tag != tt.want {
				t.Errorf("Tag %q, want %q", out.Tag, tt.want)
			}
			if !bytes.HasSuffix(got, []byte(tt.left)) || len(got)-len(tt.left) != out.Prepended {
				t.Errorf("message after the prepended fields:\n%q\nwant\n%q", got[out.Prepended:], tt.left)
			}
		})
	}
}

// TestTagRefused: more than one tag, or one that is too long or holds
// anything but visible ASCII, refuses the message (ErrBadTag).
func TestTagRefused(t *testing.T) {
	for _, msg := range []string{
		"X-Postgate-Tag: a\r\nX-Postgate-Tag: b\r\n\r\n",
		"X-Postgate-Tag: " + strings.Repeat("x", MaxTagBytes+1) + "\r\n\r\n",
		"X-Postgate-Tag: two words\r\n\r\n",
		"X-Postgate-Tag: caf\xc3\xa9\r\n\r\n",
		"X-Postgate-Tag: a\x01b\r\n\r\n",
		"X-Postgate-Tag: a\r\n b\r\n\r\n", // folded inside the value: a space
	} {
		_, err := Prepare(context.Background(), strings.NewReader(msg), baseParams(t))
		if !errors.Is(err, ErrBadTag) {
			t.Errorf("%q: %v, want ErrBadTag", msg, err)
		}
	}
}

// TestTagNotSigned: a signed message does not carry the tag, and its
// signature verifies (the tag is removed before signing).
func TestTagNotSigned(t *testing.T) {
	for _, k := range testKeys(t) {
		p := baseParams(t)
		p.DKIM, p.SenderDomain = k.dkim, "example.com"
		out, got := prepare(t, []byte("From: a@example.com\r\nX-Postgate-Tag: t-1\r\nSubject: s\r\n\r\nbody\r\n"), p)
		if out.Tag != "t-1" || bytes.Contains(bytes.ToLower(got), []byte("x-postgate-tag")) {
			t.Fatalf("%s: tag %q, message:\n%s", k.name, out.Tag, got)
		}
		if err := goVerify(t, got, "example.com", k.dkim.Selector, k.txt(t)); err != nil {
			t.Errorf("%s: %v", k.name, err)
		}
	}
}
