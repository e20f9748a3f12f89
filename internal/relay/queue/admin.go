package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"
)

// The operations behind `postgate queue` and the hand-over of
// messages between relays.

// lookup returns the entry of id after registering an operation.
func (q *Queue) lookup(ctx context.Context, id ID) (*entry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := q.begin(); err != nil {
		return nil, err
	}
	q.mu.Lock()
	e := q.entries[id]
	q.mu.Unlock()
	if e == nil {
		q.ops.Done()
		return nil, fmt.Errorf("%s: %w", id, ErrNotFound)
	}
	return e, nil
}

// Get returns message id as stored.
func (q *Queue) Get(ctx context.Context, id ID) (Message, error) {
	e, err := q.lookup(ctx, id)
	if err != nil {
		return Message{}, err
	}
	defer q.ops.Done()
	return q.message(e)
}

// MaxList bounds one page of List.
const MaxList = 1000

// List returns up to limit messages (at most MaxList) with IDs after
// after, in ID order, which is arrival order. Pass the last ID of a page
// to get the next one.
func (q *Queue) List(ctx context.Context, after ID, limit int) ([]Message, error) {
	if err := q.begin(); err != nil {
		return nil, err
	}
	defer q.ops.Done()
	if limit <= 0 || limit > MaxList {
		limit = MaxList
	}
	q.mu.Lock()
	entries := make([]*entry, 0, len(q.entries))
	for id, e := range q.entries {
		if id > after {
			entries = append(entries, e)
		}
	}
	q.mu.Unlock()
	slices.SortFunc(entries, func(a, b *entry) int { return strings.Compare(string(a.id), string(b.id)) })
	var out []Message
	for _, e := range entries {
		if len(out) == limit {
			break
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		m, err := q.message(e)
		if errors.Is(err, ErrNotFound) {
			continue // completed or deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// Hold keeps message id from being due until Release. It survives restarts.
// A delivery under way is not interrupted.
func (q *Queue) Hold(ctx context.Context, id ID) error { return q.setHeld(ctx, id, true) }

// Release ends a Hold; the message keeps its schedule (Flush to try now).
func (q *Queue) Release(ctx context.Context, id ID) error { return q.setHeld(ctx, id, false) }

func (q *Queue) setHeld(ctx context.Context, id ID, held bool) error {
	e, err := q.lookup(ctx, id)
	if err != nil {
		return err
	}
	defer q.ops.Done()
	_, err = q.mutate(e, func(m *Message, now time.Time) (*record, error) {
		if m.Held == held {
			return nil, nil
		}
		return &record{Time: now, Held: &held}, nil
	})
	if err == nil && !held {
		q.signal()
	}
	return err
}

// Flush makes the pending recipients of the named messages (of every
// message when none is named) due now, durably, and forgets a snooze;
// held messages stay held.
// It returns how many messages it changed; named messages that are not
// queued are reported in the error.
func (q *Queue) Flush(ctx context.Context, ids ...ID) (int, error) {
	if err := q.begin(); err != nil {
		return 0, err
	}
	defer q.ops.Done()
	var errs []error
	q.mu.Lock()
	var entries []*entry
	if len(ids) == 0 {
		for _, e := range q.entries {
			entries = append(entries, e)
		}
	}
	for _, id := range ids {
		if e := q.entries[id]; e != nil {
			entries = append(entries, e)
		} else {
			errs = append(errs, fmt.Errorf("%s: %w", id, ErrNotFound))
		}
	}
	q.mu.Unlock()
	flushed := 0
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return flushed, err
		}
		changed := false
		m, err := q.mutate(e, func(m *Message, now time.Time) (*record, error) {
			if m.Held {
				return nil, nil
			}
			rec := &record{Time: now}
			for i, s := range m.Recipients {
				if s.State == Pending && s.NextAttempt.After(now) {
					s.NextAttempt = now
					rec.Rcpts = append(rec.Rcpts, rcptStatus{Index: i, RecipientStatus: s})
				}
			}
			if len(rec.Rcpts) == 0 {
				return nil, nil
			}
			changed = true
			return rec, nil
		})
		if err == nil && !m.Held {
			// A snooze (Lease.Snooze) lives in memory only: forget it.
			due, _ := m.nextDue()
			q.mu.Lock()
			if e.nextDue.After(due) && !e.leased {
				e.nextDue = due
				changed = true
			}
			q.mu.Unlock()
		}
		switch {
		case errors.Is(err, ErrNotFound) && len(ids) == 0:
		case err != nil:
			errs = append(errs, err)
		case changed:
			flushed++
		}
	}
	if flushed > 0 {
		q.signal()
	}
	return flushed, errors.Join(errs...)
}

// Delete removes message id durably, without bouncing it. A delivery under
// way finishes its current transaction, and its Update then fails with
// ErrNotFound.
func (q *Queue) Delete(ctx context.Context, id ID) error {
	e, err := q.lookup(ctx, id)
	if err != nil {
		return err
	}
	defer q.ops.Done()
	if e.inSeg {
		defer q.maintain() // after the io lock is released
	}
	e.io.Lock()
	defer e.io.Unlock()
	q.mu.Lock()
	gone := e.gone
	q.mu.Unlock()
	if gone {
		return fmt.Errorf("%s: %w", id, ErrNotFound)
	}
	if e.inSeg {
		return q.deleteSegment(e)
	}
	if err := q.fs.Remove(msgName(id)); err != nil {
		return storageErr("remove queue file", err)
	}
	q.mu.Lock()
	q.settle(e)
	e.gone = true
	delete(q.entries, id)
	q.mu.Unlock()
	if err := q.group.wait(); err != nil {
		return storageErr("sync queue directory", err)
	}
	return nil
}

// Export writes message id as a self-contained record, the format of a
// queue file with its journal reduced to one snapshot: ID, arrival time,
// envelope, body and every recipient's status and attempt history. Import
// on another relay takes it as it is, so the message keeps its ID and its
// lifetime does not restart. Export leaves the message queued;
// the caller deletes it once the peer has it.
func (q *Queue) Export(ctx context.Context, id ID, w io.Writer) error {
	e, err := q.lookup(ctx, id)
	if err != nil {
		return err
	}
	defer q.ops.Done()
	if e.inSeg {
		return q.exportSegment(ctx, e, w)
	}
	f, err := q.fs.OpenFile(msgName(id), os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", id, err)
	}
	defer closeQuietly(f)
	m, l, err := q.decodeOpen(f, id)
	if err != nil {
		return err
	}
	snap, err := encodeRecord(snapshotRecord(&m, q.now()))
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, io.NewSectionReader(f, 0, l.headerLen)); err != nil {
		return err
	}
	body := &bodyReader{r: io.NewSectionReader(f, l.headerLen, l.bodyLen), want: l.bodyCRC}
	if _, err := io.Copy(w, ctxReader{ctx, body}); err != nil {
		return err
	}
	_, err = w.Write(snap)
	return err
}

// Import queues a record written by Export, keeping its ID, arrival time,
// held flag and recipients' status and history. The record is checked
// whole (header, body CRC, every journal record) before it is committed,
// durably, as Enqueue commits. It fails with ErrExists, returning the ID,
// when the ID is queued here already or being imported (Get tells which:
// a hand-off is idempotent by ID), ErrCorrupt when the record does not
// check out. A
// record with no pending recipient is accepted and not stored.
func (q *Queue) Import(ctx context.Context, r io.Reader) (ID, error) {
	if err := q.begin(); err != nil {
		return "", err
	}
	defer q.ops.Done()
	r = ctxReader{ctx, r}
	fixed := make([]byte, fixedLen)
	if _, err := io.ReadFull(r, fixed); err != nil {
		return "", fmt.Errorf("read record header: %w: %w", ErrCorrupt, err)
	}
	hl, bl, bodyCRC, err := parseFixed(fixed)
	if err != nil {
		return "", err
	}
	if bl > q.opts.MaxBodyBytes {
		return "", fmt.Errorf("body of %d bytes, at most %d: %w", bl, q.opts.MaxBodyBytes, ErrTooLarge)
	}
	js := make([]byte, hl)
	if _, err := io.ReadFull(r, js); err != nil {
		return "", fmt.Errorf("read record header: %w: %w", ErrCorrupt, err)
	}
	h, err := decodeHeader(fixed, js)
	if err != nil {
		return "", err
	}
	if err := q.CheckSpace(bl); err != nil {
		return "", err
	}
	if err := q.reserve(h.ID); err != nil {
		if errors.Is(err, ErrExists) {
			return h.ID, err // the caller tells an ID queued here from one in flight (Get)
		}
		return "", err
	}
	defer q.unreserve(h.ID)
	if q.opts.SegmentBodyBytes > 0 && bl <= q.opts.SegmentBodyBytes {
		return q.importSegment(r, h, js, bl, bodyCRC)
	}
	w, err := q.create(h.ID)
	if err != nil {
		return "", err
	}
	defer w.abort()
	if err := w.write(fixed, js); err != nil {
		return "", err
	}
	cw := &crcWriter{w: w.f}
	n, err := io.CopyN(cw, r, bl)
	switch {
	case cw.err != nil:
		return "", storageErr("write queue file", cw.err)
	case err != nil:
		return "", fmt.Errorf("read record body (%d of %d bytes): %w: %w", n, bl, ErrCorrupt, err)
	case cw.crc != bodyCRC:
		return "", fmt.Errorf("body checksum mismatch: %w", ErrCorrupt)
	}
	m, err := readJournal(r, h, bl)
	if err != nil {
		return "", err
	}
	if _, pending := m.nextDue(); pending == 0 {
		return h.ID, nil
	}
	snap, err := encodeRecord(snapshotRecord(&m, q.now()))
	if err != nil {
		return "", err
	}
	if err := w.write(snap); err != nil {
		return "", err
	}
	if err := q.commit(w, &m, false); err != nil {
		return "", err
	}
	return h.ID, nil
}

// readJournal reads the journal of an exported record, after its body, and
// returns the message's state.
func readJournal(r io.Reader, h *header, bodyLen int64) (Message, error) {
	journal, err := io.ReadAll(io.LimitReader(r, maxJournal+1))
	if err != nil {
		return Message{}, fmt.Errorf("read record journal: %w", err)
	}
	if len(journal) > maxJournal {
		return Message{}, fmt.Errorf("journal over %d bytes: %w", maxJournal, ErrCorrupt)
	}
	m := newMessage(h, bodyLen)
	for off := 0; off < len(journal); {
		n := nextRecord(journal[off:], &m)
		if n == 0 {
			return Message{}, fmt.Errorf("journal record at byte %d: %w", off, ErrCorrupt)
		}
		off += n
	}
	return m, nil
}
