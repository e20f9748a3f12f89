package routing

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// The compiler's benchmark fixture (README: Benchmarks): 10,000
// SenderDomains (5,000 signing: 4,000 Ed25519 and 1,000 distinct RSA-2048
// keys), 5,000 RelayRoutes on the non-signing half, 1,000 TrustedNetworks.
// The RSA keys take minutes to generate, so they are made once and kept in
// testdata/ (not committed).
//
//	go test -run '^$' -bench . -benchmem ./internal/routing/

const rsaKeyCache = "testdata/bench-rsa2048.pem"

func benchRSAKeys(n int) []string {
	var keys []string
	if data, err := os.ReadFile(rsaKeyCache); err == nil {
		for rest := data; ; {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			keys = append(keys, string(pem.EncodeToMemory(block)))
		}
	}
	if len(keys) >= n {
		return keys[:n]
	}
	fmt.Fprintf(os.Stderr, "generating %d RSA-2048 keys into %s, once\n", n-len(keys), rsaKeyCache)
	var mu sync.Mutex
	var wg sync.WaitGroup
	work := make(chan struct{})
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for range work {
				k, err := rsa.GenerateKey(rand.Reader, 2048)
				if err != nil {
					panic(err)
				}
				s := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}))
				mu.Lock()
				keys = append(keys, s)
				mu.Unlock()
			}
		})
	}
	for range n - len(keys) {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	if err := os.MkdirAll(filepath.Dir(rsaKeyCache), 0o755); err != nil {
		panic(err)
	}
	var all []byte
	for _, k := range keys {
		all = append(all, k...)
	}
	if err := os.WriteFile(rsaKeyCache, all, 0o600); err != nil {
		panic(err)
	}
	return keys
}

// bigFixture is built once per test binary and shared by the benchmarks,
// which do not modify it.
var bigFixture = sync.OnceValue(func() Input {
	rsaKeys := benchRSAKeys(1000)
	var in Input
	for i := range 10000 {
		ns := fmt.Sprintf("tenant-%03d", i%1000)
		name := fmt.Sprintf("d%05d", i)
		domain := name + ".example.com"
		switch {
		case i < 4000:
			_, k, _ := ed25519.GenerateKey(rand.Reader)
			in.SenderDomains = append(in.SenderDomains, senderDomain(ns, name, domain, i, signedWith(name+"-dkim", v1alpha1.DKIMAlgorithmEd25519)))
			in.Secrets = append(in.Secrets, keySecret(ns, name+"-dkim", pkcs8PEM(k)))
		case i < 5000:
			in.SenderDomains = append(in.SenderDomains, senderDomain(ns, name, domain, i, signedWith(name+"-dkim", v1alpha1.DKIMAlgorithmRSA2048)))
			in.Secrets = append(in.Secrets, keySecret(ns, name+"-dkim", rsaKeys[i-4000]))
		default:
			in.SenderDomains = append(in.SenderDomains, senderDomain(ns, name, domain, i, sourceIP(fmt.Sprintf("10.1.%d.%d", i/256%256, i%256))))
			in.RelayRoutes = append(in.RelayRoutes, relayRoute(ns, name, name, i, senders("a@"+domain, "b@"+domain)))
		}
	}
	for i := range 1000 {
		ns := fmt.Sprintf("tenant-%03d", i)
		in.TrustedNetworks = append(in.TrustedNetworks, trustedNetwork(ns, "net", []string{
			fmt.Sprintf("10.%d.%d.0/24", 100+i/256, i%256), fmt.Sprintf("fd00:%x::/64", i),
		}))
	}
	return in
})

func BenchmarkCompile(b *testing.B) {
	in := bigFixture()
	cache := NewCache()
	r := Compile(in, cache) // parse the keys once
	for _, v := range r.Verdicts {
		if !v.InTable {
			b.Fatalf("%v not in the table: %+v", v.Object, v)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		Compile(in, cache)
	}
}

func BenchmarkCompileColdKeys(b *testing.B) {
	in := bigFixture()
	b.ResetTimer()
	for b.Loop() {
		Compile(in, NewCache())
	}
}

func BenchmarkLookup(b *testing.B) {
	tbl := Compile(bigFixture(), NewCache()).Table
	client := netip.MustParseAddr("10.101.200.7") // tenant-456's network
	sender := "a@d05456.example.com"              // tenant-456's routed domain
	if tbl.MaySend(client, "", sender) != Allowed || tbl.Lookup(sender).Route == nil {
		b.Fatal("fixture: tenant-456 may not send as d05456 through its route")
	}
	b.Run("MaySend", func(b *testing.B) {
		for b.Loop() {
			tbl.MaySend(client, "", sender)
		}
	})
	b.Run("Lookup", func(b *testing.B) {
		for b.Loop() {
			tbl.Lookup(sender)
		}
	})
	b.Run("Trusted", func(b *testing.B) {
		for b.Loop() {
			tbl.Trusted(client)
		}
	})
}

// BenchmarkEncode reports the encoded size, the shard count and the bytes
// rewritten when one route changes.
func BenchmarkEncode(b *testing.B) {
	in := bigFixture()
	cache := NewCache()
	tbl := Compile(in, cache).Table
	idx, shards, err := Encode(tbl, 1, 0)
	if err != nil {
		b.Fatal(err)
	}
	total := 0
	for _, s := range shards {
		total += len(s.Data)
	}
	changed := in
	changed.RelayRoutes = append([]v1alpha1.RelayRoute(nil), in.RelayRoutes...)
	changed.RelayRoutes[42].Spec.Target.Host = "changed.relay.test"
	idx2, shards2, err := Encode(Compile(changed, cache).Table, 2, len(idx.Shards))
	if err != nil {
		b.Fatal(err)
	}
	rewritten, n := 0, 0
	for i := range idx2.Shards {
		if idx2.Shards[i].Hash != idx.Shards[i].Hash {
			rewritten += len(shards2[i].Data)
			n++
		}
	}
	b.ResetTimer()
	for b.Loop() {
		if _, _, err := Encode(tbl, 1, len(idx.Shards)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(total), "encoded-bytes")
	b.ReportMetric(float64(len(shards)), "shards")
	b.ReportMetric(float64(n), "shards-rewritten")
	b.ReportMetric(float64(rewritten), "bytes-rewritten")
}

func BenchmarkDecode(b *testing.B) {
	idx, shards, err := Encode(Compile(bigFixture(), NewCache()).Table, 1, 0)
	if err != nil {
		b.Fatal(err)
	}
	m := shardMap(shards)
	cache := NewCache()
	if _, err := Decode(idx, m, cache); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := Decode(idx, m, cache); err != nil {
			b.Fatal(err)
		}
	}
}
