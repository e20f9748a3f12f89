package queue

import (
	"cmp"
	"container/heap"
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Errors the queue returns, for errors.Is. The SMTP server answers
// ErrNoSpace with 452 4.3.1 and ErrTooLarge with 552 5.3.4; any other
// Enqueue error means the message is not queued (451 4.3.0).
var (
	ErrNoSpace  = errors.New("insufficient queue storage")
	ErrTooLarge = errors.New("message too large")
	ErrInvalid  = errors.New("invalid")
	ErrCorrupt  = errors.New("corrupt queue record")
	ErrNotFound = errors.New("no such message")
	ErrExists   = errors.New("message already queued")
	ErrBusy     = errors.New("message is being delivered")
	ErrHeld     = errors.New("message is on hold")
	ErrClosed   = errors.New("queue closed")
	ErrLocked   = errors.New("spool in use by another process")
)

// Clock tells the time. Tests drive it; the queue never sleeps on it.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Options configure a Queue. The zero value of each field takes the
// default given.
type Options struct {
	// Clock stamps arrivals and attempts. Default: the system clock.
	Clock Clock
	// Team returns the team of a tenant (Envelope.Tenant, a sender
	// domain): Due takes turns between teams, then between the tenants
	// of a team. The relay's team is the namespace of the domain's
	// SenderDomain, read from the table in force at each call, so a
	// namespace with ten busy domains gets one turn in a round, as one
	// with a single domain does. Default: every tenant is a team of its
	// own. It is called without the queue's lock, once per tenant with
	// mail due in a call of Due.
	Team func(tenant string) string
	// Logger reports what recovery found. Default: discard.
	Logger *slog.Logger
	// Rand places retries in their jitter range. Default: seeded from
	// crypto/rand. Used under the queue's lock.
	Rand *rand.Rand
	// MinFreeBytes is the free space the spool's filesystem must keep:
	// CheckSpace and Enqueue refuse a message that would leave less.
	// Default 64 MiB.
	MinFreeBytes int64
	// MaxBodyBytes bounds a message body. Keep it above the SMTP server's
	// --max-message-bytes plus the headers the relay adds. Default 32 MiB.
	MaxBodyBytes int64
	// MaxRecipients bounds the recipients of one message, at most (and by
	// default) MaxRecipients.
	MaxRecipients int
	// MaxMessages bounds how many messages the queue holds (and indexes in
	// memory). Default 100000.
	MaxMessages int
	// Retry is the schedule for temporary failures. Default DefaultRetry().
	Retry Retry
	// Lifetime applies when an Attempt gives none. Default 48h, as
	// routing.DefaultMaxQueueLifetime.
	Lifetime time.Duration
	// CompactBytes is the journal size past which a message file is
	// rewritten with one snapshot record. Default 64 KiB.
	CompactBytes int64
	// SegmentBodyBytes: a message whose body is at most this long is
	// stored in the shared segment files, a longer one in a file of its
	// own. Default 1 MiB, at most 16 MiB; negative stores every message in
	// a file of its own, as before segments (docs/design.md, "The queue").
	SegmentBodyBytes int64
	// SegmentBytes is the size at which a new segment file is started.
	// Default 64 MiB.
	SegmentBytes int64
	// Taken, when set, is called each time a message that Enqueue
	// accepted is leased for the first time (a delivery worker took it),
	// outside the queue's locks: the relay's in-flow gate lets one waiting
	// transaction go (docs/design.md, "In-flow backpressure"). It must not
	// block.
	Taken func()
}

func (o Options) withDefaults() (Options, error) {
	if o.Clock == nil {
		o.Clock = systemClock{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Rand == nil {
		var seed [32]byte
		_, _ = crand.Read(seed[:])
		o.Rand = rand.New(rand.NewChaCha8(seed)) //nolint:gosec // jitter needs no secrecy
	}
	defaults := []struct {
		v   *int64
		def int64
	}{{&o.MinFreeBytes, 64 << 20}, {&o.MaxBodyBytes, 32 << 20}, {&o.CompactBytes, 64 << 10},
		{&o.SegmentBodyBytes, DefaultSegmentBodyBytes}, {&o.SegmentBytes, DefaultSegmentBytes},
	}
	for _, d := range defaults {
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if o.MaxRecipients == 0 {
		o.MaxRecipients = MaxRecipients
	}
	if o.MaxMessages == 0 {
		o.MaxMessages = 100000
	}
	if o.Retry.Delays == nil {
		o.Retry = DefaultRetry()
	}
	if o.Lifetime == 0 {
		o.Lifetime = 48 * time.Hour
	}
	switch {
	case o.MinFreeBytes < 0, o.MaxBodyBytes < 0, o.CompactBytes < 0, o.MaxMessages < 0, o.Lifetime < 0, o.SegmentBytes < 0:
		return o, fmt.Errorf("negative limit in queue options: %w", ErrInvalid)
	case o.SegmentBodyBytes > maxSegmentBody:
		return o, fmt.Errorf("segment body bytes %d over %d: %w", o.SegmentBodyBytes, maxSegmentBody, ErrInvalid)
	case o.MaxRecipients < 0 || o.MaxRecipients > MaxRecipients:
		return o, fmt.Errorf("max recipients %d not in [1, %d]: %w", o.MaxRecipients, MaxRecipients, ErrInvalid)
	}
	return o, o.Retry.validate()
}

// Queue is the durable spool. Its methods are safe for concurrent use.
type Queue struct {
	fs    FS
	opts  Options
	lock  io.Closer
	group *groupSync

	mu        sync.Mutex
	closed    bool
	entries   map[ID]*entry
	reserved  int         // Enqueues and Imports under way, counted against MaxMessages
	importing map[ID]bool // IDs being imported, so two imports of one ID do not race
	ops       sync.WaitGroup
	changed   chan struct{}

	enqueued, fileSyncs, dirSyncs atomic.Uint64
	// damaged counts what Open found damaged and could not read: records
	// skipped in segments marked whole, segments and message files set
	// aside. Written during Open only.
	damaged int
	// untaken counts the entries whose untaken is set; changed under mu,
	// read without it (Untaken).
	untaken atomic.Int64

	// Segments (segment.go).
	wmu     sync.Mutex // the append lock
	active  *segment   // under wmu; nil until the first append after Open
	nextSeq uint64     // under wmu
	segs    []*segment // under mu: every segment file, oldest first
	maint   sync.Mutex // one reclamation at a time
	bufs    sync.Pool  // record buffers, *[]byte

	stopFlush chan struct{}  // closed by Close: flush ends
	flushing  sync.WaitGroup // flush
}

// Defaults and bounds of Options.SegmentBodyBytes and SegmentBytes.
const (
	DefaultSegmentBodyBytes = 1 << 20
	DefaultSegmentBytes     = 64 << 20
	MaxSegmentBodyBytes     = maxSegmentBody
)

// entry is what the queue keeps in memory about a message: enough to
// schedule it. Envelope and state are read from the file when needed; a
// segment message's state is kept here, its envelope read from the
// segment.
type entry struct {
	id      ID
	size    int64
	arrival time.Time // Message.Arrival, for the oldest message's age
	// tenant is the Envelope's Tenant, by which Due takes turns.
	tenant string
	// inSeg: the message is in a segment, not in a file of its own.
	inSeg bool
	// loc is where a segment message's record is. Under Queue.mu;
	// changed by compaction only.
	loc *segLoc
	// state is a segment message's recipients' status. Under Queue.mu,
	// changed with io held.
	state []RecipientStatus

	// io serializes changes to the message's file; the file is the
	// authority on the message's state.
	io sync.Mutex
	// dirty: a directory fsync after a rewrite failed, so the file's
	// current name may not be durable; retried before the next write.
	dirty bool

	// Under Queue.mu.
	held    bool
	pending int
	nextDue time.Time
	leased  bool
	gone    bool
	// untaken: accepted by Enqueue and not yet leased, held or removed;
	// counted in Queue.untaken. Under Queue.mu.
	untaken bool
}

func msgName(id ID) string { return string(id) + ".msg" }
func tmpName(id ID) string { return string(id) + ".tmp" }

const (
	lockName      = "lock"
	corruptSuffix = ".corrupt"
)

// Open opens the queue in fsys, taking its lock (ErrLocked when another
// process has it) and recovering what a previous run left: every committed
// message is loaded with its state, temporary files are removed, a torn
// journal tail is ignored (and later overwritten), and a message file that
// fails its checks is renamed to <id>.corrupt and reported, never loaded.
func Open(ctx context.Context, fsys FS, opts Options) (*Queue, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	lock, err := fsys.Lock(lockName)
	if err != nil {
		return nil, fmt.Errorf("lock queue: %w", err)
	}
	q := &Queue{
		fs: fsys, opts: opts, lock: lock,
		entries:   make(map[ID]*entry),
		importing: make(map[ID]bool),
		changed:   make(chan struct{}, 1),
	}
	q.bufs.New = func() any { b := make([]byte, 0, 16<<10); return &b }
	q.group = newGroupSync(func() error {
		q.dirSyncs.Add(1)
		return fsys.SyncDir()
	})
	if err := q.recover(ctx); err != nil {
		q.closeSegments()
		closeQuietly(lock)
		return nil, err
	}
	q.maintain()
	q.stopFlush = make(chan struct{})
	q.flushing.Go(func() { q.flush(q.stopFlush) })
	return q, nil
}

func (q *Queue) recover(ctx context.Context) error {
	names, err := q.fs.ReadDirNames()
	if err != nil {
		return fmt.Errorf("read queue directory: %w", err)
	}
	slices.Sort(names)
	log := q.opts.Logger
	var segs []string
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return err
		}
		base, ext, _ := strings.Cut(name, ".")
		id, idErr := ParseID(base)
		switch {
		case strings.HasSuffix(name, segSuffix+corruptSuffix):
			// Set aside: its number is never used again, so that a
			// later set-aside never replaces it.
			if seq, err := strconv.ParseUint(strings.TrimSuffix(name, segSuffix+corruptSuffix), 16, 64); err == nil {
				q.nextSeq = max(q.nextSeq, seq+1)
			}
		case name == lockName || strings.HasSuffix(name, corruptSuffix):
		case strings.HasSuffix(name, segSuffix):
			segs = append(segs, name)
		case idErr == nil && ext == "tmp":
			// A write that never committed: its Enqueue did not return nil.
			if err := q.fs.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("remove %s: %w", name, err)
			}
		case idErr == nil && ext == "msg":
			if err := q.load(id); err != nil {
				if !errors.Is(err, ErrCorrupt) {
					return fmt.Errorf("load %s: %w", name, err)
				}
				log.Error("Corrupt queue file set aside", "file", name, "error", err)
				q.damaged++
				if err := q.fs.Rename(name, base+corruptSuffix); err != nil {
					return fmt.Errorf("set aside %s: %w", name, err)
				}
			}
		default:
			log.Warn("Unknown file in queue directory left alone", "file", name)
		}
	}
	if err := q.recoverSegments(ctx, segs); err != nil {
		return err
	}
	if len(q.entries) > 0 {
		log.Info("Queue recovered", "messages", len(q.entries))
	}
	return nil
}

// newEntry returns the index entry of m, before its summary is set.
func newEntry(m *Message) *entry {
	return &entry{id: m.ID, size: m.Size, arrival: m.Arrival, tenant: m.Envelope.Tenant()}
}

// load indexes the committed message id, or removes it when no recipient
// is pending (a completion interrupted by a crash).
func (q *Queue) load(id ID) error {
	m, _, err := q.read(id)
	if err != nil {
		return err
	}
	if m.ID != id {
		return fmt.Errorf("file holds message %s: %w", m.ID, ErrCorrupt)
	}
	e := newEntry(&m)
	if !q.setSummary(e, &m) {
		return q.fs.Remove(msgName(id))
	}
	q.entries[id] = e
	return nil
}

// read decodes the message file of id.
func (q *Queue) read(id ID) (Message, layout, error) {
	f, err := q.fs.OpenFile(msgName(id), os.O_RDONLY, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Message{}, layout{}, fmt.Errorf("%s: %w", id, ErrNotFound)
		}
		return Message{}, layout{}, err
	}
	defer closeQuietly(f)
	return q.decodeOpen(f, id)
}

