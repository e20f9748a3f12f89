package delivery

// Traffic shaping in MX delivery (docs/design.md, "Traffic shaping",
// "Using it in delivery"): the first step, behind Options.Shaping. A site
// is asked before each connection and each transaction; a refusal or a
// suspension defers the destination's recipients without a connection and
// without counting an attempt against them, and a throttle reply suspends
// the site.

import (
	"cmp"
	"context"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/shaping"
)

const (
	// shapingRetry is when recipients refused for a limit that ends with
	// an event rather than at a time (Connections: a release) are due
	// again, once waiting for it did not help.
	shapingRetry = 30 * time.Second
	// shapeWait is the longest one wait for a site's limit, holding the
	// site's turn: for a token due that soon, or for a connection to be
	// released. A limit that frees later defers without attempt instead,
	// which gives the worker's lease to other mail.
	shapeWait = 10 * time.Second
	// maxShapeWaits bounds the waits of one transaction.
	maxShapeWaits = 3
)

// enterSite waits for the site's turn of sender's mail (siteGates), sender
// being of team (the SenderDomain's namespace; "" for mail of no
// SenderDomain), and a slot of the worker's total. A sender with its share
// of the site's waiters already is snoozed to its expected turn.
func (w *Worker) enterSite(ctx context.Context, d *destination, team, sender string) (release func(), f *failure) {
	limit := w.opts.Shaping.Limits(*d.site).MaxConnections
	leave, overflow, err := w.gates.enter(ctx, d.site.Name, team, sender, limit)
	switch {
	case err != nil:
		return nil, abortedFailure(err)
	case leave == nil:
		f := throttleFailure(overflow, "site %s: mail of %s waits for its turn at the site's limits (%d connections on this replica) until %s",
			d.site.Name, cmp.Or(sender, "the null sender"), limit, overflow.UTC().Format(time.RFC3339))
		f.snooze = true
		return nil, f
	}
	total, err := w.limits.acquireTotal(ctx)
	if err != nil {
		leave()
		return nil, abortedFailure(err)
	}
	return func() { total(); leave() }, nil
}

// waitShaping waits for what a refusal names, holding the site's turn: a
// token due within shapeWait, or a connection released (after ending the
// site's idle sessions, which hold connections the receiver counts). It
// reports whether to ask again; false turns the refusal into a deferral.
func (w *Worker) waitShaping(ctx context.Context, d *destination, dec shaping.Decision) bool {
	now := w.clock.Now()
	deadline := now.Add(shapeWait)
	var released <-chan struct{}
	switch dec.Reason {
	case shaping.ReasonConnectionRate, shaping.ReasonMessageRate:
		if dec.Until.IsZero() || dec.Until.After(deadline) {
			return false
		}
		deadline = dec.Until
	case shaping.ReasonConnections:
		released = dec.Released
		w.pool.endSite(d.site.Name)
	default:
		return false
	}
	timer := make(chan struct{})
	stop := w.clock.At(deadline, func() { close(timer) })
	defer stop()
	select {
	case <-released:
		return true
	case <-timer:
		// A token is due, or no release came in time: asking again
		// tells which.
		return true
	case <-ctx.Done():
		return false
	}
}

// shapeSite sets d's site from its MX host names (the implicit MX being
// the domain itself) when shaping is on; RelayRoute targets are not shaped
// (the smart host is the platform's own).
func (w *Worker) shapeSite(d *destination, hosts []mxHost) {
	if w.opts.Shaping == nil || d.route != nil {
		return
	}
	names := make([]string, len(hosts))
	for i, h := range hosts {
		names[i] = h.name
	}
	site := shaping.SiteOf(names)
	d.site = &site
	w.sites.note(d.domain, site.Name)
}

// suspendedFailure returns the deferral of d's recipients while its site
// is suspended, or nil when it is not.
func (w *Worker) suspendedFailure(d *destination) *failure {
	until, reason := w.opts.Shaping.Suspended(d.site.Name)
	if until.IsZero() {
		return nil
	}
	return throttleFailure(until, "site %s suspended until %s: %s", d.site.Name, until.UTC().Format(time.RFC3339), reason)
}

// refusalFailure turns a refused admission into a deferral without
// attempt: to the suspension's end, or to when the limit frees up.
func (w *Worker) refusalFailure(d *destination, dec shaping.Decision) *failure {
	if dec.Reason == shaping.ReasonSuspended {
		if f := w.suspendedFailure(d); f != nil {
			return f
		}
	}
	until := dec.Until
	if until.IsZero() {
		until = w.clock.Now().Add(shapingRetry)
	}
	return throttleFailure(until, "site %s: limit %s reached, deferred until %s: %s", d.site.Name, dec.Reason, until.UTC().Format(time.RFC3339), dec.Detail)
}

// throttleFailure is a deferral without attempt until the given time, with
// a local 451 4.7.0 reply (RFC 3463 section 3.8: a security or policy
// status, here the relay's own policy toward the site).
func throttleFailure(until time.Time, format string, args ...any) *failure {
	f := localFailure(false, CauseThrottled, "4.7.0", format, args...)
	f.reply.Code = 451
	f.until = until
	return f
}

// observe shows the site the replies of its host; on a throttle reply it
// returns the end of the suspension it began (or that was under way), and
// which of the replies were throttle replies.
func (w *Worker) observe(d *destination, replies []queue.Reply) (until time.Time, matched []bool) {
	for i, r := range replies {
		if r.Code < 400 {
			// A success, or a reply of our own (code 0: a refused
			// connection, a local check): not the site's word.
			continue
		}
		if w.opts.Shaping.Observe(*d.site, shaping.Reply(r)) {
			if matched == nil {
				matched = make([]bool, len(replies))
			}
			matched[i] = true
		}
	}
	if matched == nil {
		return time.Time{}, nil
	}
	until, _ = w.opts.Shaping.Suspended(d.site.Name)
	if until.IsZero() {
		// A suspension of zero length: due at once, still not an attempt.
		until = w.clock.Now()
	}
	return until, matched
}

// throttled marks the pending recipients of o to be deferred without
// attempt until the suspension's end: the throttle is the site's, not the
// message's. A recipient refused for good by a reply the policy names a
// throttle reply (a provider that says "slow down" with a 5xx) is pending
// again, not bounced: the policy says what the reply means.
func (o *outcome) throttled(until time.Time, matched []bool) {
	o.until = until
	for i, m := range matched[:min(len(matched), len(o.state))] {
		if m && o.state[i] == queue.Failed {
			o.state[i] = queue.Pending
		}
	}
	if o.failed {
		o.cause = CauseThrottled
	}
}

// withUntil returns a copy of f that defers without attempt until t.
func (f *failure) withUntil(t time.Time) *failure {
	c := *f
	c.until, c.cause = t, CauseThrottled
	return &c
}

// shapedResults defers the pending results of a throttled outcome without
// attempt, and counts the deferral for the site.
func (w *Worker) shapedResults(d *destination, o *outcome, results []queue.Result) {
	if o.until.IsZero() {
		return
	}
	n := 0
	for k := range results {
		if results[k].State == queue.Pending {
			results[k].NotBefore, results[k].NoAttempt = o.until, true
			n++
		}
	}
	if n > 0 && d.site != nil && w.opts.Shaping != nil {
		w.opts.Shaping.NoteDeferred(*d.site, 1)
	}
}
