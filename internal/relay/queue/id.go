package queue

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"time"
)

// ID names a queued message: 26 characters of lower-case Crockford base32
// holding a 48-bit millisecond timestamp and 80 random bits. IDs sort by
// arrival, are safe as file names and in an SMTP reply, and stay unique
// when a message moves to a peer relay with its ID.
type ID string

const (
	idLen      = 26
	idAlphabet = "0123456789abcdefghjkmnpqrstvwxyz"
)

// newID makes an ID for a message arriving at now.
func newID(now time.Time) ID {
	var b [16]byte
	ms := now.UnixMilli()
	if ms < 0 {
		ms = 0
	}
	binary.BigEndian.PutUint64(b[:8], uint64(ms)<<16) //nolint:gosec // not negative
	_, _ = rand.Read(b[6:])                           // crypto/rand.Read never fails (Go 1.24+)
	// 128 bits in 26 symbols of 5 bits: the first symbol takes the top 3.
	var out [idLen]byte
	hi := binary.BigEndian.Uint64(b[:8])
	lo := binary.BigEndian.Uint64(b[8:])
	for i := idLen - 1; i >= 0; i-- {
		out[i] = idAlphabet[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return ID(out[:])
}

// ParseID checks that s is a well-formed ID.
func ParseID(s string) (ID, error) {
	if len(s) != idLen || s[0] > '7' {
		return "", fmt.Errorf("%q is not a queue ID: %w", s, ErrInvalid)
	}
	for i := range len(s) {
		if !isIDChar(s[i]) {
			return "", fmt.Errorf("%q is not a queue ID: %w", s, ErrInvalid)
		}
	}
	return ID(s), nil
}

func isIDChar(c byte) bool {
	switch {
	case c >= '0' && c <= '9', c >= 'a' && c <= 'h', c == 'j', c == 'k', c == 'm', c == 'n':
		return true
	case c >= 'p' && c <= 't', c >= 'v' && c <= 'z':
		return true
	}
	return false
}

// String returns the ID as it appears in replies, logs and file names.
func (id ID) String() string { return string(id) }
