// Package handoff moves queued messages between relay replicas:
// a replica that leaves for good (scale-down, or `postgate relay drain`)
// hands each queued message to a live peer, which stores it durably with
// its queue ID, arrival time and attempt history, and only then deletes
// its own copy. It owns the hand-off HTTP endpoint, its authentication
// and the sender's loop; peers are found by the caller (internal/relay/follow).
//
// # Protocol
//
// POST /v1/handoff on the peer's hand-off listener, the body a record of
// queue.Export (the queue file format, journal reduced to a snapshot), with
//
//	X-Postgate-Handoff-Timestamp: unix seconds
//	X-Postgate-Handoff-Target:    the receiving replica's name
//	X-Postgate-Handoff-Signature: hex HMAC-SHA256(key, "postgate-handoff-v1\n" + timestamp + "\n" + target + "\n" + hex SHA-256 of the body)
//
// The names are the hand-off's own: the webhook's X-Postgate-Timestamp and
// X-Postgate-Signature carry another scheme, and one name should mean one
// thing to whoever reads a request. Those older names were the hand-off's
// too before; for one release a sender sends them as well and a server
// reads them when the new ones are absent (see legacyHeaderTimestamp).
//
// The endpoint injects mail past the SMTP server's access control, so it
// is closed by default: a request needs a valid signature by the shared key
// (the Secret postgate-relay-handoff in the relay namespace), a timestamp
// within MaxSkew, and the receiver's own name (a request signed for one
// replica cannot be replayed to another); a signature is accepted once
// (replay within the window is refused); bodies are bounded and spooled to
// disk, never held in memory, and checked before anything is queued. The
// answer is 200 with {"id": ...} once the message is durable (queue.Import
// fsyncs as Enqueue does), also when the peer already had that ID (the
// import is idempotent by queue ID, so a retried hand-off never queues a
// message twice).
package handoff

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strconv"
	"time"
)

// Header names of a hand-off request.
const (
	HeaderTimestamp = "X-Postgate-Handoff-Timestamp"
	HeaderTarget    = "X-Postgate-Handoff-Target"
	HeaderSignature = "X-Postgate-Handoff-Signature"
	// Path is where peers post records.
	Path = "/v1/handoff"
)

// The names the previous release signed hand-offs under (the webhook's).
// During a rollout old and new replicas hand off to each other in both
// directions (an old replica leaving hands to a new one; a new one removed
// by a scale-down mid-rollout hands to an old one), and with an ephemeral
// spool a refused hand-off loses the mail. So for this release a sender
// sends both sets, with the same values, and a server reads the legacy set
// only when a request carries none of the new names; the next release
// drops them. The signed string is the same under either name, and its
// "postgate-handoff-v1" prefix keeps a webhook signature from ever
// verifying as a hand-off.
const (
	legacyHeaderTimestamp = "X-Postgate-Timestamp"
	legacyHeaderTarget    = "X-Postgate-Target"
	legacyHeaderSignature = "X-Postgate-Signature"
)

// setCredentials puts a request's signed values under the hand-off's names
// and, for this release, the legacy ones.
func setCredentials(h http.Header, ts int64, target, sig string) {
	t := strconv.FormatInt(ts, 10)
	h.Set(HeaderTimestamp, t)
	h.Set(HeaderTarget, target)
	h.Set(HeaderSignature, sig)
	h.Set(legacyHeaderTimestamp, t)
	h.Set(legacyHeaderTarget, target)
	h.Set(legacyHeaderSignature, sig)
}

// credentials returns a request's signed values: from the hand-off's names
// when any of them is present (never mixed with the legacy set, so a
// request cannot take its timestamp from one set and its signature from
// the other), else from the legacy names.
func credentials(h http.Header) (ts, target, sig string) {
	if h.Get(HeaderTimestamp) != "" || h.Get(HeaderTarget) != "" || h.Get(HeaderSignature) != "" {
		return h.Get(HeaderTimestamp), h.Get(HeaderTarget), h.Get(HeaderSignature)
	}
	return h.Get(legacyHeaderTimestamp), h.Get(legacyHeaderTarget), h.Get(legacyHeaderSignature)
}

// MaxSkew is how far a request's timestamp may be from the receiver's
// clock. Replicas of one cluster share NTP-disciplined clocks; two minutes
// leave room for a slow upload without keeping replays possible for long.
const MaxSkew = 2 * time.Minute

// KeyBytes is the length of the shared key the relays create.
const KeyBytes = 32

// signature returns the hex HMAC-SHA256 of a request's signed string.
func signature(key []byte, ts int64, target string, bodySHA256 []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("postgate-handoff-v1\n" + strconv.FormatInt(ts, 10) + "\n" + target + "\n" + hex.EncodeToString(bodySHA256)))
	return hex.EncodeToString(m.Sum(nil))
}

// verify checks a request's signature in constant time.
func verify(key []byte, ts int64, target string, bodySHA256 []byte, sig string) bool {
	want := signature(key, ts, target, bodySHA256)
	return hmac.Equal([]byte(want), []byte(sig))
}
