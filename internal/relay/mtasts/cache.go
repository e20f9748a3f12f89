package mtasts

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// The result types of RFC 8460 section 4.3.2.2 that policy discovery can
// give, for TLS-RPT.
const (
	// ResultFetchError: the policy could not be retrieved (no address,
	// connection, TLS other than the certificate, HTTP status, redirect,
	// timeout, size).
	ResultFetchError = "sts-policy-fetch-error"
	// ResultInvalid: the policy retrieved is not valid (syntax, media type).
	ResultInvalid = "sts-policy-invalid"
	// ResultWebPKIInvalid: the policy host's certificate is not PKIX-valid
	// for mta-sts.<domain>.
	ResultWebPKIInvalid = "sts-webpki-invalid"
)

// Error explains why a policy could not be fetched or parsed.
type Error struct {
	// Result is the RFC 8460 result type: ResultFetchError, ResultInvalid or
	// ResultWebPKIInvalid.
	Result string
	// Reason says what happened, for logs and the TLS-RPT failure details.
	Reason string
}

func (e *Error) Error() string { return e.Result + ": " + e.Reason }

// Result is what Lookup found.
type Result struct {
	// Policy is the policy in force, enforce or testing; nil when no policy
	// applies.
	Policy *Policy
	// Err, when not nil, explains a failed fetch or parse of a new policy.
	// Policy may still be set: a cached policy keeps applying (RFC 8461
	// section 3.3).
	Err *Error
}

// Options configure a Cache. LookupTXT and LookupHost are required.
type Options struct {
	// LookupTXT returns the TXT records of name, each record's strings
	// joined (RFC 8461 section 3.1). Any error (no such name, a timeout)
	// means no live record.
	LookupTXT func(ctx context.Context, name string) ([]string, error)
	// LookupHost returns the addresses of a host, for the policy host.
	LookupHost func(ctx context.Context, host string) ([]netip.Addr, error)
	// Port is the policy host's HTTPS port. Default: 443.
	Port int
	// RootCAs verify the policy host's certificate. Default (nil): the
	// system roots.
	RootCAs *x509.CertPool
	// AllowAddr decides which addresses of mta-sts.<domain> a fetch may
	// connect to; nil allows every address. The relay allows public
	// unicast addresses and the networks of --webhook-allow-cidrs: the
	// policy host's address comes from a stranger's DNS, and a fetch must
	// not reach the relay's own network (SSRF).
	AllowAddr func(netip.Addr) bool
	// Dir is where policies persist, one file per domain; "" keeps them in
	// memory only.
	Dir string
	// Clock tells the time. Default: time.Now.
	Clock func() time.Time
	// Timeout bounds one fetch, connecting included. Default: 30s.
	Timeout time.Duration
	// MaxBody bounds a policy body in bytes. Default: 64 KiB (section 3.3).
	MaxBody int64
	// MaxEntries bounds the domains cached. Default: 10000.
	MaxEntries int
	// RetryAfter is how long a failed fetch of one domain's id is not tried
	// again (section 3.3: "five minutes or longer per version ID"). A new id
	// is fetched at once. Default: 5 minutes.
	RetryAfter time.Duration
	// RefreshAfter is the age after which a Lookup that finds a cached
	// policy refreshes it in the background (section 3.3: "proactively
	// refresh cached policies before they expire"); half of a shorter
	// max_age is used instead. Default: 24 hours; negative: never.
	RefreshAfter time.Duration
	// Logger logs fetches, failures and the policies dropped. Default: none.
	Logger *slog.Logger
}

// Defaults of Options.
const (
	DefaultPort         = 443
	DefaultTimeout      = 30 * time.Second
	DefaultMaxBody      = 64 << 10
	DefaultMaxEntries   = 10000
	DefaultRetryAfter   = 5 * time.Minute
	DefaultRefreshAfter = 24 * time.Hour
)

