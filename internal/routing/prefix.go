package routing

import "net/netip"

// prefixTrie maps CIDR prefixes to values and answers "which prefixes contain
// this address" in at most 128 steps, whatever the number of networks: a
// binary trie over the address bits, IPv4 and IPv6 in separate roots. It is
// built once per table and read concurrently without locks.
type prefixTrie[V any] struct {
	v4, v6 *trieNode[V]
}

type trieNode[V any] struct {
	child  [2]*trieNode[V]
	values []V
}

func (t *prefixTrie[V]) insert(p netip.Prefix, v V) {
	p = p.Masked()
	root := &t.v6
	if p.Addr().Is4() {
		root = &t.v4
	}
	if *root == nil {
		*root = &trieNode[V]{}
	}
	n := *root
	a := p.Addr().AsSlice()
	for i := range p.Bits() {
		b := (a[i/8] >> (7 - i%8)) & 1
		if n.child[b] == nil {
			n.child[b] = &trieNode[V]{}
		}
		n = n.child[b]
	}
	n.values = append(n.values, v)
}

// visit calls f with the values of every prefix that contains addr, broadest
// first, until f returns false. IPv4-mapped IPv6 addresses match IPv4
// prefixes, as a dual-stack listener reports IPv4 clients that way.
func (t *prefixTrie[V]) visit(addr netip.Addr, f func(V) bool) {
	addr = addr.Unmap()
	n := t.v6
	bits := 128
	if addr.Is4() {
		n, bits = t.v4, 32
	}
	var buf [16]byte
	a := buf[:bits/8]
	if addr.Is4() {
		b4 := addr.As4()
		copy(a, b4[:])
	} else {
		b16 := addr.As16()
		copy(a, b16[:])
	}
	for i := 0; n != nil; i++ {
		for _, v := range n.values {
			if !f(v) {
				return
			}
		}
		if i == bits {
			return
		}
		n = n.child[(a[i/8]>>(7-i%8))&1]
	}
}
