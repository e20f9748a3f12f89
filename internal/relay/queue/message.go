package queue

import (
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Envelope is what the client said in the SMTP transaction, stored exactly
// as given: the queue never rewrites an address.
type Envelope struct {
	// From is the reverse-path of MAIL FROM as the client gave it, without
	// the angle brackets; "" is the null sender (bounces).
	From string `json:"from"`
	// To lists the RCPT TO forward-paths in the order given. Per-recipient
	// state (Message.Recipients) is kept at the same indexes.
	To []Rcpt `json:"to"`
	// Size is the SIZE= the client declared (RFC 1870), 0 when none.
	Size int64 `json:"size,omitempty"`
	// Body is the BODY= parameter: "", "7BIT", "8BITMIME" (RFC 6152) or
	// "BINARYMIME" (RFC 3030).
	Body string `json:"body,omitempty"`
	// SMTPUTF8 is set when MAIL FROM carried SMTPUTF8 (RFC 6531).
	SMTPUTF8 bool `json:"smtputf8,omitempty"`
	// RequireTLS is set when MAIL FROM carried REQUIRETLS (RFC 8689).
	RequireTLS bool `json:"requiretls,omitempty"`
	// TLSOptional is set for a message that carries "TLS-Required: No"
	// (RFC 8689 section 5) and that the relay made itself: its TLS-RPT
	// reports (RFC 8460 section 5.3 wants them to get through the very
	// TLS failures they report). The recipient domain's DANE and MTA-STS
	// policies do not stop its delivery; the sender domain's policy still
	// applies.
	TLSOptional bool `json:"tlsOptional,omitempty"`
	// Ret is the DSN RET= parameter, "FULL" or "HDRS" (RFC 3461 section 4.3).
	Ret string `json:"ret,omitempty"`
	// EnvID is the DSN ENVID= parameter as given (RFC 3461 section 4.4).
	EnvID string `json:"envid,omitempty"`
	// ClientAddr is the client's address (ip:port), after the PROXY protocol.
	ClientAddr string `json:"client,omitempty"`
	// HELO is the name the client gave in HELO or EHLO.
	HELO string `json:"helo,omitempty"`
	// Auth is the SMTP AUTH identity, namespace/user (docs/design.md contract
	// 3), or "" when the client did not authenticate.
	Auth string `json:"auth,omitempty"`
	// MessageID is the message's Message-ID field and HeaderFrom the
	// address of its From field, as read at accept time (internal/relay/message),
	// "" when unknown: delivery notifications report them without
	// reading the body again.
	MessageID  string `json:"messageId,omitempty"`
	HeaderFrom string `json:"headerFrom,omitempty"`
	// Tag is the client's label for the message's delivery notifications
	// (its X-Postgate-Tag field, removed from the message at accept time),
	// "" when none.
	Tag string `json:"tag,omitempty"`
}

// Author is the address whose SenderDomain a message is delivered as (its
// route, source address, lifetime): the envelope sender, or for the null
// sender the From field's address, which the SMTP server accepted only as
// one the client may send as. A DSN the relay made itself has neither:
// "".
func (e *Envelope) Author() string {
	if e.From == "" {
		return e.HeaderFrom
	}
	return e.From
}

// Tenant is the lower-cased domain of the Author, "" when there is none:
// the key by which Due shares delivery between senders (docs/design.md,
// "Traffic shaping", fairness). A domain, not the SenderDomain object:
// the queue knows no routing table, and a SenderDomain is a domain.
func (e *Envelope) Tenant() string {
	a := e.Author()
	at := strings.LastIndexByte(a, '@')
	if at < 0 {
		return ""
	}
	return strings.ToLower(a[at+1:])
}

// Rcpt is one RCPT TO.
type Rcpt struct {
	// Addr is the forward-path as the client gave it, without the angle
	// brackets, byte for byte.
	Addr string `json:"addr"`
	// Notify is the DSN NOTIFY= list (RFC 3461 section 4.1): NEVER, or any
	// of SUCCESS, FAILURE, DELAY; empty when not given.
	Notify []string `json:"notify,omitempty"`
	// ORcpt is the DSN ORCPT= parameter as given, "addr-type;xtext"
	// (RFC 3461 section 4.2).
	ORcpt string `json:"orcpt,omitempty"`
}

// Notifies reports whether the recipient asked its sender to be told of
// condition (SUCCESS, FAILURE or DELAY), as RFC 3461 section 4.1 reads
// NOTIFY: without it, of a failure only; NEVER, of nothing.
func (r *Rcpt) Notifies(condition string) bool {
	if len(r.Notify) == 0 {
		return strings.EqualFold(condition, "FAILURE")
	}
	return slices.ContainsFunc(r.Notify, func(n string) bool { return strings.EqualFold(n, condition) })
}

// Limits on what one message may hold. They bound memory and the size of
// every record the queue reads back.
const (
	// MaxRecipients bounds Envelope.To; Options.MaxRecipients may lower it.
	MaxRecipients = 1000
	// maxField bounds every string of the envelope (an RFC 5321 path is at
	// most 256 octets; SMTPUTF8 addresses and parameters get some room).
	maxField = 1024
	// maxReplyText bounds a stored reply text; longer text is cut.
	maxReplyText = 512
)

// State is where one recipient stands.
type State uint8

// A recipient is Pending until it is final: Delivered, Failed or Expired.
const (
	// Pending: not yet delivered; as an attempt's outcome (Result.State),
	// a temporary failure (deferred).
	Pending State = iota
	// Delivered: the next hop accepted it (2xx).
	Delivered
	// Failed: permanent failure (5xx, null MX, NXDOMAIN...): bounce now.
	Failed
	// Expired: temporary failures until the message's lifetime ran out.
	Expired
)

var stateNames = [...]string{"pending", "delivered", "failed", "expired"}

// String returns pending, delivered, failed or expired.
func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", s)
}

