package relay

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postgate/postgate/internal/relay/queue"
)

// Queue metric names.
const (
	// MetricQueueMessages is the number of messages in the queue, held
	// ones included.
	MetricQueueMessages = "postgate_relay_queue_messages"
	// MetricQueueHeld is the number of messages on hold.
	MetricQueueHeld = "postgate_relay_queue_held_messages"
	// MetricQueueBytes is the size of the queued bodies.
	MetricQueueBytes = "postgate_relay_queue_bytes"
	// MetricQueueOldestAge is the age of the oldest queued message, from
	// its original arrival (kept across restarts and hand-offs); 0 when
	// the queue is empty.
	MetricQueueOldestAge = "postgate_relay_queue_oldest_message_age_seconds"
	// MetricQueueEnqueued counts messages queued since the relay started.
	MetricQueueEnqueued = "postgate_relay_queue_enqueued_total"
	// MetricQueueSegments is the number of the queue's segment files.
	MetricQueueSegments = "postgate_relay_queue_segments"
	// MetricQueueSegmentBytes is the size of the segment files on disk.
	MetricQueueSegmentBytes = "postgate_relay_queue_segment_bytes"
	// MetricQueueSegmentLiveBytes is the part of MetricQueueSegmentBytes
	// that queued messages hold; the rest is reclaimed when a segment is
	// removed or compacted.
	MetricQueueSegmentLiveBytes = "postgate_relay_queue_segment_live_bytes"
	// MetricQueueDamaged is what the queue found damaged on disk when the
	// relay started and could not read (docs/design.md, "The queue",
	// Damage): messages lost to the disk. A crash's torn write is not
	// counted: it loses nothing acknowledged.
	MetricQueueDamaged = "postgate_relay_queue_damaged_at_start"
)

// QueueStats is what the collector reads: *queue.Queue.
type QueueStats interface {
	Stats() queue.Stats
}

// QueueCollector reports the queue's depth and age, and the count, size
// and live part of its segment files, at each scrape.
type QueueCollector struct {
	q   QueueStats
	now func() time.Time

	messages, held, bytes, oldest, enqueued *prometheus.Desc
	segments, segBytes, segLive, damaged    *prometheus.Desc
}

var _ prometheus.Collector = (*QueueCollector)(nil)

// NewQueueCollector returns a collector of q's statistics; now is the
// clock (time.Now when nil).
func NewQueueCollector(q QueueStats, now func() time.Time) *QueueCollector {
	if now == nil {
		now = time.Now
	}
	return &QueueCollector{
		q: q, now: now,
		messages: prometheus.NewDesc(MetricQueueMessages, "Messages in the relay's queue, held ones included.", nil, nil),
		held:     prometheus.NewDesc(MetricQueueHeld, "Messages on hold in the relay's queue.", nil, nil),
		bytes:    prometheus.NewDesc(MetricQueueBytes, "Bytes of the message bodies in the relay's queue.", nil, nil),
		oldest: prometheus.NewDesc(MetricQueueOldestAge,
			"Age of the oldest message in the relay's queue, from its original arrival; 0 when empty.", nil, nil),
		enqueued: prometheus.NewDesc(MetricQueueEnqueued, "Messages queued since the relay started.", nil, nil),
		segments: prometheus.NewDesc(MetricQueueSegments, "Segment files of the relay's queue.", nil, nil),
		segBytes: prometheus.NewDesc(MetricQueueSegmentBytes, "Bytes of the relay's queue segment files on disk.", nil, nil),
		segLive: prometheus.NewDesc(MetricQueueSegmentLiveBytes,
			"Bytes of the relay's queue segment files that queued messages hold; the rest is reclaimed when a segment is removed or compacted.", nil, nil),
		damaged: prometheus.NewDesc(MetricQueueDamaged,
			"Records and files of the relay's queue found damaged on disk when it started and not read: messages lost to the disk (a crash's torn write is not counted).", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *QueueCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.messages, c.held, c.bytes, c.oldest, c.enqueued, c.segments, c.segBytes, c.segLive, c.damaged} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *QueueCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.q.Stats()
	var age float64
	if !s.Oldest.IsZero() {
		age = max(c.now().Sub(s.Oldest).Seconds(), 0)
	}
	ch <- prometheus.MustNewConstMetric(c.messages, prometheus.GaugeValue, float64(s.Messages))
	ch <- prometheus.MustNewConstMetric(c.held, prometheus.GaugeValue, float64(s.Held))
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(s.Bytes))
	ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, age)
	ch <- prometheus.MustNewConstMetric(c.enqueued, prometheus.CounterValue, float64(s.Enqueued))
	ch <- prometheus.MustNewConstMetric(c.segments, prometheus.GaugeValue, float64(s.Segments))
	ch <- prometheus.MustNewConstMetric(c.segBytes, prometheus.GaugeValue, float64(s.SegmentBytes))
	ch <- prometheus.MustNewConstMetric(c.segLive, prometheus.GaugeValue, float64(s.SegmentLiveBytes))
	ch <- prometheus.MustNewConstMetric(c.damaged, prometheus.GaugeValue, float64(s.Damaged))
}
