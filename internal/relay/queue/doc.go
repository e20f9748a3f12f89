// Package queue is the relay's durable spool: it stores accepted messages,
// keeps each recipient's delivery state and the retry schedule, and hands
// due messages to delivery. It imports the standard library only.
//
// # Guarantees
//
// Enqueue returns a message's ID (which the SMTP server puts in its 250
// reply) only once the message is durable: its file written and fsynced,
// renamed into place and the directory fsynced. Concurrent Enqueues share
// directory fsyncs (group commit). When storage fails, ENOSPC included,
// Enqueue returns an error and leaves nothing behind. CheckSpace tells the
// SMTP server before it takes data that space is short (452 4.3.1).
//
// Open recovers every message whose Enqueue returned an ID, with its state
// as of the last Update that returned, and nothing that is partial. Every
// file access goes through FS, so tests (package queuetest) drop what was
// not fsynced at a simulated crash.
//
// # On-disk layout
//
// One flat directory:
//
//	lock             flock(2)ed by the process that has the queue open
//	<id>.msg         a committed message, one file per message
//	<id>.tmp         a message being written (or a rewrite of one); removed at Open
//	<id>.corrupt     a committed file that failed its checks at Open, set aside for a human
//
// A message file (integers big-endian, CRCs are CRC-32C):
//
//	offset  size  field
//	0       4     magic "PGQ\x01" (the last byte is the format version)
//	4       4     H, length of the header JSON (at most 8 MiB)
//	8       8     B, length of the body
//	16      4     CRC of the body
//	20      4     CRC of bytes 0-19 and the header JSON
//	24      H     header JSON: {"id", "arrival", "envelope"}
//	24+H    B     body, the message bytes as received
//	24+H+B  ...   journal: records of [4-byte length L][L bytes of JSON][4-byte CRC of length and JSON]
//
// Enqueue writes the whole file under <id>.tmp (the fixed header last, once
// the body's length and CRC are known), fsyncs it, renames it to <id>.msg
// and fsyncs the directory. The rename is the commit: a crash before it
// leaves a .tmp that Open removes, and after it the file is whole. The
// header CRC and the lengths (the file must hold at least 24+H+B bytes) are
// checked when the file is read; the body CRC whenever the body is read
// (Body returns ErrCorrupt rather than io.EOF on a mismatch).
//
// The journal starts empty: every recipient pending and due at arrival.
// Each state change (an attempt's results, hold, release, flush) appends
// one record naming the recipients it changes with their whole new status
// (state, attempts, last and next attempt, last reply) and fsyncs the file;
// replay applies the records in order. A record cut by a crash fails its
// length or CRC check: reading stops there, and the next record is written
// at that offset, over the torn one. When the journal outgrows
// Options.CompactBytes (and twice its first record), the file is rewritten
// with one snapshot record under <id>.tmp and renamed over the old one,
// then the directory fsynced. A message whose recipients are all final is
// removed; should the removal not survive a crash, Open sees a journal with
// nothing pending and removes the file again.
//
// A file is self-contained: ID, arrival, envelope, body and history.
// Export writes one (journal reduced to a snapshot) and Import on another
// relay queues it with its ID and history, so a lifetime never restarts.
//
// # Delivery
//
// The delivery side asks Due (or NextDue, and waits on Changed) which
// messages are due, takes each with Lease (exclusive, in memory), reads
// Lease.Message and Lease.Body, and reports per-recipient Results with
// Lease.Update, giving the lifetime that the current routing table sets
// for the message (docs/design.md contract 5). The queue applies the retry
// schedule (Retry) within that lifetime, counted from the arrival time.
package queue
