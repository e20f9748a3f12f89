package inflow

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// MetricDelay is the histogram of the waits of the transactions the gate
// held back, by how each ended (label end: taken, timeout, canceled); its
// count is the number of transactions delayed (documented in README
// "Metrics"). Transactions that did not wait are not in it.
const MetricDelay = "postgate_relay_in_flow_delay_seconds"

// Metrics are the gate's collectors. A nil *Metrics observes nothing.
type Metrics struct {
	delay *prometheus.HistogramVec
}

// NewMetrics registers the gate's metrics on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{delay: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: MetricDelay,
		Help: "How long new SMTP transactions waited at MAIL FROM because delivery was behind acceptance (--in-flow-delay), by how the wait ended.",
		// 1 ms to about 2 s: the default bound is 1 s.
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 12),
	}, []string{"end"})}
	if err := reg.Register(m.delay); err != nil {
		return nil, err
	}
	for _, end := range []string{EndTaken, EndTimeout} {
		m.delay.WithLabelValues(end) // from zero, so that rates work from the first scrape
	}
	return m, nil
}

func (m *Metrics) observe(end string, waited time.Duration) {
	if m != nil {
		m.delay.WithLabelValues(end).Observe(waited.Seconds())
	}
}
