// Package notify owns the relay's push notifications: a signed
// JSON POST to a SenderDomain's webhook for each recipient outcome of a
// delivery attempt (DELIVERED, DEFERRED, BOUNCED, EXPIRED).
//
// Delivery is at least once and never slows mail delivery:
//
//   - Observe (called from the delivery goroutine) builds the notifications
//     and puts them in a bounded in-memory buffer; it never waits. When the
//     buffer is full a notification is dropped and counted.
//   - One writer goroutine appends them to an on-disk journal under
//     Options.Dir, one queue per sender domain, with one fsync per queue per
//     batch of writes.
//   - One sender goroutine per queue posts them, oldest first, and removes
//     them from disk only after the receiver answered 2xx; failures are
//     retried with exponential backoff until Options.MaxAge, after which
//     they are dropped and counted. A slow receiver holds up only its own
//     domain's queue.
//
// The webhook URL and HMAC key are read from the routing table in force when
// a request is sent, so a key rotation applies to notifications already
// queued. The dialer refuses loopback, link-local, cloud metadata,
// unspecified and multicast addresses and the relay's own listeners, at
// connect time, so that DNS cannot point a webhook around the check.
//
// Directory layout: Dir/<sender domain>/ holds the segments
// 00000000000000000001.seg, ... (length- and CRC-framed JSON records,
// appended and never rewritten; a new segment after SegmentBytes, after
// each restart, and once the sender has read a segment of 64 KiB or more to
// its end) and the file cursor ("<segment> <offset> <crc>": what receivers
// acknowledged, overwritten in place). A segment is deleted once the cursor
// is past it and the writer is done with it. Segment numbers only grow,
// across restarts too: a new one is numbered after every segment found and
// after the one the cursor names, so a cursor never applies to a newer file.
//
// Each queue directory is reached as a queue.FS (package internal/relay/queue): the
// journal relies on the mail queue's durability contract (content durable
// once the file is synced, a name once its directory is; a new queue
// directory is synced into Dir), and its tests cut the power with the
// queue's crash filesystem. A segment that cannot be read for a reason
// other than damage (an I/O error, no file descriptors) is tried again
// after a backoff, never skipped.
//
// Requests carry the notifications of one message (Body.Meta.JobID is its
// queue ID), so a domain's queue sends one request at a time, in order.
package notify
