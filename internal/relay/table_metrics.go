package relay

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/postgate/postgate/internal/relay/delivery"
)

// Routing table metric names.
const (
	// MetricTableVersion is the version of the routing table in force (the
	// operator's publication version; standalone: the reload count); 0
	// and MetricTableLoaded 0 before the first table.
	MetricTableVersion = "postgate_relay_table_version"
	// MetricTableLoaded is 1 once a routing table is loaded.
	MetricTableLoaded = "postgate_relay_table_loaded"
	// MetricTableObjects is the number of objects that take effect in the
	// table in force.
	MetricTableObjects = "postgate_relay_table_objects"
)

// TableCollector reports the routing table in force at each scrape.
type TableCollector struct {
	tables                  delivery.TableSource
	version, loaded, counts *prometheus.Desc
}

var _ prometheus.Collector = (*TableCollector)(nil)

// NewTableCollector returns a collector of the table that tables holds.
func NewTableCollector(tables delivery.TableSource) *TableCollector {
	return &TableCollector{
		tables:  tables,
		version: prometheus.NewDesc(MetricTableVersion, "Version of the routing table in force.", nil, nil),
		loaded:  prometheus.NewDesc(MetricTableLoaded, "1 once a routing table is loaded, else 0 (mail is answered 451).", nil, nil),
		counts:  prometheus.NewDesc(MetricTableObjects, "Objects that take effect in the routing table in force.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *TableCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.version
	ch <- c.loaded
	ch <- c.counts
}

// Collect implements prometheus.Collector.
func (c *TableCollector) Collect(ch chan<- prometheus.Metric) {
	var version, loaded, objects float64
	if t := c.tables.Table(); t != nil {
		version, loaded, objects = float64(t.Version), 1, float64(len(t.Objects()))
	}
	ch <- prometheus.MustNewConstMetric(c.version, prometheus.GaugeValue, version)
	ch <- prometheus.MustNewConstMetric(c.loaded, prometheus.GaugeValue, loaded)
	ch <- prometheus.MustNewConstMetric(c.counts, prometheus.GaugeValue, objects)
}
