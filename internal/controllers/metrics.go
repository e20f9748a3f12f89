package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Operator metric names (documented in README "Metrics").
const (
	// MetricTableVersion is the version of the routing table published.
	MetricTableVersion = "postgate_operator_table_version"
	// MetricTableBytes is the size of the published table: its shards,
	// gzipped, as stored in Secrets.
	MetricTableBytes = "postgate_operator_table_bytes"
	// MetricTableShards is the number of shards of the published table.
	MetricTableShards = "postgate_operator_table_shards"
	// MetricTableObjects is the number of objects that take effect in the
	// published table.
	MetricTableObjects = "postgate_operator_table_objects"
	// MetricObjects counts SenderDomains, RelayRoutes and TrustedNetworks
	// by kind, condition type and status, as the last status pass
	// computed them.
	MetricObjects = "postgate_operator_objects"
	// MetricPublications counts table versions published by this process.
	MetricPublications = "postgate_operator_table_publications_total"
)

// Collector reports a Reconciler's table and conditions at each scrape. It
// reads the reconciler's Stats; only the leader's are non-zero.
type Collector struct {
	stats                                       *Stats
	version, bytes, shards, objects, conditions *prometheus.Desc
	publications                                *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns the collector of r's metrics; register it on the
// manager's registry (controller-runtime's metrics.Registry).
func NewCollector(r *Reconciler) *Collector {
	return &Collector{
		stats:   r.Stats(),
		version: prometheus.NewDesc(MetricTableVersion, "Version of the routing table published (0 before the first).", nil, nil),
		bytes:   prometheus.NewDesc(MetricTableBytes, "Size of the published routing table: its gzipped shards.", nil, nil),
		shards:  prometheus.NewDesc(MetricTableShards, "Shards of the published routing table.", nil, nil),
		objects: prometheus.NewDesc(MetricTableObjects, "Objects that take effect in the published routing table.", nil, nil),
		conditions: prometheus.NewDesc(MetricObjects, "SenderDomains, RelayRoutes and TrustedNetworks by kind, condition type and status.",
			[]string{"kind", "condition", "status"}, nil),
		publications: prometheus.NewDesc(MetricPublications, "Routing table versions published by this operator process.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.version, c.bytes, c.shards, c.objects, c.conditions, c.publications} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats
	gauge := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	gauge(c.version, s.Version.Load())
	gauge(c.bytes, s.TableBytes.Load())
	gauge(c.shards, s.TableShards.Load())
	gauge(c.objects, s.TableObjects.Load())
	ch <- prometheus.MustNewConstMetric(c.publications, prometheus.CounterValue, float64(s.Publications.Load()))
	for k, n := range s.Conditions() {
		ch <- prometheus.MustNewConstMetric(c.conditions, prometheus.GaugeValue, float64(n), k.kind, k.condition, string(k.status))
	}
}
