package notify

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postgate/postgate/internal/relay/delivery"
	"github.com/postgate/postgate/internal/routing"
)

// Defaults of Options.
const (
	DefaultBufferSize      = 10000
	DefaultBatchSize       = 100
	DefaultRequestTimeout  = 10 * time.Second
	DefaultMinBackoff      = 2 * time.Second
	DefaultMaxBackoff      = 5 * time.Minute
	DefaultMaxAge          = 48 * time.Hour
	DefaultMaxRejections   = 8
	DefaultMaxJournalBytes = 100 << 20
	DefaultSegmentBytes    = 4 << 20
)

const (
	// maxResponseBody is how much of a response is read (and discarded, so
	// that the connection can be reused); the rest is cut off.
	maxResponseBody = 64 << 10
	// writeBatch bounds how many notifications the writer takes from the
	// buffer before one fsync per queue (whole attempts: it may pass it by
	// one attempt's recipients).
	writeBatch = 1000
	// retireBytes is the size from which a segment the sender has read to
	// its end is closed and deleted even though the writer could go on
	// appending to it.
	retireBytes = 64 << 10
	// dropLogInterval spaces the log lines about dropped notifications.
	dropLogInterval = 10 * time.Second
	userAgent       = "postgate-relay"
)

// Options configure a Notifier.
type Options struct {
	// Dir is the journal's directory, such as <spool>/notify; created 0700.
	// Required.
	Dir string
	// Tables gives the routing table in force: the webhook URL and key of a
	// domain are read from it when a notification is queued and again when
	// it is sent. Required.
	Tables delivery.TableSource
	// Allow lists address ranges webhooks may reach even though they are
	// loopback, link-local, metadata, unspecified or multicast (an operator
	// flag). The relay's own listeners (Self) stay refused.
	Allow []netip.Prefix
	// Self are the relay's own listen addresses (metrics, probes, admin
	// API): never a webhook. An unspecified address (0.0.0.0:9090) stands
	// for that port on every local address.
	Self []netip.AddrPort
	// RootCAs verifies receivers' certificates; the system pool when nil.
	RootCAs *x509.CertPool
	// Now is the clock of timestamps and ages; time.Now when nil.
	Now func() time.Time
	// Logger; slog.Default() when nil.
	Logger *slog.Logger
	// Registerer gets the metrics; when nil they are kept on a registry of
	// their own (never the global one).
	Registerer prometheus.Registerer

	// BufferSize bounds the notifications waiting in memory to be written
	// to the journal; DefaultBufferSize when zero.
	BufferSize int
	// BatchSize bounds the notifications in one request; DefaultBatchSize
	// when zero.
	BatchSize int
	// RequestTimeout bounds one request, connection included;
	// DefaultRequestTimeout when zero.
	RequestTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait after a failed request: it
	// starts at MinBackoff and doubles up to MaxBackoff; DefaultMinBackoff
	// and DefaultMaxBackoff when zero.
	MinBackoff, MaxBackoff time.Duration
	// MaxAge is how long a notification is retried before it is dropped;
	// DefaultMaxAge (the queue lifetime of mail) when zero.
	MaxAge time.Duration
	// MaxRejections is how many times in a row a receiver may refuse one
	// request with a 4xx (but 408, 425, 429) before its notifications are
	// dropped, so that one request the receiver will never take does not
	// hold up the domain's later ones for MaxAge; DefaultMaxRejections
	// when zero. The tries are MinBackoff, doubling, apart.
	MaxRejections int
	// MaxJournalBytes caps the journal's disk use; notifications that would
	// exceed it are dropped. DefaultMaxJournalBytes when zero.
	MaxJournalBytes int64
	// MaxDomainJournalBytes caps one sender domain's share of the journal,
	// so that a receiver that stays down cannot fill it for the others;
	// MaxJournalBytes/4 when zero.
	MaxDomainJournalBytes int64
	// SegmentBytes is the size after which the writer starts a new segment
	// file (space is given back a segment at a time);
	// DefaultSegmentBytes when zero.
	SegmentBytes int64

	// fs is how the journal reaches Dir; the real directory when nil
	// (tests set a crash filesystem).
	fs journalFS
}

// Notifier sends delivery notifications to the webhooks of sender domains.
// It implements delivery.Observer.
type Notifier struct {
	opts   Options
	log    *slog.Logger
	m      *metrics
	client *http.Client
	in     chan item
	// retireWake tells the writer that an outbox wants its active segment
	// closed.
	retireWake chan struct{}

	diskBytes   atomic.Int64 // journal size
	pendingDisk atomic.Int64 // journaled, not yet acknowledged or dropped
	buffered    atomic.Int64 // notifications in the buffer (n.in) or being written
	lastDropLog atomic.Int64 // Unix nanoseconds of the last "dropping" log line
	dropsUnlogd atomic.Int64 // drops since that line

	mu      sync.Mutex
	queues  map[string]*outbox
	runCtx  context.Context // set by Run: the writer starts senders of new queues with it
	senders sync.WaitGroup
}

