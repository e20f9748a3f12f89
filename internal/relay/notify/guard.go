package notify

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"
)

// guard decides which addresses a webhook may connect to. It runs in
// net.Dialer.Control, on the address actually being connected to, so a
// name that resolves (or later re-resolves) to a refused address is caught.
type guard struct {
	allow []netip.Prefix
	// self are the relay's own listeners; an unspecified address stands for
	// every local address.
	self []netip.AddrPort
	// metadata are the cloud metadata endpoints.
	metadata []netip.Addr
	// thisNet is 0.0.0.0/8, which reaches the local host on Linux.
	thisNet netip.Prefix
	// localAddrs lists the host's addresses (net.InterfaceAddrs).
	localAddrs func() []netip.Addr
}

func newGuard(allow []netip.Prefix, self []netip.AddrPort) *guard {
	return &guard{
		allow: allow,
		self:  self,
		metadata: []netip.Addr{
			netip.AddrFrom4([4]byte{169, 254, 169, 254}), // AWS, GCP, Azure, ...
			netip.MustParseAddr("fd00:ec2::254"),         // AWS IPv6
			netip.AddrFrom4([4]byte{100, 100, 100, 200}), // Alibaba Cloud
		},
		thisNet:    netip.PrefixFrom(netip.IPv4Unspecified(), 8),
		localAddrs: interfaceAddrs,
	}
}

// RefusedError says why a webhook's address was refused.
type RefusedError struct {
	Addr   netip.AddrPort
	Reason string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("webhook address %s refused: %s", e.Addr, e.Reason)
}

// control is a net.Dialer.Control function.
func (g *guard) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("webhook address %q: %w", address, err)
	}
	return g.check(ap)
}

// check refuses the relay's own listeners always (the admin API can delete
// mail; no range makes that a webhook), and the special ranges unless an
// Allow prefix contains the address.
func (g *guard) check(ap netip.AddrPort) error {
	a := ap.Addr().Unmap().WithZone("")
	ap = netip.AddrPortFrom(a, ap.Port())
	for _, s := range g.self {
		if s.Port() != ap.Port() {
			continue
		}
		sa := s.Addr().Unmap()
		if sa == a || g.thisHost(a) || (sa.IsUnspecified() && g.isLocal(a)) {
			return &RefusedError{ap, "the relay's own listener"}
		}
	}
	for _, p := range g.allow {
		if p.Contains(a) {
			return nil
		}
	}
	reason := ""
	switch {
	case a.IsLoopback():
		reason = "loopback"
	case g.isMetadata(a):
		reason = "cloud metadata endpoint"
	case a.IsLinkLocalUnicast():
		reason = "link-local"
	case g.thisHost(a):
		reason = "unspecified"
	case a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		reason = "multicast or broadcast"
	default:
		return nil
	}
	return &RefusedError{ap, reason}
}

func (g *guard) isMetadata(a netip.Addr) bool {
	for _, m := range g.metadata {
		if m == a {
			return true
		}
	}
	return false
}

// thisHost reports whether a is the unspecified address or in 0.0.0.0/8
// ("this host on this network", RFC 1122 section 3.2.1.3; :: is RFC 4291
// section 2.5.2). Linux connects 0.0.0.0 and :: to the local host, so
// whatever listens on the port answers, one of the relay's own listeners
// included, whichever address it is bound to. IPv4-mapped forms
// (::ffff:0.0.0.0) arrive unmapped.
func (g *guard) thisHost(a netip.Addr) bool {
	return a.IsUnspecified() || g.thisNet.Contains(a)
}

func (g *guard) isLocal(a netip.Addr) bool {
	if a.IsLoopback() || g.thisHost(a) {
		return true
	}
	for _, l := range g.localAddrs() {
		if l == a {
			return true
		}
	}
	return false
}

// interfaceAddrs lists the host's addresses; none when they cannot be read
// (then only loopback counts as local, and loopback is refused anyway).
func interfaceAddrs() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, x := range addrs {
		if n, ok := x.(*net.IPNet); ok {
			if a, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, a.Unmap())
			}
		}
	}
	return out
}

// SelfAddrs turns the relay's listen addresses (as its flags give them:
// "127.0.0.1:8025", ":9090", "localhost:8081"; "" for a listener that is
// off) into Options.Self. A missing host means every local address.
func SelfAddrs(binds ...string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, b := range binds {
		if b == "" {
			continue
		}
		host, portStr, err := net.SplitHostPort(b)
		if err != nil {
			return nil, fmt.Errorf("listen address %q: %w", b, err)
		}
		port, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("listen address %q: bad port: %w", b, err)
		}
		var addrs []netip.Addr
		switch host {
		case "", "0.0.0.0", "::":
			addrs = []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()}
		case "localhost":
			addrs = []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1}), netip.IPv6Loopback()}
		default:
			a, err := netip.ParseAddr(host)
			if err != nil {
				return nil, fmt.Errorf("listen address %q: the host must be an IP address or localhost: %w", b, err)
			}
			addrs = []netip.Addr{a.Unmap()}
		}
		for _, a := range addrs {
			out = append(out, netip.AddrPortFrom(a, uint16(port)))
		}
	}
	return out, nil
}
