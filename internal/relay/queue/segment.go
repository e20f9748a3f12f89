package queue

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postgate/postgate/internal/relay/frame"
)

// Segment files: doc.go describes the format, docs/design.md ("The queue")
// why messages up to Options.SegmentBodyBytes share them.
const (
	segMagic  = "PGQ\x02" // version 2 of the queue's on-disk format
	segSuffix = ".seg"
	// maxSegmentBody bounds Options.SegmentBodyBytes, and so every body
	// recovery accepts from a segment.
	maxSegmentBody = 16 << 20
	// msgHead is the fixed part of a message record's payload: kind,
	// header JSON length, body CRC.
	msgHead = 1 + 4 + 4

	kindMessage = 'M' // a message: header JSON and body
	kindState   = 'S' // a journal record of one message
	kindDelete  = 'D' // a message deleted by an operator or handed off
	// kindWhole marks a segment written whole: the last record of a
	// segment that takes no more appends, written after an fsync of
	// everything before it. Its payload is the kind and the record's own
	// offset (8 bytes), so that only a mark at the very end of the file
	// counts. Relays before it read it as the end of the segment.
	kindWhole = 'W'
	// wholeLen is the framed size of the mark.
	wholeLen = 4 + 1 + 8 + 4
)

// errWholeMark ends the replay of a segment at its mark.
var errWholeMark = errors.New("segment mark")

// segmentFormat frames segment records like the journal of a message file
// ([length][payload][CRC of both]), with room for the largest message.
var segmentFormat = frame.Format{Layout: frame.CRCTrailer, MaxPayload: msgHead + maxHeader + maxSegmentBody}

func segName(seq uint64) string { return fmt.Sprintf("%016x%s", seq, segSuffix) }

// segment is one segment file. Records are appended to the active one
// only; the others are sealed and only read.
type segment struct {
	seq   uint64
	f     File
	group *groupSync // fsyncs of this file, shared by the appends of a batch
	size  atomic.Int64
	dirty atomic.Bool   // written since its last fsync
	syncs atomic.Uint64 // fsyncs started, so that flush sees whether one ran

	mu  sync.Mutex
	err error // a write or fsync failed: nothing more is acknowledged from it

	// Under Queue.mu.
	sealed    bool  // no longer the active segment
	live      int   // messages whose current message record is here
	liveBytes int64 // the size of those records
	readers   int   // body and header reads under way
	inflight  int   // appends whose callers have not indexed them yet
	removed   bool  // the file is removed: close it when readers is 0
	// marked: the segment ends with its kindWhole mark, or never will
	// (a segment replayed at Open, whose tail may be torn, or one whose
	// mark could not be written). Only flush and Close write marks.
	marked bool
}

func (q *Queue) newSegment(seq uint64, f File, size int64) *segment {
	s := &segment{seq: seq, f: f}
	s.size.Store(size)
	s.group = newGroupSync(func() error {
		if err := s.failed(); err != nil {
			return err
		}
		s.dirty.Store(false)
		s.syncs.Add(1)
		q.fileSyncs.Add(1)
		if err := f.Sync(); err != nil {
			s.fail(err)
			return err
		}
		return nil
	})
	return s
}

// fail seals the segment for good: after a failed write or fsync the
// kernel may have dropped pages, so a record written after them could be
// durable when they are not. Recovery stops at the first bad record, so
// nothing after it may ever be acknowledged.
func (s *segment) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
	}
}

func (s *segment) failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// wait makes what was appended to s before the call durable.
func (s *segment) wait() error {
	if err := s.group.wait(); err != nil {
		return storageErr("sync queue segment", err)
	}
	return nil
}

// segLoc is where a message record is.
type segLoc struct {
	seg     *segment
	off     int64 // of the frame
	len     int64 // of the frame
	hdrLen  int64
	bodyCRC uint32
}

func (l *segLoc) hdrOff() int64  { return l.off + 4 + msgHead }
func (l *segLoc) bodyOff() int64 { return l.hdrOff() + l.hdrLen }

// acquire keeps s open for a read; the caller holds q.mu.
func (s *segment) acquire() { s.readers++ }

// release ends a read of s.
func (q *Queue) release(s *segment) {
	q.mu.Lock()
	s.readers--
	closeIt := s.removed && s.readers == 0
	q.mu.Unlock()
	if closeIt {
		closeQuietly(s.f)
	}
}