var _ delivery.Observer = (*Notifier)(nil)

// item is one attempt's notifications on their way to the journal. They
// travel together so that the writer journals them in one append and the
// sender finds them all at once: one request per message and attempt, as
// the receivers of the reference format expect, never a part of it.
type item struct {
	queue string
	recs  []record
}

// record is a journal record.
type record struct {
	// Enqueued is when Observe saw the outcome, in Unix milliseconds: the
	// start of MaxAge.
	Enqueued int64 `json:"t"`
	// Domain is the SenderDomain the mail was sent as: the notification goes
	// to that object's webhook only, not to a later owner of the domain.
	Domain routing.ObjectKey `json:"domain"`
	Job    BodyMeta          `json:"job"`
	N      Notification      `json:"n"`
}

// New opens (or creates) the journal in opts.Dir and counts what is pending
// there; Run sends it.
func New(opts Options) (*Notifier, error) {
	if opts.Dir == "" {
		return nil, errors.New("notify: Dir is required")
	}
	if opts.Tables == nil {
		return nil, errors.New("notify: Tables is required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	setDefault(&opts.BufferSize, DefaultBufferSize)
	setDefault(&opts.BatchSize, DefaultBatchSize)
	setDefault(&opts.RequestTimeout, DefaultRequestTimeout)
	setDefault(&opts.MinBackoff, DefaultMinBackoff)
	setDefault(&opts.MaxBackoff, DefaultMaxBackoff)
	setDefault(&opts.MaxAge, DefaultMaxAge)
	setDefault(&opts.MaxRejections, DefaultMaxRejections)
	setDefault(&opts.MaxJournalBytes, DefaultMaxJournalBytes)
	setDefault(&opts.SegmentBytes, DefaultSegmentBytes)
	setDefault(&opts.MaxDomainJournalBytes, opts.MaxJournalBytes/4)
	opts.MaxBackoff = max(opts.MaxBackoff, opts.MinBackoff)
	if opts.fs == nil {
		if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("notify: %w", err)
		}
		opts.fs = dirJournal{opts.Dir}
	}

	n := &Notifier{
		opts:       opts,
		log:        opts.Logger,
		in:         make(chan item, opts.BufferSize),
		retireWake: make(chan struct{}, 1),
		queues:     map[string]*outbox{},
	}
	n.client = newClient(newGuard(opts.Allow, opts.Self), opts.RootCAs, opts.RequestTimeout)
	m, err := newMetrics(opts.Registerer, n)
	if err != nil {
		return nil, fmt.Errorf("notify: metrics: %w", err)
	}
	n.m = m
	if err := n.open(); err != nil {
		return nil, fmt.Errorf("notify: %w", err)
	}
	return n, nil
}

func setDefault[T int | int64 | time.Duration](v *T, d T) {
	if *v <= 0 {
		*v = d
	}
}

// newClient returns the HTTP client of webhooks: no proxy (the guard must
// see the receiver's address), no redirects (a redirect could lead past
// the URL the domain's owner configured), bounded everywhere.
func newClient(g *guard, roots *x509.CertPool, timeout time.Duration) *http.Client {
	dialer := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second, Control: g.control}
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                  nil,
			DialContext:            dialer.DialContext,
			TLSClientConfig:        &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots},
			TLSHandshakeTimeout:    timeout,
			ResponseHeaderTimeout:  timeout,
			MaxIdleConns:           100,
			MaxIdleConnsPerHost:    2,
			IdleConnTimeout:        90 * time.Second,
			MaxResponseHeaderBytes: 64 << 10,
			ForceAttemptHTTP2:      true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// open loads the queues found in Dir.
func (n *Notifier) open() error {
	names, err := n.opts.fs.Queues()
	if err != nil {
		return err
	}
	for _, name := range names {
		if !validName(name) {
			continue
		}
		q, err := n.openQueue(name)
		if err != nil {
			return fmt.Errorf("queue %s: %w", name, err)
		}
		n.queues[q.name] = q
	}
	return nil
}

