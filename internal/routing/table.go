package routing

import (
	"crypto"
	"crypto/x509"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/net/idna"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// DefaultMaxQueueLifetime applies when a SenderDomain sets none, and to mail
// of a domain that is no longer in the table (docs/design.md contract 5).
const DefaultMaxQueueLifetime = 48 * time.Hour

// Table is a compiled routing table. It is immutable once built: lookups
// need no locks, and a relay replaces the whole table atomically.
type Table struct {
	// Version is the publication version (a growing integer), set when the
	// table is published or loaded; 0 for a table fresh from Compile.
	Version int64

	domains  map[string]*Domain
	networks prefixTrie[*Network]
	objects  []ObjectRef
	// held are the objects of held entries (Domain.Hold and
	// Domain.SigningUnavailable).
	held map[ObjectKey]bool
	// units is what Encode writes, kept from Compile or Decode.
	units map[string]unit
}

// Domain is one accepted SenderDomain with its references resolved.
type Domain struct {
	Object    ObjectRef
	Name      string
	Namespace string
	// DKIM is the signing key; nil when the domain does not sign.
	DKIM *DKIM
	// SourceIP is the dedicated local address for this domain's mail; the
	// zero Addr when unset.
	SourceIP         netip.Addr
	MaxQueueLifetime time.Duration
	// MXTLSPolicy applies to delivery to the recipients' MX hosts.
	MXTLSPolicy v1alpha1.TLSPolicy
	// Webhook receives delivery notifications; nil when unset.
	Webhook *Webhook
	// Route is the accepted RelayRoute; nil when mail goes to MX.
	Route *Route
	// Account and CustomerNo are the SenderDomain's AccountKey and
	// CustomerNoKey annotations (or labels), "" when unset: delivery
	// notifications carry them.
	Account, CustomerNo string
	// Hold is set, and Route nil, while the domain's accepted RelayRoute
	// cannot take effect (a Secret it or its SenderDomain needs is missing
	// or unusable): the mail the route would carry is deferred at each
	// attempt, never sent by MX, until the route resolves or is deleted.
	Hold *Hold
	// SigningUnavailable is set, with the reason, and DKIM nil, while the
	// domain signs but its key is not usable: new mail is refused with a
	// temporary reply at the end of DATA, never accepted unsigned.
	SigningUnavailable string
}

// Hold says why the mail of a RelayRoute that cannot take effect is held.
type Hold struct {
	// Route is the RelayRoute and Host its target host.
	Route ObjectRef
	Host  string
	// Reason says why the route cannot take effect.
	Reason  string
	senders senderSet
}

// Holds reports whether mail from sender (an address of the domain) is
// held: the mail the route would carry if it took effect.
func (h *Hold) Holds(sender string) bool { return h.senders.covers(sender) }

// DKIM is a domain's signing key.
type DKIM struct {
	Selector  string
	Algorithm v1alpha1.DKIMAlgorithm
	Signer    crypto.Signer
}

// Webhook is a notification endpoint with its HMAC key.
type Webhook struct {
	URL     string
	HMACKey []byte
}

// Route is an accepted RelayRoute: a target relay and how to reach it.
type Route struct {
	Object    ObjectRef
	Host      string
	Port      int
	TLSPolicy v1alpha1.TLSPolicy
	TLSMode   v1alpha1.TLSMode
	// RootCAs verifies the target with TLSPolicy Verify; nil means the
	// system roots.
	RootCAs *x509.CertPool
	// Username and Password authenticate us to the target; empty when the
	// route has no credentials.
	Username, Password string
	// senders are the routed envelope senders.
	senders senderSet
}

// Routes reports whether the route carries mail from sender (an address of
// the route's domain).
func (r *Route) Routes(sender string) bool { return r.senders.covers(sender) }

// senderSet holds envelope senders, lowercased; an empty set covers every
// sender of the domain.
type senderSet map[string]struct{}

func newSenderSet(senders []string) senderSet {
	if len(senders) == 0 {
		return nil
	}
	s := make(senderSet, len(senders))
	for _, a := range senders {
		s[a] = struct{}{}
	}
	return s
}

func (s senderSet) covers(sender string) bool {
	if len(s) == 0 {
		return true
	}
	_, ok := s[strings.ToLower(sender)]
	return ok
}

// Network is an accepted TrustedNetwork.
type Network struct {
	Object    ObjectRef
	Namespace string
	Prefixes  []netip.Prefix
	// Auth is "" when the network has no AUTH, else Required or Optional.
	Auth  v1alpha1.SMTPAuthMode
	users map[string]PasswordHash
}

// Lookups ---------------------------------------------------------------

// Domain returns the SenderDomain entry for a domain name, or nil.
func (t *Table) Domain(name string) *Domain {
	return t.domains[strings.ToLower(name)]
}

// Trusted reports whether addr is in any TrustedNetwork: a client that is not
// gets 554 5.7.1 at once.
func (t *Table) Trusted(addr netip.Addr) bool {
	found := false
	t.networks.visit(addr, func(*Network) bool { found = true; return false })
	return found
}

// AuthOffered reports whether any network containing addr accepts SMTP AUTH.
func (t *Table) AuthOffered(addr netip.Addr) bool {
	found := false
	t.networks.visit(addr, func(n *Network) bool { found = n.Auth != ""; return !found })
	return found
}

// Authenticate checks SMTP AUTH credentials of a client at addr against the
// networks that contain it. username is "user" or "namespace/user". It
// returns the identity namespace/user, or "" when no network accepts them.
func (t *Table) Authenticate(addr netip.Addr, username, password string) string {
	ns, user, qualified := strings.Cut(username, "/")
	if !qualified {
		ns, user = "", username
	}
	identity := ""
	t.networks.visit(addr, func(n *Network) bool {
		if qualified && n.Namespace != ns {
			return true
		}
		if h, ok := n.users[user]; ok && h.Verify(password) {
			identity = n.Namespace + "/" + user
			return false
		}
		return true
	})
	return identity
}

// Denial says why a client may not send as a sender.
type Denial int

const (
	// Allowed: the client may send as the sender.
	Allowed Denial = iota
	// DenyUntrusted: no TrustedNetwork contains the client.
	DenyUntrusted
	// DenyUnknownDomain: the sender's domain is no accepted SenderDomain.
	DenyUnknownDomain
	// DenyDomainNotCovered: no network containing the client belongs to the
	// namespace of the sender's domain.
	DenyDomainNotCovered
	// DenyAuthRequired: the networks that cover the domain require AUTH as
	// one of their users, and the client is not.
	DenyAuthRequired
)

func (d Denial) String() string {
	switch d {
	case Allowed:
		return "allowed"
	case DenyUntrusted:
		return "client is in no trusted network"
	case DenyUnknownDomain:
		return "sender domain is not an accepted sender domain"
	case DenyDomainNotCovered:
		return "sender domain is not covered by the client's trusted networks"
	case DenyAuthRequired:
		return "authentication required"
	default:
		return "denied"
	}
}

// MaySend reports whether a client at addr, authenticated as identity
// (namespace/user, or "" without AUTH), may send as the envelope sender. A
// TrustedNetwork admits only the SenderDomains of its own namespace.
func (t *Table) MaySend(addr netip.Addr, identity, sender string) Denial {
	d := t.Domain(domainOf(sender))
	if d == nil {
		if t.Trusted(addr) {
			return DenyUnknownDomain
		}
		return DenyUntrusted
	}
	return t.mayUse(addr, identity, d)
}

// mayUse is MaySend for a sender of the accepted SenderDomain d.
func (t *Table) mayUse(addr netip.Addr, identity string, d *Domain) Denial {
	verdict := DenyUntrusted
	t.networks.visit(addr, func(n *Network) bool {
		if n.Namespace != d.Namespace {
			verdict = max(verdict, DenyDomainNotCovered)
			return true
		}
		if n.Auth == v1alpha1.SMTPAuthRequired && !n.hasIdentity(identity) {
			verdict = max(verdict, DenyAuthRequired)
			return true
		}
		verdict = Allowed
		return false
	})
	return verdict
}

// Signs reports whether the domain declares DKIM signing: it has its key,
// or its key is unavailable (SigningUnavailable).
func (d *Domain) Signs() bool { return d.DKIM != nil || d.SigningUnavailable != "" }

// SigningDomain returns the SenderDomain whose key signs a message that a
// client at addr, authenticated as identity, sends from the envelope sender
// with fromDomain the domain of its From field ("" when the From field names
// no one domain): the From field's SenderDomain when it is another one and
// may sign the message, else the sender's (nil when the sender's domain is
// not in the table).
//
// DMARC (RFC 7489 section 3.1.1) passes on a DKIM signature whose d= is the
// From field's domain (or, relaxed, shares its organizational domain); a
// signature of the envelope sender's domain aligns only when the two
// coincide. The From field's SenderDomain signs instead when all of these
// hold, so that the choice is the table's, never a client's claim:
//   - it is a SenderDomain of its own (an exact match: a subdomain of one is
//     not a domain the client may send as, and keeps the sender's
//     signature, which aligns in relaxed mode when the two share an
//     organizational domain);
//   - it is in the sender's namespace: a tenant's key signs only that
//     tenant's mail, whatever else the client's networks admit;
//   - the client may send as it, by the rules of MaySend;
//   - it declares signing (Signs): whether its key is available right now
//     does not decide, so a key outage gets the From domain's
//     SigningUnavailable (a temporary refusal), never a signature that
//     quietly stops aligning (docs/design.md contract 5);
//   - the sender's mail goes to MX: mail that a RelayRoute carries (or holds)
//     is the smart host's to sign, as a domain is either signed or relayed,
//     never both.
//
// Only the signature follows the From field: the route, source address,
// lifetime and notifications stay the envelope sender's (Lookup).
func (t *Table) SigningDomain(addr netip.Addr, identity, sender, fromDomain string) *Domain {
	dl := t.Lookup(sender)
	d := dl.Domain
	if d == nil || fromDomain == "" || dl.Route != nil || dl.Hold != nil {
		return d
	}
	f := t.Domain(tableKey(fromDomain))
	if f == nil || f == d || f.Namespace != d.Namespace || !f.Signs() || t.mayUse(addr, identity, f) != Allowed {
		return d
	}
	return f
}

func (n *Network) hasIdentity(identity string) bool {
	ns, user, ok := strings.Cut(identity, "/")
	if !ok || ns != n.Namespace {
		return false
	}
	_, ok = n.users[user]
	return ok
}

// Delivery is how a message from one sender is delivered, decided from the
// current table at each attempt (docs/design.md contract 5).
type Delivery struct {
	// Domain is the sender's SenderDomain; nil when it is not (or no
	// longer) in the table: then the message goes to MX with defaults.
	Domain *Domain
	// Route is the target relay; nil means the recipients' MX hosts,
	// unless Hold is set.
	Route *Route
	// Hold, when set, defers the message: its RelayRoute cannot take
	// effect, and the mail must not go by MX meanwhile.
	Hold *Hold
}

// Lookup returns the delivery of a message from sender.
func (t *Table) Lookup(sender string) Delivery {
	d := t.Domain(domainOf(sender))
	if d == nil {
		return Delivery{}
	}
	if d.Route != nil && d.Route.Routes(sender) {
		return Delivery{Domain: d, Route: d.Route}
	}
	if d.Hold != nil && d.Hold.Holds(sender) {
		return Delivery{Domain: d, Hold: d.Hold}
	}
	return Delivery{Domain: d}
}

// MaxQueueLifetime returns the lifetime that applies to the delivery.
func (d Delivery) MaxQueueLifetime() time.Duration {
	if d.Domain == nil || d.Domain.MaxQueueLifetime == 0 {
		return DefaultMaxQueueLifetime
	}
	return d.Domain.MaxQueueLifetime
}

// Objects returns the objects the table contains, sorted by kind, namespace
// and name.
func (t *Table) Objects() []ObjectRef { return t.objects }

// Contains reports whether the table holds generation gen (or a later one)
// of the object.
func (t *Table) Contains(key ObjectKey, gen int64) bool {
	i, ok := slices.BinarySearchFunc(t.objects, key, func(o ObjectRef, k ObjectKey) int { return compareKeys(o.Key(), k) })
	return ok && t.objects[i].Generation >= gen
}

// Held reports whether the object is in the table as a held entry: a
// SenderDomain whose mail is held or whose signing key is unavailable, or
// the RelayRoute that holds its mail.
func (t *Table) Held(key ObjectKey) bool { return t.held[key] }

// domainOf returns the lowercased domain of an address, "" when it has none.
func domainOf(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return ""
	}
	return tableKey(addr[i+1:])
}

// tableKey returns a domain name as the table keys it: lowercased, in
// A-label form.
func tableKey(d string) string {
	d = strings.ToLower(d)
	// SenderDomains are written in A-label form; the domain of an SMTPUTF8
	// sender (RFC 6531) may come as U-labels, the same name (RFC 5890).
	if strings.ContainsFunc(d, func(r rune) bool { return r >= utf8.RuneSelf }) {
		if a, err := idna.Lookup.ToASCII(d); err == nil {
			return a
		}
	}
	return d
}
