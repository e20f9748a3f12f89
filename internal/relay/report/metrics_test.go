package report

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postgate/postgate/internal/relay/delivery"
	"github.com/postgate/postgate/internal/routing"
	"github.com/postgate/postgate/internal/testenv"
)

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewMetrics(reg); err == nil {
		t.Error("registering twice on one registry: no error")
	}
	domain := &routing.ObjectRef{Kind: routing.KindSenderDomain, Namespace: "ns", Name: "sd"}
	route := &routing.ObjectRef{Kind: routing.KindRelayRoute, Namespace: "ns", Name: "route"}
	now := time.Now()
	for range 3 {
		a := sent(domain, route, now)
		a.Delay = 2 * time.Second
		m.Observe(a)
	}
	m.Observe(sent(domain, nil, now))
	m.Observe(bounced(domain, nil, now))
	d := sent(domain, nil, now)
	d.Status = delivery.StatusDeferred
	d.Recipients = []delivery.RecipientResult{{Status: delivery.StatusDeferred}, {Status: delivery.StatusDeferred}}
	Observers{m}.Observe(d)
	held := sent(domain, route, now)
	held.Cause, held.Status = delivery.CauseHeld, delivery.StatusDeferred
	held.Recipients = []delivery.RecipientResult{{Status: delivery.StatusDeferred}}
	m.Observe(held)

	got := testenv.Gather(t, reg)
	for _, tc := range []struct {
		series string
		want   float64
	}{
		{MetricAttempts + `{destination="route",status="sent"}`, 3},
		{MetricAttempts + `{destination="mx",status="sent"}`, 1},
		{MetricAttempts + `{destination="mx",status="bounced"}`, 1},
		{MetricAttempts + `{destination="mx",status="deferred"}`, 1},
		{MetricAttempts + `{destination="mx",status="expired"}`, 0},
		{MetricAttempts + `{destination="route",status="expired"}`, 0},
		// A hold tried no host: it is not the route's deferral.
		{MetricAttempts + `{destination="held",status="deferred"}`, 1},
		{MetricAttempts + `{destination="route",status="deferred"}`, 0},
		{MetricRecipients + `{destination="held",status="deferred"}`, 1},
		{MetricRecipients + `{destination="mx",status="deferred"}`, 2},
		{MetricRecipients + `{destination="route",status="sent"}`, 3},
		{MetricDelay + `_count{destination="route"}`, 3},
		{MetricDelay + `_sum{destination="route"}`, 6},
		{MetricDelay + `_count{destination="mx"}`, 1},
		{MetricAttemptDuration + `_count{destination="route"}`, 3},
		{MetricAttemptDuration + `_count{destination="mx"}`, 3},
	} {
		v, ok := got[tc.series]
		if !ok || v != tc.want {
			t.Errorf("%s = %v (present %v), want %v", tc.series, v, ok, tc.want)
		}
	}
}
