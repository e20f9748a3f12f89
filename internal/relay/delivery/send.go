package delivery

import (
	"context"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/shaping"
)

// outcome is what one attempt to one destination found, per recipient (at
// the positions of destination.rcpts) and about the connection.
type outcome struct {
	state []queue.State // Delivered, Failed or Pending
	reply []queue.Reply
	// host, remote, local and tls describe the last connection tried.
	host          string
	remote, local netip.AddrPort
	tls           TLSInfo
	// decisive is the first failure's reply, or the acceptance.
	decisive queue.Reply
	cause    Cause
	failed   bool
	// until, when set, defers the pending recipients without counting an
	// attempt until then (traffic shaping).
	until time.Time
	// snooze: the attempt waits for until without a record
	// (failure.snooze).
	snooze bool
	// passedOn marks the delivered recipients whose next hop offers DSN
	// (RFC 3461): their NOTIFY went with them, and a success is the next
	// hop's to report.
	passedOn []bool
}

func newOutcome(d *destination) *outcome {
	return &outcome{
		state:    make([]queue.State, len(d.rcpts)),
		reply:    make([]queue.Reply, len(d.rcpts)),
		passedOn: make([]bool, len(d.rcpts)),
		tls:      TLSInfo{Requested: d.policy, Mode: d.mode},
	}
}

// fail records f for the recipient at position i.
func (o *outcome) fail(i int, f *failure) {
	o.state[i] = queue.Pending
	if f.perm {
		o.state[i] = queue.Failed
	}
	o.reply[i] = f.reply
	if !o.failed {
		o.failed, o.decisive, o.cause = true, f.reply, f.cause
	}
	if !f.until.IsZero() {
		o.until = f.until
	}
	o.snooze = o.snooze || f.snooze
}

func (o *outcome) failAll(f *failure) {
	for i := range o.state {
		o.fail(i, f)
	}
}

// sent records the acceptance of the recipient at position i by a next
// hop that offers DSN (dsn) or not.
func (o *outcome) sent(i int, r queue.Reply, dsn bool) {
	o.state[i], o.reply[i], o.passedOn[i] = queue.Delivered, r, dsn
	if !o.failed {
		o.decisive = r
	}
}

// connected records the connection an outcome is about.
func (o *outcome) connected(host string, s *session) {
	o.host, o.remote, o.local, o.tls = strings.TrimSuffix(host, "."), s.key.remote, s.local, s.tls
}

// bodyFunc opens the message body afresh.
type bodyFunc func(ctx context.Context) (io.ReadCloser, error)

// send makes one attempt to deliver msg to d: it resolves the next hop
// (the target relay's addresses, or the recipient domain's MX hosts in
// order, then their addresses), and tries up to MaxAddresses addresses
// until one takes the transaction. Failures before MAIL FROM (connection,
// greeting, TLS policy, AUTH) move on to the next address; the last one
// defers the recipients.
func (w *Worker) send(ctx context.Context, msg *queue.Message, d *destination, body bodyFunc) *outcome {
	o := newOutcome(d)
	if d.fail != nil {
		o.failAll(d.fail)
		return o
	}
	if d.route != nil || w.opts.Shaping == nil {
		// A shaped MX destination takes its place in its site's gate
		// instead, once the MX lookup has named the site.
		release, err := w.limits.acquire(ctx, d.limitKey())
		if err != nil {
			o.failAll(abortedFailure(err))
			return o
		}
		defer release()
	}

	var (
		hosts []mxHost
		dp    domainPolicies
	)
	if d.route != nil {
		hosts = []mxHost{{name: dns.CanonicalName(d.host)}}
	} else {
		var (
			f        *failure
			mxSecure bool
		)
		hosts, mxSecure, f = w.resolver.mx(ctx, d.domain, w.shuffle)
		if f != nil {
			o.failAll(f)
			return o
		}
		if w.shapeSite(d, hosts); d.site != nil {
			f := w.suspendedFailure(d)
			if f == nil {
				var release func()
				if release, f = w.enterSite(ctx, d, d.team, msg.Envelope.Tenant()); f == nil {
					defer release()
				}
			}
			if f != nil {
				o.failAll(f)
				return o
			}
		}
		dp = w.lookupDomainPolicies(ctx, d, mxSecure)
	}
	var (
		last     *failure
		dnsErr   error
		skipped  int // addresses of the other family than the source IP
		tries    int
		implicit = len(hosts) == 1 && hosts[0].implicit
	)
hosts:
	for _, h := range hosts {
		ha, _, err := w.resolver.addrs(ctx, h.name, true, !w.opts.DisableIPv6)
		if err != nil {
			dnsErr = err
			continue
		}
		p := w.routePolicy(d, strings.TrimSuffix(h.name, "."))
		if d.route == nil && len(ha.addrs) > 0 {
			var f *failure
			if p, f = w.hostPolicy(ctx, d, &dp, h, ha); f != nil {
				// The recipient domain's policy rules this host out.
				last = f
				continue
			}
		}
		for _, a := range ha.addrs {
			if d.source.IsValid() && d.source.Is4() != a.Is4() {
				skipped++
				continue
			}
			if tries == w.opts.MaxAddresses || ctx.Err() != nil {
				break hosts
			}
			tries++
			f := w.try(ctx, msg, d, &p, h.name, a, body, o)
			if f == nil {
				return o
			}
			last = f
			if f.cause == CauseSourceIP || !f.until.IsZero() {
				// The source IP, or the site's shaping, rules out
				// every address alike.
				break hosts
			}
		}
	}
	switch {
	case last != nil:
		o.failAll(last.temporary())
	case dnsErr != nil:
		o.failAll(localFailure(false, CauseDNS, "4.4.3", "%v", dnsErr))
	case skipped > 0:
		o.failAll(localFailure(false, CauseSourceIP, "4.4.4", "%s has no address of the family of source address %s", d.name(), d.source))
	case d.route != nil:
		o.failAll(localFailure(false, CauseDNS, "4.4.4", "target relay %s has no address", d.host))
	case implicit:
		o.failAll(localFailure(true, CauseDNS, "5.1.2", "domain %s has no MX and no address", d.domain))
	default:
		o.failAll(localFailure(true, CauseDNS, "5.4.4", "no MX host of %s has an address", d.domain))
	}
	return o
}

