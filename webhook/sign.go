package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Request headers. The signature covers the timestamp and the body, so a
// receiver that checks the timestamp's age detects replays.
const (
	// HeaderTimestamp carries the time of signing in Unix seconds.
	HeaderTimestamp = "X-Postgate-Timestamp"
	// HeaderSignature carries "v1=<hex HMAC-SHA256 of '<timestamp>.<body>'>".
	// A receiver accepts any of several comma-separated values, so that a
	// later version can send two signatures during a change of scheme.
	HeaderSignature = "X-Postgate-Signature"
)

// MaxSignatureAge is how old a signed request Verify callers should accept:
// long enough for clock skew and slow networks, short for replays.
const MaxSignatureAge = 5 * time.Minute

// Errors of Verify.
var (
	ErrBadSignature = errors.New("webhook: signature does not match")
	ErrStale        = errors.New("webhook: timestamp outside the accepted age")
)

// Sign returns the value of HeaderSignature for body signed at timestamp
// (HeaderTimestamp's value).
func Sign(key []byte, timestamp string, body []byte) string {
	return "v1=" + hex.EncodeToString(mac(key, timestamp, body))
}

func mac(key []byte, timestamp string, body []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(timestamp))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Verify checks a request's signature and that its timestamp is within
// maxAge of now (either way, to allow for clock skew). It compares in
// constant time.
func Verify(key []byte, timestamp, signature string, body []byte, now time.Time, maxAge time.Duration) error {
	ts, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return fmt.Errorf("webhook: bad timestamp: %w", err)
	}
	if d := now.Sub(time.Unix(ts, 0)); d > maxAge || d < -maxAge {
		return ErrStale
	}
	want := mac(key, timestamp, body)
	for v := range strings.SplitSeq(signature, ",") {
		h, ok := strings.CutPrefix(strings.TrimSpace(v), "v1=")
		if !ok {
			continue
		}
		got, err := hex.DecodeString(h)
		if err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return ErrBadSignature
}
