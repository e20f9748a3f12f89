package notify

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/postgate/postgate/internal/routing"
	"github.com/postgate/postgate/webhook"
)

// batch is a run of records of one message, read from one segment.
type batch struct {
	recs []record
	end  position // the cursor after them
	// skip is set instead when the segment is damaged from end on.
	skip bool
	// err is set instead when the segment could not be read (an I/O
	// error, not damage): tried again after a backoff, never skipped.
	err error
}

func (n *Notifier) sendLoop(ctx context.Context, q *outbox) {
	defer func() {
		if q.cursorFile != nil {
			_ = q.cursorFile.Close()
			q.cursorFile = nil
		}
	}()
	var backoff time.Duration
	rejections := 0 // of the current batch, in a row
	for {
		b := n.next(q)
		switch {
		case b.skip:
			n.skipSegment(q, b.end)
			continue
		case b.err == nil && len(b.recs) == 0:
			select {
			case <-ctx.Done():
				return
			case <-q.wake:
			}
			continue
		}
		err := b.err
		if err == nil {
			err = n.deliver(ctx, q, b.recs)
		}
		var rej *rejectedError
		switch {
		case err == nil:
			n.ack(q, b.end, len(b.recs))
			backoff, rejections = 0, 0
			continue
		case errors.As(err, &rej):
			// The receiver refuses this request for good (a 4xx): after a
			// few tries, drop it rather than hold up every later
			// notification of the domain for MaxAge.
			if rejections++; rejections >= n.opts.MaxRejections {
				n.m.count(resultRejected, len(b.recs))
				n.log.Warn("Dropping webhook notifications", "domain", q.name, "job", b.recs[0].Job.JobID,
					"dropped", len(b.recs), "reason", fmt.Sprintf("the receiver refused them %d times: HTTP %d", rejections, rej.code))
				n.ack(q, b.end, len(b.recs))
				backoff, rejections = 0, 0
				continue
			}
		default:
			rejections = 0
		}
		backoff = min(max(2*backoff, n.opts.MinBackoff), n.opts.MaxBackoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// next reads the records after q's cursor: up to BatchSize of the same
// message, from one segment.
func (n *Notifier) next(q *outbox) batch {
	q.mu.Lock()
	n.advance(q)
	if len(q.segs) == 0 || q.cursor.off >= q.segs[0].end {
		q.mu.Unlock()
		return batch{}
	}
	s := q.segs[0]
	from, end := q.cursor.off, s.end
	q.mu.Unlock()

	// Only this goroutine deletes segments; the writer only appends past end.
	f, err := q.fs.OpenFile(s.name, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		n.log.Error("Webhook journal segment gone", "domain", q.name, "segment", segmentName(s.id))
		return batch{end: position{s.id, end}, skip: true}
	}
	if err != nil {
		// Out of file descriptors, an I/O error: the records are still
		// there, try again later.
		n.log.Error("Webhook journal segment cannot be read, will retry", "domain", q.name, "segment", segmentName(s.id), "error", err)
		return batch{err: err}
	}
	defer func() { _ = f.Close() }() // read only
	r := bufio.NewReader(io.NewSectionReader(f, from, end-from))
	b := batch{end: position{s.id, from}}
	for len(b.recs) < n.opts.BatchSize {
		p, err := readRecord(r)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil && !errors.Is(err, errTruncated) && !errors.Is(err, errCorrupt) {
			if len(b.recs) > 0 {
				break
			}
			n.log.Error("Webhook journal segment cannot be read, will retry", "domain", q.name, "segment", segmentName(s.id), "error", err)
			return batch{err: err}
		}
		var rec record
		if err == nil {
			err = json.Unmarshal(p, &rec)
		}
		if err != nil {
			if len(b.recs) > 0 {
				break // send what is good first
			}
			n.log.Error("Webhook journal record unreadable, skipping the rest of the segment", "domain", q.name,
				"segment", segmentName(s.id), "offset", b.end.off, "error", err)
			return batch{end: position{s.id, end}, skip: true}
		}
		if len(b.recs) > 0 && rec.Job.JobID != b.recs[0].Job.JobID {
			break
		}
		b.recs = append(b.recs, rec)
		b.end.off += int64(recordHeader + len(p))
	}
	return b
}

// advance moves q's cursor to the first segment and deletes the segments
// that are read to their end and no longer written; q.mu is held.
func (n *Notifier) advance(q *outbox) {
	for len(q.segs) > 0 {
		s := q.segs[0]
		if q.cursor.seg != s.id {
			q.cursor = position{s.id, 0}
		}
		if q.cursor.off < s.end {
			return
		}
		if s.f != nil {
			// Read to its end but still the writer's: ask the writer to let
			// it go once it holds retireBytes, or a domain whose receiver
			// keeps up would keep up to SegmentBytes of sent notifications
			// on disk (and against MaxJournalBytes) until the segment fills.
			// Below that, a new segment for every write (a file and two
			// fsyncs) would cost more than the space, unless space is short.
			short := n.diskBytes.Load() > n.opts.MaxJournalBytes/2
			if s.end > 0 && (s.size >= min(retireBytes, n.opts.SegmentBytes) || short) && !q.retire {
				q.retire = true
				select {
				case n.retireWake <- struct{}{}:
				default:
				}
			}
			return
		}
		if err := q.fs.Remove(s.name); err != nil && !errors.Is(err, os.ErrNotExist) {
			n.log.Error("Webhook journal segment cannot be removed", "domain", q.name, "segment", segmentName(s.id), "error", err)
			return
		}
		n.diskBytes.Add(-s.size)
		// Records behind a damaged part never counted as pending.
		n.pendingDisk.Add(-int64(s.count - s.acked))
		q.pending -= s.count - s.acked
		q.segs = q.segs[1:]
	}
}

// ack moves the cursor past count records that were sent or dropped.
func (n *Notifier) ack(q *outbox, end position, count int) {
	q.mu.Lock()
	q.cursor = end
	if len(q.segs) > 0 && q.segs[0].id == end.seg {
		q.segs[0].acked += count
		q.pending -= count
		n.pendingDisk.Add(-int64(count))
	}
	n.advance(q)
	cur := q.cursor
	q.mu.Unlock()
	var err error
	if q.cursorFile == nil {
		q.cursorFile, err = openCursor(q.fs)
	}
	if err == nil {
		err = writeCursor(q.cursorFile, cur)
	}
	if err != nil {
		n.log.Error("Webhook journal cursor cannot be written; notifications may be sent twice", "domain", q.name, "error", err)
	}
}

// skipSegment drops the unreadable rest of a segment.
func (n *Notifier) skipSegment(q *outbox, end position) {
	n.m.count(resultCorrupt, 1)
	q.mu.Lock()
	q.cursor = end
	if len(q.segs) > 0 && q.segs[0].id == end.seg {
		s := q.segs[0]
		s.end = end.off
		lost := s.count - s.acked
		s.acked = s.count
		q.pending -= lost
		n.pendingDisk.Add(-int64(lost))
	}
	n.advance(q)
	q.mu.Unlock()
}

// deliver posts one message's notifications to its domain's webhook as the
// table has it now. It reports whether they are done with: sent, or
// dropped because they are too old or their webhook is gone. With no table
// loaded yet it waits: a relay starting up must not drop what it journaled.
func (n *Notifier) deliver(ctx context.Context, q *outbox, recs []record) error {
	t := n.opts.Tables.Table()
	if t == nil {
		return errNoTable
	}
	now := n.opts.Now()
	d := t.Domain(q.name)
	var keep []Notification
	expired, gone := 0, 0
	for _, r := range recs {
		switch {
		case now.Sub(time.UnixMilli(r.Enqueued)) > n.opts.MaxAge:
			expired++
		case d == nil || d.Webhook == nil || d.Object.Key() != r.Domain:
			gone++
		default:
			keep = append(keep, r.N)
		}
	}
	if expired > 0 {
		n.m.count(resultExpired, expired)
		n.log.Warn("Dropping webhook notifications", "domain", q.name, "job", recs[0].Job.JobID, "dropped", expired,
			"reason", "not accepted within "+n.opts.MaxAge.String())
	}
	if gone > 0 {
		n.m.count(resultNoWebhook, gone)
		n.log.Warn("Dropping webhook notifications", "domain", q.name, "job", recs[0].Job.JobID, "dropped", gone,
			"reason", "the sender domain or its webhook is no longer in the routing table")
	}
	if len(keep) == 0 {
		return nil
	}
	body, err := json.Marshal(Body{Meta: recs[0].Job, Notifications: keep})
	if err != nil {
		// Cannot happen with these types; dropping beats retrying forever.
		n.m.count(resultJournalError, len(keep))
		return nil //nolint:nilerr // dropped and counted: done with
	}
	if err := n.post(ctx, d.Webhook, body); err != nil {
		if ctx.Err() == nil {
			n.log.Warn("Webhook request failed, will retry", "domain", q.name, "webhook", redact(d.Webhook.URL),
				"job", recs[0].Job.JobID, "pending", n.queued(q), "error", err)
		}
		return err
	}
	n.m.count(resultSent, len(keep))
	return nil
}

// errNoTable: no routing table is loaded yet, so nothing can be sent.
var errNoTable = errors.New("no routing table loaded yet")

// rejectedError is a 4xx answer that a retry will not change: every 4xx
// but 408 Request Timeout, 425 Too Early and 429 Too Many Requests.
type rejectedError struct{ code int }

func (e *rejectedError) Error() string { return fmt.Sprintf("receiver answered HTTP %d", e.code) }

func (n *Notifier) queued(q *outbox) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.pending
}

// post sends one signed request. Its error never holds the URL: the query
// string or path of a webhook URL often carries a token.
func (n *Notifier) post(ctx context.Context, wh *routing.Webhook, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, n.opts.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, wh.URL, bytes.NewReader(body))
	if err != nil {
		return errors.New("invalid webhook URL")
	}
	if req.URL.Scheme != "https" && req.URL.Scheme != "http" {
		return errors.New("webhook URL scheme is not http or https")
	}
	ts := strconv.FormatInt(n.opts.Now().Unix(), 10)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set(webhook.HeaderTimestamp, ts)
	req.Header.Set(webhook.HeaderSignature, webhook.Sign(wh.HMACKey, ts, body))
	start := time.Now()
	resp, err := n.client.Do(req)
	n.m.duration.Observe(time.Since(start).Seconds())
	if err != nil {
		n.m.requests.WithLabelValues("error").Inc()
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseBody))
	n.m.requests.WithLabelValues(codeClass(resp.StatusCode)).Inc()
	switch c := resp.StatusCode; {
	case c/100 == 2:
	case c/100 == 4 && c != http.StatusRequestTimeout && c != http.StatusTooEarly && c != http.StatusTooManyRequests:
		return &rejectedError{code: c}
	default:
		return fmt.Errorf("receiver answered HTTP %d", c)
	}
	return nil
}

// redact keeps the scheme and host of a URL for logs: user info, path and
// query may hold secrets.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(invalid URL)"
	}
	return u.Scheme + "://" + u.Host
}
