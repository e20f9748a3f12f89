// Package rfc5322 holds the pieces of the Internet Message Format (RFC
// 5322) that the relay writes in more than one place: the date-time layout
// of Date and the DSN date fields, and new Message-IDs (for a message that
// arrives without one, and for the relay's own DSNs). It imports nothing of
// the relay, so internal/relay/message and internal/relay/dsn can share it and stay apart.
package rfc5322

import (
	"crypto/rand"
	"encoding/base32"
	"strings"
)

// DateLayout is RFC 5322 section 3.3's date-time, for time.Time.Format:
// numeric zone, day of week, two-digit day and seconds.
const DateLayout = "Mon, 02 Jan 2006 15:04:05 -0700"

// NewMessageID returns a msg-id, <random@hostname>, with 128 random bits
// in lower-case unpadded base32 as the left-hand side (RFC 5322 section
// 3.6.4: unique, the right-hand side a domain of the generator).
func NewMessageID(hostname string) string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return "<" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:])) + "@" + hostname + ">"
}
