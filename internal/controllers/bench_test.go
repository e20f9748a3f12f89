package controllers

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/routing"
	"github.com/postgate/postgate/internal/testenv"
)

// BenchmarkMixedFixture loads the compiler's mixed fixture (10,000
// SenderDomains in 1,000 namespaces: 4,000 signing with Ed25519 and 1,000
// with RSA-2048 keys from Secrets; 5,000 RelayRoutes; 1,000 TrustedNetworks)
// into the API server, runs the operator and a follower, and measures one
// changed RelayRoute per iteration: ns/op is the time until the follower
// runs the new table (target under 2 s), programmed-ms/op until the route
// is Programmed=True; the log has the API writes it causes and the memory.
// Loading the fixture takes minutes; five changes are enough:
//
//	go test -count=1 -run '^$' -bench BenchmarkMixedFixture -benchtime 5x -timeout 30m ./internal/controllers/
//
// The RSA keys come from internal/routing/testdata/bench-rsa2048.pem (made once
// by the routing benchmarks) when it is there; otherwise 50 keys are
// generated and shared by the 1,000 Secrets (each Secret is still parsed on
// its own, as the cache is keyed by Secret).
func BenchmarkMixedFixture(b *testing.B) {
	t := b
	c := newClient(t)
	relayNS := namespaces(t, c, "bench-relay")[0]
	rsaKeys, rsaSource := benchRSAKeys(t)

	start := time.Now()
	objs := benchFixture(rsaKeys)
	var nsWG sync.WaitGroup
	createAll(t, c, objs.namespaces, &nsWG)
	nsWG.Wait()
	var wg sync.WaitGroup
	createAll(t, c, objs.secrets, &wg)
	createAll(t, c, objs.sds, &wg)
	createAll(t, c, objs.rrs, &wg)
	createAll(t, c, objs.tns, &wg)
	wg.Wait()
	total := len(objs.sds) + len(objs.rrs) + len(objs.tns)
	t.Logf("fixture: %d objects and %d Secrets in %d namespaces created in %s (RSA keys: %s)",
		total, len(objs.secrets), len(objs.namespaces), time.Since(start).Round(time.Millisecond), rsaSource)
	objs = nil
	base := heapInuse()

	// The operator alone: compile, publish, every status (NoRelays).
	start = time.Now()
	op := startOperator(t, relayNS)
	settle(t, op, func() string {
		if op.r.Stats().StatusWrites.Load() < int64(total) {
			return fmt.Sprintf("%d status writes of %d", op.r.Stats().StatusWrites.Load(), total)
		}
		return ""
	})
	t.Logf("cold start without relays: table version %d published and %d statuses written in %s; %d compiles, %d API writes, %d Secrets read",
		op.r.Stats().Version.Load(), op.r.Stats().StatusWrites.Load(), time.Since(start).Round(time.Millisecond),
		op.r.Stats().Compiles.Load(), op.writes.n.Load(), op.r.secrets.reads)
	opHeap := heapInuse() - base

	// A follower: everything becomes Programmed.
	start = time.Now()
	writes0 := op.r.Stats().StatusWrites.Load()
	f, _ := startFollower(t, relayNS, "relay-0")
	testenv.EventuallyWithin(t, 5*time.Minute, func() string {
		if tbl := f.Table(); tbl == nil || len(tbl.Objects()) != total {
			return "follower has not loaded the whole table"
		}
		return ""
	})
	loaded := time.Since(start)
	settle(t, op, func() string {
		if n := op.r.Stats().StatusWrites.Load() - writes0; n < int64(total) {
			return fmt.Sprintf("%d Programmed writes of %d", n, total)
		}
		return ""
	})
	t.Logf("follower: loaded %d objects in %s; all Programmed after %s", total, loaded.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	bothHeap := heapInuse() - base

	// One changed RelayRoute per iteration.
	tables, cancel := f.Subscribe()
	defer cancel()
	var lat, prog []time.Duration
	for i := 0; b.Loop(); i++ {
		ns, name := "tenant-456", "d05456"
		host := fmt.Sprintf("changed-%d.relay.test", i)
		b.StopTimer()
		writes, status, version := op.writes.n.Load(), op.r.Stats().StatusWrites.Load(), op.r.Stats().Version.Load()
		rr := get(t, c, ns, name, newRR())
		rr.Spec.Target.Host = v1alpha1.DomainName(host)
		b.StartTimer()
		t0 := time.Now()
		update(t, c, rr)
		deadline := time.After(testenv.WaitTimeout)
	wait:
		for {
			select {
			case tbl := <-tables:
				if d := tbl.Domain(name + ".example.com"); d != nil && d.Route != nil && d.Route.Host == host {
					lat = append(lat, time.Since(t0))
					break wait
				}
			case <-deadline:
				t.Fatalf("the follower did not get the change within %s", testenv.WaitTimeout)
			}
		}
		b.StopTimer()
		published := time.Unix(0, op.r.Stats().PublishedAt.Load()).Sub(t0)
		compileTook := time.Duration(op.r.Stats().CompileNanos.Load())
		waitCond(t, c, ns, name, newRR, v1alpha1.ConditionProgrammed, metav1.ConditionTrue, v1alpha1.ReasonProgrammed)
		prog = append(prog, time.Since(t0))
		t.Logf("change %d: index written after %s (compile, Secret reads, encode and writes took %s); last status pass %s",
			i+1, published.Round(time.Millisecond), compileTook.Round(time.Millisecond), time.Duration(op.r.Stats().StatusNanos.Load()).Round(time.Millisecond))
		settle(t, op, func() string { return "" })
		t.Logf("change %d: follower runs it after %s, Programmed=True after %s; operator API writes %d (%d status), version %d -> %d",
			i+1, lat[i].Round(time.Millisecond), prog[i].Round(time.Millisecond),
			op.writes.n.Load()-writes, op.r.Stats().StatusWrites.Load()-status, version, op.r.Stats().Version.Load())
		b.StartTimer()
	}
	b.StopTimer()
	var progSum time.Duration
	for _, p := range prog {
		progSum += p
	}
	b.ReportMetric(float64(progSum.Milliseconds())/float64(len(prog)), "programmed-ms/op")
	slices.Sort(lat)
	slices.Sort(prog)
	t.Logf("one changed RelayRoute to a follower running it: median %s, max %s (target < 2s); to Programmed=True: median %s, max %s",
		lat[len(lat)/2].Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond), prog[len(prog)/2].Round(time.Millisecond), prog[len(prog)-1].Round(time.Millisecond))
	t.Logf("memory: operator heap in use %.1f MiB; operator and follower %.1f MiB; process RSS %s; routing cache %d entries",
		float64(opHeap)/(1<<20), float64(bothHeap)/(1<<20), rss(), op.r.cache.Len())
}

