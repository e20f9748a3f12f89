package relay

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postgate/postgate/internal/relay/admin"
	"github.com/postgate/postgate/internal/relay/delivery"
	"github.com/postgate/postgate/internal/relay/shaping"
)

// Traffic shaping metric names (docs/design.md, "Traffic shaping", step 7
// of "Using it in delivery"), with the labels site and rule.
const (
	// MetricSiteConnections is the site's open connections.
	MetricSiteConnections = "postgate_relay_site_connections"
	// MetricSiteConnectionsOpened counts the connections the site admitted.
	MetricSiteConnectionsOpened = "postgate_relay_site_connections_opened_total"
	// MetricSiteMessages counts the messages (transactions) the site
	// admitted.
	MetricSiteMessages = "postgate_relay_site_messages_total"
	// MetricSiteRefused counts refused admissions, by reason.
	MetricSiteRefused = "postgate_relay_site_refused_total"
	// MetricSiteDeferred counts the deferrals without attempt (a
	// destination's recipients deferred by a refusal or a suspension).
	MetricSiteDeferred = "postgate_relay_site_deferred_without_attempt_total"
	// MetricSiteThrottleReplies counts the replies that matched a throttle
	// pattern.
	MetricSiteThrottleReplies = "postgate_relay_site_throttle_replies_total"
	// MetricSiteSuspensions counts the suspensions throttle replies began.
	MetricSiteSuspensions = "postgate_relay_site_suspensions_total"
	// MetricSiteSuspended is 1 while the site is suspended (for
	// site="other": how many of those sites are).
	MetricSiteSuspended = "postgate_relay_site_suspended"
)

// OtherSite is the site label of the sites only the default rule matches,
// summed: a relay delivering to thousands of small domains keeps one
// series per metric for them, not one per site.
const OtherSite = "other"

// Pruning of the limiter's idle sites (shaping.Limiter.Prune).
const (
	// SitePruneInterval is how often SiteCollector.Run prunes.
	SitePruneInterval = 10 * time.Minute
	// SiteIdle is how long a site must be unused to be forgotten.
	SiteIdle = time.Hour
)

// SiteStats is what the collector reads: *shaping.Limiter.
type SiteStats interface {
	Stats() []shaping.SiteStats
	Prune(idle time.Duration) int
}

// refusedReasons are the label values of MetricSiteRefused, in
// Prometheus' snake case.
var refusedReasons = map[shaping.Reason]string{
	shaping.ReasonSuspended:      "suspended",
	shaping.ReasonConnections:    "connections",
	shaping.ReasonConnectionRate: "connection_rate",
	shaping.ReasonConnectionFull: "connection_full",
	shaping.ReasonMessageRate:    "message_rate",
}

// siteCounts are the counters of one site, or of one series.
type siteCounts struct {
	opened, granted, deferred, throttles, suspensions uint64
	refused                                           map[shaping.Reason]uint64
}

func countsOf(s *shaping.SiteStats) siteCounts {
	c := siteCounts{
		opened: s.ConnectionsOpened, granted: s.MessagesGranted, deferred: s.DeferredWithoutAttempt,
		throttles: s.ThrottleReplies, suspensions: s.Suspensions, refused: map[shaping.Reason]uint64{},
	}
	for r, n := range s.Refused {
		c.refused[r] = n
	}
	return c
}

// add adds what cur counted since last to c. A counter below its last
// value belongs to a site the limiter forgot and saw again: all of it is
// new.
func (c *siteCounts) add(cur, last siteCounts) {
	delta := func(a, b uint64) uint64 {
		if a < b {
			return a
		}
		return a - b
	}
	c.opened += delta(cur.opened, last.opened)
	c.granted += delta(cur.granted, last.granted)
	c.deferred += delta(cur.deferred, last.deferred)
	c.throttles += delta(cur.throttles, last.throttles)
	c.suspensions += delta(cur.suspensions, last.suspensions)
	if c.refused == nil {
		c.refused = map[shaping.Reason]uint64{}
	}
	for r, n := range cur.refused {
		c.refused[r] += delta(n, last.refused[r])
	}
}

// seriesKey is the labels of one series.
type seriesKey struct{ site, rule string }

// SiteCollector reports the traffic shaping of every site at each scrape,
// from the limiter's Stats.
//
// The limiter's counters start again from zero when Prune forgets an idle
// site, and a sum of the current Stats would then decrease a counter.
// The collector keeps the cumulative counts itself: each reading adds
// what every site counted since the previous one (the site's last counts
// are its baseline), and Prune goes through the collector, which reads
// every site just before the limiter forgets the idle ones and drops
// their baselines after. A pruned site has been unused for SiteIdle, so
// nothing counts for it between the reading and the pruning (every count
// marks the site used). Series are kept per site for the sites a policy
// rule names and summed under site="other" for the rest, so the series
// stay bounded by the policy; a site whose rule changes (a new policy)
// counts under its new labels from then on.
type SiteCollector struct {
	l SiteStats

	mu     sync.Mutex
	last   map[string]siteCounts     // each site's counts at the last reading
	totals map[seriesKey]*siteCounts // cumulative per series

	conns, opened, granted, refused, deferred, throttles, suspensions, suspended *prometheus.Desc
}

var _ prometheus.Collector = (*SiteCollector)(nil)

