package routing

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"sigs.k8s.io/yaml"
)

// PolicyConfigMapKey is the key of the guardrail ConfigMap that holds the
// policy as YAML (DESIGN.md contract 7).
const PolicyConfigMapKey = "policy.yaml"

// Policy is the operator-level guardrail policy (DESIGN.md contract 7): which
// namespaces may claim which domains, and how broad a TrustedNetwork may be
// without SMTP AUTH. The zero value is the default: single-tenant and
// permissive, except that a network broader than 10.0.0.0/8 (IPv4) or
// fc00::/7 (IPv6), such as 0.0.0.0/0, needs AUTH: no policy can make the
// relay open to the whole internet by accident.
type Policy struct {
	// DomainClaims lists which namespaces may claim which domain suffixes.
	// Empty: every namespace may claim every domain (single tenant). Not
	// empty: a namespace may claim a domain only when a rule matches both.
	DomainClaims []DomainClaim `json:"domainClaims,omitempty"`

	// Networks bounds TrustedNetworks that do not require AUTH.
	Networks NetworkPolicy `json:"networks,omitzero"`
}

// DomainClaim lets namespaces claim domains under suffixes.
type DomainClaim struct {
	// Namespaces are namespace names or shell patterns (path.Match), such
	// as "team-*".
	Namespaces []string `json:"namespaces"`
	// Suffixes are domains; a rule covers each suffix and its subdomains.
	Suffixes []string `json:"suffixes"`
}

// NetworkPolicy bounds the networks a TrustedNetwork may admit without AUTH.
type NetworkPolicy struct {
	// MinPrefixIPv4 is the shortest IPv4 prefix length allowed without AUTH
	// (mode Required). 0 means the default, 8.
	MinPrefixIPv4 int `json:"minPrefixIPv4WithoutAuth,omitempty"`
	// MinPrefixIPv6 is the shortest IPv6 prefix length allowed without AUTH.
	// 0 means the default, 7.
	MinPrefixIPv6 int `json:"minPrefixIPv6WithoutAuth,omitempty"`
}

const (
	defaultMinPrefixIPv4 = 8
	defaultMinPrefixIPv6 = 7
)

// ParsePolicy reads a policy from YAML, rejecting unknown fields so that a
// typo cannot silently loosen the guardrails.
func ParsePolicy(data []byte) (Policy, error) {
	var p Policy
	if err := yaml.UnmarshalStrict(data, &p); err != nil {
		return Policy{}, fmt.Errorf("guardrail policy: %w", err)
	}
	var errs []error
	for i, c := range p.DomainClaims {
		if len(c.Namespaces) == 0 || len(c.Suffixes) == 0 {
			errs = append(errs, fmt.Errorf("domainClaims[%d]: needs namespaces and suffixes", i))
		}
		for _, ns := range c.Namespaces {
			if _, err := path.Match(ns, ""); err != nil {
				errs = append(errs, fmt.Errorf("domainClaims[%d]: bad namespace pattern %q: %w", i, ns, err))
			}
		}
		for _, s := range c.Suffixes {
			if !isDomainName(strings.TrimPrefix(s, ".")) {
				errs = append(errs, fmt.Errorf("domainClaims[%d]: suffix %q is not a lowercase domain name", i, s))
			}
		}
	}
	if n := p.Networks.MinPrefixIPv4; n < 0 || n > 32 {
		errs = append(errs, fmt.Errorf("networks.minPrefixIPv4WithoutAuth: %d is not in 0..32", n))
	}
	if n := p.Networks.MinPrefixIPv6; n < 0 || n > 128 {
		errs = append(errs, fmt.Errorf("networks.minPrefixIPv6WithoutAuth: %d is not in 0..128", n))
	}
	if err := errors.Join(errs...); err != nil {
		return Policy{}, fmt.Errorf("guardrail policy: %w", err)
	}
	return p, nil
}

// mayClaim reports whether namespace may claim domain.
func (p Policy) mayClaim(namespace, domain string) bool {
	if len(p.DomainClaims) == 0 {
		return true
	}
	for _, c := range p.DomainClaims {
		if !matchesAny(c.Namespaces, namespace) {
			continue
		}
		for _, s := range c.Suffixes {
			s = strings.TrimPrefix(s, ".")
			if domain == s || strings.HasSuffix(domain, "."+s) {
				return true
			}
		}
	}
	return false
}

func matchesAny(patterns []string, name string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

// minPrefix returns the shortest prefix length allowed without AUTH.
func (p Policy) minPrefix(ipv4 bool) int {
	if ipv4 {
		if p.Networks.MinPrefixIPv4 > 0 {
			return p.Networks.MinPrefixIPv4
		}
		return defaultMinPrefixIPv4
	}
	if p.Networks.MinPrefixIPv6 > 0 {
		return p.Networks.MinPrefixIPv6
	}
	return defaultMinPrefixIPv6
}
