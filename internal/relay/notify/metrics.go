package notify

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names.
const (
	// MetricNotifications counts notifications that left the notifier, by
	// result: sent (the receiver answered 2xx), or dropped_<reason>:
	// buffer_full (Observe found the in-memory buffer full),
	// journal_full (the journal reached MaxJournalBytes),
	// journal_error (writing the journal failed), no_webhook (the domain
	// or its webhook left the table before the notification was sent),
	// expired (not accepted within MaxAge), rejected (the receiver refused
	// the request with a 4xx other than 408, 425 and 429 MaxRejections times
	// in a row), corrupt (a damaged journal
	// record: counted once per damaged segment, as what followed cannot be
	// counted).
	MetricNotifications = "postgate_relay_webhook_notifications_total"
	// MetricQueue is how many notifications wait: in the buffer or in the
	// journal, not yet accepted by a receiver.
	MetricQueue = "postgate_relay_webhook_queue_notifications"
	// MetricJournalBytes is the disk space the journal takes.
	MetricJournalBytes = "postgate_relay_webhook_journal_bytes"
	// MetricJournalLimitBytes is MaxJournalBytes, the journal's cap: an
	// alert compares MetricJournalBytes with it rather than with a
	// number that could drift from the relay's.
	MetricJournalLimitBytes = "postgate_relay_webhook_journal_limit_bytes"
	// MetricRequests counts webhook requests by code: the HTTP status
	// class (2xx, 3xx, 4xx, 5xx) or "error" when there was no response
	// (refused address, connection failure, timeout).
	MetricRequests = "postgate_relay_webhook_requests_total"
	// MetricRequestDuration is how long webhook requests took, responses
	// and errors alike.
	MetricRequestDuration = "postgate_relay_webhook_request_duration_seconds"
)

// Results of MetricNotifications.
const (
	resultSent         = "sent"
	resultBufferFull   = "dropped_buffer_full"
	resultJournalFull  = "dropped_journal_full"
	resultJournalError = "dropped_journal_error"
	resultNoWebhook    = "dropped_no_webhook"
	resultExpired      = "dropped_expired"
	resultCorrupt      = "dropped_corrupt"
	resultRejected     = "dropped_rejected"
)

type metrics struct {
	notifications *prometheus.CounterVec
	requests      *prometheus.CounterVec
	duration      prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, n *Notifier) (*metrics, error) {
	m := &metrics{
		notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricNotifications, Help: "Webhook notifications sent or dropped, by result.",
		}, []string{"result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricRequests, Help: "Webhook requests by HTTP status class, or error when there was no response.",
		}, []string{"code"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: MetricRequestDuration, Help: "Duration of webhook requests.",
			Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
		}),
	}
	queue := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: MetricQueue, Help: "Webhook notifications waiting to be accepted by a receiver.",
	}, func() float64 { return float64(n.buffered.Load()) + float64(n.pendingDisk.Load()) })
	bytes := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: MetricJournalBytes, Help: "Disk space taken by the webhook notification journal.",
	}, func() float64 { return float64(n.diskBytes.Load()) })
	limit := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: MetricJournalLimitBytes, Help: "The webhook notification journal's cap; notifications past it are dropped.",
	})
	limit.Set(float64(n.opts.MaxJournalBytes))
	for _, c := range []prometheus.Collector{m.notifications, m.requests, m.duration, queue, bytes, limit} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Start the counters at zero, so that rates work from the first scrape.
	for _, r := range []string{resultSent, resultBufferFull, resultJournalFull, resultJournalError, resultNoWebhook, resultExpired, resultCorrupt, resultRejected} {
		m.notifications.WithLabelValues(r)
	}
	for _, c := range []string{"2xx", "3xx", "4xx", "5xx", "error"} {
		m.requests.WithLabelValues(c)
	}
	return m, nil
}

func (m *metrics) count(result string, n int) {
	if n > 0 {
		m.notifications.WithLabelValues(result).Add(float64(n))
	}
}

func codeClass(code int) string {
	if code < 200 || code > 599 {
		return "error"
	}
	return strconv.Itoa(code/100) + "xx"
}