// appendRecords writes recs, one after the other, to the active segment,
// rolling to a new one first when it is full or failed. It returns the
// segment and the offset of the first record; the caller waits on the
// segment for durability, indexes what it wrote, then calls q.landed: until
// then the segment is not removed, though it may be sealed and hold no
// live message yet.
func (q *Queue) appendRecords(recs []byte) (*segment, int64, error) {
	q.wmu.Lock()
	defer q.wmu.Unlock()
	s := q.active
	if s == nil || s.failed() != nil || (s.size.Load() > int64(len(segMagic)) && s.size.Load()+int64(len(recs)) > q.opts.SegmentBytes) {
		var err error
		if s, err = q.roll(); err != nil {
			return nil, 0, err
		}
	}
	off := s.size.Load()
	s.dirty.Store(true)
	if _, err := s.f.WriteAt(recs, off); err != nil {
		s.fail(err)
		return nil, 0, storageErr("write queue segment", err)
	}
	s.size.Store(off + int64(len(recs)))
	q.mu.Lock()
	s.inflight++ // before the segment can be sealed: q.wmu is held
	q.mu.Unlock()
	return s, off, nil
}

// landed ends what appendRecords began.
func (q *Queue) landed(s *segment) {
	q.mu.Lock()
	s.inflight--
	q.mu.Unlock()
}

// roll starts a new active segment: created, its magic written, its name
// made durable (a directory fsync, shared with file commits) before any
// record in it can be acknowledged. The caller holds q.wmu.
func (q *Queue) roll() (*segment, error) {
	seq := q.nextSeq
	q.nextSeq++
	name := segName(seq)
	f, err := q.fs.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, storageErr("create queue segment", err)
	}
	_, err = f.WriteAt([]byte(segMagic), 0)
	if err == nil {
		err = q.group.wait()
	}
	if err != nil {
		closeQuietly(f)
		if rerr := q.fs.Remove(name); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			q.opts.Logger.Warn("Cannot remove unused queue segment", "file", name, "error", rerr)
		}
		return nil, storageErr("start queue segment", err)
	}
	s := q.newSegment(seq, f, int64(len(segMagic)))
	s.dirty.Store(true)
	q.mu.Lock()
	if q.active != nil {
		q.active.sealed = true
	}
	q.segs = append(q.segs, s)
	q.mu.Unlock()
	q.active = s
	return s, nil
}

// getBuf returns a record buffer from the pool; putBuf gives it back. A
// buffer holds at most one message of Options.SegmentBodyBytes, so the
// pool holds at most that per concurrent Enqueue.
func (q *Queue) getBuf() *[]byte { return q.bufs.Get().(*[]byte) } //nolint:forcetypeassert // only *[]byte are put

func (q *Queue) putBuf(b *[]byte) { q.bufs.Put(b) }

// messageRecord starts a message record in buf: frame length (filled in
// by seal), kind, header JSON length, body CRC (filled in by seal), JSON.
// The body is appended after it.
func messageRecord(buf, js []byte) []byte {
	buf = append(buf[:0], 0, 0, 0, 0, kindMessage)
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(js))) //nolint:gosec // at most maxHeader
	buf = append(buf, 0, 0, 0, 0)
	return append(buf, js...)
}

// sealMessage fills in the body CRC and frames the record; it returns the
// record and its location relative to the record's start.
func sealMessage(buf []byte, hdrLen int) ([]byte, segLoc, error) {
	bodyCRC := crc32.Checksum(buf[4+msgHead+hdrLen:], castagnoli)
	binary.BigEndian.PutUint32(buf[4+5:], bodyCRC)
	rec, err := segmentFormat.Seal(buf)
	if err != nil {
		return nil, segLoc{}, fmt.Errorf("message record: %w: %w", ErrTooLarge, err)
	}
	return rec, segLoc{len: int64(len(rec)), hdrLen: int64(hdrLen), bodyCRC: bodyCRC}, nil
}

// stateRecord frames a journal record of message id.
func stateRecord(dst []byte, id ID, r *record) ([]byte, error) {
	js, err := marshal(r)
	if err != nil {
		return nil, err
	}
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, kindState)
	dst = append(dst, id...)
	dst = append(dst, js...)
	rec, err := segmentFormat.Seal(dst[start:])
	if err != nil {
		return nil, fmt.Errorf("journal record: %w: %w", ErrInvalid, err)
	}
	return append(dst[:start], rec...), nil
}

func deleteRecord(id ID) []byte {
	rec, _ := segmentFormat.Seal(append([]byte{0, 0, 0, 0, kindDelete}, id...)) // a fixed, valid size
	return rec
}

// readBody reads body into buf, at most limit bytes, and reports whether
// it ended within the limit. Past it, buf holds limit+1 bytes.
func readBody(ctx context.Context, buf []byte, body io.Reader, limit int64) ([]byte, bool, error) {
	start := len(buf)
	r := ctxReader{ctx, body}
	for {
		if int64(len(buf)-start) > limit {
			return buf, false, nil
		}
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, min(max(cap(buf), 4096), int(limit)+1-(len(buf)-start)))
		}
		room := min(cap(buf), start+int(limit)+1)
		n, err := r.Read(buf[len(buf):room])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			return buf, true, nil
		}
		if err != nil {
			return buf, false, fmt.Errorf("read message body: %w", err)
		}
	}
}

