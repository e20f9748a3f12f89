package delivery

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postgate/postgate/internal/relay/queue"
)

// Cause says what kind of problem decided an attempt, so that status
// reporting can name it: a target that cannot be reached, a
// source IP that is not usable, TLS that the policy requires and the host
// does not give.
type Cause string

const (
	// CauseNone: the next hop accepted every recipient.
	CauseNone Cause = ""
	// CauseDNS: the MX or address lookup failed, or the domain has no mail
	// host (NXDOMAIN, null MX).
	CauseDNS Cause = "DNS"
	// CauseConnect: no SMTP session: the connection was refused, timed
	// out or dropped, or the host refused to talk (greeting, EHLO, 421).
	CauseConnect Cause = "Connect"
	// CauseSourceIP: the domain's source IP cannot be bound here.
	CauseSourceIP Cause = "SourceIP"
	// CauseTLS: the TLS policy was not met (no STARTTLS, failed handshake,
	// certificate not verified).
	CauseTLS Cause = "TLS"
	// CauseAuth: the smart host refused our credentials, offers no usable
	// mechanism, or TLS is missing so they are not sent.
	CauseAuth Cause = "Auth"
	// CauseReply: the next hop answered MAIL, RCPT or DATA with an error.
	CauseReply Cause = "Reply"
	// CauseMessage: the message itself cannot be sent: bytes unsafe for
	// the wire, a corrupt spool file, SMTPUTF8 that the host lacks.
	CauseMessage Cause = "Message"
	// CauseHeld: the sender's RelayRoute cannot take effect, so the
	// message is held; no host was tried, none failed.
	CauseHeld Cause = "Held"
	// CauseThrottled: traffic shaping deferred the recipients without an
	// attempt: their site is suspended after a throttle reply, or a limit
	// of the site (connections, rates) is reached.
	CauseThrottled Cause = "Throttled"
)

// failure is why recipients were not delivered: the reply the queue keeps,
// whether it is final (a bounce) and what kind of problem it was.
type failure struct {
	reply queue.Reply
	perm  bool
	cause Cause
	// plainRetry: a STARTTLS handshake failed; policy Opportunistic may
	// try once more without TLS.
	plainRetry bool
	// until, when set, defers the recipients without counting an attempt
	// until then (traffic shaping: the site's, not the message's).
	until time.Time
	// snooze: nothing was tried and nothing is recorded; the message is
	// not due before until (queue.Lease.Snooze): a sender's turn at a
	// shaped site.
	snooze bool
}

// localFailure is a failure with no reply from the network (a refused
// connection, a DNS error): an enhanced status code and our own text.
func localFailure(perm bool, cause Cause, enhanced string, format string, args ...any) *failure {
	return &failure{
		reply: queue.Reply{Enhanced: enhanced, Text: boundText(fmt.Sprintf(format, args...))},
		perm:  perm,
		cause: cause,
	}
}

// abortedFailure is the failure of an attempt whose context ended while
// it waited for a slot: nothing was sent (record leaves it unrecorded).
func abortedFailure(err error) *failure {
	return localFailure(false, CauseConnect, "4.3.2", "attempt aborted: %v", err)
}

// remoteFailure is a failure that an SMTP reply decided: final when the
// reply is 5xx (RFC 5321 section 4.2.1: the first digit decides, whatever
// the enhanced code says). context, when not empty, prefixes the text.
func remoteFailure(e *smtp.SMTPError, cause Cause, context string) *failure {
	r := replyOf(e)
	if context != "" {
		r.Text = boundText(context + ": " + r.Text)
	}
	return &failure{reply: r, perm: e.Code/100 == 5, cause: cause}
}

// temporary returns a copy of f that is not final: failures before MAIL
// FROM are the connection's, never the message's, whatever the reply.
func (f *failure) temporary() *failure {
	c := *f
	c.perm = false
	return &c
}

// replyOf converts go-smtp's reply to the queue's.
func replyOf(e *smtp.SMTPError) queue.Reply {
	r := queue.Reply{Code: e.Code, Text: boundText(e.Message)}
	if ec := e.EnhancedCode; ec[0] >= 2 && ec[0] <= 5 && ec[1] >= 0 && ec[2] >= 0 {
		r.Enhanced = fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2])
	}
	if r.Code < 200 || r.Code > 599 {
		r.Code = 0
	}
	return r
}

// successReply makes the reply of an accepted DATA: go-smtp gives the text
// with the enhanced code still in front (RFC 2034 section 3).
func successReply(text string) queue.Reply {
	r := queue.Reply{Code: 250, Text: text}
	if code, rest, ok := strings.Cut(text, " "); ok && isEnhanced(code) {
		r.Enhanced, r.Text = code, rest
	}
	r.Text = boundText(r.Text)
	return r
}

// isEnhanced reports whether s looks like an RFC 3463 status code.
func isEnhanced(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || (parts[0] != "2" && parts[0] != "4" && parts[0] != "5") {
		return false
	}
	for _, p := range parts[1:] {
		if n, err := strconv.Atoi(p); err != nil || n < 0 || n > 999 || len(p) > 3 {
			return false
		}
	}
	return true
}

// boundText makes text one printable line of at most 512 bytes, as the
// queue and the API store it.
func boundText(s string) string {
	return strings.TrimSpace(queue.SanitizeReplyText(s))
}

// smtpError returns err's SMTP reply, or nil when err is a network or local
// error.
func smtpError(err error) *smtp.SMTPError {
	var e *smtp.SMTPError
	if errors.As(err, &e) {
		return e
	}
	return nil
}
