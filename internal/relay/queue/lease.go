package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"time"
)

// Lease is the exclusive right to attempt delivery of one message, taken
// with Queue.Lease. While it is held the message is not Due to anyone else.
// Leases live in memory only: after a crash every message is free again.
type Lease struct {
	q *Queue
	e *entry

	mu     sync.Mutex
	msg    Message
	closed bool
	// snooze is the latest time given to Snooze.
	snooze time.Time
}

// Attempt is what one delivery attempt found, for Lease.Update.
type Attempt struct {
	// Lifetime is the message's maximum time in the queue, from the
	// current routing table (docs/design.md contract 5), counted from
	// Message.Arrival. A recipient deferred at or past it becomes Expired;
	// a deferral never schedules past it. 0 means Options.Lifetime.
	Lifetime time.Duration
	// Results holds one result per recipient attempted.
	Results []Result
}

// Result is the outcome for one recipient.
type Result struct {
	// Recipient is the index in Envelope.To.
	Recipient int
	// State is Delivered (2xx), Failed (permanent: bounce now), Pending
	// (a temporary failure: retry on the schedule, or Expired once the
	// lifetime is over) or Expired (give up now).
	State State
	// Reply is the reply that decided it. Text is cut to 512 bytes and
	// made printable; a malformed code is dropped. It is stored as the
	// recipient's last reply, the reason `postgate queue show` gives.
	Reply Reply
	// NotBefore, for a Pending result, is when the recipient is due again,
	// in place of the retry schedule's next time (a receiver's or the
	// relay's own word on when to come back). It is raised to now and cut
	// to the end of the lifetime, like every deferral. Zero: the schedule.
	NotBefore time.Time
	// NoAttempt, for a Pending result with NotBefore, defers the recipient
	// without counting an attempt against it: Attempts and LastAttempt stay
	// as they were, so the retry schedule resumes where it was, and the
	// reply is recorded. It is for deferrals that are not the message's
	// doing and made no connection for it, such as a destination site
	// suspended by traffic shaping (docs/design.md, "Traffic shaping").
	// The lifetime still runs: at or past its end the recipient is
	// Expired, as after a counted attempt.
	NoAttempt bool
}

// Lease takes message id for delivery. It fails with ErrNotFound, ErrBusy
// when another lease has it, or ErrHeld.
func (q *Queue) Lease(ctx context.Context, id ID) (*Lease, error) {
	if err := q.begin(); err != nil {
		return nil, err
	}
	defer q.ops.Done()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	q.mu.Lock()
	e := q.entries[id]
	switch {
	case e == nil:
		q.mu.Unlock()
		return nil, fmt.Errorf("%s: %w", id, ErrNotFound)
	case e.leased:
		q.mu.Unlock()
		return nil, fmt.Errorf("%s: %w", id, ErrBusy)
	case e.held:
		q.mu.Unlock()
		return nil, fmt.Errorf("%s: %w", id, ErrHeld)
	}
	e.leased = true
	taken := q.settle(e)
	q.mu.Unlock()
	if taken && q.opts.Taken != nil {
		q.opts.Taken()
	}
	m, err := q.message(e)
	if err != nil {
		q.mu.Lock()
		e.leased = false
		q.mu.Unlock()
		return nil, err
	}
	return &Lease{q: q, e: e, msg: m}, nil
}

// Message returns the message as of the lease or its last Update.
func (l *Lease) Message() Message {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.msg.clone()
}

// Body opens the message body; see Queue.Body. Each call reads it afresh,
// so each destination of a message can have its own reader.
func (l *Lease) Body(ctx context.Context) (io.ReadCloser, error) {
	if l.e.inSeg {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		return l.q.segBody(l.e)
	}
	return l.q.Body(ctx, l.e.id)
}

