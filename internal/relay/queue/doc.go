// Package queue is the relay's durable spool: it stores accepted messages,
// keeps each recipient's delivery state and the retry schedule, and hands
// due messages to delivery. It imports the standard library only.
//
// # Guarantees
//
// Enqueue returns a message's ID (which the SMTP server puts in its 250
// reply) only once the message is durable: appended to the active segment
// and the segment fsynced (a message of at most Options.SegmentBodyBytes),
// or its own file written and fsynced, renamed into place and the
// directory fsynced (a larger one). Concurrent Enqueues share those fsyncs
// (group commit): an fsync covers every append made before it starts,
// and the next one starts as soon as it ends while appends wait. When
// storage fails, ENOSPC included, Enqueue returns an
// error and the message is not queued: this process never delivers it.
// (A segment record whose fsync failed may still reach the disk and come
// back after a restart; the client was told 4xx and may have sent the
// message again, so it is delivered twice, never lost.) CheckSpace tells
// the SMTP server before it takes data that space is short (452 4.3.1).
//
// Open recovers every message whose Enqueue returned an ID, with its state
// as of the last Update that returned, and nothing that is partial, with
// one exception: an Update whose results only mark recipients Delivered
// is appended to its segment but not waited on, so a power loss may roll
// it back to Pending, and those recipients are delivered again (never
// lost). A segment that stays dirty with no fsync for about a second is
// fsynced by the queue (a background flush, from Open to Close), so a power
// loss rolls back at most about a second of such records. Every other
// change (deferrals, bounces, holds, releases, flushes, deletes) is durable
// when its call returns. Close fsyncs what was not waited on. Every file access goes through FS, so tests (package
// queuetest) drop what was not fsynced at a simulated crash.
//
// # On-disk layout
//
// One flat directory:
//
//	lock             flock(2)ed by the process that has the queue open
//	<seq>.seg        a segment: messages of at most Options.SegmentBodyBytes and their journals
//	<id>.msg         a committed message in a file of its own (larger ones, and spools of version 1)
//	<id>.tmp         a message being written (or a rewrite of one); removed at Open
//	<id>.corrupt     a committed file that failed its checks at Open, set aside for a human
//	<seq>.seg.corrupt  a segment whose magic is wrong, set aside for a human
//
// # Segments (format version 2)
//
// <seq> is 16 lower-case hex digits, the segment's sequence number, so
// names sort in the order segments were started. A segment (integers
// big-endian, CRCs CRC-32C) is the magic "PGQ\x02" followed by records
// framed like the journal records of a message file
// (internal/relay/frame, CRCTrailer):
//
//	offset  size  field
//	0       4     L, length of the payload (1 to 9+8 MiB+16 MiB)
//	4       L     payload, whose first byte is its kind
//	4+L     4     CRC of bytes 0 to 4+L
//
// Payloads by kind:
//
//	'M' message:  kind, 4-byte H, 4-byte CRC of the body, H bytes of header JSON
//	              ({"id", "arrival", "envelope"}, as in a message file), the body
//	'S' journal:  kind, the 26-byte ID, a journal record's JSON (as in a message file)
//	'D' deleted:  kind, the 26-byte ID
//	'W' whole:    kind, the 8-byte offset of this record's frame
//
// The whole mark is a segment's last record, written (by the background
// flush, or at Close) once nothing appends to the segment any more, after
// an fsync of everything before it; it counts only at the very end of the
// file, pointing at itself. Relays before it read it as a bad record at
// the segment's end.
//
// Records are only appended, and only to the active segment, which is
// always a new one after Open (so nothing is ever written over a torn
// tail). A message record is fsynced before Enqueue or Import returns;
// the fsync is shared by every append of the batch. A new segment's name
// is made durable (directory fsync) before anything in it is
// acknowledged. After a failed write or fsync the segment is sealed:
// nothing more is acknowledged from it and the next append starts a new
// one, so the first bad record of a segment comes after everything
// acknowledged in it. The next segment is started when the active one
// would pass Options.SegmentBytes.
//
// Open replays the segments in sequence order, each up to its first
// record that is cut short or fails its CRC, except that in a segment that
// ends with its whole mark a bad record (its CRC, its length or its
// payload) is skipped, logged and counted as damage, and the replay goes
// on at the next place where a whole valid frame begins (nothing in such a
// segment can be a torn write): a message record indexes its
// message, every recipient pending and due at arrival (or, when the ID is
// indexed from a segment already, moves it there and keeps its state: a
// copy made by compaction, whose snapshot follows); a journal record
// applies to a message indexed from a segment (others are ignored: they
// finished earlier); a delete record, or a journal record that leaves no
// recipient pending, drops it. A segment that does not start with the
// magic is removed when it holds only zeros or a part of the magic (a
// segment started and never fsynced), else set aside. The body's own CRC
// is checked again whenever the body is read (Body returns ErrCorrupt).
//
// A segment is removed only when it is the oldest and no message indexed
// from it remains (nor any append that is not yet indexed). Because no
// older segment then exists, nothing in it is still needed by replay:
// no older copy of a message that it finished, no journal record of a
// message whose record is older. A removal is followed by a directory
// fsync, so segments disappear in order even on a filesystem that would
// reorder removals. Compaction: when the oldest segment's live messages
// are at most half of it, or the sealed segments behind it hold
// Options.SegmentBytes of finished records, its live messages are copied
// to the active segment (the record as it is, CRC checked, and a
// snapshot journal record, appended together and fsynced) and it is
// removed.
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
// A deferral without attempt (Result.NoAttempt; version note: added after
// format version 2, which it leaves as it is) is written as any other
// state change: a journal record, in a segment or a message file, with
// the recipient's whole status: state pending, attempts and last attempt
// as they were, next attempt at the time asked for (within the lifetime),
// the reply that explains the wait. Replay, compaction snapshots, Export
// and Import carry it as they carry every status; a relay of the previous
// version reads it as such. No field was added on purpose: readers
// decode journal records with unknown fields refused, and a refused
// record ends replay (of a message file's journal there, of a segment
// there, its later messages included), so a relay of the previous version
// would lose what follows a record with a new field. A change that cannot
// be said with the existing fields needs a new format version, which
// older relays set aside (".corrupt") rather than misread.
//
// A file is self-contained: ID, arrival, envelope, body and history.
// Export writes one (journal reduced to a snapshot), from a segment as
// well, and Import on another relay queues it with its ID and history,
// into a segment or a file by its size, so a lifetime never restarts and
// relays of either version hand messages to each other.
//
// # Delivery
//
// The delivery side asks Due (or NextDue, and waits on Changed) which
// messages are due, takes each with Lease (exclusive, in memory), reads
// Lease.Message and Lease.Body, and reports per-recipient Results with
// Lease.Update, giving the lifetime that the current routing table sets
// for the message (docs/design.md contract 5). The queue applies the retry
// schedule (Retry) within that lifetime, counted from the arrival time,
// unless a result names its own time (Result.NotBefore); a deferral that
// is not the message's doing (Result.NoAttempt: a suspended destination)
// does not count as an attempt.
package queue