// setSummary copies what scheduling needs from m into e and reports
// whether a recipient is pending. The caller holds q.mu or owns e alone.
func (q *Queue) setSummary(e *entry, m *Message) bool {
	e.nextDue, e.pending = m.nextDue()
	e.held = m.Held
	if e.held {
		q.settle(e) // on hold, it no longer waits for delivery
	}
	return e.pending > 0
}

// settle takes e out of the messages accepted and not yet taken, if it is
// one. The caller holds q.mu or owns e alone.
func (q *Queue) settle(e *entry) bool {
	if !e.untaken {
		return false
	}
	e.untaken = false
	q.untaken.Add(-1)
	return true
}

// Untaken returns how many messages Enqueue accepted that no delivery has
// taken yet (leased for the first time), leaving out those held or removed
// since: the backlog between acceptance and delivery that the relay's
// in-flow gate watches.
func (q *Queue) Untaken() int { return int(q.untaken.Load()) }

// Close waits for the operations under way (cancel the contexts of the
// Enqueues still reading a body first) and releases the spool's lock.
// Later calls fail with ErrClosed.
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	q.mu.Unlock()
	q.ops.Wait()
	close(q.stopFlush)
	q.flushing.Wait()
	q.closeSegments()
	return q.lock.Close()
}

// begin registers an operation; the caller calls q.ops.Done when it ends.
func (q *Queue) begin() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return ErrClosed
	}
	q.ops.Add(1)
	return nil
}

