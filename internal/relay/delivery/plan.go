package delivery

import (
	"cmp"
	"crypto/x509"
	"net/netip"
	"strconv"
	"strings"

	"golang.org/x/net/idna"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/shaping"
	"github.com/postgate/postgate/internal/routing"
)

// destination is one next hop of a message in one attempt, with the
// recipients it takes in one transaction: the target relay (all
// recipients), or one recipient domain's MX hosts.
type destination struct {
	// route is the RelayRoute; nil for MX delivery.
	route *routing.Route
	// held is the hold of a RelayRoute that cannot take effect: the
	// recipients are deferred (fail), nothing is sent anywhere.
	held *routing.Hold
	// domain is the recipient domain as DNS knows it (A-labels, lower
	// case), for MX delivery.
	domain string
	// host is the target relay's host name.
	host     string
	port     int
	policy   v1alpha1.TLSPolicy
	mode     v1alpha1.TLSMode
	roots    *x509.CertPool
	username string
	password string
	// source is the local address to bind; the zero Addr for any.
	source netip.Addr
	// rcpts are indexes in the envelope's recipients.
	rcpts []int
	// fail, when set, decides the recipients without a connection (an
	// address that has no domain).
	fail *failure
	// tlsOptional: the message says "TLS-Required: No" (RFC 8689): no
	// recipient TLS policy applies to it (queue.Envelope.TLSOptional).
	tlsOptional bool
	// site is the recipient domain's traffic shaping site, set after the
	// MX lookup when shaping is on; nil otherwise.
	site *shaping.Site
	// team is the namespace of the sender's SenderDomain, "" when the
	// sender has none: a site's turns go round-robin by team, then by
	// sender domain (siteGates).
	team string
}

// plan splits the due recipients of msg into destinations, as the current
// table's delivery says (docs/design.md contract 5): everything to the target
// relay when the sender is routed, else one destination per recipient
// domain. The envelope is never rewritten: each recipient goes out as the
// client gave it.
func (w *Worker) plan(msg *queue.Message, due []int, dl routing.Delivery) []*destination {
	var (
		source netip.Addr
		team   string
	)
	policy := v1alpha1.TLSPolicyOpportunistic
	if dl.Domain != nil {
		source = dl.Domain.SourceIP
		policy = cmp.Or(dl.Domain.MXTLSPolicy, policy)
		team = dl.Domain.Object.Namespace
	}
	if h := dl.Hold; h != nil {
		// The route cannot take effect: defer every recipient without a
		// connection, and never fall back to MX. 4.4.4, "unable to route:
		// the necessary routing information was unavailable" (RFC 3463
		// section 3.5), the text naming the route and the reason.
		return []*destination{{
			held: h, host: h.Host, source: source, rcpts: due,
			fail: localFailure(false, CauseHeld, "4.4.4", "held: %s; the message waits for the route (never sent by MX)", h.Reason),
		}}
	}
	if r := dl.Route; r != nil {
		return []*destination{{
			route: r, host: r.Host, port: cmp.Or(r.Port, 25),
			policy: cmp.Or(r.TLSPolicy, v1alpha1.TLSPolicyOpportunistic),
			mode:   cmp.Or(r.TLSMode, v1alpha1.TLSModeSTARTTLS),
			roots:  r.RootCAs, username: r.Username, password: r.Password,
			source: source, rcpts: due,
		}}
	}
	var out []*destination
	byDomain := map[string]*destination{}
	for _, i := range due {
		domain, f := recipientDomain(msg.Envelope.To[i].Addr)
		key := domain
		if f != nil {
			key = "\x00" + f.reply.Text
		}
		d := byDomain[key]
		if d == nil {
			d = &destination{
				domain: domain, port: w.opts.MXPort, policy: policy,
				mode: v1alpha1.TLSModeSTARTTLS, source: source, fail: f,
				tlsOptional: msg.Envelope.TLSOptional, team: team,
			}
			byDomain[key] = d
			out = append(out, d)
		}
		d.rcpts = append(d.rcpts, i)
	}
	return out
}

// recipientDomain returns the domain of a recipient address in the form DNS
// asks for.
func recipientDomain(addr string) (string, *failure) {
	i := strings.LastIndexByte(addr, '@')
	if i < 1 || i == len(addr)-1 {
		return "", localFailure(true, CauseMessage, "5.1.3", "recipient address %q has no domain", addr)
	}
	domain := addr[i+1:]
	if strings.HasPrefix(domain, "[") {
		return "", localFailure(true, CauseMessage, "5.1.3", "recipient address %q: address literals are not delivered", addr)
	}
	for j := range len(domain) {
		if domain[j] >= 0x80 {
			a, err := idna.Lookup.ToASCII(domain)
			if err != nil {
				return "", localFailure(true, CauseMessage, "5.1.3", "recipient domain %q is not a valid domain name: %v", domain, err)
			}
			domain = a
			break
		}
	}
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	if domain == "" || strings.HasPrefix(domain, ".") || strings.HasSuffix(domain, ".") || strings.Contains(domain, "..") {
		// An empty label: no DNS name, so no MX to retry for.
		return "", localFailure(true, CauseMessage, "5.1.3", "recipient domain %q is not a valid domain name", addr[i+1:])
	}
	return domain, nil
}

// limitKey names the destination for the concurrency bound.
func (d *destination) limitKey() string {
	src := ""
	if d.source.IsValid() {
		src = " from " + d.source.String()
	}
	if d.route != nil {
		return "relay " + d.host + ":" + strconv.Itoa(d.port) + src
	}
	return "mx " + d.domain + src
}

func (d *destination) connKey(host string, remote netip.AddrPort, p *connPolicy) connKey {
	return connKey{
		remote: remote, host: host, source: d.source, policy: d.policy,
		mode: d.mode, roots: d.roots, user: d.username, verify: p.key,
	}
}

// name is what the destination is called in logs and attempts.
func (d *destination) name() string {
	if d.route != nil || d.held != nil {
		return d.host
	}
	return d.domain
}
