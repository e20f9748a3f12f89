package delivery

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/routing"
)

// Worker delivers the queue's due messages: it leases each, decides its
// route from the current table, sends it and records each recipient's
// outcome. Its methods are safe for concurrent use.
type Worker struct {
	q        *queue.Queue
	tables   TableSource
	opts     Options
	logger   *slog.Logger
	clock    Clock
	resolver *Resolver
	pool     *pool
	limits   *limiter
	gates    *siteGates
	randMu   sync.Mutex
	sites    siteMap // recipient domain -> shaping site (sitemap.go)

	stopOnce sync.Once
	stopping chan struct{} // closed by Shutdown
	finished chan struct{} // closed when Run has returned

	mu      sync.Mutex
	running bool
	abort   context.CancelFunc

	// held are the messages whose last attempt was held (a RelayRoute
	// that cannot take effect), so that they go out as soon as a table
	// lets them rather than at their next retry, hours later maybe.
	heldMu sync.Mutex
	held   map[queue.ID]heldMessage
	// heldScan is the table releaseHeld last went through the held
	// messages with; nil when one was held under another table since.
	heldScan *routing.Table
}

// heldMessage is a held message's sender and the table that last held it.
type heldMessage struct {
	sender string
	table  *routing.Table
}

// New returns a worker for q that routes by the tables' current table.
func New(q *queue.Queue, tables TableSource, opts Options) (*Worker, error) {
	if q == nil || tables == nil {
		return nil, errors.New("delivery needs a queue and a table source")
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Worker{
		q: q, tables: tables, opts: opts, logger: opts.Logger, clock: opts.Clock,
		resolver: opts.Resolver,
		pool:     newPool(opts.Clock, opts.IdleTimeout, opts.MaxPerDestination),
		limits:   newLimiter(opts.MaxConnections, opts.MaxPerDestination),
		gates:    newSiteGates(opts.Clock, opts.MaxMessages),
		stopping: make(chan struct{}),
		finished: make(chan struct{}),
		held:     map[queue.ID]heldMessage{},
	}, nil
}

// Capacity is how many messages the worker delivers at once
// (Options.MaxMessages): the backlog of accepted messages at or under
// which the relay's in-flow gate counts delivery as keeping up.
func (w *Worker) Capacity() int { return w.opts.MaxMessages }

// tablePoll is how often Run looks for a first routing table.
const tablePoll = time.Second

// Run delivers until ctx ends or Shutdown is called. It waits for the
// queue's Changed signal and for the next due time, leases due messages
// (at most MaxMessages at once, in batches under load: Due sorts the
// queue) and delivers each in its own goroutine.
// Nothing is attempted before the table source has a table. When ctx
// ends, attempts under way are aborted: their connections are closed
// before the end of data, and an aborted recipient is not recorded at all
// (its schedule stays as it was), never as delivered. Run returns once
// every attempt has ended and idle connections are closed; it returns an
// error only when the queue fails (closed under it).
func (w *Worker) Run(ctx context.Context) error {
	w.mu.Lock()
	if w.running {
		w.mu.Unlock()
		return errors.New("delivery: Run called twice")
	}
	w.running = true
	actx, abort := context.WithCancel(ctx)
	w.abort = abort
	w.mu.Unlock()
	defer close(w.finished)
	defer abort()

	var wg sync.WaitGroup
	done := make(chan struct{}, w.opts.MaxMessages)
	wake := make(chan struct{}, 1)
	inFlight := 0
	// Due sorts every due message: under load, take them in batches
	// rather than one per finished delivery.
	refill := max(1, w.opts.MaxMessages/8)
	var runErr error
	for runErr == nil && ctx.Err() == nil && !w.shuttingDown() {
		var wakeAt time.Time // zero: no timer
		if w.tables.Table() == nil {
			wakeAt = w.clock.Now().Add(tablePoll)
		} else if free := w.opts.MaxMessages - inFlight; free >= refill || (free > 0 && inFlight == 0) {
			backoff := false
			for _, id := range w.q.Due(w.clock.Now(), free) {
				lease, err := w.q.Lease(actx, id)
				switch {
				case errors.Is(err, queue.ErrClosed):
					runErr = err
				case errors.Is(err, queue.ErrBusy), errors.Is(err, queue.ErrHeld), errors.Is(err, queue.ErrNotFound):
				case err != nil:
					// A file the queue cannot read: do not spin on it.
					w.logger.Error("Cannot lease queued message", "id", string(id), "error", err)
					backoff = true
				default:
					inFlight++
					wg.Go(func() {
						defer func() { done <- struct{}{} }()
						w.deliver(actx, lease)
					})
				}
			}
			if next, ok := w.q.NextDue(); ok && inFlight < w.opts.MaxMessages {
				wakeAt = next
				if backoff {
					wakeAt = later(next, w.clock.Now().Add(tablePoll))
				}
			}
		}
		if t := w.tables.Table(); t != nil && w.releaseHeld(actx, t) {
			// Something is held: look again for a table that releases it.
			if poll := w.clock.Now().Add(tablePoll); wakeAt.IsZero() || poll.Before(wakeAt) {
				wakeAt = poll
			}
		}
		var stopTimer func() bool
		if !wakeAt.IsZero() {
			stopTimer = w.clock.At(wakeAt, func() {
				select {
				case wake <- struct{}{}:
				default:
				}
			})
		}
		select {
		case <-ctx.Done():
		case <-w.stopping:
		case <-w.q.Changed():
		case <-done:
			inFlight--
		case <-wake:
		}
		if stopTimer != nil {
			stopTimer()
		}
	}
	wg.Wait()
	w.pool.closeAll()
	return runErr
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (w *Worker) shuttingDown() bool {
	select {
	case <-w.stopping:
		return true
	default:
		return false
	}
}

// Shutdown stops Run from taking more messages and waits for the attempts
// under way to finish; when ctx ends first, it aborts them (as when Run's
// context ends) and returns ctx's error once they have ended. The
// messages not attempted stay queued with their schedule.
func (w *Worker) Shutdown(ctx context.Context) error {
	w.stopOnce.Do(func() { close(w.stopping) })
	w.mu.Lock()
	running, abort := w.running, w.abort
	w.mu.Unlock()
	if !running {
		return nil
	}
	select {
	case <-w.finished:
		return nil
	case <-ctx.Done():
		abort()
		<-w.finished
		return ctx.Err()
	}
}

// deliver attempts the due recipients of a leased message, each
// destination in its own goroutine, and records each destination's
// outcome as soon as it is known.
func (w *Worker) deliver(ctx context.Context, lease *queue.Lease) {
	defer lease.Close()
	msg := lease.Message()
	due := msg.Due(w.clock.Now())
	table := w.tables.Table()
	if len(due) == 0 || table == nil {
		return
	}
	dl := table.Lookup(msg.Envelope.Author())
	body := func(ctx context.Context) (io.ReadCloser, error) { return lease.Body(ctx) }
	var wg sync.WaitGroup
	for _, d := range w.plan(&msg, due, dl) {
		wg.Go(func() {
			start := w.clock.Now()
			o := w.send(ctx, &msg, d, body)
			w.record(ctx, lease, &msg, table, dl, d, o, start)
		})
	}
	wg.Wait()
}

// noteHeld remembers whether table held the message, as the attempt left
// it, so that releaseHeld finds it.
func (w *Worker) noteHeld(msg *queue.Message, dl routing.Delivery, table *routing.Table) {
	w.heldMu.Lock()
	defer w.heldMu.Unlock()
	if dl.Hold != nil && len(msg.Pending()) > 0 {
		w.held[msg.ID] = heldMessage{sender: msg.Envelope.From, table: table}
		if table != w.heldScan {
			w.heldScan = nil // held under an older table: look again
		}
	} else {
		delete(w.held, msg.ID)
	}
}

// releaseHeld makes the held messages that table no longer holds due now.
// It reports whether some stay held.
func (w *Worker) releaseHeld(ctx context.Context, table *routing.Table) bool {
	w.heldMu.Lock()
	if table == w.heldScan {
		// Nothing to look at again: Run calls this at every wake.
		more := len(w.held) > 0
		w.heldMu.Unlock()
		return more
	}
	w.heldScan = table
	var release []queue.ID
	for id, h := range w.held {
		switch {
		case h.table == table:
		case table.Lookup(h.sender).Hold == nil:
			release = append(release, id)
			delete(w.held, id)
		default:
			w.held[id] = heldMessage{sender: h.sender, table: table}
		}
	}
	more := len(w.held) > 0
	w.heldMu.Unlock()
	for _, id := range release {
		// A message gone meanwhile (deleted) is not worth a word.
		if _, err := w.q.Flush(ctx, id); err != nil && !errors.Is(err, queue.ErrNotFound) {
			w.logger.Error("Cannot release a held message", "id", string(id), "error", err)
		}
	}
	return more
}

// record asks for DSNs, writes the outcome to the queue, logs it and tells
// the observer. An attempt aborted by shutdown records only what was
// delivered.
func (w *Worker) record(ctx context.Context, lease *queue.Lease, msg *queue.Message, table *routing.Table, dl routing.Delivery, d *destination, o *outcome, start time.Time) {
	if o.snooze {
		// Nothing was tried: the message waits for its sender's turn at
		// the site, and its history stays as it was.
		lease.Snooze(o.until)
		if w.opts.Shaping != nil && d.site != nil {
			w.opts.Shaping.NoteDeferred(*d.site, 1)
		}
		return
	}
	end := w.clock.Now()
	aborted := ctx.Err() != nil
	lifetime := dl.MaxQueueLifetime()
	expired := msg.Expired(lifetime, end)
	after := cloneMessage(msg)
	var results []queue.Result
	var bounce, relayed []int
	for i, idx := range d.rcpts {
		st, reply := o.state[i], o.reply[i]
		if aborted && st != queue.Delivered {
			continue
		}
		results = append(results, queue.Result{Recipient: idx, State: st, Reply: reply})
		if st == queue.Pending && expired {
			st = queue.Expired // as the queue will record it
		}
		after.Recipients[idx].State, after.Recipients[idx].Reply = st, reply
		if st.Final() && st != queue.Delivered && wantsDSN(msg, idx) {
			bounce = append(bounce, idx)
		}
		if st == queue.Delivered && !o.passedOn[i] && wantsRelayedDSN(msg, idx) {
			relayed = append(relayed, idx)
		}
	}
	w.shapedResults(d, o, results)
	if len(results) == 0 {
		w.logger.Info("Delivery attempt aborted, not recorded", "id", string(msg.ID), "destination", d.name())
		return
	}
	// Recording must not be cut short by the shutdown that aborted the
	// attempt: a delivered recipient recorded as nothing is sent twice.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := w.bounce(rctx, after, bounce, o, end); err != nil {
		for k, r := range results {
			if r.State == queue.Failed && slices.Contains(bounce, r.Recipient) {
				results[k].State = queue.Pending // retried, and the DSN asked for again
				after.Recipients[r.Recipient].State = queue.Pending
			}
		}
	}
	// The relayed reports too go before the record, while the message is
	// still in the queue to quote its header from (a message whose last
	// recipients the record finishes is removed with it). A crash in
	// between delivers and reports again, as for failures; a report that
	// cannot be queued is not retried (the recipient is delivered), only
	// logged.
	_ = w.bounce(rctx, after, relayed, o, end)
	updated, err := lease.Update(rctx, queue.Attempt{Lifetime: lifetime, Results: results})
	if err != nil {
		w.logger.Error("Cannot record delivery attempt", "id", string(msg.ID), "error", err)
		updated = after
	} else {
		// The queue expires a recipient by its own clock, read a moment
		// after ours: ask for the DSNs we did not foresee.
		var late []int
		for _, r := range results {
			if r.State == queue.Pending && after.Recipients[r.Recipient].State == queue.Pending &&
				updated.Recipients[r.Recipient].State == queue.Expired && wantsDSN(msg, r.Recipient) {
				late = append(late, r.Recipient)
			}
		}
		_ = w.bounce(rctx, updated, late, o, end)
	}
	w.noteHeld(&updated, dl, table)
	a := Attempt{
		QueueID: msg.ID, Arrival: msg.Arrival, Size: msg.Size,
		MessageID: msg.Envelope.MessageID, HeaderFrom: msg.Envelope.HeaderFrom, Tag: msg.Envelope.Tag,
		Sender: msg.Envelope.From, Destination: d.name(),
		RelayHost: o.host, RelayAddr: o.remote, SourceAddr: o.local,
		Reply: o.decisive, Cause: o.cause, TLS: o.tls,
		Start: start, End: end, Delay: end.Sub(msg.Arrival),
	}
	if dl.Domain != nil {
		ref := dl.Domain.Object
		a.Domain = &ref
	}
	if dl.Route != nil {
		ref := dl.Route.Object
		a.Route = &ref
	} else if dl.Hold != nil {
		ref := dl.Hold.Route
		a.Route = &ref
	}
	for _, r := range results {
		a.Recipients = append(a.Recipients, RecipientResult{
			Index: r.Recipient, Addr: msg.Envelope.To[r.Recipient].Addr,
			Status: statusOf(updated.Recipients[r.Recipient].State), Reply: r.Reply,
		})
	}
	a.summarize()
	w.noteShaping(&a, d, o)
	w.log(&a)
	if w.opts.Observer != nil {
		w.opts.Observer.Observe(a)
	}
}

// bounce asks the Bouncer for one DSN about rcpts.
func (w *Worker) bounce(ctx context.Context, msg queue.Message, rcpts []int, o *outcome, end time.Time) error {
	if len(rcpts) == 0 {
		return nil
	}
	if w.opts.Bouncer == nil {
		w.logger.Warn("No bouncer: failed recipients get no DSN", "id", string(msg.ID), "recipients", len(rcpts))
		return nil
	}
	err := w.opts.Bouncer.Bounce(ctx, Bounce{Message: msg, Recipients: rcpts, RemoteMTA: o.host, Time: end})
	switch {
	case err == nil:
	case msg.Recipients[rcpts[0]].State == queue.Delivered:
		w.logger.Error("Cannot send the relayed DSN asked for (NOTIFY=SUCCESS); the recipients are delivered", "id", string(msg.ID), "error", err)
	default:
		w.logger.Error("Cannot send DSN: recipients deferred, asked again at the next attempt", "id", string(msg.ID), "error", err)
	}
	return err
}

// wantsDSN reports whether a failure of recipient i is reported to the
// sender: never for the null sender (a DSN is not answered with a DSN,
// RFC 3461 section 6.2), nor when NOTIFY (RFC 3461 section 4.1) is given
// without FAILURE.
func wantsDSN(msg *queue.Message, i int) bool {
	if msg.Envelope.From == "" {
		return false
	}
	return msg.Envelope.To[i].Notifies("FAILURE")
}

// wantsRelayedDSN reports whether the delivery of recipient i to a next
// hop that does not offer DSN is reported to the sender: when its NOTIFY
// lists SUCCESS (RFC 3461 section 5.2.2, a "relayed" DSN), never for the
// null sender.
func wantsRelayedDSN(msg *queue.Message, i int) bool {
	return msg.Envelope.From != "" && msg.Envelope.To[i].Notifies("SUCCESS")
}

// cloneMessage returns a copy of m whose recipients can be changed.
func cloneMessage(m *queue.Message) queue.Message {
	c := *m
	c.Envelope.To = slices.Clone(m.Envelope.To)
	c.Recipients = slices.Clone(m.Recipients)
	return c
}
