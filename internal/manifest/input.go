package manifest

import (
	"github.com/postgate/postgate/internal/routing"
)

// Input returns the compiler's input for the valid objects of the set, with
// the guardrail policy. Objects the API server would refuse are left out: in
// a cluster they would not exist.
func Input(s *Set, policy routing.Policy) routing.Input {
	in := routing.Input{Policy: policy}
	for _, o := range s.SenderDomains() {
		in.SenderDomains = append(in.SenderDomains, *o)
	}
	for _, o := range s.RelayRoutes() {
		in.RelayRoutes = append(in.RelayRoutes, *o)
	}
	for _, o := range s.TrustedNetworks() {
		in.TrustedNetworks = append(in.TrustedNetworks, *o)
	}
	for _, o := range s.Secrets() {
		in.Secrets = append(in.Secrets, *o)
	}
	return in
}