func (q *Queue) now() time.Time { return q.opts.Clock.Now().UTC() }

// CheckSpace reports, as an error wrapping ErrNoSpace, whether a message of
// size bytes (0 when unknown) would leave the spool's filesystem with less
// than Options.MinFreeBytes, or the queue is full. The SMTP server calls it
// before taking data and answers 452 4.3.1; Enqueue calls it too. Where
// free space cannot be read (not Linux), only the queue's count is checked.
func (q *Queue) CheckSpace(size int64) error {
	q.mu.Lock()
	n := len(q.entries) + q.reserved
	q.mu.Unlock()
	if n >= q.opts.MaxMessages {
		return fmt.Errorf("queue holds %d messages, at most %d: %w", n, q.opts.MaxMessages, ErrNoSpace)
	}
	free, err := q.fs.Statfs()
	if errors.Is(err, errors.ErrUnsupported) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read free space: %w", err)
	}
	if free-max(size, 0) < q.opts.MinFreeBytes {
		return fmt.Errorf("%d bytes free in the spool, keeping %d: %w", free, q.opts.MinFreeBytes, ErrNoSpace)
	}
	return nil
}

// storageErr wraps an I/O error, adding ErrNoSpace when the disk or a
// quota is full.
func storageErr(what string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%s: %w: %w", what, ErrNoSpace, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Enqueue stores a message and returns its ID once the message is durable.
// A body of at most Options.SegmentBodyBytes is read into a pooled buffer
// and appended as one record to the active segment, whose fsync is shared
// with the appends beside it (group commit). A longer one is streamed to a
// file of its own, fsynced, renamed into place and the directory fsynced,
// that fsync shared with concurrent Enqueues. It returns an error (never
// the ID) when anything fails, and the message is not queued then (a
// record in a segment that failed may come back after a restart). env is
// stored exactly as given and must pass the queue's checks (ErrInvalid).
func (q *Queue) Enqueue(ctx context.Context, env Envelope, body io.Reader) (ID, error) {
	if err := q.begin(); err != nil {
		return "", err
	}
	defer q.ops.Done()
	if err := env.validate(q.opts.MaxRecipients); err != nil {
		return "", err
	}
	if env.Size > q.opts.MaxBodyBytes {
		return "", fmt.Errorf("SIZE=%d, at most %d: %w", env.Size, q.opts.MaxBodyBytes, ErrTooLarge)
	}
	if err := q.CheckSpace(env.Size); err != nil {
		return "", err
	}
	now := q.now()
	h := &header{ID: newID(now), Arrival: now}
	h.Envelope = (&Message{Envelope: env}).clone().Envelope
	js, err := encodeHeaderJSON(h)
	if err != nil {
		return "", err
	}
	if err := q.reserve(""); err != nil {
		return "", err
	}
	defer q.unreserve("")
	if q.opts.SegmentBodyBytes > 0 && env.Size <= q.opts.SegmentBodyBytes {
		rest, done, err := q.enqueueSegment(ctx, h, js, body)
		if err != nil {
			return "", err
		}
		if rest == nil {
			q.enqueued.Add(1)
			q.maintain()
			return h.ID, nil
		}
		defer done()
		body = rest
	}

	w, err := q.create(h.ID)
	if err != nil {
		return "", err
	}
	defer w.abort()
	// The fixed header is written twice: zeros now, the body's length and
	// CRC (and the header CRC) once the body is in.
	if err := w.write(make([]byte, fixedLen), js); err != nil {
		return "", err
	}
	n, crc, err := w.copyBody(ctx, body, q.opts.MaxBodyBytes)
	if err != nil {
		return "", err
	}
	if _, err := w.f.WriteAt(fixedHeader(js, n, crc), 0); err != nil {
		return "", storageErr("write queue file", err)
	}
	m := newMessage(h, n)
	if err := q.commit(w, &m, true); err != nil {
		return "", err
	}
	q.enqueued.Add(1)
	return h.ID, nil
}

// reserve counts an Enqueue or Import (of id) against MaxMessages.
func (q *Queue) reserve(id ID) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if n := len(q.entries) + q.reserved; n >= q.opts.MaxMessages {
		return fmt.Errorf("queue holds %d messages, at most %d: %w", n, q.opts.MaxMessages, ErrNoSpace)
	}
	if id != "" {
		if q.entries[id] != nil || q.importing[id] {
			return fmt.Errorf("%s: %w", id, ErrExists)
		}
		q.importing[id] = true
	}
	q.reserved++
	return nil
}