// enqueueSegment stores a message in the active segment: the body is read
// into a pooled buffer behind the header, framed, appended, and Enqueue
// returns once the fsync shared by the appends beside it has. A body over
// Options.SegmentBodyBytes is not stored: rest reads it whole again, for
// the per-file path.
func (q *Queue) enqueueSegment(ctx context.Context, h *header, js []byte, body io.Reader) (rest io.Reader, done func(), err error) {
	bp := q.getBuf()
	buf := messageRecord(*bp, js)
	hdrEnd := len(buf)
	limit := min(q.opts.SegmentBodyBytes, q.opts.MaxBodyBytes)
	buf, whole, err := readBody(ctx, buf, body, limit)
	*bp = buf[:0]
	if err == nil && !whole && limit == q.opts.MaxBodyBytes {
		err = fmt.Errorf("body over %d bytes: %w", limit, ErrTooLarge)
	}
	if err != nil {
		q.putBuf(bp)
		return nil, nil, err
	}
	if !whole {
		return io.MultiReader(bytes.NewReader(buf[hdrEnd:]), body), func() { q.putBuf(bp) }, nil
	}
	defer q.putBuf(bp)
	rec, loc, err := sealMessage(buf, len(js))
	*bp = rec[:0]
	if err != nil {
		return nil, nil, err
	}
	m := newMessage(h, int64(len(rec)-hdrEnd-4))
	if err := q.commitSegment(rec, loc, &m, true); err != nil {
		return nil, nil, err
	}
	return nil, nil, nil
}

// commitSegment appends a message record (and whatever records follow it
// in recs), waits until they are durable and indexes m at their place;
// fresh as for commit.
func (q *Queue) commitSegment(recs []byte, loc segLoc, m *Message, fresh bool) error {
	s, off, err := q.appendRecords(recs)
	if err != nil {
		return err
	}
	defer q.landed(s)
	if err := s.wait(); err != nil {
		return err
	}
	loc.seg, loc.off = s, off
	e := newEntry(m)
	e.inSeg, e.loc, e.state = true, &loc, m.Recipients
	q.mu.Lock()
	q.setSummary(e, m)
	q.index(e)
	q.markUntaken(e, fresh)
	q.mu.Unlock()
	q.signal()
	return nil
}

// markUntaken counts a message Enqueue accepted (fresh) as not yet taken by
// delivery, unless something took it already. The caller holds q.mu.
func (q *Queue) markUntaken(e *entry, fresh bool) {
	if fresh && !e.held && !e.leased && !e.gone && !e.untaken {
		e.untaken = true
		q.untaken.Add(1)
	}
}

// index adds e to the queue; the caller holds q.mu.
func (q *Queue) index(e *entry) {
	q.entries[e.id] = e
	if e.inSeg {
		e.loc.seg.live++
		e.loc.seg.liveBytes += e.loc.len
	}
}

// unindex removes e from the queue; the caller holds q.mu.
func (q *Queue) unindex(e *entry) {
	q.settle(e)
	e.gone = true
	delete(q.entries, e.id)
	if e.inSeg {
		e.loc.seg.live--
		e.loc.seg.liveBytes -= e.loc.len
	}
}

// segHeader reads the header JSON of a segment message and returns it
// with a copy of the message's location and state, the segment kept open
// for the caller (q.release).
func (q *Queue) segHeader(e *entry) (segLoc, Message, []byte, error) {
	q.mu.Lock()
	if e.gone {
		q.mu.Unlock()
		return segLoc{}, Message{}, nil, fmt.Errorf("%s: %w", e.id, ErrNotFound)
	}
	loc := *e.loc
	m := Message{ID: e.id, Arrival: e.arrival, Size: e.size, Held: e.held, Recipients: slices.Clone(e.state)}
	loc.seg.acquire()
	q.mu.Unlock()
	js := make([]byte, loc.hdrLen)
	if _, err := loc.seg.f.ReadAt(js, loc.hdrOff()); err != nil {
		q.release(loc.seg)
		return segLoc{}, Message{}, nil, fmt.Errorf("%s: read header: %w", e.id, err)
	}
	h, err := decodeHeaderJSON(js)
	if err != nil {
		q.release(loc.seg)
		return segLoc{}, Message{}, nil, fmt.Errorf("%s: %w", e.id, err)
	}
	m.Envelope = h.Envelope
	return loc, m, js, nil
}

// segMessage returns a segment message as stored.
func (q *Queue) segMessage(e *entry) (Message, error) {
	loc, m, _, err := q.segHeader(e)
	if err != nil {
		return Message{}, err
	}
	q.release(loc.seg)
	return m, nil
}

