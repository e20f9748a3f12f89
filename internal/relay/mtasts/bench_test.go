package mtasts

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkLookupCached is what delivery pays per recipient domain and
// attempt once the policy is cached, beside its TXT lookup (a stub here;
// the relay's resolver caches it for its TTL).
func BenchmarkLookupCached(b *testing.B) {
	c, err := New(Options{
		LookupTXT:  func(context.Context, string) ([]string, error) { return []string{"v=STSv1; id=20261206T090000;"}, nil },
		LookupHost: func(context.Context, string) ([]netip.Addr, error) { return nil, nil },
		Clock:      func() time.Time { return start },
	})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	p, err := ParsePolicy(enforcePolicy)
	if err != nil {
		b.Fatal(err)
	}
	p.Domain, p.ID, p.Fetched = "example.test", "20261206T090000", start
	c.entries[p.Domain] = &entry{p: p}
	b.ReportAllocs()
	for b.Loop() {
		if res := c.Lookup(b.Context(), "example.test"); res.Policy != p {
			b.Fatal("not the cached policy")
		}
	}
}
