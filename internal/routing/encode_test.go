package routing

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/netip"
	"testing"
)

func gunzip(b []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	return io.ReadAll(zr)
}

func shardMap(shards []Shard) map[string][]byte {
	m := map[string][]byte{}
	for _, s := range shards {
		m[s.Name] = s.Data
	}
	return m
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	in := tenantFixture(t)
	tbl := Compile(in, nil).Table
	idx, shards, err := Encode(tbl, 42, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(idx, shardMap(shards), NewCache())
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 42 {
		t.Errorf("version %d, want 42", got.Version)
	}
	for _, sender := range []string{"a@example.com", "invoices@billing.example.com", "x@billing.example.com", "y@other.test"} {
		a, b := tbl.Lookup(sender), got.Lookup(sender)
		if fmt.Sprint(describe(a)) != fmt.Sprint(describe(b)) {
			t.Errorf("Lookup(%q): compiled %v, decoded %v", sender, describe(a), describe(b))
		}
	}
	if got.Authenticate(netip.MustParseAddr("10.244.7.7"), "mailer", "app-pw") != "app/mailer" {
		t.Error("decoded table does not authenticate app/mailer")
	}
	if fmt.Sprint(got.Objects()) != fmt.Sprint(tbl.Objects()) {
		t.Errorf("objects differ:\n%v\n%v", got.Objects(), tbl.Objects())
	}
	// Encoding the decoded table gives the same bytes.
	idx2, _, err := Encode(got, 42, len(idx.Shards))
	if err != nil {
		t.Fatal(err)
	}
	if idx2.Hash != idx.Hash {
		t.Errorf("re-encoded hash %s, want %s", idx2.Hash, idx.Hash)
	}
}

func describe(d Delivery) []any {
	out := []any{d.MaxQueueLifetime()}
	if d.Domain != nil {
		out = append(out, d.Domain.Name, d.Domain.SourceIP, d.Domain.DKIM != nil, d.Domain.MXTLSPolicy)
	}
	if d.Route != nil {
		out = append(out, d.Route.Host, d.Route.Port, d.Route.TLSPolicy, d.Route.TLSMode, d.Route.Username)
	}
	return out
}

func TestCompileDeterministic(t *testing.T) {
	in := tenantFixture(t)
	idx1, _, _ := Encode(Compile(in, nil).Table, 1, 0)
	// Reverse the input order: the table must not depend on it.
	rev := in
	rev.SenderDomains = reversed(in.SenderDomains)
	rev.TrustedNetworks = reversed(in.TrustedNetworks)
	rev.Secrets = reversed(in.Secrets)
	idx2, _, _ := Encode(Compile(rev, NewCache()).Table, 1, 0)
	if idx1.Hash != idx2.Hash {
		t.Errorf("two compiles of the same resources: hashes %s and %s", idx1.Hash, idx2.Hash)
	}
}

func reversed[T any](s []T) []T {
	out := make([]T, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}

func TestDecodeRejectsCorruption(t *testing.T) {
	idx, shards, err := Encode(Compile(tenantFixture(t), nil).Table, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	m := shardMap(shards)
	name := idx.Shards[0].Name

	missing := shardMap(shards)
	delete(missing, name)
	if _, err := Decode(idx, missing, nil); err == nil {
		t.Error("decoded with a shard missing")
	}

	tampered := shardMap(shards)
	raw, _ := gunzip(m[name])
	raw = bytes.Replace(raw, []byte("smarthost.relay.test"), []byte("evil.relay.test!!!!!"), 1)
	tampered[name], _ = gzipBytes(raw)
	if _, err := Decode(idx, tampered, nil); err == nil {
		t.Error("decoded a shard whose content does not match its hash")
	}

	badIndex := *idx
	badIndex.Hash = "0000"
	if _, err := Decode(&badIndex, m, nil); err == nil {
		t.Error("decoded with a wrong table hash")
	}

	garbage := shardMap(shards)
	garbage[name] = []byte("not gzip")
	if _, err := Decode(idx, garbage, nil); err == nil {
		t.Error("decoded a shard that is not gzip")
	}
}

// TestOneChangeRewritesOneShard: with many objects over several shards,
// changing one route changes exactly one shard.
func TestOneChangeRewritesOneShard(t *testing.T) {
	var in Input
	for i := range 3000 {
		name := fmt.Sprintf("d%04d", i)
		in.SenderDomains = append(in.SenderDomains, senderDomain("ns", name, name+".example.com", i))
		in.RelayRoutes = append(in.RelayRoutes, relayRoute("ns", name, name, i, senders("a@"+name+".example.com", "b@"+name+".example.com")))
	}
	idx1, shards1, err := Encode(Compile(in, nil).Table, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(shards1) < 4 {
		t.Fatalf("fixture too small: %d shards", len(shards1))
	}
	in.RelayRoutes[1234].Spec.Target.Host = "changed.relay.test"
	in.RelayRoutes[1234].Generation = 2
	idx2, _, err := Encode(Compile(in, nil).Table, 2, len(idx1.Shards))
	if err != nil {
		t.Fatal(err)
	}
	if len(idx2.Shards) != len(idx1.Shards) {
		t.Fatalf("shard count changed: %d -> %d", len(idx1.Shards), len(idx2.Shards))
	}
	changed := 0
	for i := range idx1.Shards {
		if idx1.Shards[i].Hash != idx2.Shards[i].Hash {
			changed++
		}
	}
	if changed != 1 {
		t.Errorf("one route changed, %d of %d shards changed", changed, len(idx1.Shards))
	}
	for _, s := range shards1 {
		if len(s.Data) > 1<<20 {
			t.Errorf("shard %s is %d bytes, over 1 MiB", s.Name, len(s.Data))
		}
	}
}

func TestShardCountHysteresis(t *testing.T) {
	for _, tc := range []struct{ total, prev, want int }{
		{0, 0, 1},
		{100 << 10, 0, 1},
		{3 << 20, 0, 16},
		{3 << 20, 16, 16},
		{3 << 20, 8, 8},   // average 384 KiB: keep
		{3 << 20, 4, 16},  // average 768 KiB: too big, recompute
		{3 << 20, 64, 16}, // average 48 KiB: too small, recompute
		{10 << 10, 1, 1},
	} {
		if got := shardCount(tc.total, tc.prev); got != tc.want {
			t.Errorf("shardCount(%d, %d) = %d, want %d", tc.total, tc.prev, got, tc.want)
		}
	}
}

func TestCacheReusesParsedKeys(t *testing.T) {
	in := tenantFixture(t)
	cache := NewCache()
	a := Compile(in, cache).Table.Domain("example.com").DKIM.Signer
	b := Compile(in, cache).Table.Domain("example.com").DKIM.Signer
	if fmt.Sprintf("%p", a) != fmt.Sprintf("%p", b) {
		t.Error("second compile parsed the DKIM key again")
	}
	// A new resourceVersion of the Secret is parsed again; the old entry is
	// dropped once unused.
	n := cache.Len()
	in.Secrets[0].ResourceVersion = "2"
	c := Compile(in, cache).Table.Domain("example.com").DKIM.Signer
	if fmt.Sprintf("%p", a) == fmt.Sprintf("%p", c) {
		t.Error("a new resourceVersion reused the old parse")
	}
	if cache.Len() != n {
		t.Errorf("cache holds %d entries after the rotation, want %d", cache.Len(), n)
	}
}