func (q *Queue) unreserve(id ID) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.reserved--
	delete(q.importing, id)
}

// spoolFile is a message file being written under its temporary name.
type spoolFile struct {
	q         *Queue
	id        ID
	f         File
	renamed   bool // the file has its final name
	committed bool
}

// create starts a message file under a temporary name.
func (q *Queue) create(id ID) (*spoolFile, error) {
	f, err := q.fs.OpenFile(tmpName(id), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, storageErr("create queue file", err)
	}
	return &spoolFile{q: q, id: id, f: f}, nil
}

func (w *spoolFile) write(bufs ...[]byte) error {
	for _, b := range bufs {
		if _, err := w.f.Write(b); err != nil {
			return storageErr("write queue file", err)
		}
	}
	return nil
}

// copyBody streams the body into the file and returns its length and CRC.
func (w *spoolFile) copyBody(ctx context.Context, body io.Reader, limit int64) (int64, uint32, error) {
	cw := &crcWriter{w: w.f}
	buf := make([]byte, 64<<10)
	n, err := io.CopyBuffer(cw, io.LimitReader(ctxReader{ctx, body}, limit+1), buf)
	switch {
	case cw.err != nil:
		return 0, 0, storageErr("write queue file", cw.err)
	case err != nil:
		return 0, 0, fmt.Errorf("read message body: %w", err)
	case n > limit:
		return 0, 0, fmt.Errorf("body over %d bytes: %w", limit, ErrTooLarge)
	}
	return n, cw.crc, nil
}