// Update records an attempt's results durably (the journal record is
// fsynced before it returns) and returns the message's new state. Results
// for recipients already final are ignored. When no recipient is left
// pending the message is removed from the queue: bounces (DSNs) must be
// enqueued before the Update that makes the message final, so a crash in
// between repeats a bounce rather than loses it. Update may be called more
// than once per lease (once per destination, say). Results of any kind mix
// in one Update, deferrals without attempt (Result.NoAttempt) included:
// one journal record, one fsync.
func (l *Lease) Update(ctx context.Context, a Attempt) (Message, error) {
	if err := ctx.Err(); err != nil {
		return Message{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return Message{}, fmt.Errorf("%s: lease is closed: %w", l.e.id, ErrInvalid)
	}
	q := l.q
	if err := q.begin(); err != nil {
		return Message{}, err
	}
	defer q.ops.Done()
	m, err := q.mutate(l.e, func(m *Message, now time.Time) (*record, error) {
		return q.attemptRecord(m, a, now)
	})
	if err != nil {
		return Message{}, err
	}
	if l.e.inSeg {
		m.Envelope = l.msg.Envelope // not read back from the segment
		q.maintain()
	}
	l.msg = m
	return m.clone(), nil
}

// attemptRecord turns an attempt's results into a journal record.
func (q *Queue) attemptRecord(m *Message, a Attempt, now time.Time) (*record, error) {
	lifetime := a.Lifetime
	if lifetime <= 0 {
		lifetime = q.opts.Lifetime
	}
	deadline := m.Arrival.Add(lifetime)
	seen := make([]bool, len(m.Recipients))
	rec := &record{Time: now}
	for _, r := range a.Results {
		if r.Recipient < 0 || r.Recipient >= len(m.Recipients) {
			return nil, fmt.Errorf("result for recipient %d of %d: %w", r.Recipient, len(m.Recipients), ErrInvalid)
		}
		if seen[r.Recipient] {
			return nil, fmt.Errorf("two results for recipient %d: %w", r.Recipient, ErrInvalid)
		}
		seen[r.Recipient] = true
		if err := r.validate(); err != nil {
			return nil, err
		}
		s := m.Recipients[r.Recipient]
		if s.State.Final() {
			continue
		}
		s.Reply = sanitizeReply(r.Reply)
		s.NextAttempt = time.Time{}
		if r.State != Expired && !r.NoAttempt {
			s.LastAttempt = now
			s.Attempts = min(s.Attempts+1, maxAttempts)
		}
		switch {
		case r.State != Pending:
			s.State = r.State
		case !now.Before(deadline):
			s.State = Expired
		default:
			next := r.NotBefore.UTC() // as stored: no monotonic reading, the queue's zone
			if next.IsZero() {
				next = now.Add(q.opts.Retry.Delay(s.Attempts, q.jitter()))
			}
			switch {
			case next.Before(now):
				next = now
			case next.After(deadline):
				next = deadline
			}
			s.NextAttempt = next
		}
		rec.Rcpts = append(rec.Rcpts, rcptStatus{Index: r.Recipient, RecipientStatus: s})
	}
	if len(rec.Rcpts) == 0 {
		return nil, nil
	}
	return rec, nil
}

// validate checks a result's fields against each other; the recipient's
// index is checked against the message.
func (r *Result) validate() error {
	switch {
	case r.State > Expired:
		return fmt.Errorf("result state %d: %w", r.State, ErrInvalid)
	case r.State != Pending && (r.NoAttempt || !r.NotBefore.IsZero()):
		return fmt.Errorf("recipient %d: NotBefore and NoAttempt apply to a pending result, not %s: %w", r.Recipient, r.State, ErrInvalid)
	case r.NoAttempt && r.NotBefore.IsZero():
		// Without a time, a deferral that counts nothing would come due
		// at once, again and again.
		return fmt.Errorf("recipient %d: a deferral without attempt needs NotBefore: %w", r.Recipient, ErrInvalid)
	}
	return nil
}

// Snooze keeps the message from being Due before until once the lease is
// closed, in memory only: nothing is written, no attempt is counted, no
// reply recorded, and a restart (or a Flush, or an Update by a later
// lease) forgets it. It is for delivery's own scheduling, which is not
// the message's history: a sender's next turn at a shaped site
// (docs/design.md, "Traffic shaping"). A journal record per turn would
// cost a write and a log line for every message of a backlog each time
// it waited. Recipients of the message due earlier wait for until too.
func (l *Lease) Snooze(until time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if until.After(l.snooze) {
		l.snooze = until
	}
}

// Close gives the message back: it is due again per its recipients'
// schedule. Close after the message was completed or deleted does nothing.
func (l *Lease) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.closed = true
	q := l.q
	q.mu.Lock()
	e := l.e
	e.leased = false
	if l.snooze.After(e.nextDue) {
		e.nextDue = l.snooze
	}
	due := !e.gone && !e.held && e.pending > 0 && !e.nextDue.After(q.now())
	q.mu.Unlock()
	if due {
		q.signal()
	}
}

// message returns message e as stored.
func (q *Queue) message(e *entry) (Message, error) {
	if e.inSeg {
		return q.segMessage(e)
	}
	m, _, err := q.read(e.id)
	return m, err
}