// segBody opens the body of a segment message; the segment stays open
// until the reader is closed, compaction or not.
func (q *Queue) segBody(e *entry) (io.ReadCloser, error) {
	q.mu.Lock()
	if e.gone {
		q.mu.Unlock()
		return nil, fmt.Errorf("%s: %w", e.id, ErrNotFound)
	}
	loc := *e.loc
	loc.seg.acquire()
	q.mu.Unlock()
	return &bodyReader{
		r: io.NewSectionReader(loc.seg.f, loc.bodyOff(), e.size), want: loc.bodyCRC,
		close: func() error { q.release(loc.seg); return nil },
	}, nil
}

// mutateSegment is mutate for a segment message; the caller holds e.io.
// A record that only marks recipients delivered is not waited on: a power
// loss may roll it back, and the recipients are delivered again, never
// lost (docs/design.md, "The queue").
//
// The message it returns has no envelope: a change needs only the state,
// and reading the header back would cost a JSON decode per Update (the
// lease has the envelope).
func (q *Queue) mutateSegment(e *entry, change func(m *Message, now time.Time) (*record, error)) (Message, error) {
	q.mu.Lock()
	m := Message{ID: e.id, Arrival: e.arrival, Size: e.size, Held: e.held, Recipients: slices.Clone(e.state)}
	q.mu.Unlock()
	rec, err := change(&m, q.now())
	if err != nil || rec == nil {
		return m, err
	}
	bp := q.getBuf()
	defer q.putBuf(bp)
	b, err := stateRecord((*bp)[:0], e.id, rec)
	if err != nil {
		return Message{}, err
	}
	*bp = b[:0]
	s, _, err := q.appendRecords(b)
	if err != nil {
		return Message{}, err
	}
	defer q.landed(s)
	if !deliveredOnly(rec) {
		if err := s.wait(); err != nil {
			return Message{}, err
		}
	}
	rec.apply(&m)
	q.mu.Lock()
	e.state = slices.Clone(m.Recipients)
	if !q.setSummary(e, &m) {
		q.unindex(e)
	}
	q.mu.Unlock()
	return m, nil
}

func deliveredOnly(r *record) bool {
	if r.Held != nil || len(r.Rcpts) == 0 {
		return false
	}
	for _, s := range r.Rcpts {
		if s.State != Delivered {
			return false
		}
	}
	return true
}

// deleteSegment removes a segment message durably; the caller holds e.io.
func (q *Queue) deleteSegment(e *entry) error {
	s, _, err := q.appendRecords(deleteRecord(e.id))
	if err != nil {
		return err
	}
	defer q.landed(s)
	if err := s.wait(); err != nil {
		return err
	}
	q.mu.Lock()
	q.unindex(e)
	q.mu.Unlock()
	return nil
}

// exportSegment writes a segment message in the export format: the fixed
// header and header JSON of a message file, the body, a snapshot.
func (q *Queue) exportSegment(ctx context.Context, e *entry, w io.Writer) error {
	loc, m, js, err := q.segHeader(e)
	if err != nil {
		return err
	}
	defer q.release(loc.seg)
	snap, err := encodeRecord(snapshotRecord(&m, q.now()))
	if err != nil {
		return err
	}
	if _, err := w.Write(append(fixedHeader(js, m.Size, loc.bodyCRC), js...)); err != nil {
		return err
	}
	body := &bodyReader{r: io.NewSectionReader(loc.seg.f, loc.bodyOff(), m.Size), want: loc.bodyCRC}
	if _, err := io.Copy(w, ctxReader{ctx, body}); err != nil {
		return err
	}
	_, err = w.Write(snap)
	return err
}

// importSegment stores an imported message whose body (bl bytes, bodyCRC)
// r holds next, followed by its journal: a message record and a snapshot,
// appended together.
func (q *Queue) importSegment(r io.Reader, h *header, js []byte, bl int64, bodyCRC uint32) (ID, error) {
	bp := q.getBuf()
	defer q.putBuf(bp)
	buf := messageRecord(*bp, js)
	hdrEnd := len(buf)
	buf = slices.Grow(buf, int(bl))
	n, err := io.ReadFull(r, buf[hdrEnd:hdrEnd+int(bl)])
	*bp = buf[:0]
	if err != nil {
		return "", fmt.Errorf("read record body (%d of %d bytes): %w: %w", n, bl, ErrCorrupt, err)
	}
	buf = buf[:hdrEnd+int(bl)]
	rec, loc, err := sealMessage(buf, len(js))
	if err != nil {
		return "", err
	}
	*bp = rec[:0]
	if loc.bodyCRC != bodyCRC {
		return "", fmt.Errorf("body checksum mismatch: %w", ErrCorrupt)
	}
	m, err := readJournal(r, h, bl)
	if err != nil {
		return "", err
	}
	if _, pending := m.nextDue(); pending == 0 {
		return h.ID, nil
	}
	recs, err := stateRecord(rec, h.ID, snapshotRecord(&m, q.now()))
	if err != nil {
		return "", err
	}
	*bp = recs[:0]
	if err := q.commitSegment(recs, loc, &m, false); err != nil {
		return "", err
	}
	return h.ID, nil
}

