package tlsrpt

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"
)

// maxWait bounds one wait of the sending loop, so an injected clock that
// jumps is noticed.
const maxWait = time.Minute

// Run saves the counts every SaveInterval when they changed, drops the old
// days, and sends each day's reports once the day is over and its delay has
// passed. It returns when ctx ends, after a last save, with that save's
// error.
func (r *Reporter) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { r.sendLoop(ctx) })
	tick := time.NewTicker(r.opts.SaveInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return r.saveChanged()
		case <-tick.C:
			if err := r.saveChanged(); err != nil {
				r.opts.Logger.Error("TLS report counts not saved", "dir", r.opts.Dir, "err", err)
			}
			if err := r.dropOld(); err != nil {
				r.opts.Logger.Error("Old TLS report counts not removed", "dir", r.opts.Dir, "err", err)
			}
		}
	}
}

// sendLoop sends what is due, then waits for the next due time.
func (r *Reporter) sendLoop(ctx context.Context) {
	for {
		next := r.sendDue(ctx)
		wait := maxWait
		if !next.IsZero() {
			wait = min(wait, max(next.Sub(r.opts.Clock.Now()), 0))
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
	}
}

// job is one domain's report of one day.
type job struct {
	day    time.Time
	domain string
}

// jobKey is a job in Reporter.sending.
type jobKey struct{ day, domain string }

// sendDue sends every report that is due, one after the other, and returns
// when the next one is (zero when none is waiting).
func (r *Reporter) sendDue(ctx context.Context) (next time.Time) {
	now := r.opts.Clock.Now()
	var jobs []job
	later := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	r.mu.Lock()
	for key, d := range r.days {
		day, err := time.Parse(time.DateOnly, key)
		if err != nil {
			continue
		}
		for name, dom := range d.Domains {
			// A report sent on demand (Send) before the day's time
			// follows its own retries from then on.
			switch {
			case dom.Done:
			case dom.First.IsZero() && now.Before(d.SendAt):
				later(d.SendAt)
			case !dom.Next.IsZero() && now.Before(dom.Next):
				later(dom.Next)
			default:
				jobs = append(jobs, job{day: day, domain: name})
			}
		}
	}
	r.mu.Unlock()
	slices.SortFunc(jobs, func(a, b job) int {
		if c := a.day.Compare(b.day); c != 0 {
			return c
		}
		return strings.Compare(a.domain, b.domain)
	})
	for _, j := range jobs {
		if ctx.Err() != nil {
			return next
		}
		if t := r.send(ctx, j); !t.IsZero() {
			later(t)
		}
	}
	return next
}

// send makes one attempt at a report and returns when the next is due
// (zero: none, or another attempt is under way).
func (r *Reporter) send(ctx context.Context, j job) time.Time {
	key := j.day.Format(time.DateOnly)
	r.mu.Lock()
	d := r.days[key]
	if d == nil || d.Domains[j.domain] == nil || d.Domains[j.domain].Done || r.sending[jobKey{key, j.domain}] {
		// Dropped or done meanwhile, or Run and Send both at it: the
		// one under way finishes it.
		r.mu.Unlock()
		return time.Time{}
	}
	r.sending[jobKey{key, j.domain}] = true // finish clears it
	dom := d.Domains[j.domain]
	if dom.First.IsZero() {
		dom.First = r.opts.Clock.Now()
		d.dirty = true
	}
	report, err := r.reportJSON(j.day, dom)
	pending := slices.Clone(dom.Pending)
	id, file := r.reportID(dom), r.fileName(j.domain, j.day, dom)
	r.mu.Unlock()
	log := r.opts.Logger.With("domain", j.domain, "day", key, "reportID", id)
	if err != nil { // cannot happen: the state is plain data
		log.Error("TLS report not built", "err", err)
		return r.finish(key, j.domain, attempt{})
	}

	if len(pending) == 0 {
		uris, err := r.lookup(ctx, j.domain)
		var perm *noPolicyError
		switch {
		case errors.As(err, &perm):
			log.Info("TLS report not sent: the domain asks for none", "reason", err)
			return r.finish(key, j.domain, attempt{reason: "the domain asks for no reports: " + err.Error()})
		case err != nil:
			log.Info("TLS report destination lookup failed", "err", err)
			return r.finish(key, j.domain, attempt{retry: true, cut: ctx.Err() != nil, reason: err.Error()})
		}
		pending = uris
	}

	gz := gzipped(report)
	var left, sent, mailto []string
	var reasons []string
	for _, u := range pending {
		if addr, ok := strings.CutPrefix(u, "mailto:"); ok {
			mailto = append(mailto, addr)
			continue
		}
		if err := r.post(ctx, u, gz); err != nil {
			log.Info("TLS report not delivered", "rua", u, "err", err)
			left = append(left, u)
			reasons = append(reasons, u+": "+err.Error())
			continue
		}
		log.Info("TLS report delivered", "rua", u)
		sent = append(sent, u)
	}
	switch {
	case len(mailto) == 0:
	case r.opts.Submit == nil:
		log.Info("TLS report not sent by mail: reports by mail are off", "to", mailto)
		reasons = append(reasons, "mailto: reports by mail are off")
	default:
		msg := r.mailReport(mailto, j.domain, file, id, j.day, gz)
		sctx, cancel := context.WithTimeout(ctx, r.opts.SubmitTimeout)
		err := r.opts.Submit(sctx, r.opts.From, mailto, msg)
		cancel()
		if err != nil {
			log.Info("TLS report not queued", "to", mailto, "err", err)
			for _, a := range mailto {
				left = append(left, "mailto:"+a)
			}
			reasons = append(reasons, "mailto: "+err.Error())
		} else {
			log.Info("TLS report queued", "to", mailto)
			for _, a := range mailto {
				sent = append(sent, "mailto:"+a)
			}
		}
	}
	return r.finish(key, j.domain, attempt{left: left, sent: sent, retry: len(left) > 0, cut: ctx.Err() != nil,
		reason: strings.Join(reasons, "; ")})
}

// attempt is the outcome of one attempt at a report.
type attempt struct {
	left   []string // the rua URIs still to take the report
	sent   []string // the rua URIs that took it in this attempt
	retry  bool     // something failed for now: try again later
	cut    bool     // the end of Run cut the attempt short: not counted
	reason string   // why something was not sent, for Status
}

// finish records an attempt and returns when the next is due (zero: none).
func (r *Reporter) finish(key, domain string, a attempt) time.Time {
	now := r.opts.Clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.sending, jobKey{key, domain})
	d := r.days[key]
	if d == nil || d.Domains[domain] == nil { // dropped meanwhile
		return time.Time{}
	}
	dom := d.Domains[domain]
	d.dirty = true
	dom.Pending = a.left
	dom.Sent = append(dom.Sent, a.sent...)
	dom.Reason = a.reason
	switch {
	case !a.retry:
		dom.Done = true
		return time.Time{}
	case a.cut:
		return dom.Next
	}
	dom.Attempts++
	next := now.Add(r.opts.RetryBackoff << min(dom.Attempts-1, 16))
	if dom.Attempts >= r.opts.MaxAttempts || next.After(dom.First.Add(retryWindow)) {
		dom.Done, dom.GaveUp = true, true
		r.opts.Logger.Info("TLS report given up", "domain", domain, "day", key, "attempts", dom.Attempts, "notDelivered", a.left)
		return time.Time{}
	}
	dom.Next = next
	return next
}
