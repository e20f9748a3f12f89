package tlsrpt

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/postgate/postgate/internal/relay/atomicfile"
)

// dayState is one UTC day's counts and the sending state of its reports;
// it is also the JSON of the day's file.
type dayState struct {
	Day string `json:"day"` // YYYY-MM-DD
	// SendAt is when the day's reports start going out: the end of the day
	// plus its random delay, drawn once.
	SendAt  time.Time               `json:"sendAt"`
	Domains map[string]*domainState `json:"domains"`
	// Size is what the strings of the counts take, for MaxDayBytes.
	Size int64 `json:"size"`

	dirty bool // changed since the last save
}

// domainState is one policy domain's counts of the day and its report's
// sending state.
type domainState struct {
	// UniqueID makes the report-id and the attachment's unique-id.
	UniqueID string         `json:"uniqueID"`
	Policies []*policyState `json:"policies"`
	// First is the first attempt to send the report (zero: none yet);
	// from then on the counts no longer change.
	First    time.Time `json:"firstAttempt,omitzero"`
	Next     time.Time `json:"nextAttempt,omitzero"`
	Attempts int       `json:"attempts,omitempty"`
	// Pending are the rua URIs that have not taken the report yet; empty
	// before the record was read.
	Pending []string `json:"pending,omitempty"`
	// Done: sent everywhere, or given up.
	Done bool `json:"done,omitempty"`
	// Sent are the rua URIs that took the report; GaveUp says the
	// attempts ran out; Reason is why the last attempt sent nothing to
	// some URI, or why no report went out at all.
	Sent   []string `json:"sent,omitempty"`
	GaveUp bool     `json:"gaveUp,omitempty"`
	Reason string   `json:"reason,omitempty"`

	index map[string]*policyState
}

type policyState struct {
	Policy  Policy         `json:"policy"`
	Success int64          `json:"success"`
	Failure int64          `json:"failure"`
	Details []*detailState `json:"details,omitempty"`

	index map[string]*detailState
}

type detailState struct {
	Failure Failure `json:"failure"`
	Count   int64   `json:"count"`
}

// policy returns the entry of p, adding it (bounded, with the normalized
// domain) unless max are there or the budget refuses its size.
func (d *domainState) policy(p Policy, domain string, max int, b budget) *policyState {
	if d.index == nil {
		d.index = make(map[string]*policyState, len(d.Policies))
		for _, ps := range d.Policies {
			d.index[string(appendPolicyKey(nil, ps.Policy))] = ps
		}
	}
	// The key is built on the stack and the lookup does not copy it: a
	// session of a known policy allocates nothing. A policy past the
	// bounds is found under the key of its bounded form.
	var buf [512]byte
	if ps := d.index[string(appendPolicyKey(buf[:0], p))]; ps != nil {
		return ps
	}
	p = bounded(p, domain)
	k := appendPolicyKey(buf[:0], p)
	if ps := d.index[string(k)]; ps != nil {
		return ps
	}
	if len(d.Policies) >= max || !b.admit(len(k)+entryOverhead) {
		return nil
	}
	ps := &policyState{Policy: p}
	d.Policies = append(d.Policies, ps)
	d.index[string(k)] = ps
	return ps
}

// detail counts f in its failure-details entry, adding it (bounded) unless
// max are there or the budget refuses its size (the failure then counts in
// the summary only).
func (p *policyState) detail(f Failure, max int, b budget) {
	if p.index == nil {
		p.index = make(map[string]*detailState, len(p.Details))
		for _, ds := range p.Details {
			p.index[string(appendFailureKey(nil, ds.Failure))] = ds
		}
	}
	var buf [512]byte
	ds := p.index[string(appendFailureKey(buf[:0], f))]
	if ds == nil {
		f = boundedFailure(f)
		k := appendFailureKey(buf[:0], f)
		ds = p.index[string(k)]
		if ds == nil {
			if len(p.Details) >= max || !b.admit(len(k)+entryOverhead) {
				return
			}
			ds = &detailState{Failure: f}
			p.Details = append(p.Details, ds)
			p.index[string(k)] = ds
		}
	}
	ds.Count++
}

