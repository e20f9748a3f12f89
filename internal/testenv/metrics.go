package testenv

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Gather returns the gatherer's counters and gauges, and the sums and
// counts of its histograms, by series name with its labels sorted, as in
// `name{a="x",b="y"}` (`name{}` without labels; histograms as name_sum and
// name_count). A pedantic registry checks the metrics too.
func Gather(t testing.TB, g prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			sort.Strings(labels)
			ls := "{" + strings.Join(labels, ",") + "}"
			switch {
			case m.Counter != nil:
				out[mf.GetName()+ls] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[mf.GetName()+ls] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				out[mf.GetName()+"_sum"+ls] = m.GetHistogram().GetSampleSum()
				out[mf.GetName()+"_count"+ls] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}