// abort removes the file unless it was committed.
func (w *spoolFile) abort() {
	if w.committed {
		return
	}
	if w.f != nil {
		closeQuietly(w.f)
	}
	name := tmpName(w.id)
	if w.renamed {
		name = msgName(w.id)
	}
	if err := w.q.fs.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		w.q.opts.Logger.Warn("Cannot remove uncommitted queue file", "file", name, "error", err)
	}
}

// commit makes the written file durable under its final name and indexes
// m: fsync the file, rename it into place, fsync the directory (shared).
// Until the directory fsync returns, a crash may lose the message, and the
// caller has not been told it is queued. fresh: Enqueue accepted it, so it
// counts as untaken until first leased.
func (q *Queue) commit(w *spoolFile, m *Message, fresh bool) error {
	q.fileSyncs.Add(1)
	if err := w.f.Sync(); err != nil {
		return storageErr("sync queue file", err)
	}
	err := w.f.Close()
	w.f = nil
	if err != nil {
		return storageErr("close queue file", err)
	}
	if err := q.fs.Rename(tmpName(w.id), msgName(w.id)); err != nil {
		return storageErr("commit queue file", err)
	}
	w.renamed = true
	if err := q.group.wait(); err != nil {
		return storageErr("sync queue directory", err)
	}
	e := newEntry(m)
	q.mu.Lock()
	q.setSummary(e, m)
	q.entries[m.ID] = e
	q.markUntaken(e, fresh)
	q.mu.Unlock()
	w.committed = true
	q.signal()
	return nil
}

// closeQuietly closes what was only read, or what is abandoned after an
// error that is already being reported.
func closeQuietly(c io.Closer) { _ = c.Close() }