// openQueue loads one queue directory: it deletes the segments the cursor
// is past and counts the records after it.
//
// Segment numbers only grow, across restarts too: the next new segment is
// numbered after both the segments found and the one the cursor names, even
// when that one is gone (read to its end and deleted). A new segment that
// took the cursor's number would be read from the cursor's offset, past its
// records, and deleted at the next start as if they had been sent.
func (n *Notifier) openQueue(name string) (*outbox, error) {
	fsys, err := n.opts.fs.Queue(name)
	if err != nil {
		return nil, err
	}
	q := &outbox{name: name, fs: fsys, wake: make(chan struct{}, 1)}
	cur, err := readCursor(fsys)
	if err != nil {
		n.log.Warn("Webhook journal cursor unreadable, resending the queue", "domain", name, "error", err)
		cur = position{}
	}
	ids, err := listSegments(fsys)
	if err != nil {
		return nil, err
	}
	q.cursor = cur
	q.lastID = cur.seg
	for _, id := range ids {
		sname := segmentName(id)
		q.lastID = max(q.lastID, id)
		if id < cur.seg {
			// Acknowledged; a crash came between the cursor and the delete.
			_ = fsys.Remove(sname)
			continue
		}
		off := int64(0)
		if id == cur.seg {
			off = cur.off
		}
		res, err := scanSegment(fsys, sname, off)
		if errors.Is(err, errNotSegment) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if !res.boundary {
			// The cursor cannot belong to this file: it points past the
			// readable records or into one. Sending the segment again
			// costs duplicates, which receivers handle; trusting the
			// cursor could lose notifications.
			n.log.Warn("Webhook journal cursor does not fit its segment, resending the segment", "domain", name,
				"segment", segmentName(id), "offset", off, "readable", res.end)
			if res, err = scanSegment(fsys, sname, 0); err != nil {
				return nil, err
			}
			off = 0
		}
		if res.err != nil {
			// A cut-short last record is what a crash leaves; either way
			// what follows cannot be read, and this is no reason not to
			// start.
			n.log.Warn("Webhook journal segment damaged, skipping its end", "domain", name, "segment", segmentName(id),
				"offset", res.end, "size", res.size, "error", res.err)
			n.m.count(resultCorrupt, 1)
		}
		if len(q.segs) == 0 {
			q.cursor = position{id, off}
		}
		q.segs = append(q.segs, &segment{id: id, name: sname, end: res.end, size: res.size, count: res.count})
		q.pending += res.count
		n.diskBytes.Add(res.size)
		n.pendingDisk.Add(int64(res.count))
	}
	return q, nil
}

// Observe queues one notification per recipient of the attempt whose
// sender domain has a webhook. It never blocks: when the buffer is full the
// notification is dropped and counted.
func (n *Notifier) Observe(a delivery.Attempt) {
	if a.Domain == nil || a.Sender == "" {
		return
	}
	name := domainOf(a.Sender)
	if !validName(name) {
		return
	}
	t := n.opts.Tables.Table()
	if t == nil {
		return
	}
	d := t.Domain(name)
	if d == nil || d.Webhook == nil || d.Object.Key() != a.Domain.Key() {
		return
	}
	now := n.opts.Now()
	if a.End.IsZero() {
		a.End = now
	}
	job := BodyMeta{Account: d.Account, CustomerNo: d.CustomerNo, Tenant: d.Object.Namespace,
		ReceivedTs: formatTime(a.Arrival), JobID: string(a.QueueID), Version: "1"}
	var recs []record
	for i := range a.Recipients {
		nt, ok := notificationOf(&a, &a.Recipients[i])
		if !ok {
			continue
		}
		recs = append(recs, record{Enqueued: now.UnixMilli(), Domain: a.Domain.Key(), Job: job, N: nt})
	}
	if len(recs) == 0 {
		return
	}
	// BufferSize bounds notifications, not attempts.
	if n.buffered.Add(int64(len(recs))) <= int64(n.opts.BufferSize) {
		select {
		case n.in <- item{queue: name, recs: recs}:
			return
		default:
		}
	}
	n.buffered.Add(-int64(len(recs)))
	n.m.count(resultBufferFull, len(recs))
	n.logDrop(now, "buffer full")
}

// logDrop logs drops at most once per dropLogInterval, with the count since
// the last line, so that a full buffer does not flood the log.
func (n *Notifier) logDrop(now time.Time, reason string) {
	n.dropsUnlogd.Add(1)
	last := n.lastDropLog.Load()
	if now.UnixNano()-last < int64(dropLogInterval) || !n.lastDropLog.CompareAndSwap(last, now.UnixNano()) {
		return
	}
	n.log.Warn("Dropping webhook notifications", "reason", reason, "dropped", n.dropsUnlogd.Swap(0))
}

func domainOf(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return ""
	}
	return strings.ToLower(addr[i+1:])
}

// Run writes the journal and sends notifications until ctx ends. What is
// in the buffer then is still written to the journal before Run returns.
func (n *Notifier) Run(ctx context.Context) error {
	n.mu.Lock()
	if n.runCtx != nil {
		n.mu.Unlock()
		return errors.New("notify: Run called twice")
	}
	n.runCtx = ctx
	for _, q := range n.queues {
		n.startSender(q)
	}
	n.mu.Unlock()

	n.writeLoop(ctx)
	n.senders.Wait()
	n.mu.Lock()
	for _, q := range n.queues {
		n.closeActive(q)
		if c, ok := q.fs.(io.Closer); ok {
			_ = c.Close()
		}
	}
	n.mu.Unlock()
	n.client.CloseIdleConnections()
	return nil
}

// startSender starts q's sender; n.mu is held.
func (n *Notifier) startSender(q *outbox) {
	n.senders.Add(1)
	go func() {
		defer n.senders.Done()
		n.sendLoop(n.runCtx, q)
	}()
}
