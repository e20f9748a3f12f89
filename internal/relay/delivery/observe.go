package delivery

import (
	"cmp"
	"context"
	"crypto/tls"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"time"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/routing"
)

// TableSource gives the routing table in force; nil until one is loaded.
// The route is looked up at each attempt (docs/design.md contract 5).
// standalone.Source and follow.Follower implement it.
type TableSource interface {
	Table() *routing.Table
}

// Bouncer sends delivery status notifications (RFC 3464) for recipients
// that failed for good, and for recipients relayed to a next hop without
// DSN whose NOTIFY lists SUCCESS. The worker never asks for one when the
// envelope sender is null (a bounce is never bounced), nor for a failed
// recipient whose NOTIFY (RFC 3461 section 4.1) leaves out FAILURE.
type Bouncer interface {
	// Bounce enqueues one DSN to b.Message.Envelope.From. It is called
	// before the queue records the attempt, so that a crash repeats a
	// DSN rather than loses one and the body is still there to quote; on
	// error failed recipients are deferred instead and a later attempt
	// asks again, while relayed ones stay delivered (the error is logged).
	Bounce(ctx context.Context, b Bounce) error
}

// Bounce is what a DSN reports.
type Bounce struct {
	// Message is the message as this attempt leaves it: each recipient in
	// Recipients has State Failed or Expired and the Reply that decided it,
	// or (a report asked for with NOTIFY=SUCCESS, RFC 3461 section 5.2.2)
	// State Delivered to a next hop that does not offer DSN, with its
	// acceptance.
	// The body is still in the queue (queue.Queue.Body) while Bounce runs,
	// except for a recipient the queue expired on its own a moment after
	// the worker looked at the clock (then the message may be gone).
	Message queue.Message
	// Recipients are the indexes in Message.Envelope.To to report.
	Recipients []int
	// RemoteMTA is the host whose reply decided, "" when none did (DNS).
	RemoteMTA string
	// Time is when the attempt ended (the DSN's Last-Attempt-Date).
	Time time.Time
}

// Observer sees each attempt: status entries, metrics and webhooks
// are built from it. Observe is called once per destination and
// attempt, from the delivery goroutine, after the queue recorded the
// outcome: it must not block.
type Observer interface {
	Observe(a Attempt)
}

// Status is where an attempt leaves a recipient.
type Status string

const (
	// StatusSent: the next hop accepted it (2xx).
	StatusSent Status = "sent"
	// StatusDeferred: a temporary failure; it stays queued.
	StatusDeferred Status = "deferred"
	// StatusBounced: a permanent failure.
	StatusBounced Status = "bounced"
	// StatusExpired: temporary failures until the lifetime ran out.
	StatusExpired Status = "expired"
)

func statusOf(s queue.State) Status {
	switch s {
	case queue.Delivered:
		return StatusSent
	case queue.Failed:
		return StatusBounced
	case queue.Expired:
		return StatusExpired
	default:
		return StatusDeferred
	}
}

// Attempt describes one attempt to deliver one message to one destination.
type Attempt struct {
	QueueID queue.ID
	// Arrival is when the message was accepted; Size its length in bytes.
	Arrival time.Time
	Size    int64
	// MessageID and HeaderFrom are the message's Message-ID and From
	// address as read at accept time, "" when unknown.
	MessageID, HeaderFrom string
	// Tag is the client's label for the message (its X-Postgate-Tag), ""
	// when none.
	Tag string
	// Sender is the envelope sender, "" for the null sender.
	Sender string
	// Domain is the sender's SenderDomain in the table; nil when the domain
	// is not (or no longer) in it.
	Domain *routing.ObjectRef
	// Route is the RelayRoute the mail took, or that holds it (Cause
	// CauseHeld); nil for MX delivery.
	Route *routing.ObjectRef
	// Destination is the recipient domain (MX) or the target relay's host.
	Destination string
	// RelayHost is the host name (no final dot) of the last address
	// tried, "" when no connection was tried.
	RelayHost string
	// RelayAddr is the address and port connected to (or tried last); the
	// zero value when none.
	RelayAddr netip.AddrPort
	// SourceAddr is the local address of the connection, when there was
	// one.
	SourceAddr netip.AddrPort
	// Reply decided the attempt: the next hop's reply (text at most 512
	// bytes) or a local one for DNS, connection and TLS failures (Code 0).
	Reply queue.Reply
	// Cause says what kind of problem it was; CauseNone when sent.
	Cause Cause
	// TLS is the transport encryption of the connection.
	TLS TLSInfo
	// Status is StatusDeferred when any recipient is deferred, else
	// StatusBounced when any bounced, else StatusExpired when any expired,
	// else StatusSent.
	Status Status
	// Recipients are the recipients attempted, with their results.
	Recipients []RecipientResult
	// Site is the traffic shaping site of an MX destination
	// (shaping.SiteOf), "" when shaping is off or the mail took a
	// RelayRoute.
	Site string
	// ThrottledUntil, when not zero, is when the deferred recipients are
	// due again: traffic shaping deferred them without counting an attempt
	// (docs/design.md, "Traffic shaping"), because the site is suspended
	// after a throttle reply (SiteSuspended) or one of its limits was
	// reached.
	ThrottledUntil time.Time
	SiteSuspended  bool
	// Start and End bound the attempt.
	Start, End time.Time
	// Delay is from the message's arrival to End.
	Delay time.Duration
}

