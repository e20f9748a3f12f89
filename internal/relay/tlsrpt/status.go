package tlsrpt

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The states of a report (Status.State).
const (
	// StateWaiting: not sent yet; Run sends it at the day's SendAt.
	StateWaiting = "waiting"
	// StateSending: an attempt is under way.
	StateSending = "sending"
	// StateRetrying: an attempt failed for some rua URI; the next one is
	// at NextAttempt.
	StateRetrying = "retrying"
	// StateSent: every rua URI the relay can use took it.
	StateSent = "sent"
	// StateNotSent: no report went out, and none will (Reason: the domain
	// publishes no usable _smtp._tls record, or reports by mail are off).
	StateNotSent = "not-sent"
	// StateGivenUp: the attempts ran out (section 5.5) before every rua
	// URI took it; Pending are those that did not.
	StateGivenUp = "given-up"
)

// Status is one policy domain's report of a day as an operator sees it
// (`postgate queue tls-reports`).
type Status struct {
	Domain string `json:"domain"`
	// Successful and Failed are the day's sessions, over every policy.
	Successful int64  `json:"successful"`
	Failed     int64  `json:"failed"`
	State      string `json:"state"`
	ReportID   string `json:"reportID"`
	Attempts   int    `json:"attempts,omitempty"`
	// FirstAttempt is when the report started going out: its counts stop
	// there.
	FirstAttempt time.Time `json:"firstAttempt,omitzero"`
	NextAttempt  time.Time `json:"nextAttempt,omitzero"`
	// Sent are the rua URIs that took the report, Pending those that have
	// not yet (empty before the record was read).
	Sent    []string `json:"sent,omitempty"`
	Pending []string `json:"pending,omitempty"`
	// Reason is why the last attempt left something unsent.
	Reason string `json:"reason,omitempty"`
}

// DayStatus is a UTC day's reports.
type DayStatus struct {
	Day string `json:"day"` // YYYY-MM-DD
	// Partial: the day is not over, so its counts are those so far, and a
	// report sent now covers the day until now (the sessions of the rest
	// of the day are then not counted, section 4.1's day being over for
	// that report).
	Partial bool `json:"partial"`
	// SendAt is when Run sends the reports not sent yet: the end of the
	// day plus its random delay.
	SendAt  time.Time `json:"sendAt,omitzero"`
	Domains []Status  `json:"domains"`
}

// Summary returns the state of the reports of the UTC day that holds day,
// by domain; a day without sessions has none.
func (r *Reporter) Summary(day time.Time) DayStatus {
	day = dayOf(day)
	key := day.Format(time.DateOnly)
	st := DayStatus{Day: key, Partial: r.opts.Clock.Now().Before(day.AddDate(0, 0, 1)), Domains: []Status{}}
	r.mu.Lock()
	defer r.mu.Unlock()
	d := r.days[key]
	if d == nil {
		return st
	}
	st.SendAt = d.SendAt
	for name, dom := range d.Domains {
		st.Domains = append(st.Domains, r.status(key, name, dom))
	}
	slices.SortFunc(st.Domains, func(a, b Status) int { return strings.Compare(a.Domain, b.Domain) })
	return st
}

// status is a domain's Status; r.mu is held.
func (r *Reporter) status(key, name string, dom *domainState) Status {
	s := Status{Domain: name, ReportID: r.reportID(dom), Attempts: dom.Attempts, FirstAttempt: dom.First,
		Sent: slices.Clone(dom.Sent), Pending: slices.Clone(dom.Pending), Reason: dom.Reason}
	for _, p := range dom.Policies {
		s.Successful += p.Success
		s.Failed += p.Failure
	}
	switch {
	case dom.GaveUp:
		s.State = StateGivenUp
	case dom.Done && len(dom.Sent) > 0:
		s.State = StateSent
	case dom.Done:
		s.State = StateNotSent
	case r.sending[jobKey{key, name}]:
		s.State = StateSending
	case dom.First.IsZero():
		s.State = StateWaiting
	default:
		s.State, s.NextAttempt = StateRetrying, dom.Next
	}
	return s
}

// Send sends now the reports of the UTC day that holds day (the one of
// domain, or every domain's when domain is ""), without waiting for the
// end of the day or its delay: for an operator who wants a report out, or
// to see whether it gets through. It takes the path Run takes, with the
// same state, so a report sent here is not sent again by Run, and one that
// fails is retried by Run with its back-off. A report already sent (or
// given up) is not sent again, one under way is left to that attempt.
//
// On the day itself the report is partial: its date-range ends now, and
// the sessions of the rest of the day are not counted (DayStatus.Partial).
// It returns the day's state after the attempts, the domain's alone when
// one is named; ErrNoSessions when there are no counts to send.
func (r *Reporter) Send(ctx context.Context, day time.Time, domain string) (DayStatus, error) {
	day = dayOf(day)
	key := day.Format(time.DateOnly)
	domain = normalizeDomain(domain)
	var jobs []job
	r.mu.Lock()
	d := r.days[key]
	found := d != nil && (domain == "" || d.Domains[domain] != nil)
	if found {
		for name, dom := range d.Domains {
			if (domain == "" || name == domain) && !dom.Done {
				jobs = append(jobs, job{day: day, domain: name})
			}
		}
	}
	r.mu.Unlock()
	if !found {
		if domain == "" {
			return DayStatus{}, fmt.Errorf("%w on %s", ErrNoSessions, key)
		}
		return DayStatus{}, fmt.Errorf("%w for %s on %s", ErrNoSessions, domain, key)
	}
	slices.SortFunc(jobs, func(a, b job) int { return strings.Compare(a.domain, b.domain) })
	for _, j := range jobs {
		if ctx.Err() != nil {
			break
		}
		r.send(ctx, j)
	}
	st := r.Summary(day)
	if domain != "" {
		st.Domains = slices.DeleteFunc(st.Domains, func(s Status) bool { return s.Domain != domain })
	}
	return st, ctx.Err()
}
