package smtpd

import (
	"errors"
	"strconv"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
)

// Metric names of the SMTP server (documented in README "Metrics").
const (
	// MetricSessions counts connections handed to the SMTP protocol (past
	// the PROXY header and the connection limits).
	MetricSessions = "postgate_relay_smtp_sessions_total"
	// MetricSessionsActive is the number of open SMTP sessions.
	MetricSessionsActive = "postgate_relay_smtp_sessions_active"
	// MetricConnectionsRefused counts connections closed before SMTP, by
	// reason: connection_limit (421 4.7.0), proxy_header (a PROXY header
	// missing from a proxy, or sent by anyone else).
	MetricConnectionsRefused = "postgate_relay_smtp_connections_refused_total"
	// MetricMessagesAccepted counts messages queued (answered 250 to
	// DATA or the last BDAT).
	MetricMessagesAccepted = "postgate_relay_smtp_messages_accepted_total"
	// MetricMessagesAcceptedBytes counts the bytes of the queued messages.
	MetricMessagesAcceptedBytes = "postgate_relay_smtp_messages_accepted_bytes_total"
	// MetricRejections counts refused commands by stage (auth, mail, rcpt,
	// data) and reason (see Reason* below).
	MetricRejections = "postgate_relay_smtp_rejections_total"
)

// Reasons of MetricRejections, from the reply's enhanced status code
// (RFC 3463).
const (
	ReasonRelayDenied = "relay_denied" // 554 5.7.1
	ReasonNotReady    = "not_ready"    // 451 4.3.2: no table yet
	ReasonStorage     = "storage"      // 452 4.3.1: spool full
	ReasonQueueError  = "queue_error"  // 451 4.3.0
	ReasonBadAddress  = "bad_address"  // 553 5.1.3, 5.1.7
	ReasonTooLarge    = "too_large"    // 552 5.3.4
	ReasonBadBytes    = "bad_bytes"    // 550 5.5.2: bare CR/LF, NUL
	ReasonBadContent  = "bad_content"  // 550 5.6.0
	ReasonLongLine    = "line_too_long"
	ReasonEnvelope    = "bad_envelope" // 550 5.5.4
	ReasonAuthFailed  = "auth_failed"  // 535 5.7.8
	ReasonAuthOther   = "auth_unavailable"
	ReasonShutdown    = "shutting_down" // 421 4.3.2
	ReasonTimeout     = "timeout"       // 421 4.4.2: a body too slow
	ReasonOther       = "other"
)

// Metrics are the SMTP server's collectors. A nil *Metrics counts nothing.
type Metrics struct {
	sessions, accepted, acceptedBytes prometheus.Counter
	active                            prometheus.Gauge
	refused, rejections               *prometheus.CounterVec
}

// NewMetrics registers the SMTP server's metrics on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		sessions: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricSessions,
			Help: "SMTP sessions started (connections past the PROXY header and the connection limits)."}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricSessionsActive, Help: "Open SMTP sessions."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricConnectionsRefused,
			Help: "Connections closed before SMTP, by reason."}, []string{"reason"}),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricMessagesAccepted,
			Help: "Messages queued (answered 250)."}),
		acceptedBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricMessagesAcceptedBytes,
			Help: "Bytes of the messages queued, as stored (with the fields the relay prepends)."}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricRejections,
			Help: "SMTP commands refused, by stage and reason."}, []string{"stage", "reason"}),
	}
	for _, c := range []prometheus.Collector{m.sessions, m.active, m.refused, m.accepted, m.acceptedBytes, m.rejections} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Start the usual series at zero, so that rates work from the first
	// scrape.
	for _, r := range []string{"connection_limit", "proxy_header"} {
		m.refused.WithLabelValues(r)
	}
	m.rejections.WithLabelValues("rcpt", ReasonRelayDenied)
	return m, nil
}

func (m *Metrics) sessionStarted() {
	if m != nil {
		m.sessions.Inc()
		m.active.Inc()
	}
}

func (m *Metrics) sessionEnded() {
	if m != nil {
		m.active.Dec()
	}
}

func (m *Metrics) connectionRefused(reason string) {
	if m != nil {
		m.refused.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) messageAccepted(size int64) {
	if m != nil {
		m.accepted.Inc()
		m.acceptedBytes.Add(float64(size))
	}
}

// rejected counts err when it is a refusal the relay chose; a client that
// went away (ErrDataReset, EOF) is not one.
func (m *Metrics) rejected(stage string, err error) {
	var se *smtp.SMTPError
	if m == nil || !errors.As(err, &se) || se.Code < 400 {
		return
	}
	m.rejections.WithLabelValues(stage, rejectionReason(se)).Inc()
}

// rejectionReason names a refusal by its enhanced status code.
func rejectionReason(se *smtp.SMTPError) string {
	e := se.EnhancedCode
	switch strconv.Itoa(e[0]) + "." + strconv.Itoa(e[1]) + "." + strconv.Itoa(e[2]) {
	case "5.7.1":
		return ReasonRelayDenied
	case "4.3.2":
		if se.Code == 421 {
			return ReasonShutdown
		}
		return ReasonNotReady
	case "4.3.1":
		return ReasonStorage
	case "4.3.0":
		return ReasonQueueError
	case "5.1.3", "5.1.7":
		return ReasonBadAddress
	case "5.3.4":
		return ReasonTooLarge
	case "5.5.2":
		return ReasonBadBytes
	case "5.6.0":
		return ReasonBadContent
	case "5.5.6":
		return ReasonLongLine
	case "5.5.4":
		return ReasonEnvelope
	case "5.7.8":
		return ReasonAuthFailed
	case "4.4.2":
		return ReasonTimeout
	case "5.7.4", "5.7.0":
		return ReasonAuthOther
	}
	return ReasonOther
}
