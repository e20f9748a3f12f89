package routing

import (
	"cmp"
	"errors"
	"fmt"
	"path"
	"strings"

	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// PolicyConfigMapKey is the key of the guardrail ConfigMap that holds the
// policy as YAML (docs/design.md contract 7).
const PolicyConfigMapKey = "policy.yaml"

// ShapingConfigMapKey is the key of the guardrail ConfigMap that holds the
// traffic shaping policy as YAML (internal/relay/shaping; docs/design.md "How
// the policy reaches relays"). The operator publishes it with the table
// (ShapingDataKey); absent, relays use the shipped default policy.
const ShapingConfigMapKey = "shaping.yaml"

// Policy is the operator-level guardrail policy (docs/design.md contract 7): which
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

	// NamespacePrefixIPv4 bounds what the TrustedNetworks without AUTH of
	// one namespace cover together: at most as many IPv4 addresses as one
	// network of this prefix length holds, counting each address once.
	// Each object on its own may pass MinPrefixIPv4 while many of them
	// admit the whole internet. 0 means the default, 6 (four /8s: enough
	// for 10.0.0.0/8, 127.0.0.0/8, 100.64.0.0/10, 172.16.0.0/12 and
	// 192.168.0.0/16 together).
	NamespacePrefixIPv4 int `json:"namespacePrefixIPv4WithoutAuth,omitempty"`
	// NamespacePrefixIPv6 is the same bound for IPv6. 0 means the default,
	// 6 (two /7s, such as fc00::/7 and a little more).
	NamespacePrefixIPv6 int `json:"namespacePrefixIPv6WithoutAuth,omitempty"`
}

const (
	defaultMinPrefixIPv4       = 8
	defaultMinPrefixIPv6       = 7
	defaultNamespacePrefixIPv4 = 6
	defaultNamespacePrefixIPv6 = 6
)

// ParsePolicy reads a policy from YAML, rejecting unknown and duplicate
// fields so that a typo cannot silently loosen the guardrails. Keys match
// exactly, as in Kubernetes' strict decoding: DOMAINCLAIMS is not
// domainClaims (encoding/json alone would match it case-insensitively).
func ParsePolicy(data []byte) (Policy, error) {
	var p Policy
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return Policy{}, fmt.Errorf("guardrail policy: %w", err)
	}
	if string(j) == "null" {
		return Policy{}, nil // an empty file: the default policy
	}
	strictErrs, err := kjson.UnmarshalStrict(j, &p)
	if err != nil {
		return Policy{}, fmt.Errorf("guardrail policy: %w", err)
	}
	if err := errors.Join(strictErrs...); err != nil {
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
	if n := p.Networks.NamespacePrefixIPv4; n < 0 || n > 32 {
		errs = append(errs, fmt.Errorf("networks.namespacePrefixIPv4WithoutAuth: %d is not in 0..32", n))
	}
	if n := p.Networks.NamespacePrefixIPv6; n < 0 || n > 128 {
		errs = append(errs, fmt.Errorf("networks.namespacePrefixIPv6WithoutAuth: %d is not in 0..128", n))
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
		return cmp.Or(p.Networks.MinPrefixIPv4, defaultMinPrefixIPv4)
	}
	return cmp.Or(p.Networks.MinPrefixIPv6, defaultMinPrefixIPv6)
}

// namespacePrefix returns the prefix length whose size bounds what the
// networks without AUTH of one namespace cover together.
func (p Policy) namespacePrefix(ipv4 bool) int {
	if ipv4 {
		return cmp.Or(p.Networks.NamespacePrefixIPv4, defaultNamespacePrefixIPv4)
	}
	return cmp.Or(p.Networks.NamespacePrefixIPv6, defaultNamespacePrefixIPv6)
}