// Final reports whether the recipient needs no more attempts.
func (s State) Final() bool { return s != Pending }

// MarshalText implements encoding.TextMarshaler.
func (s State) MarshalText() ([]byte, error) {
	if int(s) >= len(stateNames) {
		return nil, fmt.Errorf("invalid state %d: %w", s, ErrInvalid)
	}
	return []byte(stateNames[s]), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *State) UnmarshalText(b []byte) error {
	for i, n := range stateNames {
		if string(b) == n {
			*s = State(i)
			return nil
		}
	}
	return fmt.Errorf("invalid state %q: %w", b, ErrInvalid)
}

// Reply is an SMTP reply, from the next hop or made up locally for a
// failure that had none (a refused connection, a DNS error).
type Reply struct {
	Code     int    `json:"code,omitempty"`     // 200 to 599; 0 when none
	Enhanced string `json:"enhanced,omitempty"` // RFC 3463 status code, like "4.4.1"
	Text     string `json:"text,omitempty"`
}

// String formats the reply as an SMTP server would say it.
func (r Reply) String() string {
	var b strings.Builder
	if r.Code != 0 {
		fmt.Fprintf(&b, "%d", r.Code)
	}
	for _, s := range []string{r.Enhanced, r.Text} {
		if s != "" {
			if b.Len() > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(s)
		}
	}
	return b.String()
}

// RecipientStatus is the delivery state of one recipient.
type RecipientStatus struct {
	State State `json:"state"`
	// Attempts counts the delivery attempts reported for this recipient.
	Attempts int `json:"attempts,omitempty"`
	// LastAttempt is the time of the last reported attempt.
	LastAttempt time.Time `json:"last,omitzero"`
	// NextAttempt is when a Pending recipient is due.
	NextAttempt time.Time `json:"next,omitzero"`
	// Reply is the last reply, the reason for the state; the zero Reply
	// before any attempt.
	Reply Reply `json:"reply,omitzero"`
}

// Message is a queued message as stored: the envelope, the arrival time and
// each recipient's status. A Message is a copy; changing it changes nothing
// in the queue.
type Message struct {
	ID ID
	// Arrival is when the message was accepted, from the queue's clock. It
	// never changes, not across restarts nor when the message moves to a
	// peer, so lifetimes count from it.
	Arrival  time.Time
	Envelope Envelope
	// Size is the length of the body in bytes.
	Size int64
	// Held messages are not due until released.
	Held bool
	// Recipients holds each recipient's status, at the indexes of
	// Envelope.To.
	Recipients []RecipientStatus
}

// Pending returns the indexes of the recipients still to deliver.
func (m *Message) Pending() []int {
	var out []int
	for i, r := range m.Recipients {
		if r.State == Pending {
			out = append(out, i)
		}
	}
	return out
}

// Due returns the indexes of the pending recipients due at now.
func (m *Message) Due(now time.Time) []int {
	var out []int
	for i, r := range m.Recipients {
		if r.State == Pending && !r.NextAttempt.After(now) {
			out = append(out, i)
		}
	}
	return out
}

// Expired reports whether a message with the given lifetime has been in the
// queue for that long at now. The lifetime comes from the current routing
// table at each attempt (docs/design.md contract 5); the arrival time does not
// change, so a lifetime never restarts.
func (m *Message) Expired(lifetime time.Duration, now time.Time) bool {
	return !now.Before(m.Arrival.Add(lifetime))
}

// clone returns a deep copy.
func (m *Message) clone() Message {
	c := *m
	c.Envelope.To = make([]Rcpt, len(m.Envelope.To))
	for i, r := range m.Envelope.To {
		r.Notify = append([]string(nil), r.Notify...)
		c.Envelope.To[i] = r
	}
	c.Recipients = append([]RecipientStatus(nil), m.Recipients...)
	return c
}

// nextDue returns the earliest NextAttempt of a pending recipient and how
// many recipients are pending.
func (m *Message) nextDue() (due time.Time, pending int) {
	for _, r := range m.Recipients {
		if r.State != Pending {
			continue
		}
		if pending == 0 || r.NextAttempt.Before(due) {
			due = r.NextAttempt
		}
		pending++
	}
	return due, pending
}