// recoverSegments replays the segment files, oldest first: a message
// record indexes (or re-indexes) its message, a journal record applies to
// a known message, a delete record or a journal record leaving no
// recipient pending drops it. Each file is read up to its first record
// that is not whole and valid. The next active segment takes the next
// sequence number.
func (q *Queue) recoverSegments(ctx context.Context, names []string) error {
	type seg struct {
		seq  uint64
		name string
	}
	var segs []seg
	for _, name := range names {
		seq, err := strconv.ParseUint(name[:len(name)-len(segSuffix)], 16, 64)
		if err != nil || segName(seq) != name {
			q.opts.Logger.Warn("Unknown file in queue directory left alone", "file", name)
			continue
		}
		segs = append(segs, seg{seq, name})
	}
	slices.SortFunc(segs, func(a, b seg) int { return cmp.Compare(a.seq, b.seq) })
	for _, sg := range segs {
		if err := ctx.Err(); err != nil {
			return err
		}
		q.nextSeq = max(q.nextSeq, sg.seq+1)
		if err := q.replaySegment(sg.seq, sg.name); err != nil {
			return err
		}
	}
	return nil
}

func (q *Queue) replaySegment(seq uint64, name string) error {
	log := q.opts.Logger
	f, err := q.fs.OpenFile(name, os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", name, err)
	}
	st, err := f.Stat()
	if err != nil {
		closeQuietly(f)
		return fmt.Errorf("stat %s: %w", name, err)
	}
	size := st.Size()
	r := bufio.NewReaderSize(io.NewSectionReader(f, 0, size), 256<<10)
	magic := make([]byte, len(segMagic))
	if n, _ := io.ReadFull(r, magic); n < len(magic) || string(magic) != segMagic {
		closeQuietly(f)
		if int64(n) == size && bytes.HasPrefix([]byte(segMagic), magic[:n]) || allZero(io.MultiReader(bytes.NewReader(magic[:n]), r)) {
			// Created but never fsynced with a record: nothing in it
			// was acknowledged.
			if err := q.fs.Remove(name); err != nil {
				return fmt.Errorf("remove %s: %w", name, err)
			}
			return nil
		}
		log.Error("Corrupt queue segment set aside", "file", name)
		q.damaged++
		if err := q.fs.Rename(name, name+corruptSuffix); err != nil {
			return fmt.Errorf("set aside %s: %w", name, err)
		}
		return nil
	}
	s := q.newSegment(seq, f, 0)
	s.sealed, s.marked = true, true
	q.segs = append(q.segs, s)
	// A segment that ends with its mark was written whole and fsynced
	// before the mark: a bad record in it is damage (a bit flipped on the
	// disk), not a crash's torn write, so the records after it are read.
	// In any other segment a bad record ends the replay: after a torn
	// write nothing was acknowledged, and what follows may be stale bytes
	// of an old file that only look like records.
	whole := wholeMarked(f, size)
	end := size
	if whole {
		end = size - wholeLen
		r.Reset(io.NewSectionReader(f, int64(len(segMagic)), end-int64(len(segMagic))))
	}
	off := int64(len(segMagic))
	skipped := 0
	for {
		payload, err := segmentFormat.Read(r)
		if errors.Is(err, io.EOF) {
			break
		}
		if whole && (errors.Is(err, frame.ErrTruncated) || errors.Is(err, frame.ErrCorrupt)) {
			// Damage: in the record's bytes (a CRC mismatch) or in its
			// length, which no longer says where the next record is.
			// Either way the next record is the first place after this
			// one where a whole valid frame begins.
			next, found, rerr := nextFrame(f, off+1, end)
			if rerr != nil {
				return fmt.Errorf("read %s: %w", name, rerr)
			}
			skipped++
			if !found {
				log.Error("Damaged queue record at the end of its segment", "file", name, "offset", off, "error", err)
				break
			}
			log.Error("Damaged queue record skipped; the segment is read on", "file", name, "offset", off, "bytes", next-off, "error", err)
			off = next
			r.Reset(io.NewSectionReader(f, off, end-off))
			continue
		}
		if errors.Is(err, frame.ErrTruncated) || errors.Is(err, frame.ErrCorrupt) {
			// A crash's torn tail, or damage: what follows cannot be
			// framed, and nothing after a failed write was acknowledged.
			log.Warn("Queue segment read up to a bad record", "file", name, "offset", off, "size", size, "error", err)
			break
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
		if err := q.replayRecord(s, off, payload); errors.Is(err, errWholeMark) {
			break
		} else if err != nil && whole {
			log.Error("Damaged queue record skipped; the segment is read on", "file", name, "offset", off, "bytes", len(payload)+frame.Overhead, "error", err)
			skipped++
		} else if err != nil {
			log.Warn("Queue segment read up to a bad record", "file", name, "offset", off, "size", size, "error", err)
			break
		}
		off += int64(len(payload)) + frame.Overhead
	}
	if whole {
		off = size
	}
	if skipped > 0 {
		log.Error("Queue segment had damaged records; the messages in them are lost", "file", name, "records", skipped)
		q.damaged += skipped
	}
	s.size.Store(off)
	return nil
}

// nextFrame returns the offset of the first whole, valid record of a
// message, journal or delete kind in f between from and end, reading that
// part of the file once (recovery only, and only past damage). A place
// inside a record that happens to hold a valid frame would need a body
// carrying one with a matching CRC-32C; the records' own checks come after.
func nextFrame(f File, from, end int64) (int64, bool, error) {
	if end-from < frame.Overhead+1 {
		return 0, false, nil
	}
	data := make([]byte, end-from)
	if _, err := f.ReadAt(data, from); err != nil && !errors.Is(err, io.EOF) {
		return 0, false, err
	}
	for p := 0; p+frame.Overhead < len(data); p++ {
		n := int(binary.BigEndian.Uint32(data[p:]))
		if n == 0 || n > segmentFormat.MaxPayload || p+frame.Overhead+n > len(data) {
			continue
		}
		if k := data[p+4]; k != kindMessage && k != kindState && k != kindDelete {
			continue
		}
		if _, _, err := segmentFormat.Next(data[p:]); err == nil {
			return from + int64(p), true, nil
		}
	}
	return 0, false, nil
}

// wholeMarked reports whether the segment file of size bytes ends with its
// kindWhole mark.
func wholeMarked(f File, size int64) bool {
	if size < int64(len(segMagic))+wholeLen {
		return false
	}
	b := make([]byte, wholeLen)
	if _, err := f.ReadAt(b, size-wholeLen); err != nil {
		return false
	}
	p, n, err := segmentFormat.Next(b)
	return err == nil && n == wholeLen && p[0] == kindWhole &&
		binary.BigEndian.Uint64(p[1:]) == uint64(size-wholeLen) //nolint:gosec // size >= wholeLen
}

// wholeRecord frames the mark of a segment whose mark goes at off.
func wholeRecord(off int64) []byte {
	p := binary.BigEndian.AppendUint64([]byte{0, 0, 0, 0, kindWhole}, uint64(off)) //nolint:gosec // a file offset
	rec, _ := segmentFormat.Seal(p)                                                // a fixed, valid size
	return rec
}

// markWhole ends a segment that takes no more appends with its kindWhole
// mark: fsync (every record before the mark durable first, so that a mark
// never survives a crash that tore a record before it), the mark, fsync.
// A segment that failed is never marked. The caller has acquired s.
func (q *Queue) markWhole(s *segment) {
	q.mu.Lock()
	marked := s.marked
	s.marked = true
	q.mu.Unlock()
	if marked || s.failed() != nil {
		return
	}
	if err := s.wait(); err != nil {
		return // failed: never marked
	}
	off := s.size.Load()
	if _, err := s.f.WriteAt(wholeRecord(off), off); err != nil {
		s.fail(err)
		q.opts.Logger.Warn("Cannot mark queue segment whole", "segment", segName(s.seq), "error", err)
		return
	}
	s.size.Store(off + wholeLen)
	s.dirty.Store(true)
	if err := s.wait(); err != nil {
		q.opts.Logger.Warn("Cannot sync queue segment", "segment", segName(s.seq), "error", err)
	}
}

// markSealed marks the sealed segments that no append writes to any more.
func (q *Queue) markSealed() {
	q.mu.Lock()
	var segs []*segment
	for _, s := range q.segs {
		if s.sealed && !s.marked && s.inflight == 0 && !s.removed {
			s.acquire() // not closed under the writes
			segs = append(segs, s)
		}
	}
	q.mu.Unlock()
	for _, s := range segs {
		q.markWhole(s)
		q.release(s)
	}
}

// allZero reports whether r holds only zero bytes (a file extended and
// never written, as a crash leaves one), reading errors as not zero.
func allZero(r io.Reader) bool {
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Read(buf)
		if bytes.ContainsFunc(buf[:n], func(c rune) bool { return c != 0 }) {
			return false
		}
		if errors.Is(err, io.EOF) {
			return true
		}
		if err != nil {
			return false
		}
	}
}

