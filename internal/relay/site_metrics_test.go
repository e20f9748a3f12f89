package relay

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postgate/postgate/internal/relay/shaping"
	"github.com/postgate/postgate/internal/testenv"
)

// TestSiteCollector drives a real limiter: a site a rule names has series
// of its own, the default rule's sites are summed under site="other", a
// suspension shows, and the counters never go back when Prune forgets
// sites and they come back.
func TestSiteCollector(t *testing.T) {
	clock := testenv.NewClock(time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC))
	l := shaping.NewLimiter(shaping.DefaultPolicy(), clock)
	c := NewSiteCollector(l)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)

	google := shaping.SiteOf([]string{"aspmx.l.google.com"})
	small1 := shaping.SiteOf([]string{"mx.one.test"})
	small2 := shaping.SiteOf([]string{"mx.two.test"})
	send := func(site shaping.Site, n int) {
		t.Helper()
		conn, dec := l.AcquireConn(site)
		if !dec.OK {
			t.Fatalf("AcquireConn(%s): %+v", site.Name, dec)
		}
		for range n {
			if dec := conn.AcquireMessage(); !dec.OK {
				t.Fatalf("AcquireMessage(%s): %+v", site.Name, dec)
			}
		}
		conn.Release()
	}
	send(google, 2)
	send(small1, 1)
	send(small2, 3)
	open, _ := l.AcquireConn(small1) // stays open
	if !l.Observe(google, shaping.Reply{Code: 421, Enhanced: "4.7.28", Text: "unusual rate of unsolicited mail"}) {
		t.Fatal("the throttle reply did not suspend google.com")
	}
	l.NoteDeferred(google, 1)
	if _, dec := l.AcquireConn(google); dec.Reason != shaping.ReasonSuspended {
		t.Fatalf("AcquireConn of a suspended site: %+v", dec)
	}

	gl := `{rule="google",site="google.com"}`
	other := `{rule="default",site="other"}`
	want := map[string]float64{
		MetricSiteConnectionsOpened + gl: 1,
		MetricSiteMessages + gl:          2,
		MetricSiteThrottleReplies + gl:   1,
		MetricSiteSuspensions + gl:       1,
		MetricSiteSuspended + gl:         1,
		MetricSiteDeferred + gl:          1,
		MetricSiteConnections + gl:       0,
		MetricSiteRefused + `{reason="suspended",rule="google",site="google.com"}`: 1,
		MetricSiteConnectionsOpened + other:                                        3,
		MetricSiteMessages + other:                                                 4,
		MetricSiteConnections + other:                                              1,
		MetricSiteSuspended + other:                                                0,
	}
	check := func(when string) map[string]float64 {
		t.Helper()
		got := testenv.Gather(t, reg)
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: %s = %v, want %v", when, k, got[k], v)
			}
		}
		for k := range got {
			if strings.Contains(k, "one.test") || strings.Contains(k, "two.test") {
				t.Errorf("%s: a default-rule site has a series of its own: %s", when, k)
			}
		}
		return got
	}
	check("before pruning")

	// Two hours later every site is idle (small1 once its connection is
	// released; google.com's suspension and back-off are over) and
	// forgotten: the series stay, their counters where they were.
	open.Release()
	clock.Add(2 * time.Hour)
	if n := c.Prune(time.Hour); n != 3 {
		t.Fatalf("Prune forgot %d sites, want 3; stats %+v", n, l.Stats())
	}
	want[MetricSiteConnections+other] = 0
	want[MetricSiteSuspended+gl] = 0
	check("after pruning")

	// A forgotten site seen again counts from zero in the limiter; the
	// series go on from where they were.
	send(small2, 1)
	want[MetricSiteConnectionsOpened+other] = 4
	want[MetricSiteMessages+other] = 5
	check("after the site came back")

	// And again, with the scrape in between missing: Prune reads first.
	clock.Add(2 * time.Hour)
	c.Prune(time.Hour)
	send(small2, 2)
	clock.Add(2 * time.Hour)
	c.Prune(time.Hour)
	send(small1, 1)
	want[MetricSiteConnectionsOpened+other] = 6
	want[MetricSiteMessages+other] = 8
	check("after two prunes between scrapes")
}