// Cache discovers, fetches, caches and persists MTA-STS policies. It is safe
// for concurrent use.
type Cache struct {
	opts   Options
	log    *slog.Logger
	client *http.Client
	store  *store // nil: memory only

	// ctx bounds the fetches, which outlive the Lookup that started them;
	// Close cancels it and waits for them.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	diskMu sync.Mutex // orders the writes and removals of files (sync)

	mu       sync.Mutex
	closed   bool
	entries  map[string]*entry  // by domain, none policies included
	failures map[string]failure // by domain: the last failed fetch
	calls    map[callKey]*call  // fetches under way
	seq      uint64             // orders fetches, so an older one never replaces a newer policy
}

type entry struct {
	p   *Policy
	seq uint64
}

// failure is a failed fetch of one id, not tried again before until.
type failure struct {
	id    string
	until time.Time
	err   *Error
}

type callKey struct{ domain, id string }

// call is one fetch that every Lookup of the same domain and id waits on.
type call struct {
	done chan struct{}
	p    *Policy
	err  *Error
}

// New returns a Cache holding the unexpired policies persisted in
// opts.Dir; a corrupt file is logged and skipped, an expired one removed.
func New(opts Options) (*Cache, error) {
	if opts.LookupTXT == nil || opts.LookupHost == nil {
		return nil, errors.New("mtasts: LookupTXT and LookupHost are required")
	}
	if opts.Port == 0 {
		opts.Port = DefaultPort
	}
	if opts.Port < 0 || opts.Port > 65535 {
		return nil, fmt.Errorf("mtasts: port %d is not a TCP port", opts.Port)
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.MaxBody <= 0 {
		opts.MaxBody = DefaultMaxBody
	}
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = DefaultMaxEntries
	}
	if opts.RetryAfter <= 0 {
		opts.RetryAfter = DefaultRetryAfter
	}
	if opts.RefreshAfter == 0 {
		opts.RefreshAfter = DefaultRefreshAfter
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Cache{
		opts:     opts,
		log:      log,
		client:   newClient(opts),
		entries:  make(map[string]*entry),
		failures: make(map[string]failure),
		calls:    make(map[callKey]*call),
	}
	if opts.Dir != "" {
		s, err := openStore(opts.Dir, log)
		if err != nil {
			return nil, err
		}
		c.store = s
		policies, err := s.load(opts.Clock(), opts.MaxEntries)
		if err != nil {
			_ = s.close()
			return nil, err
		}
		for _, p := range policies {
			c.entries[p.Domain] = &entry{p: p}
		}
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c, nil
}

// Close cancels the fetches under way and waits for them to end. Lookups
// after Close find no new policies.
func (c *Cache) Close() {
	c.mu.Lock()
	already := c.closed
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	if c.store != nil && !already {
		c.diskMu.Lock()
		defer c.diskMu.Unlock()
		if err := c.store.close(); err != nil {
			c.log.Error("Closing the MTA-STS policy directory", "error", err)
		}
	}
}

// Lookup returns the policy in force for domain, an A-label in lower case,
// by RFC 8461 sections 3 and 5. The TXT record _mta-sts.<domain> gives the
// current id (section 3.1); a cached unexpired policy of that id applies
// without a fetch; otherwise the policy is fetched (section 3.3), one fetch
// for every concurrent Lookup of the domain, and cached. When there is no
// usable TXT record, the TXT lookup fails or the fetch fails, an unexpired
// cached policy keeps applying (section 5.1); a policy of mode none replaces
// it, and no policy applies.
func (c *Cache) Lookup(ctx context.Context, domain string) Result {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	if !validHostname(domain) || len(domain) > 253-len("mta-sts.") {
		c.log.Debug("No MTA-STS lookup: not a domain name in A-labels", "domain", domain)
		return Result{}
	}
	now := c.opts.Clock()
	cached := c.cached(domain, now)
	id, err := c.discover(ctx, domain)
	if err != nil {
		c.log.Debug("No MTA-STS record in force", "domain", domain, "reason", err, "cached", cached != nil)
		return apply(cached, nil)
	}
	if cached != nil && cached.ID == id {
		c.refresh(domain, cached, now)
		return apply(cached, nil)
	}
	if f, ok := c.recentFailure(domain, id, now); ok {
		return apply(cached, f)
	}
	cl := c.start(domain, id)
	if cl == nil {
		return apply(cached, &Error{Result: ResultFetchError, Reason: "the policy cache is closed"})
	}
	select {
	case <-cl.done:
	case <-ctx.Done():
		return apply(cached, &Error{Result: ResultFetchError, Reason: fmt.Sprintf("gave up waiting for the policy of %s: %v", domain, ctx.Err())})
	}
	if cl.err != nil {
		return apply(cached, cl.err)
	}
	return apply(cl.p, nil)
}

// apply turns the policy found into a Result: a none policy is no policy
// (section 5: "treat the Policy Domain as though it does not have any
// active policy").
func apply(p *Policy, err *Error) Result {
	if p == nil || p.Mode == ModeNone {
		return Result{Err: err}
	}
	return Result{Policy: p, Err: err}
}

// cached returns the unexpired policy of domain, or nil; it drops an
// expired one (section 3.3: cached "for up to" max_age).
func (c *Cache) cached(domain string, now time.Time) *Policy {
	c.mu.Lock()
	e, ok := c.entries[domain]
	if ok && !now.Before(e.p.Expires()) {
		delete(c.entries, domain)
	}
	c.mu.Unlock()
	switch {
	case !ok:
		return nil
	case now.Before(e.p.Expires()):
		return e.p
	}
	c.log.Info("MTA-STS policy expired", "domain", domain, "id", e.p.ID, "mode", e.p.Mode, "fetched", e.p.Fetched)
	c.sync(domain)
	return nil
}

// discover returns the id of the domain's one STS TXT record (section
// 3.1): records not starting with "v=STSv1;" are discarded; none, several
// or an invalid one mean no record.
func (c *Cache) discover(ctx context.Context, domain string) (string, error) {
	name := "_mta-sts." + domain
	txts, err := c.opts.LookupTXT(ctx, name)
	if err != nil {
		return "", fmt.Errorf("TXT %s: %w", name, err)
	}
	var records []string
	for _, t := range txts {
		if isSTSRecord(t) {
			records = append(records, t)
		}
	}
	switch len(records) {
	case 0:
		return "", fmt.Errorf("TXT %s: no v=STSv1 record", name)
	case 1:
	default:
		return "", fmt.Errorf("TXT %s: %d v=STSv1 records, not one (RFC 8461 section 3.1)", name, len(records))
	}
	id, err := parseRecord(records[0])
	if err != nil {
		return "", fmt.Errorf("TXT %s %q: %w (RFC 8461 section 3.1)", name, records[0], err)
	}
	return id, nil
}

// recentFailure returns the failure of the last fetch of domain's id while
// RetryAfter has not passed since it.
func (c *Cache) recentFailure(domain, id string, now time.Time) (*Error, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.failures[domain]
	if !ok || f.id != id || !now.Before(f.until) {
		return nil, false
	}
	return f.err, true
}

// refresh fetches the cached policy p again in the background once it is
// older than RefreshAfter (or half its max_age), so that an attacker who
// blocks discovery later meets a policy that has most of its max_age ahead
// (section 3.3, section 10.2). Lookup uses p meanwhile.
func (c *Cache) refresh(domain string, p *Policy, now time.Time) {
	if c.opts.RefreshAfter < 0 || p.Mode == ModeNone {
		return
	}
	if now.Sub(p.Fetched) < min(c.opts.RefreshAfter, p.MaxAge/2) {
		return
	}
	if _, failed := c.recentFailure(domain, p.ID, now); failed {
		return
	}
	c.start(domain, p.ID)
}

// start returns the fetch of domain's id under way, starting it when there
// is none; nil once the cache is closed. The fetch runs on the cache's
// context, not the caller's: its result is cached even when every caller
// has given up waiting.
func (c *Cache) start(domain, id string) *call {
	key := callKey{domain, id}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	if cl, ok := c.calls[key]; ok {
		return cl
	}
	cl := &call{done: make(chan struct{})}
	c.calls[key] = cl
	c.seq++
	seq := c.seq
	c.wg.Go(func() {
		defer close(cl.done)
		ctx, cancel := context.WithTimeout(c.ctx, c.opts.Timeout)
		defer cancel()
		p, ferr := c.fetch(ctx, domain)
		if ferr == nil {
			p.Domain, p.ID, p.Fetched = domain, id, c.opts.Clock()
		}
		c.finish(key, seq, p, ferr)
		cl.p, cl.err = p, ferr
	})
	return cl
}

// finish records the outcome of a fetch: a policy replaces the cached one
// (unless a fetch started later already did), a failure is remembered for
// RetryAfter and logged (section 3.3: "alert administrators").
func (c *Cache) finish(key callKey, seq uint64, p *Policy, ferr *Error) {
	now := c.opts.Clock()
	c.mu.Lock()
	delete(c.calls, key)
	if ferr != nil {
		c.boundFailures(now)
		c.failures[key.domain] = failure{id: key.id, until: now.Add(c.opts.RetryAfter), err: ferr}
		cached := c.entries[key.domain]
		c.mu.Unlock()
		attrs := []any{"domain", key.domain, "id", key.id, "result", ferr.Result, "reason", ferr.Reason}
		if cached != nil {
			attrs = append(attrs, "cachedID", cached.p.ID, "cachedMode", cached.p.Mode, "cachedExpires", cached.p.Expires())
		}
		if cached != nil && cached.p.Mode == ModeNone {
			c.log.Info("MTA-STS policy fetch failed", attrs...)
		} else {
			c.log.Warn("MTA-STS policy fetch failed", attrs...)
		}
		return
	}
	delete(c.failures, key.domain)
	old, had := c.entries[key.domain]
	if had && old.seq > seq {
		c.mu.Unlock()
		return
	}
	live := now.Before(p.Expires())
	var evicted string
	if live {
		if !had {
			evicted = c.evictFor()
		}
		c.entries[key.domain] = &entry{p: p, seq: seq}
	} else {
		delete(c.entries, key.domain)
	}
	c.mu.Unlock()

	if evicted != "" {
		c.log.Info("MTA-STS policy evicted: the cache is full", "domain", evicted, "maxEntries", c.opts.MaxEntries)
		c.sync(evicted)
	}
	c.sync(key.domain)
	msg := "MTA-STS policy fetched"
	if had && old.p.ID == p.ID {
		msg = "MTA-STS policy refreshed"
	}
	c.log.Info(msg, "domain", p.Domain, "id", p.ID, "mode", p.Mode, "maxAge", p.MaxAge, "mx", p.MX)
}

// evictFor makes room for one more entry when the cache is full: the entry
// that expires first goes. Called with c.mu held; a new domain is rare
// (one per fetch), so a scan is cheap enough.
func (c *Cache) evictFor() string {
	if len(c.entries) < c.opts.MaxEntries {
		return ""
	}
	var victim string
	var first time.Time
	for d, e := range c.entries {
		if exp := e.p.Expires(); victim == "" || exp.Before(first) {
			victim, first = d, exp
		}
	}
	delete(c.entries, victim)
	return victim
}

// boundFailures keeps the failures map within MaxEntries: expired ones go
// first, then any. Called with c.mu held.
func (c *Cache) boundFailures(now time.Time) {
	if len(c.failures) < c.opts.MaxEntries {
		return
	}
	for d, f := range c.failures {
		if !now.Before(f.until) {
			delete(c.failures, d)
		}
	}
	for d := range c.failures {
		if len(c.failures) < c.opts.MaxEntries {
			break
		}
		delete(c.failures, d)
	}
}

// sync makes domain's file what memory holds: the policy, or no file.
// Fetches of different domains, and expiries, finish in any order; writing
// the state of the moment under one lock (rather than the policy each one
// saw) leaves the last state on disk. A failure is logged: the policy still
// applies from memory.
func (c *Cache) sync(domain string) {
	if c.store == nil {
		return
	}
	c.diskMu.Lock()
	defer c.diskMu.Unlock()
	c.mu.Lock()
	e, closed := c.entries[domain], c.closed
	c.mu.Unlock()
	if closed {
		return // the directory is closed, or about to be
	}
	if e == nil {
		if err := c.store.remove(domain); err != nil {
			c.log.Error("Cannot remove the MTA-STS policy file", "domain", domain, "error", err)
		}
		return
	}
	if err := c.store.write(e.p); err != nil {
		c.log.Error("Cannot persist the MTA-STS policy: a restart will fetch it again", "domain", domain, "error", err)
	}
}
