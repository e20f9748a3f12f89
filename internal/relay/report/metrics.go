package report

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/postgate/postgate/internal/relay/delivery"
)

// Metric names; labels: status is sent, deferred, bounced or expired;
// destination is mx (delivery by MX), route (a RelayRoute's target) or held
// (a RelayRoute that cannot take effect: deferred, no host tried).
const (
	// MetricAttempts counts delivery attempts, one per message and
	// destination, by status and destination.
	MetricAttempts = "postgate_relay_delivery_attempts_total"
	// MetricRecipients counts recipient outcomes of the attempts, by status
	// and destination.
	MetricRecipients = "postgate_relay_delivery_recipients_total"
	// MetricAttemptDuration is how long attempts took (connection, TLS and
	// the SMTP transaction), by destination.
	MetricAttemptDuration = "postgate_relay_delivery_attempt_duration_seconds"
	// MetricDelay is the delivery latency: from a message's arrival to the
	// attempt that handed a recipient to the next hop, by destination.
	MetricDelay = "postgate_relay_delivery_delay_seconds"
)

// Metrics implements delivery.Observer with Prometheus collectors
// registered on the registry given to NewMetrics (never the global one).
type Metrics struct {
	attempts, recipients *prometheus.CounterVec
	duration, delay      *prometheus.HistogramVec
}

var _ delivery.Observer = (*Metrics)(nil)

// NewMetrics registers the delivery metrics on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricAttempts, Help: "Delivery attempts (one per message and destination) by status and destination kind.",
		}, []string{"status", "destination"}),
		recipients: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricRecipients, Help: "Recipient outcomes of delivery attempts by status and destination kind.",
		}, []string{"status", "destination"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: MetricAttemptDuration, Help: "Duration of delivery attempts by destination kind.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"destination"}),
		delay: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: MetricDelay, Help: "Time from a message's arrival to its delivery to the next hop, by destination kind.",
			// 0.25 s to about 18 h: queued mail is retried for up to days.
			Buckets: prometheus.ExponentialBuckets(0.25, 4, 10),
		}, []string{"destination"}),
	}
	for _, c := range []prometheus.Collector{m.attempts, m.recipients, m.duration, m.delay} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Start the counters at zero, so that rates work from the first scrape.
	for _, dest := range []string{"mx", "route", "held"} {
		for _, s := range []delivery.Status{delivery.StatusSent, delivery.StatusDeferred, delivery.StatusBounced, delivery.StatusExpired} {
			m.attempts.WithLabelValues(string(s), dest)
			m.recipients.WithLabelValues(string(s), dest)
		}
	}
	return m, nil
}

// Observe counts the attempt.
func (m *Metrics) Observe(a delivery.Attempt) {
	dest := "mx"
	switch {
	case a.Cause == delivery.CauseHeld:
		dest = "held"
	case a.Route != nil:
		dest = "route"
	}
	m.attempts.WithLabelValues(string(a.Status), dest).Inc()
	sent := false
	for _, r := range a.Recipients {
		m.recipients.WithLabelValues(string(r.Status), dest).Inc()
		sent = sent || r.Status == delivery.StatusSent
	}
	if !a.Start.IsZero() && !a.End.IsZero() {
		m.duration.WithLabelValues(dest).Observe(a.End.Sub(a.Start).Seconds())
	}
	if sent {
		m.delay.WithLabelValues(dest).Observe(a.Delay.Seconds())
	}
}

// Observers passes each attempt to all of its observers in turn.
type Observers []delivery.Observer

// Observe implements delivery.Observer.
func (o Observers) Observe(a delivery.Attempt) {
	for _, x := range o {
		x.Observe(a)
	}
}