// signal wakes a waiter on Changed.
func (q *Queue) signal() {
	select {
	case q.changed <- struct{}{}:
	default:
	}
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// crcWriter computes the CRC of what it writes and keeps the write error
// apart from the read error of io.Copy.
type crcWriter struct {
	w   io.Writer
	crc uint32
	err error
}

func (c *crcWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.crc = crc32.Update(c.crc, castagnoli, p[:n])
	if err != nil {
		c.err = err
	}
	return n, err
}

// Stats are counters for metrics and tests.
type Stats struct {
	Messages int   // messages in the queue
	Held     int   // of which on hold
	Leased   int   // of which being delivered
	Bytes    int64 // body bytes in the queue
	// Oldest is the earliest Arrival of a message in the queue; zero when
	// the queue is empty.
	Oldest time.Time
	// The segment files: how many, their bytes on disk, and of those the
	// bytes of the messages whose current record is in them (the rest
	// comes back only when a segment is removed or compacted:
	// docs/design.md, "The queue").
	Segments         int
	SegmentBytes     int64
	SegmentLiveBytes int64
	// Untaken is how many messages Enqueue accepted that no delivery has
	// taken yet (Queue.Untaken).
	Untaken int
	// Damaged is what Open found damaged on disk and could not read
	// (records of segments known to have been written whole, segments and
	// message files set aside): messages lost to the disk, never a torn
	// write of a crash, which loses nothing acknowledged.
	Damaged int
	// Since Open:
	Enqueued  uint64 // Enqueue calls that returned an ID
	FileSyncs uint64 // fsyncs of message and segment files
	DirSyncs  uint64 // fsyncs of the directory
}

// Stats returns the current counters.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	s := Stats{Messages: len(q.entries)}
	for _, e := range q.entries {
		if e.held {
			s.Held++
		}
		if e.leased {
			s.Leased++
		}
		s.Bytes += e.size
		if s.Oldest.IsZero() || e.arrival.Before(s.Oldest) {
			s.Oldest = e.arrival
		}
	}
	for _, sg := range q.segs {
		s.Segments++
		s.SegmentBytes += sg.size.Load()
		s.SegmentLiveBytes += sg.liveBytes
	}
	q.mu.Unlock()
	s.Untaken = q.Untaken()
	s.Enqueued = q.enqueued.Load()
	s.Damaged = q.damaged
	s.FileSyncs = q.fileSyncs.Load()
	s.DirSyncs = q.dirSyncs.Load()
	return s
}

// Changed returns a channel that receives when a message may have become
// due: one was enqueued, released, flushed, or given back by a Lease. The
// delivery loop waits on it and on a timer set to NextDue.
func (q *Queue) Changed() <-chan struct{} { return q.changed }

// Due returns up to limit messages that are due at now (a pending
// recipient's next attempt has come), neither held nor leased, taking
// turns between teams (Options.Team) and, within a team, between its
// tenants (Envelope.Tenant): the teams in the order of their earliest due
// message, one message of each per round, from its tenants in turn, each
// tenant's earliest first. A sender with a backlog of thousands therefore
// takes half of each batch while one other sender has mail due, not all
// of it: the first of the two layers of fairness (docs/design.md,
// "Traffic shaping"); with one tenant it is earliest first.
//
// Under a backlog most of the queue is due and the delivery loop asks for
// a batch at a time: the limit earliest of each tenant are kept in a
// bounded heap, so a call costs O(n log limit) rather than a sort of every
// due message.
func (q *Queue) Due(now time.Time, limit int) []ID {
	if limit <= 0 {
		return []ID{}
	}
	// Candidates are appended, and a tenant's made a heap only once full,
	// so that no candidate is boxed by heap.Push.
	var (
		tenants []dueTenant
		index   = map[string]int{}
		last    = -1
	)
	q.mu.Lock()
	for _, e := range q.entries {
		if e.held || e.leased || e.pending == 0 || e.nextDue.After(now) {
			continue
		}
		// Most of a backlog is one tenant's: ask the map only when the
		// tenant changes.
		if last < 0 || tenants[last].name != e.tenant {
			k, ok := index[e.tenant]
			if !ok {
				k = len(tenants)
				index[e.tenant] = k
				tenants = append(tenants, dueTenant{name: e.tenant})
			}
			last = k
		}
		h := &tenants[last].heap
		c := dueCandidate{e.id, e.nextDue}
		switch {
		case len(*h) < limit:
			*h = append(*h, c)
			if len(*h) == limit {
				heap.Init(h)
			}
		case c.compare((*h)[0]) < 0:
			(*h)[0] = c
			heap.Fix(h, 0)
		}
	}
	q.mu.Unlock()
	for k := range tenants {
		slices.SortFunc(tenants[k].heap, dueCandidate.compare)
	}
	slices.SortFunc(tenants, func(a, b dueTenant) int {
		return cmp.Or(a.heap[0].compare(b.heap[0]), strings.Compare(a.name, b.name))
	})
	// Teams in the order of their earliest due message, each team's
	// tenants in the order of theirs.
	var teams []*dueTeam
	byName := map[string]*dueTeam{}
	for k := range tenants {
		name := tenants[k].name
		if q.opts.Team != nil {
			name = q.opts.Team(name)
		}
		t := byName[name]
		if t == nil {
			t = &dueTeam{}
			byName[name] = t
			teams = append(teams, t)
		}
		t.tenants = append(t.tenants, &tenants[k])
	}
	// Rounds: one message of each team, from its tenants in turn.
	ids := make([]ID, 0, limit)
	for len(ids) < limit {
		took := false
		for _, t := range teams {
			if len(ids) == limit {
				break
			}
			if c, ok := t.next(); ok {
				ids = append(ids, c.id)
				took = true
			}
		}
		if !took {
			break
		}
	}
	return ids
}