// RecipientResult is one recipient's outcome in an attempt.
type RecipientResult struct {
	// Index is the recipient's index in the envelope.
	Index int
	// Addr is the address as the client gave it.
	Addr   string
	Status Status
	Reply  queue.Reply
}

// TLSInfo describes the transport encryption of one connection.
type TLSInfo struct {
	// Requested is the TLS policy that applied.
	Requested v1alpha1.TLSPolicy
	// Mode is STARTTLS or Implicit.
	Mode v1alpha1.TLSMode
	// Established is true when TLS was negotiated.
	Established bool
	// Protocol is the version, such as TLSv1.3; CipherSuite its IANA name.
	Protocol, CipherSuite string
	// Policy is what decided the connection's TLS: the recipient domain's
	// DANE or MTA-STS policy, or the sender domain's (route's) TLSPolicy.
	Policy PolicyKind
	// PolicyResult is the TLS-RPT result type (RFC 8460 section 4.3) of a
	// certificate check or negotiation that failed, "" when none did.
	PolicyResult string
}

func tlsInfoOf(st tls.ConnectionState) (protocol, suite string) {
	return strings.Replace(tls.VersionName(st.Version), "TLS ", "TLSv", 1), tls.CipherSuiteName(st.CipherSuite)
}

// noteShaping sets a's traffic shaping fields from the destination and
// the outcome; a.Status is set.
func (w *Worker) noteShaping(a *Attempt, d *destination, o *outcome) {
	if d.site == nil || w.opts.Shaping == nil {
		return
	}
	a.Site = d.site.Name
	if o.until.IsZero() || a.Status != StatusDeferred {
		return
	}
	a.ThrottledUntil = o.until
	until, _ := w.opts.Shaping.Suspended(d.site.Name)
	a.SiteSuspended = !until.IsZero()
}

// summarize sets a.Status from the recipients' results.
func (a *Attempt) summarize() {
	seen := map[Status]bool{}
	for _, r := range a.Recipients {
		seen[r.Status] = true
	}
	a.Status = StatusSent
	for _, s := range []Status{StatusDeferred, StatusBounced, StatusExpired} {
		if seen[s] {
			a.Status = s
			return
		}
	}
}

// log writes one line per recipient of the attempt, as mail operators grep
// them: queue id, recipient, relay host[ip]:port, delay, dsn, status,
// reply, TLS protocol.
func (w *Worker) log(a *Attempt) {
	relay := "none"
	if a.RelayHost != "" || a.RelayAddr.IsValid() {
		relay = a.RelayHost
		if a.RelayAddr.IsValid() {
			relay += "[" + a.RelayAddr.Addr().String() + "]:" + strconv.Itoa(int(a.RelayAddr.Port()))
		}
	}
	tlsProto := "none"
	if a.TLS.Established {
		tlsProto = a.TLS.Protocol
	}
	// What decided the TLS, and what failed under it: "dane",
	// "mta-sts/certificate-host-mismatch", "tls-policy"; "none" without a
	// connection.
	tlsPolicy := cmp.Or(string(a.TLS.Policy), "none")
	if a.TLS.PolicyResult != "" {
		tlsPolicy += "/" + a.TLS.PolicyResult
	}
	for _, r := range a.Recipients {
		level := slog.LevelInfo
		if r.Status != StatusSent {
			level = slog.LevelWarn
		}
		w.logger.Log(context.Background(), level, "Delivery attempt",
			"id", string(a.QueueID),
			"to", w.maskAddr(r.Addr),
			"relay", relay,
			"delay", a.Delay.Round(time.Millisecond).String(),
			"dsn", dsnOf(r),
			"status", string(r.Status),
			"reply", r.Reply.String(),
			"tls", tlsProto,
			"tls_policy", tlsPolicy,
		)
	}
}

// dsnOf is the recipient's enhanced status code, or the one its reply
// code implies.
func dsnOf(r RecipientResult) string {
	if r.Reply.Enhanced != "" {
		return r.Reply.Enhanced
	}
	switch {
	case r.Reply.Code/100 == 2:
		return "2.0.0"
	case r.Reply.Code/100 == 5 || r.Status == StatusBounced:
		return "5.0.0"
	default:
		return "4.0.0"
	}
}

// maskAddr hides the local part when the options say so.
func (w *Worker) maskAddr(addr string) string {
	if !w.opts.MaskLocalPart {
		return addr
	}
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return "***" + addr[i:]
	}
	return "***"
}
