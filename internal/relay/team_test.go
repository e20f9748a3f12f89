package relay

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/routing"
)

// The queue's team of a sender domain is its SenderDomain's namespace in
// the table in force, so two domains of one namespace are one team; a
// domain no SenderDomain claims is a team of its own, never a namespace's.
func TestTeamOf(t *testing.T) {
	sd := func(ns, name, domain string) v1alpha1.SenderDomain {
		return v1alpha1.SenderDomain{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 1},
			Spec: v1alpha1.SenderDomainSpec{Domain: v1alpha1.DomainName(domain)}}
	}
	compiled := routing.Compile(routing.Input{SenderDomains: []v1alpha1.SenderDomain{
		sd("shop", "a", "a.example"), sd("shop", "b", "b.example"), sd("billing", "c", "c.example")}}, nil)
	team := teamOf(fixedTable{compiled.Table})
	if team("a.example") != team("b.example") || team("a.example") == team("c.example") {
		t.Errorf("teams: a %q, b %q, c %q; want a and b one team, c another", team("a.example"), team("b.example"), team("c.example"))
	}
	if got := team("shop"); got == team("a.example") {
		t.Errorf("an unclaimed domain named like a namespace joined its team: %q", got)
	}
	if got := teamOf(fixedTable{})("a.example"); got != "domain/a.example" {
		t.Errorf("without a table: %q, want the domain's own team", got)
	}
}
