package notify

import (
	"strconv"
	"strings"
	"time"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/delivery"
	"github.com/postgate/postgate/webhook"
)

// The body of a request: the types and constants are package webhook's,
// which receivers import; the relay builds them here.
type (
	Body                = webhook.Body
	BodyMeta            = webhook.BodyMeta
	Notification        = webhook.Notification
	NotificationMeta    = webhook.NotificationMeta
	Mail                = webhook.Mail
	Event               = webhook.Event
	Content             = webhook.Content
	Mime                = webhook.Mime
	SMTP                = webhook.SMTP
	TransportEncryption = webhook.TransportEncryption
	TLSProperties       = webhook.TLSProperties
)

// Event types, states and sub-types.
const (
	TypeDelivered = webhook.TypeDelivered
	TypeDeferred  = webhook.TypeDeferred
	TypeBounced   = webhook.TypeBounced
	TypeExpired   = webhook.TypeExpired

	PhaseDeliver = webhook.PhaseDeliver

	StateFinished = webhook.StateFinished
	StateRetrying = webhook.StateRetrying

	SubTypeOK         = webhook.SubTypeOK
	SubTypeSoftBounce = webhook.SubTypeSoftBounce
	SubTypeHardBounce = webhook.SubTypeHardBounce
)

func formatTime(t time.Time) string { return t.UTC().Format(webhook.TimeFormat) }

// notificationOf builds the notification of one recipient of an attempt.
// ok is false for a status that has no notification.
func notificationOf(a *delivery.Attempt, r *delivery.RecipientResult) (n Notification, ok bool) {
	var e Event
	switch r.Status {
	case delivery.StatusSent:
		e = Event{Type: TypeDelivered, State: StateFinished, SubType: SubTypeOK, Description: "mail delivered"}
	case delivery.StatusDeferred:
		e = Event{Type: TypeDeferred, State: StateRetrying, SubType: SubTypeSoftBounce, Description: deferredDescription(a)}
	case delivery.StatusBounced:
		e = Event{Type: TypeBounced, State: StateFinished, SubType: SubTypeHardBounce, Description: "mail bounced"}
	case delivery.StatusExpired:
		// Expiry ends a run of temporary failures: the sub-type stays within
		// the values receivers know, and says the failures were soft.
		e = Event{Type: TypeExpired, State: StateFinished, SubType: SubTypeSoftBounce, Description: "queue lifetime expired"}
	default:
		return Notification{}, false
	}
	e.Phase = PhaseDeliver
	end := a.End
	e.Ts = formatTime(end)

	reply := r.Reply
	if reply.Code == 0 && reply.Enhanced == "" && reply.Text == "" {
		reply = a.Reply
	}
	smtp := &SMTP{Relay: a.RelayHost, DSN: dsnOf(reply.Code, reply.Enhanced, r.Status)}
	if reply.Code != 0 {
		smtp.ResponseCode = strconv.Itoa(reply.Code)
	}
	if s := reply.String(); s != "" {
		smtp.Reason = string(r.Status) + " (" + s + ")"
	} else {
		smtp.Reason = string(r.Status)
	}
	if a.TLS.Requested != "" || a.TLS.Established {
		te := &TransportEncryption{
			Requested:   a.TLS.Requested != "" && a.TLS.Requested != v1alpha1.TLSPolicyNone,
			Established: a.TLS.Established, Policy: string(a.TLS.Policy), PolicyResult: a.TLS.PolicyResult,
		}
		if a.TLS.Established {
			te.Properties = &TLSProperties{Protocol: strings.Replace(a.TLS.Protocol, "TLSv", "TLS", 1), CipherSuite: a.TLS.CipherSuite}
		}
		smtp.TransportEncryption = te
	}
	mime := &Mime{MessageID: a.MessageID}
	if a.Size > 0 {
		mime.Size = strconv.FormatInt(a.Size, 10)
	}
	return Notification{
		Meta: NotificationMeta{
			Tag:   a.Tag,
			Mail:  Mail{ID: string(a.QueueID) + "." + strconv.Itoa(r.Index), Email: r.Addr, From: a.Sender, MimeFrom: a.HeaderFrom},
			Event: e,
		},
		Content: &Content{Mime: mime, SMTP: smtp},
	}, true
}

// deferredDescription says why a recipient waits: traffic shaping (its
// site suspended after the receiver's throttle reply, or a limit of the
// site reached: docs/design.md, "Traffic shaping") or an ordinary
// temporary failure.
func deferredDescription(a *delivery.Attempt) string {
	if a.ThrottledUntil.IsZero() {
		return "delivery deferred, will retry"
	}
	until := a.ThrottledUntil.UTC().Format(time.RFC3339)
	if a.SiteSuspended {
		return "delivery deferred: site " + a.Site + " suspended until " + until + " (throttled by the receiver), will retry"
	}
	return "delivery deferred: site " + a.Site + " limit reached, until " + until + ", will retry"
}

// dsnOf is the enhanced status code, or the one the reply code (or, with
// none, the status) implies.
func dsnOf(code int, enhanced string, s delivery.Status) string {
	switch {
	case enhanced != "":
		return enhanced
	case code/100 == 2:
		return "2.0.0"
	case code/100 == 5 || s == delivery.StatusBounced:
		return "5.0.0"
	default:
		return "4.0.0"
	}
}