// NewSiteCollector returns a collector of l's sites.
func NewSiteCollector(l SiteStats) *SiteCollector {
	labels := []string{"site", "rule"}
	return &SiteCollector{
		l: l, last: map[string]siteCounts{}, totals: map[seriesKey]*siteCounts{},
		conns: prometheus.NewDesc(MetricSiteConnections,
			"Open connections to the traffic shaping site (site=\"other\": the sites only the default rule matches, summed).", labels, nil),
		opened:   prometheus.NewDesc(MetricSiteConnectionsOpened, "Connections to the site that traffic shaping admitted.", labels, nil),
		granted:  prometheus.NewDesc(MetricSiteMessages, "Messages (transactions) to the site that traffic shaping admitted.", labels, nil),
		refused:  prometheus.NewDesc(MetricSiteRefused, "Admissions to the site that traffic shaping refused, by reason.", append(labels, "reason"), nil),
		deferred: prometheus.NewDesc(MetricSiteDeferred, "Deliveries to the site deferred without a connection and without counting an attempt (suspension or limit).", labels, nil),
		throttles: prometheus.NewDesc(MetricSiteThrottleReplies,
			"Replies from the site's hosts that matched a throttle pattern.", labels, nil),
		suspensions: prometheus.NewDesc(MetricSiteSuspensions, "Suspensions of the site that throttle replies began.", labels, nil),
		suspended: prometheus.NewDesc(MetricSiteSuspended,
			"1 while the site is suspended after a throttle reply, else 0 (site=\"other\": how many of those sites are).", labels, nil),
	}
}

// keyOf is the series a site counts under.
func keyOf(s *shaping.SiteStats) seriesKey {
	if s.Rule == "default" {
		return seriesKey{site: OtherSite, rule: s.Rule}
	}
	return seriesKey{site: s.Site, rule: s.Rule}
}

// read adds what every site counted since the last reading to the
// totals and returns the current snapshot. c.mu is held.
func (c *SiteCollector) read() []shaping.SiteStats {
	stats := c.l.Stats()
	for i := range stats {
		s := &stats[i]
		k := keyOf(s)
		t := c.totals[k]
		if t == nil {
			t = &siteCounts{}
			c.totals[k] = t
		}
		cur := countsOf(s)
		t.add(cur, c.last[s.Site])
		c.last[s.Site] = cur
	}
	return stats
}

// Prune forgets the limiter's sites unused for idle (shaping.Limiter.Prune)
// without losing their counts, and returns how many it forgot.
func (c *SiteCollector) Prune(idle time.Duration) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.read()
	n := c.l.Prune(idle)
	if n == 0 {
		return 0
	}
	keep := map[string]bool{}
	for _, s := range c.l.Stats() {
		keep[s.Site] = true
	}
	for site := range c.last {
		if !keep[site] {
			delete(c.last, site)
		}
	}
	return n
}

// Run prunes every interval until ctx ends.
func (c *SiteCollector) Run(ctx context.Context, interval, idle time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.Prune(idle)
		}
	}
}

// Describe implements prometheus.Collector.
func (c *SiteCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.conns, c.opened, c.granted, c.refused, c.deferred, c.throttles, c.suspensions, c.suspended} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *SiteCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	stats := c.read()
	type gauges struct{ conns, suspended float64 }
	g := make(map[seriesKey]*gauges, len(c.totals))
	for k := range c.totals {
		g[k] = &gauges{}
	}
	for i := range stats {
		s := &stats[i]
		v := g[keyOf(s)]
		v.conns += float64(s.OpenConnections)
		if !s.SuspendedUntil.IsZero() {
			v.suspended++
		}
	}
	counter := func(d *prometheus.Desc, n uint64, k seriesKey, extra ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(n), append([]string{k.site, k.rule}, extra...)...)
	}
	for k, t := range c.totals {
		ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, g[k].conns, k.site, k.rule)
		ch <- prometheus.MustNewConstMetric(c.suspended, prometheus.GaugeValue, g[k].suspended, k.site, k.rule)
		counter(c.opened, t.opened, k)
		counter(c.granted, t.granted, k)
		counter(c.deferred, t.deferred, k)
		counter(c.throttles, t.throttles, k)
		counter(c.suspensions, t.suspensions, k)
		for r, n := range t.refused {
			label, ok := refusedReasons[r]
			if !ok {
				label = strings.ToLower(string(r))
			}
			counter(c.refused, n, k, label)
		}
	}
	c.mu.Unlock()
}

// shapingSites is the admin API's view of traffic shaping: the limiter's
// sites, and the site each recipient domain resolved to in delivery.
type shapingSites struct {
	*shaping.Limiter
	w *delivery.Worker
}

func (s shapingSites) SiteOf(domain string) string { return s.w.SiteOf(domain) }

// watchSites registers the metrics of l's sites with reg and prunes its
// idle sites until ctx ends, and returns the admin API's view of them; nil
// and nothing done when l is nil (shaping off).
func watchSites(ctx context.Context, reg prometheus.Registerer, l *shaping.Limiter, w *delivery.Worker) (admin.Sites, error) {
	if l == nil {
		return nil, nil
	}
	c := NewSiteCollector(l)
	if err := reg.Register(c); err != nil {
		return nil, err
	}
	go c.Run(ctx, SitePruneInterval, SiteIdle)
	return shapingSites{Limiter: l, w: w}, nil
}