// replayRecord applies one record of segment s at offset off.
func (q *Queue) replayRecord(s *segment, off int64, p []byte) error {
	switch p[0] {
	case kindMessage:
		if len(p) < msgHead {
			return fmt.Errorf("short message record: %w", ErrCorrupt)
		}
		hl := int64(binary.BigEndian.Uint32(p[1:]))
		if hl > int64(len(p)-msgHead) {
			return fmt.Errorf("message record header length: %w", ErrCorrupt)
		}
		js, body := p[msgHead:msgHead+hl], p[msgHead+hl:]
		loc := segLoc{seg: s, off: off, len: int64(len(p)) + frame.Overhead, hdrLen: hl, bodyCRC: binary.BigEndian.Uint32(p[5:])}
		if crc32.Checksum(body, castagnoli) != loc.bodyCRC {
			return fmt.Errorf("body checksum mismatch: %w", ErrCorrupt)
		}
		h, err := decodeHeaderJSON(js)
		if err != nil {
			return err
		}
		if old := q.entries[h.ID]; old != nil {
			if !old.inSeg {
				q.opts.Logger.Warn("Queue segment repeats a message that has a file; the file is kept", "id", h.ID)
				return nil
			}
			// A copy made by compaction: the message moves, its state
			// stays (the snapshot after the copy may have been lost).
			q.unindex(old)
			old.gone = false
			old.loc = &loc
			q.index(old)
			return nil
		}
		m := newMessage(h, int64(len(body)))
		e := newEntry(&m)
		e.inSeg, e.loc, e.state = true, &loc, m.Recipients
		q.setSummary(e, &m)
		q.index(e)
	case kindState, kindDelete:
		if len(p) < 1+idLen {
			return fmt.Errorf("short journal record: %w", ErrCorrupt)
		}
		id, err := ParseID(string(p[1 : 1+idLen]))
		if err != nil {
			return fmt.Errorf("journal record: %w: %w", ErrCorrupt, err)
		}
		e := q.entries[id]
		if e == nil || !e.inSeg {
			return nil // finished or deleted before, or not a segment message
		}
		if p[0] == kindDelete {
			q.unindex(e)
			return nil
		}
		m := Message{ID: id, Arrival: e.arrival, Recipients: e.state, Held: e.held}
		r, err := decodeRecord(p[1+idLen:], len(m.Recipients))
		if err != nil {
			return err
		}
		r.apply(&m)
		if !q.setSummary(e, &m) {
			q.unindex(e)
		}
	case kindWhole:
		return errWholeMark
	default:
		return fmt.Errorf("record kind %q: %w", p[0], ErrCorrupt)
	}
	return nil
}

