// Package handoff moves queued messages between relay replicas (issue 9):
// a replica that leaves for good (scale-down, or `postgate relay drain`)
// hands each queued message to a live peer, which stores it durably with
// its queue ID, arrival time and attempt history, and only then deletes
// its own copy. It owns the hand-off HTTP endpoint, its authentication
// and the sender's loop; peers are found by the caller (relay/follow).
//
// # Protocol
//
// POST /v1/handoff on the peer's hand-off listener, the body a record of
// queue.Export (the queue file format, journal reduced to a snapshot), with
//
//	X-Postgate-Timestamp: unix seconds
//	X-Postgate-Target:    the receiving replica's name
//	X-Postgate-Signature: hex HMAC-SHA256(key, "postgate-handoff-v1\n" + timestamp + "\n" + target + "\n" + hex SHA-256 of the body)
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
	"strconv"
	"time"
)

// Header names of a hand-off request.
const (
	HeaderTimestamp = "X-Postgate-Timestamp"
	HeaderTarget    = "X-Postgate-Target"
	HeaderSignature = "X-Postgate-Signature"
	// Path is where peers post records.
	Path = "/v1/handoff"
)

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
