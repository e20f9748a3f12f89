package testenv

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"testing"
)

// DefaultAddr is where a fixture listens when the caller names no address:
// 127.0.0.1 with a port the kernel chooses.
const DefaultAddr = "127.0.0.1:0"

// loopbackAddr checks that addr is host:port with a loopback IP literal
// (127.0.0.0/8 or ::1) and returns it in canonical form; "" means
// DefaultAddr. Names, unspecified and non-loopback addresses are refused: a
// test must never listen beyond the machine, nor depend on what "localhost"
// resolves to.
func loopbackAddr(addr string) (string, error) {
	if addr == "" {
		return DefaultAddr, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("listen address %q: %w", addr, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return "", fmt.Errorf("listen address %q: the host must be a 127.0.0.x literal: %w", addr, err)
	}
	if ip = ip.Unmap(); !ip.IsLoopback() {
		return "", fmt.Errorf("listen address %q is not a loopback address: test servers bind 127.0.0.x only", addr)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return "", fmt.Errorf("listen address %q: bad port: %w", addr, err)
	}
	return netip.AddrPortFrom(ip, uint16(p)).String(), nil
}

// startFixture starts a fixture with newFixture for the test, fails the test
// when it cannot, and closes it when the test ends.
func startFixture[O any, F interface{ Close() }](tb testing.TB, newFixture func(context.Context, O) (F, error), opts O) F {
	tb.Helper()
	f, err := newFixture(tb.Context(), opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(f.Close)
	return f
}

// closeWhenDone calls closeFn when ctx ends, unless closed is closed first;
// each fixture runs it in a goroutine, so none outlives its context.
func closeWhenDone(ctx context.Context, closed <-chan struct{}, closeFn func()) {
	select {
	case <-ctx.Done():
		closeFn()
	case <-closed:
	}
}
