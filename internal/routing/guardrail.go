package routing

import (
	"cmp"
	"fmt"
	"math/big"
	"net/netip"
	"slices"
	"strings"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// namespaceBounds applies the guardrail on what the TrustedNetworks without
// AUTH (mode Optional or no authentication) of one namespace cover together:
// each may pass the bound on a single network while together they admit the
// whole internet. The oldest networks keep their place, as with every claim
// (docs/design.md: the oldest claim wins): a TrustedNetwork that would take its
// namespace beyond the bound is refused, and those before it stay. It
// returns the refusal message of each refused TrustedNetwork. Networks
// refused for another reason do not count.
func (c *compiler) namespaceBounds(tns []*v1alpha1.TrustedNetwork) map[*v1alpha1.TrustedNetwork]string {
	byAgeOrder := slices.Clone(tns)
	slices.SortFunc(byAgeOrder, func(a, b *v1alpha1.TrustedNetwork) int { return byAge(&a.ObjectMeta, &b.ObjectMeta) })
	covered := map[string][]netip.Prefix{} // by namespace
	owners := map[string][]string{}        // names of the networks counted, by namespace
	refused := map[*v1alpha1.TrustedNetwork]string{}
	for _, tn := range byAgeOrder {
		if a := tn.Spec.Authentication; a != nil && cmp.Or(a.Mode, v1alpha1.SMTPAuthRequired) == v1alpha1.SMTPAuthRequired {
			continue
		}
		prefixes, invalid := parseCIDRs(tn.Spec.CIDRs)
		if invalid != "" || c.tooBroad(prefixes, "") != "" {
			continue
		}
		all := append(slices.Clone(covered[tn.Namespace]), prefixes...)
		if bits, over := c.beyondNamespaceBound(all); over {
			what := "These networks"
			if others := owners[tn.Namespace]; len(others) > 0 {
				what = fmt.Sprintf("Together with the older TrustedNetworks without AUTH of namespace %q (%s), these networks", tn.Namespace, strings.Join(others, ", "))
			}
			refused[tn] = fmt.Sprintf(
				"%s would admit more addresses than one /%d holds, the most the guardrail policy allows the networks without AUTH of a namespace: narrow them or set spec.authentication.mode Required",
				what, bits)
			continue
		}
		covered[tn.Namespace] = all
		owners[tn.Namespace] = append(owners[tn.Namespace], tn.Name)
	}
	return refused
}

// beyondNamespaceBound reports whether the union of prefixes holds more
// addresses of one family than the policy allows a namespace, and the
// prefix length of that bound.
func (c *compiler) beyondNamespaceBound(prefixes []netip.Prefix) (int, bool) {
	for _, v4 := range []bool{true, false} {
		var family []netip.Prefix
		for _, p := range prefixes {
			if p.Addr().Is4() == v4 {
				family = append(family, p)
			}
		}
		bits := c.in.Policy.namespacePrefix(v4)
		limit := new(big.Int).Lsh(big.NewInt(1), uint(addrBits(v4)-bits))
		if len(family) > 0 && unionSize(family).Cmp(limit) > 0 {
			return bits, true
		}
	}
	return 0, false
}

// addrBits is the length of an address of the family, in bits.
func addrBits(v4 bool) int {
	if v4 {
		return 32
	}
	return 128
}

// unionSize counts the addresses of the union of prefixes of one family,
// each once. Two CIDR networks are either disjoint or one holds the other,
// so sorting by first address, the broader first, and skipping those that
// the last one kept holds leaves disjoint networks to add up.
func unionSize(prefixes []netip.Prefix) *big.Int {
	sorted := slices.Clone(prefixes)
	slices.SortFunc(sorted, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	total := new(big.Int)
	var last netip.Prefix
	for _, p := range sorted {
		if last.IsValid() && last.Contains(p.Addr()) {
			continue
		}
		last = p
		total.Add(total, new(big.Int).Lsh(big.NewInt(1), uint(p.Addr().BitLen()-p.Bits())))
	}
	return total
}