// maintain reclaims segments, oldest first: the oldest sealed segment is
// removed once no message's current record is in it, and its live
// messages are copied into the active segment (message record and
// snapshot) when they are a small part of it or when it holds back
// removable ones. Only the oldest goes, so no older file can bring back a
// message that a removed one finished, and no live message has journal
// records in it: nothing needs to be written again first
// (docs/design.md, "The queue"). One call at a time; others skip.
func (q *Queue) maintain() {
	if !q.maint.TryLock() {
		return
	}
	defer q.maint.Unlock()
	for {
		q.mu.Lock()
		if len(q.segs) == 0 || !q.segs[0].sealed {
			q.mu.Unlock()
			return
		}
		old := q.segs[0]
		if old.inflight > 0 {
			q.mu.Unlock()
			return // its appends' callers run maintain again
		}
		if old.live == 0 {
			q.mu.Unlock()
			if err := q.removeSegment(old); err != nil {
				q.opts.Logger.Warn("Cannot remove queue segment", "segment", segName(old.seq), "error", err)
				return
			}
			continue
		}
		var deadBehind int64
		for _, s := range q.segs[1:] {
			if s.sealed {
				deadBehind += s.size.Load() - s.liveBytes
			}
		}
		if old.liveBytes*2 > old.size.Load() && deadBehind < q.opts.SegmentBytes {
			q.mu.Unlock()
			return
		}
		var move []*entry
		for _, e := range q.entries {
			if e.inSeg && e.loc.seg == old {
				move = append(move, e)
			}
		}
		q.mu.Unlock()
		if err := q.compactSegment(old, move); err != nil {
			q.opts.Logger.Warn("Cannot compact queue segment", "segment", segName(old.seq), "error", err)
			return
		}
		q.mu.Lock()
		stuck := old.live > 0 && old.inflight == 0
		q.mu.Unlock()
		if stuck {
			// Every message found was copied, and some remain: never
			// loop over them.
			q.opts.Logger.Error("Queue segment keeps messages after compaction", "segment", segName(old.seq))
			return
		}
	}
}

