package delivery

// Traffic shaping in MX delivery (docs/design.md, "Traffic shaping",
// "Using it in delivery"): the first step, behind Options.Shaping. A site
// is asked before each connection and each transaction; a refusal or a
// suspension defers the destination's recipients without a connection and
// without counting an attempt against them, and a throttle reply suspends
// the site.

import (
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/shaping"
)

// shapingRetry is when recipients refused for a limit that ends with an
// event rather than at a time (Connections: a release) are due again. The
// design's next step waits for the release in the site's FairQueue
// instead; until then a short deferral without attempt costs nothing.
const shapingRetry = 30 * time.Second

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
// returns the end of the suspension it began (or that was under way).
func (w *Worker) observe(d *destination, replies []queue.Reply) time.Time {
	throttled := false
	for _, r := range replies {
		if r.Code < 400 {
			// A success, or a reply of our own (code 0: a refused
			// connection, a local check): not the site's word.
			continue
		}
		if w.opts.Shaping.Observe(*d.site, shaping.Reply(r)) {
			throttled = true
		}
	}
	if !throttled {
		return time.Time{}
	}
	until, _ := w.opts.Shaping.Suspended(d.site.Name)
	if until.IsZero() {
		// A suspension of zero length: due at once, still not an attempt.
		until = w.clock.Now()
	}
	return until
}

// throttled marks the pending recipients of o to be deferred without
// attempt until the suspension's end: the throttle is the site's, not the
// message's.
func (o *outcome) throttled(until time.Time) {
	o.until = until
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
