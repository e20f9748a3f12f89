package notify

import (
	"context"
	"encoding/json"
	"os"
)

func (n *Notifier) writeLoop(ctx context.Context) {
	batch := make([]item, 0, writeBatch)
	for {
		select {
		case it := <-n.in:
			batch = n.drain(append(batch[:0], it))
			n.write(batch)
		case <-n.retireWake:
			n.retireSegments()
		case <-ctx.Done():
			// Keep what Observe buffered; the loop ends because Observe
			// callers are gone by now or the buffer holds at most its size.
			for range cap(n.in)/writeBatch + 1 {
				batch = n.drain(batch[:0])
				if len(batch) == 0 {
					return
				}
				n.write(batch)
			}
			return
		}
	}
}

// drain adds what the buffer holds, up to about writeBatch notifications.
func (n *Notifier) drain(batch []item) []item {
	count := 0
	for _, it := range batch {
		count += len(it.recs)
	}
	for count < writeBatch {
		select {
		case it := <-n.in:
			batch = append(batch, it)
			count += len(it.recs)
		default:
			return batch
		}
	}
	return batch
}

// write appends a batch to the queues' journals, with one fsync per queue.
func (n *Notifier) write(batch []item) {
	defer func() {
		for _, it := range batch {
			n.buffered.Add(-int64(len(it.recs)))
		}
	}()
	var order []string
	byQueue := map[string][]item{}
	for _, it := range batch {
		if _, ok := byQueue[it.queue]; !ok {
			order = append(order, it.queue)
		}
		byQueue[it.queue] = append(byQueue[it.queue], it)
	}
	for _, name := range order {
		items := byQueue[name]
		q, err := n.queueFor(name)
		if err != nil {
			n.log.Error("Webhook journal unavailable", "domain", name, "error", err)
			n.m.count(resultJournalError, len(items))
			continue
		}
		n.appendItems(q, items)
	}
}

// queueFor returns the queue of a domain, creating it (and starting its
// sender) the first time.
func (n *Notifier) queueFor(name string) (*outbox, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if q := n.queues[name]; q != nil {
		return q, nil
	}
	fsys, err := n.opts.fs.Queue(name)
	if err != nil {
		return nil, err
	}
	q := &outbox{name: name, fs: fsys, wake: make(chan struct{}, 1)}
	n.queues[name] = q
	if n.runCtx != nil {
		n.startSender(q)
	}
	return q, nil
}

// appendItems writes items to q's active segment, starting a new segment
// when it is full, and commits them after fsync.
func (n *Notifier) appendItems(q *outbox, items []item) {
	var buf []byte
	count, reserved := 0, int64(0)
	for _, it := range items {
		for _, rec := range it.recs {
			p, err := json.Marshal(rec)
			if err != nil || len(p) == 0 || len(p) > maxRecord {
				n.log.Error("Webhook notification cannot be journaled", "domain", q.name, "job", rec.Job.JobID, "size", len(p), "error", err)
				n.m.count(resultJournalError, 1)
				continue
			}
			size := int64(recordHeader + len(p))
			domainBytes := q.pendingBytes()
			if n.diskBytes.Load()+reserved+size > n.opts.MaxJournalBytes || domainBytes+reserved+size > n.opts.MaxDomainJournalBytes {
				n.m.count(resultJournalFull, 1)
				n.logDrop(n.opts.Now(), "journal full")
				continue
			}
			if q.active == nil || (q.active.size+int64(len(buf))+size > n.opts.SegmentBytes && q.active.size+int64(len(buf)) > 0) {
				n.flush(q, buf, count)
				buf, count = buf[:0], 0
				if err := n.roll(q); err != nil {
					n.log.Error("Webhook journal segment cannot be created", "domain", q.name, "error", err)
					n.m.count(resultJournalError, 1)
					continue
				}
			}
			buf = appendRecord(buf, p)
			count++
			reserved += size
		}
	}
	n.flush(q, buf, count)
}

// flush writes buf (count records) to q's active segment and commits it.
func (n *Notifier) flush(q *outbox, buf []byte, count int) {
	if count == 0 || q.active == nil {
		return
	}
	s := q.active
	_, err := s.f.Write(buf)
	if err == nil {
		err = s.f.Sync()
	}
	if err != nil {
		n.log.Error("Webhook journal write failed", "domain", q.name, "error", err)
		n.m.count(resultJournalError, count)
		// What was written past the committed end is not counted; cut it
		// off and leave the segment, the next write starts a new one.
		if t, ok := s.f.(truncater); ok {
			_ = t.Truncate(s.end)
		}
		q.mu.Lock()
		n.closeActive(q)
		q.mu.Unlock()
		return
	}
	q.mu.Lock()
	s.end += int64(len(buf))
	s.size += int64(len(buf))
	s.count += count
	q.pending += count
	q.mu.Unlock()
	n.diskBytes.Add(int64(len(buf)))
	n.pendingDisk.Add(int64(count))
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// roll starts a new active segment; the directory is synced so that the
// new file survives a crash with the records in it.
func (n *Notifier) roll(q *outbox) error {
	id := q.lastID + 1
	name := segmentName(id)
	f, err := q.fs.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	if err := q.fs.SyncDir(); err != nil {
		// Records in a file whose name may not survive a crash must not
		// count as journaled.
		_ = f.Close()
		_ = q.fs.Remove(name)
		return err
	}
	q.mu.Lock()
	n.closeActive(q)
	s := &segment{id: id, name: name, f: f}
	q.segs = append(q.segs, s)
	q.lastID = id
	q.active = s
	q.mu.Unlock()
	return nil
}

// closeActive ends the writer's use of q's active segment; q.mu is held
// (or the writer is gone).
func (n *Notifier) closeActive(q *outbox) {
	if q.active == nil {
		return
	}
	if q.active.f != nil {
		_ = q.active.f.Close()
		q.active.f = nil
	}
	q.active = nil
}

// retireSegments closes the active segments the senders have read to the
// end, so that they can delete them; the next write starts a new segment.
func (n *Notifier) retireSegments() {
	n.mu.Lock()
	qs := make([]*outbox, 0, len(n.queues))
	for _, q := range n.queues {
		qs = append(qs, q)
	}
	n.mu.Unlock()
	for _, q := range qs {
		q.mu.Lock()
		if !q.retire {
			q.mu.Unlock()
			continue
		}
		q.retire = false
		a := q.active
		done := a != nil && q.cursor.seg == a.id && q.cursor.off >= a.end
		if done {
			n.closeActive(q)
		}
		q.mu.Unlock()
		if done {
			select {
			case q.wake <- struct{}{}:
			default:
			}
		}
	}
}