// settle waits until cond holds and the operator has gone a second without
// a status write.
func settle(t testing.TB, op *operator, cond func() string) {
	t.Helper()
	last, since := int64(-1), time.Now()
	testenv.EventuallyWithin(t, 10*time.Minute, func() string {
		if why := cond(); why != "" {
			return why
		}
		if n := op.writes.n.Load(); n != last {
			last, since = n, time.Now()
			return "still writing"
		}
		if time.Since(since) < time.Second {
			return "still writing"
		}
		return ""
	})
}

func heapInuse() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse) //nolint:gosec // heap sizes fit
}

func rss() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

type benchObjects struct {
	namespaces, secrets, sds, rrs, tns []client.Object
}

// benchFixture mirrors internal/routing's bigFixture.
func benchFixture(rsaKeys []string) *benchObjects {
	o := &benchObjects{}
	for i := range 1000 {
		ns := fmt.Sprintf("tenant-%03d", i)
		o.namespaces = append(o.namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
		o.tns = append(o.tns, trustedNetwork(ns, "net", fmt.Sprintf("10.%d.%d.0/24", 100+i/256, i%256)))
		tn := o.tns[len(o.tns)-1].(*v1alpha1.TrustedNetwork)
		tn.Spec.CIDRs = append(tn.Spec.CIDRs, v1alpha1.CIDR(fmt.Sprintf("fd00:%x::/64", i)))
	}
	for i := range 10000 {
		ns := fmt.Sprintf("tenant-%03d", i%1000)
		name := fmt.Sprintf("d%05d", i)
		domain := name + ".example.com"
		keyPEM := func() string {
			if i < 4000 {
				_, k, _ := ed25519.GenerateKey(rand.Reader)
				der, _ := x509.MarshalPKCS8PrivateKey(k)
				return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
			}
			return rsaKeys[(i-4000)%len(rsaKeys)]
		}
		switch {
		case i < 5000:
			alg := v1alpha1.DKIMAlgorithmEd25519
			if i >= 4000 {
				alg = v1alpha1.DKIMAlgorithmRSA2048
			}
			sd := senderDomain(ns, name, domain)
			sd.Spec.Signing = &v1alpha1.DKIMSigning{Selector: "s1", Algorithm: alg, KeySecretRef: &v1alpha1.SecretKeyReference{Name: name + "-dkim"}}
			o.sds = append(o.sds, sd)
			o.secrets = append(o.secrets, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-dkim"},
				Data: map[string][]byte{routing.DKIMKeySecretKey: []byte(keyPEM())}})
		default:
			sd := senderDomain(ns, name, domain)
			sd.Spec.SourceIP = v1alpha1.IPAddress(fmt.Sprintf("10.1.%d.%d", i/256%256, i%256))
			o.sds = append(o.sds, sd)
			rr := relayRoute(ns, name, name)
			rr.Spec.SenderAddresses = []v1alpha1.EmailAddress{v1alpha1.EmailAddress("a@" + domain), v1alpha1.EmailAddress("b@" + domain)}
			o.rrs = append(o.rrs, rr)
		}
	}
	return o
}

// createAll creates objs with 16 concurrent clients' worth of requests.
func createAll(t testing.TB, c client.Client, objs []client.Object, wg *sync.WaitGroup) {
	work := make(chan client.Object)
	for range 16 {
		wg.Go(func() {
			for o := range work {
				if err := c.Create(context.Background(), o); err != nil {
					t.Errorf("creating %s/%s: %v", o.GetNamespace(), o.GetName(), err)
				}
			}
		})
	}
	go func() {
		for _, o := range objs {
			work <- o
		}
		close(work)
	}()
}

func benchRSAKeys(t testing.TB) ([]string, string) {
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(root, "relay", "routing", "testdata", "bench-rsa2048.pem")
	var keys []string
	if data, err := os.ReadFile(path); err == nil { //nolint:gosec // a test fixture of the repository
		for rest := data; ; {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			keys = append(keys, string(pem.EncodeToMemory(block)))
		}
	}
	if len(keys) >= 1000 {
		return keys[:1000], "1,000 distinct, from " + path
	}
	keys = keys[:0]
	for range 50 {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})))
	}
	return keys, "50 generated, shared by 1,000 Secrets"
}