// dueTenant is one tenant's due candidates, and how many of them a call
// of Due took so far.
type dueTenant struct {
	name  string
	heap  dueHeap
	taken int
}

// dueTeam is the tenants of one team, taken in turn.
type dueTeam struct {
	tenants []*dueTenant
	turn    int // the tenant whose turn is next
}

// next returns the team's next candidate: the earliest not yet taken of
// the next tenant in turn that has one.
func (t *dueTeam) next() (dueCandidate, bool) {
	for range t.tenants {
		tn := t.tenants[t.turn]
		t.turn = (t.turn + 1) % len(t.tenants)
		if tn.taken < len(tn.heap) {
			tn.taken++
			return tn.heap[tn.taken-1], true
		}
	}
	return dueCandidate{}, false
}

// dueCandidate is a message Due may return.
type dueCandidate struct {
	id  ID
	due time.Time
}

// compare orders by due time, then ID.
func (a dueCandidate) compare(b dueCandidate) int {
	return cmp.Or(a.due.Compare(b.due), strings.Compare(string(a.id), string(b.id)))
}

// dueHeap is a max-heap (container/heap) of candidates: its root is the
// latest of those kept, the first to give way to an earlier one.
type dueHeap []dueCandidate

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].compare(h[j]) > 0 }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)        { *h = append(*h, x.(dueCandidate)) }
func (h *dueHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	*h = old[:len(old)-1]
	return c
}

// NextDue returns the earliest time a message that is neither held nor
// leased is due, and false when there is none.
func (q *Queue) NextDue() (time.Time, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var next time.Time
	found := false
	for _, e := range q.entries {
		if !e.held && !e.leased && e.pending > 0 && (!found || e.nextDue.Before(next)) {
			next, found = e.nextDue, true
		}
	}
	return next, found
}

// jitter returns a uniform number in [0, 1) for Retry.Delay.
func (q *Queue) jitter() float64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.opts.Rand.Float64()
}

// bodyReader reads a message body and checks its CRC at the end.
type bodyReader struct {
	r     *io.SectionReader
	crc   uint32
	want  uint32
	close func() error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.crc = crc32.Update(b.crc, castagnoli, p[:n])
	if errors.Is(err, io.EOF) && b.crc != b.want {
		return n, fmt.Errorf("body checksum mismatch: %w", ErrCorrupt)
	}
	return n, err
}

func (b *bodyReader) Close() error { return b.close() }

// Body opens the body of message id. The reader returns an error wrapping
// ErrCorrupt instead of io.EOF when the body does not match its checksum.
// It reads the file as it was when opened, whatever happens to the message
// later.
func (q *Queue) Body(ctx context.Context, id ID) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	q.mu.Lock()
	e := q.entries[id]
	q.mu.Unlock()
	if e != nil && e.inSeg {
		return q.segBody(e)
	}
	f, err := q.fs.OpenFile(msgName(id), os.O_RDONLY, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: %w", id, ErrNotFound)
		}
		return nil, err
	}
	_, l, err := q.decodeOpen(f, id)
	if err != nil {
		closeQuietly(f)
		return nil, err
	}
	return &bodyReader{r: io.NewSectionReader(f, l.headerLen, l.bodyLen), want: l.bodyCRC, close: f.Close}, nil
}