// removeSegment removes a sealed segment, then fsyncs the directory, so
// that segments go strictly oldest first even on a filesystem that would
// reorder removals.
func (q *Queue) removeSegment(s *segment) error {
	if err := q.fs.Remove(segName(s.seq)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	q.mu.Lock()
	q.segs = slices.DeleteFunc(q.segs, func(x *segment) bool { return x == s })
	s.removed = true
	closeIt := s.readers == 0
	q.mu.Unlock()
	if closeIt {
		closeQuietly(s.f)
	}
	return q.group.wait()
}

// compactSegment copies the messages move out of old: each one's record as
// it is (its CRC checked) and a snapshot of its state, appended together,
// then moved to the copy once durable. Each message's io lock is held
// from the copy to the move, so that no journal record can fall between.
func (q *Queue) compactSegment(old *segment, move []*entry) error {
	for _, e := range move {
		if err := q.copyMessage(old, e); err != nil {
			return err
		}
	}
	return nil
}

func (q *Queue) copyMessage(old *segment, e *entry) error {
	e.io.Lock()
	defer e.io.Unlock()
	q.mu.Lock()
	if e.gone || e.loc.seg != old {
		q.mu.Unlock()
		return nil
	}
	loc := *e.loc
	m := Message{ID: e.id, Arrival: e.arrival, Held: e.held, Recipients: slices.Clone(e.state)}
	q.mu.Unlock()
	rec := make([]byte, loc.len)
	if _, err := old.f.ReadAt(rec, loc.off); err != nil {
		return fmt.Errorf("%s: read record: %w", e.id, err)
	}
	if _, _, err := segmentFormat.Next(rec); err != nil {
		return fmt.Errorf("%s: %w: %w", e.id, ErrCorrupt, err)
	}
	recs, err := stateRecord(rec, e.id, snapshotRecord(&m, q.now()))
	if err != nil {
		return err
	}
	s, off, err := q.appendRecords(recs)
	if err != nil {
		return err
	}
	defer q.landed(s)
	if err := s.wait(); err != nil {
		return err
	}
	q.mu.Lock()
	if !e.gone {
		old.live--
		old.liveBytes -= loc.len
		loc.seg, loc.off = s, off
		e.loc = &loc
		s.live++
		s.liveBytes += loc.len
	}
	q.mu.Unlock()
	return nil
}

// flushEvery is how often flush looks at the segments: a record that no
// call waited on (a delivered recipient) is fsynced within two periods.
const flushEvery = 500 * time.Millisecond

// flush bounds what a power loss can roll back of the records appended
// without a wait (recipients marked delivered): a segment that is dirty
// at two looks in a row with no fsync between them is fsynced, so such a
// record is durable within about a second, and a power loss delivers at
// most that second's messages again. Under load the Enqueues' fsyncs
// cover the active segment first and flush finds nothing to do. It runs
// from Open to Close.
func (q *Queue) flush(stop <-chan struct{}) {
	tick := time.NewTicker(flushEvery)
	defer tick.Stop()
	seen := map[*segment]uint64{} // dirty at the last look, with its fsync count then
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		q.mu.Lock()
		var segs []*segment
		for _, s := range q.segs {
			if !s.removed && s.dirty.Load() {
				s.acquire() // not closed under the fsync
				segs = append(segs, s)
			}
		}
		q.mu.Unlock()
		last := seen
		seen = make(map[*segment]uint64, len(segs))
		for _, s := range segs {
			n := s.syncs.Load()
			if prev, ok := last[s]; ok && prev == n && s.failed() == nil {
				if err := s.wait(); err != nil {
					q.opts.Logger.Warn("Cannot sync queue segment", "segment", segName(s.seq), "error", err)
				}
				n = s.syncs.Load()
			}
			seen[s] = n
			q.release(s)
		}
		q.markSealed()
	}
}

// closeSegments fsyncs what was appended and not waited on (delivered
// recipients), so that a clean shutdown delivers nothing twice, and
// closes the files. A failed fsync is only logged: what it may lose is
// delivered again, never lost.
func (q *Queue) closeSegments() {
	q.mu.Lock()
	segs := slices.Clone(q.segs)
	q.mu.Unlock()
	for _, s := range segs {
		// Nothing appends any more: every segment, the active one
		// too, is marked whole (fsynced first), as a restart starts a
		// new one.
		q.markWhole(s)
		if s.dirty.Load() && s.failed() == nil {
			if err := s.wait(); err != nil {
				q.opts.Logger.Warn("Cannot sync queue segment at close", "segment", segName(s.seq), "error", err)
			}
		}
		q.mu.Lock()
		s.removed = true
		closeIt := s.readers == 0
		q.mu.Unlock()
		if closeIt {
			closeQuietly(s.f)
		}
	}
}