// mutate changes a message's state: it reads the file (the authority),
// asks change for a journal record, appends it at the end of the last valid
// record and fsyncs the file. A message left with no pending recipient is
// removed. A journal grown past Options.CompactBytes is rewritten.
func (q *Queue) mutate(e *entry, change func(m *Message, now time.Time) (*record, error)) (Message, error) {
	e.io.Lock()
	defer e.io.Unlock()
	q.mu.Lock()
	gone := e.gone
	q.mu.Unlock()
	if gone {
		return Message{}, fmt.Errorf("%s: %w", e.id, ErrNotFound)
	}
	if e.inSeg {
		return q.mutateSegment(e, change)
	}
	if e.dirty {
		if err := q.group.wait(); err != nil {
			return Message{}, storageErr("sync queue directory", err)
		}
		e.dirty = false
	}
	f, err := q.fs.OpenFile(msgName(e.id), os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Message{}, fmt.Errorf("%s: %w", e.id, ErrNotFound)
		}
		return Message{}, err
	}
	m, l, err := q.decodeOpen(f, e.id)
	if err != nil {
		closeQuietly(f)
		return Message{}, err
	}
	rec, err := change(&m, q.now())
	if err != nil || rec == nil {
		closeQuietly(f)
		return m, err
	}
	b, err := encodeRecord(rec)
	if err == nil {
		// At the end of the valid records, not of the file: a record
		// whose write failed is overwritten rather than left in between.
		_, err = f.WriteAt(b, l.end)
	}
	if err == nil {
		q.fileSyncs.Add(1)
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Message{}, storageErr("write queue journal", err)
	}
	rec.apply(&m)
	l.end += int64(len(b))
	l.journal += int64(len(b))

	q.mu.Lock()
	if !q.setSummary(e, &m) {
		q.settle(e)
		e.gone = true
		delete(q.entries, e.id)
	}
	gone = e.gone
	q.mu.Unlock()
	if gone {
		// The journal says every recipient is final; if this removal is
		// lost in a crash, recovery removes the file again.
		if err := q.fs.Remove(msgName(e.id)); err != nil {
			q.opts.Logger.Warn("Cannot remove completed message", "id", e.id, "error", err)
		}
		return m, nil
	}
	if l.journal > q.opts.CompactBytes && l.journal > 2*l.snapshot {
		if err := q.compact(e, &m, l); err != nil {
			q.opts.Logger.Warn("Cannot compact queue journal", "id", e.id, "error", err)
		}
	}
	return m, nil
}

func (q *Queue) decodeOpen(f File, id ID) (Message, layout, error) {
	st, err := f.Stat()
	if err != nil {
		return Message{}, layout{}, err
	}
	m, l, err := decodeFile(f, st.Size())
	if err != nil {
		return Message{}, layout{}, fmt.Errorf("%s: %w", id, err)
	}
	return m, l, nil
}

// compact rewrites the message file with its header, its body (checked
// against its CRC) and one snapshot record, under a temporary name renamed
// over the old file. Either file, old or new, holds the whole state, so a
// crash at any point loses nothing; the directory fsync afterwards keeps
// later journal records, written to the new file, from being lost with a
// rename that did not last.
func (q *Queue) compact(e *entry, m *Message, l layout) error {
	snap, err := encodeRecord(snapshotRecord(m, q.now()))
	if err != nil {
		return err
	}
	src, err := q.fs.OpenFile(msgName(e.id), os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer closeQuietly(src)
	w, err := q.create(e.id)
	if err != nil {
		return err
	}
	defer w.abort()
	if _, err := io.Copy(w.f, io.NewSectionReader(src, 0, l.headerLen)); err != nil {
		return storageErr("copy queue file", err)
	}
	cw := &crcWriter{w: w.f}
	if _, err := io.Copy(cw, io.NewSectionReader(src, l.headerLen, l.bodyLen)); err != nil {
		return storageErr("copy queue file", err)
	}
	if cw.crc != l.bodyCRC {
		return fmt.Errorf("%s: body checksum mismatch: %w", e.id, ErrCorrupt)
	}
	if err := w.write(snap); err != nil {
		return err
	}
	q.fileSyncs.Add(1)
	if err := w.f.Sync(); err != nil {
		return storageErr("sync queue file", err)
	}
	err = w.f.Close()
	w.f = nil
	if err != nil {
		return storageErr("close queue file", err)
	}
	if err := q.fs.Rename(tmpName(e.id), msgName(e.id)); err != nil {
		return storageErr("replace queue file", err)
	}
	w.committed = true // the old file is gone: nothing to remove now
	if err := q.group.wait(); err != nil {
		e.dirty = true
		return storageErr("sync queue directory", err)
	}
	return nil
}