// shuffle puts MX hosts of equal preference in random order (RFC 5321
// section 5.1).
func (w *Worker) shuffle(hosts []mxHost) {
	w.randMu.Lock()
	defer w.randMu.Unlock()
	w.opts.Rand.Shuffle(len(hosts), func(i, j int) { hosts[i], hosts[j] = hosts[j], hosts[i] })
}

// try runs the transaction at one address, on an idle session to it when
// there is one (RSET first, which also shows that it is still alive), else
// on a new one. It fills o and returns nil when the host took the
// transaction (whatever it answered), or the failure that makes the next
// address worth trying.
func (w *Worker) try(ctx context.Context, msg *queue.Message, d *destination, p *connPolicy, host string, addr netip.Addr, body bodyFunc, o *outcome) *failure {
	remote := netip.AddrPortFrom(addr, uint16(d.port)) //nolint:gosec // ports are checked to be 1 to 65535
	key := d.connKey(host, remote, p)
	s := w.pool.get(key)
	waits := 0
	for {
		reused := s != nil
		if s == nil {
			var shape *shaping.Conn
			if d.site != nil {
				var dec shaping.Decision
				if shape, dec = w.opts.Shaping.AcquireConn(*d.site); !dec.OK {
					if waits < maxShapeWaits && w.waitShaping(ctx, d, dec) {
						// Waited for a token or a release: an idle
						// session may have come back meanwhile.
						waits++
						s = w.pool.get(key)
						continue
					}
					return w.refusalFailure(d, dec)
				}
			}
			var f *failure
			s, f = w.connect(ctx, d, p, host, addr, false)
			if f != nil && f.plainRetry && p.plainAllowed() && d.policy == v1alpha1.TLSPolicyOpportunistic && d.mode == v1alpha1.TLSModeSTARTTLS {
				// Opportunistic TLS that fails its handshake: once more in
				// plaintext, on a new connection, as the policy allows
				// (never under DANE or an enforced MTA-STS policy).
				if s != nil {
					s.close(false)
				}
				s, f = w.connect(ctx, d, p, host, addr, true)
			}
			if f != nil {
				o.host, o.remote = strings.TrimSuffix(host, "."), remote
				if s != nil {
					o.connected(host, s)
				}
				if shape != nil {
					// connect closed what it opened.
					shape.Release()
					if until, _ := w.observe(d, []queue.Reply{f.reply}); !until.IsZero() {
						f = f.withUntil(until)
					}
				}
				return f
			}
			s.shape = shape
		}
		if s.shape != nil {
			dec := s.shape.AcquireMessage()
			for ; !dec.OK && dec.Reason == shaping.ReasonMessageRate && waits < maxShapeWaits && w.waitShaping(ctx, d, dec); waits++ {
				dec = s.shape.AcquireMessage()
			}
			if !dec.OK {
				if dec.Reason == shaping.ReasonConnectionFull || dec.Reason == shaping.ReasonReleased {
					// This session carried its share: close it, and
					// the transaction goes on a new one.
					w.pool.end(s)
					s = nil
					continue
				}
				w.pool.put(s)
				return w.refusalFailure(d, dec)
			}
		}
		o.connected(host, s)
		t := newOutcome(d)
		t.connected(host, s)
		stop := s.watch(ctx)
		f, stale := w.transaction(ctx, s, msg, d, body, t, reused)
		stop()
		if stale {
			// An idle session that failed its RSET (the server closed it
			// meanwhile): nothing of the transaction was taken, and it
			// goes on a new connection.
			w.pool.end(s)
			s = nil
			continue
		}
		if ctx.Err() != nil {
			s.broken = true
		}
		if s.shape != nil {
			replies := t.reply
			if f != nil {
				replies = append(slices.Clip(replies), f.reply)
			}
			if until, matched := w.observe(d, replies); !until.IsZero() {
				// The site throttles: this session carries no more, nor
				// do the site's idle ones, and what it deferred waits for
				// the suspension's end.
				s.retire = true
				w.pool.endSite(d.site.Name)
				t.throttled(until, matched)
				if f != nil {
					f = f.withUntil(until)
					if matched[len(matched)-1] {
						f.perm = false
					}
				}
			} else if s.shape.Full() {
				s.retire = true
			}
		}
		w.pool.put(s)
		if f != nil {
			return f
		}
		*o = *t
		return nil
	}
}