// validate checks the envelope against the limits and the values the
// queue's readers rely on. maxRcpt is the recipient limit in force.
func (e *Envelope) validate(maxRcpt int) error {
	if len(e.To) == 0 {
		return fmt.Errorf("no recipients: %w", ErrInvalid)
	}
	if len(e.To) > maxRcpt {
		return fmt.Errorf("%d recipients, at most %d: %w", len(e.To), maxRcpt, ErrInvalid)
	}
	if e.Size < 0 {
		return fmt.Errorf("negative SIZE: %w", ErrInvalid)
	}
	if !oneOf(e.Body, "", "7BIT", "8BITMIME", "BINARYMIME") {
		return fmt.Errorf("BODY=%q: %w", e.Body, ErrInvalid)
	}
	if !oneOf(e.Ret, "", "FULL", "HDRS") {
		return fmt.Errorf("RET=%q: %w", e.Ret, ErrInvalid)
	}
	fields := []struct{ name, value string }{
		{"MAIL FROM", e.From}, {"ENVID", e.EnvID}, {"client address", e.ClientAddr},
		{"HELO", e.HELO}, {"AUTH identity", e.Auth}, {"Message-ID", e.MessageID}, {"From", e.HeaderFrom},
		{"tag", e.Tag},
	}
	for _, f := range fields {
		if err := checkField(f.name, f.value); err != nil {
			return err
		}
	}
	for i, r := range e.To {
		if r.Addr == "" {
			return fmt.Errorf("recipient %d: empty address: %w", i, ErrInvalid)
		}
		if err := checkField("RCPT TO", r.Addr); err != nil {
			return err
		}
		if err := checkField("ORCPT", r.ORcpt); err != nil {
			return err
		}
		if len(r.Notify) > 4 {
			return fmt.Errorf("recipient %d: NOTIFY lists %d keywords: %w", i, len(r.Notify), ErrInvalid)
		}
		for _, n := range r.Notify {
			if !oneOf(n, "NEVER", "SUCCESS", "FAILURE", "DELAY") {
				return fmt.Errorf("recipient %d: NOTIFY=%q: %w", i, n, ErrInvalid)
			}
		}
	}
	return nil
}

// checkField bounds a string and keeps it printable UTF-8, so that it is
// stored exactly (JSON would replace invalid UTF-8) and can never inject a
// line into a header or a log.
func checkField(name, v string) error {
	if len(v) > maxField {
		return fmt.Errorf("%s is %d bytes, at most %d: %w", name, len(v), maxField, ErrInvalid)
	}
	if !utf8.ValidString(v) {
		return fmt.Errorf("%s is not valid UTF-8: %w", name, ErrInvalid)
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%s contains control character %U: %w", name, r, ErrInvalid)
		}
	}
	return nil
}

func oneOf(v string, set ...string) bool {
	for _, s := range set {
		if v == s {
			return true
		}
	}
	return false
}

// validate checks a stored status (from disk or an import).
func (r *RecipientStatus) validate() error {
	if r.State > Expired {
		return fmt.Errorf("state %d: %w", r.State, ErrInvalid)
	}
	if r.Attempts < 0 || r.Attempts > maxAttempts {
		return fmt.Errorf("%d attempts: %w", r.Attempts, ErrInvalid)
	}
	return r.Reply.validate()
}

// maxAttempts bounds the attempt counter (an attempt a minute for a year).
const maxAttempts = 1 << 20

func (r *Reply) validate() error {
	if r.Code != 0 && (r.Code < 200 || r.Code > 599) {
		return fmt.Errorf("reply code %d: %w", r.Code, ErrInvalid)
	}
	if r.Enhanced != "" && !validEnhanced(r.Enhanced) {
		return fmt.Errorf("enhanced status %q: %w", r.Enhanced, ErrInvalid)
	}
	if len(r.Text) > maxReplyText || r.Text != SanitizeReplyText(r.Text) {
		return fmt.Errorf("reply text: %w", ErrInvalid)
	}
	return nil
}

// validEnhanced checks class "." subject "." detail (RFC 3463 section 2):
// class 2, 4 or 5, subject and detail 1 to 3 digits.
func validEnhanced(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || !oneOf(parts[0], "2", "4", "5") {
		return false
	}
	for _, p := range parts[1:] {
		if p == "" || len(p) > 3 {
			return false
		}
		for i := range len(p) {
			if p[i] < '0' || p[i] > '9' {
				return false
			}
		}
	}
	return true
}

// sanitizeReply makes a reply from the network storable: an out-of-range
// code or malformed enhanced code is dropped, the text made printable UTF-8
// and cut to maxReplyText bytes.
func sanitizeReply(r Reply) Reply {
	if r.Code != 0 && (r.Code < 200 || r.Code > 599) {
		r.Code = 0
	}
	if r.Enhanced != "" && !validEnhanced(r.Enhanced) {
		r.Enhanced = ""
	}
	r.Text = SanitizeReplyText(r.Text)
	return r
}

// SanitizeReplyText makes a reply text storable and loggable: one line of
// valid UTF-8 of at most 512 bytes, control characters turned to spaces.
func SanitizeReplyText(s string) string {
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(s, "?") {
		if r < 0x20 || r == 0x7f {
			r = ' '
		}
		if b.Len()+utf8.RuneLen(r) > maxReplyText {
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}
