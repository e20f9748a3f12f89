package webhook

// The body of a request. The field names are those of the push
// notifications users of the "Relay Service" already consume, field for
// field: they must not change.

// Body is what one request carries: notifications about one message (a
// "job"). Notifications of one message that are queued together go in one
// request, up to the relay's batch size (100 by default).
type Body struct {
	Meta          BodyMeta       `json:"meta"`
	Notifications []Notification `json:"notifications"`
}

// BodyMeta describes the message (job) the notifications are about.
type BodyMeta struct {
	// Account and CustomerNo are the sender's SenderDomain annotations (or
	// labels) postgate.io/account and postgate.io/customer-no, "" when
	// unset; Tenant is its namespace. They are the SenderDomain's when the
	// outcome was observed, journaled with the notification.
	Account    string `json:"account"`
	CustomerNo string `json:"customerNo"`
	Tenant     string `json:"tenant"`
	// ReceivedTs is when the relay accepted the message.
	ReceivedTs string `json:"receivedTs"`
	// JobID is the relay's queue ID of the message: the ID the SMTP client
	// got in "250 2.0.0 Ok: queued as <ID>".
	JobID string `json:"jobId"`
	// Version is the format version, "1".
	Version string `json:"version"`
}

// Notification is one recipient's outcome in one delivery attempt.
type Notification struct {
	Meta    NotificationMeta `json:"meta"`
	Content *Content         `json:"content,omitempty"`
}

// NotificationMeta says which mail and what happened.
type NotificationMeta struct {
	// Tag is the client's label for the message: its X-Postgate-Tag field
	// (removed before delivery), "" when it set none.
	Tag   string `json:"tag"`
	Mail  Mail   `json:"mail"`
	Event Event  `json:"event"`
}

// Mail identifies one recipient's copy of a message.
type Mail struct {
	// ID is "<jobId>.<n>", n being the recipient's index in the envelope:
	// stable across the attempts of that recipient.
	ID string `json:"id"`
	// Email is the recipient; From the envelope sender; MimeFrom the
	// header From address, omitted when unknown.
	Email    string `json:"email"`
	From     string `json:"from"`
	MimeFrom string `json:"mimeFrom,omitempty"`
}

// Event types, states and sub-types.
const (
	TypeDelivered = "DELIVERED"
	TypeDeferred  = "DEFERRED"
	TypeBounced   = "BOUNCED"
	TypeExpired   = "EXPIRED"

	PhaseDeliver = "DELIVER"

	StateFinished = "FINISHED"
	StateRetrying = "RETRYING"

	SubTypeOK         = "OK"
	SubTypeSoftBounce = "SOFT_BOUNCE"
	SubTypeHardBounce = "HARD_BOUNCE"
)

// Event is the outcome. Type, Ts and Mail.ID identify a notification: a
// request that is retried repeats them unchanged, so a receiver that
// de-duplicates on (mail.id, event.type, event.ts) sees each outcome once.
type Event struct {
	Type        string `json:"type"`
	Phase       string `json:"phase"`
	State       string `json:"state"`
	SubType     string `json:"subType"`
	Ts          string `json:"ts"`
	Description string `json:"description"`
}

// Content describes the message and the SMTP exchange.
type Content struct {
	Mime *Mime `json:"mime,omitempty"`
	SMTP *SMTP `json:"smtp,omitempty"`
}

// Mime describes the message; Size is its length in bytes, as a string.
type Mime struct {
	MessageID string `json:"messageId,omitempty"`
	Size      string `json:"size,omitempty"`
}

// SMTP is the reply that decided the recipient's outcome.
type SMTP struct {
	// ResponseCode is the reply code as a string; omitted when no server
	// replied (DNS or connection failures: Reason says what happened).
	ResponseCode string `json:"responseCode,omitempty"`
	// Reason is "<status> (<reply>)", as mail logs show it.
	Reason string `json:"reason,omitempty"`
	// Relay is the host that answered (the MX host or the target relay).
	Relay string `json:"relay,omitempty"`
	// DSN is the enhanced status code (RFC 3463), or the one the reply
	// code implies.
	DSN                 string               `json:"dsn"`
	TransportEncryption *TransportEncryption `json:"transportEncryption,omitempty"`
}

// TransportEncryption describes TLS on the connection.
type TransportEncryption struct {
	// Requested is true when the TLS policy was not None.
	Requested   bool           `json:"requested"`
	Established bool           `json:"established"`
	Properties  *TLSProperties `json:"properties,omitempty"`
	// Policy is what decided the connection's TLS (a postgate addition to
	// the reference format): "dane", "mta-sts", "mta-sts-testing" or
	// "tls-policy" (the SenderDomain's own mxTLSPolicy).
	Policy string `json:"policy,omitempty"`
	// PolicyResult is the RFC 8460 result type of a TLS check or
	// negotiation that failed ("validation-failure",
	// "certificate-host-mismatch", "starttls-not-supported", ...); the
	// reason is in SMTP.Reason.
	PolicyResult string `json:"policyResult,omitempty"`
}

// TLSProperties are those of an established TLS connection; Protocol is
// written as in the reference ("TLS1.3").
type TLSProperties struct {
	Protocol    string `json:"protocol,omitempty"`
	CipherSuite string `json:"cipherSuite,omitempty"`
}

// TimeFormat is the layout of ReceivedTs and Event.Ts: RFC 3339 with
// milliseconds, always UTC, as in the reference.
const TimeFormat = "2006-01-02T15:04:05.000Z"