// The keys join the fields with bytes that no field holds in practice; a
// collision would merge two entries, never lose a count.
func appendPolicyKey(b []byte, p Policy) []byte {
	b = append(b, p.Type...)
	for _, s := range p.Strings {
		b = append(append(b, 1), s...)
	}
	b = append(b, 0)
	for _, s := range p.MXHosts {
		b = append(append(b, 1), s...)
	}
	return b
}

func appendFailureKey(b []byte, f Failure) []byte {
	b = append(b, f.Result...)
	b = f.SendingMTAIP.AppendTo(append(b, 0))
	b = f.ReceivingIP.AppendTo(append(b, 0))
	for _, s := range []string{f.ReceivingMXHostname, f.ReceivingMXHelo, f.AdditionalInfo, f.FailureReasonCode} {
		b = append(append(b, 0), s...)
	}
	return b
}

const fileSuffix = ".json"

// load reads the day files of the directory.
func (r *Reporter) load() error {
	if err := os.MkdirAll(r.opts.Dir, 0o700); err != nil {
		return fmt.Errorf("tlsrpt: %w", err)
	}
	entries, err := os.ReadDir(r.opts.Dir)
	if err != nil {
		return fmt.Errorf("tlsrpt: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if strings.Contains(name, fileSuffix+".tmp-") { // a save that a crash cut short
			_ = os.Remove(filepath.Join(r.opts.Dir, name))
			continue
		}
		if !e.Type().IsRegular() || !strings.HasSuffix(name, fileSuffix) {
			continue
		}
		path := filepath.Join(r.opts.Dir, name)
		d, err := readDay(path)
		if err != nil {
			// Reports are optional: a damaged file must not keep the
			// relay from starting. It stays, renamed, for a look.
			r.opts.Logger.Error("TLS report state unreadable, set aside", "file", path, "err", err)
			if err := os.Rename(path, path+".corrupt"); err != nil {
				return fmt.Errorf("tlsrpt: %w", err)
			}
			continue
		}
		r.days[d.Day] = d
	}
	return nil
}

func readDay(path string) (*dayState, error) {
	data, err := os.ReadFile(path) //nolint:gosec // a name from the listing of the reporter's own directory
	if err != nil {
		return nil, err
	}
	var d dayState
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, err
	}
	if _, err := time.Parse(time.DateOnly, d.Day); err != nil || d.Day+fileSuffix != filepath.Base(path) {
		return nil, fmt.Errorf("the file holds day %q", d.Day)
	}
	if d.Domains == nil {
		d.Domains = make(map[string]*domainState)
	}
	for name, dom := range d.Domains {
		if dom == nil {
			delete(d.Domains, name)
		}
	}
	return &d, nil
}

// saveChanged writes the days that changed and removes the files of the
// days dropped. Without a directory it only forgets the dirty marks.
func (r *Reporter) saveChanged() error {
	r.save.Lock()
	defer r.save.Unlock()
	type file struct {
		day  string
		data []byte
	}
	var files []file
	var errs []error
	r.mu.Lock()
	for key, d := range r.days {
		if !d.dirty {
			continue
		}
		d.dirty = false
		if r.opts.Dir == "" {
			continue
		}
		data, err := json.Marshal(d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		files = append(files, file{key, data})
	}
	r.mu.Unlock()
	for _, f := range files {
		if err := atomicfile.WriteFile(r.opts.Dir, f.day+fileSuffix, f.data); err != nil {
			errs = append(errs, err)
			r.markDirty(f.day) // try again next time
		}
	}
	return errors.Join(errs...)
}

func (r *Reporter) markDirty(day string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if d := r.days[day]; d != nil {
		d.dirty = true
	}
}

// dropOld forgets the days that ended more than KeepDays ago, and removes
// their files.
func (r *Reporter) dropOld() error {
	r.save.Lock()
	defer r.save.Unlock()
	limit := dayOf(r.opts.Clock.Now()).AddDate(0, 0, -r.opts.KeepDays)
	var old []string
	r.mu.Lock()
	for key := range r.days {
		if t, err := time.Parse(time.DateOnly, key); err == nil && t.AddDate(0, 0, 1).Before(limit) {
			delete(r.days, key)
			old = append(old, key)
		}
	}
	r.mu.Unlock()
	if r.opts.Dir == "" {
		return nil
	}
	var errs []error
	for _, key := range old {
		if err := os.Remove(filepath.Join(r.opts.Dir, key+fileSuffix)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
