package rfc5322

import (
	"net/mail"
	"regexp"
	"testing"
	"time"
)

// TestNewMessageID: a msg-id with 26 base32 characters (128 bits) on the
// left and the given host on the right, new on each call.
func TestNewMessageID(t *testing.T) {
	re := regexp.MustCompile(`^<[a-z2-7]{26}@relay\.example\.com>$`)
	seen := map[string]bool{}
	for range 100 {
		id := NewMessageID("relay.example.com")
		if !re.MatchString(id) {
			t.Fatalf("%q is not <26 base32 characters@relay.example.com>", id)
		}
		if seen[id] {
			t.Fatalf("%q made twice", id)
		}
		seen[id] = true
	}
}

// TestDateLayout: what DateLayout writes, net/mail parses back to the same
// instant.
func TestDateLayout(t *testing.T) {
	at := time.Date(2026, 3, 5, 7, 8, 9, 0, time.FixedZone("", -(4*3600+30*60)))
	s := at.Format(DateLayout)
	if s != "Thu, 05 Mar 2026 07:08:09 -0430" {
		t.Errorf("formatted %q", s)
	}
	if got, err := mail.ParseDate(s); err != nil || !got.Equal(at) {
		t.Errorf("ParseDate(%q) = %v, %v", s, got, err)
	}
}
