package standalone

import (
	"context"
	"crypto"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/postgate/postgate/internal/routing"
	"github.com/postgate/postgate/internal/testenv"
)

func TestSamples(t *testing.T) {
	keys := t.TempDir()
	src, err := New([]string{testenv.Samples(t)}, Options{KeysDir: keys})
	if err != nil {
		t.Fatal(err)
	}
	tbl := src.Table()
	loopback := netip.MustParseAddr("127.0.0.1")
	if d := tbl.MaySend(loopback, "", "alice@example.com"); d != routing.Allowed {
		t.Errorf("loopback as example.com: %v", d)
	}
	if d := tbl.MaySend(netip.MustParseAddr("192.0.2.1"), "", "alice@example.com"); d != routing.DenyUntrusted {
		t.Errorf("192.0.2.1 as example.com: %v, want untrusted", d)
	}
	ex := tbl.Domain("example.com")
	if ex == nil || ex.DKIM == nil || ex.DKIM.Selector != "postgate1" {
		t.Fatalf("example.com signs with a generated key: %+v", ex)
	}
	if r := tbl.Lookup("invoices@billing.example.com").Route; r == nil || r.Host != "smarthost.relay.test" || r.Username != "postgate-billing" {
		t.Errorf("billing route: %+v", r)
	}
	// The key is made once: a restart on the same spool signs with it.
	again, err := New([]string{testenv.Samples(t)}, Options{KeysDir: keys})
	if err != nil {
		t.Fatal(err)
	}
	if !ex.DKIM.Signer.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(again.Table().Domain("example.com").DKIM.Signer.Public()) {
		t.Error("a restart generated a new DKIM key: the published record would no longer match")
	}
	files, _ := filepath.Glob(filepath.Join(keys, "default", "*.pem"))
	if len(files) != 1 {
		t.Errorf("keys dir holds %v, want one key", files)
	}
	if fi, err := os.Stat(files[0]); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode: %v %v", fi.Mode(), err)
	}
}

const (
	domainA = `apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: a}
spec: {domain: a.example.com}
---
apiVersion: postgate.io/v1alpha1
kind: TrustedNetwork
metadata: {name: lo}
spec: {cidrs: [127.0.0.0/8]}
`
	domainB = `---
apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: b}
spec: {domain: b.example.com}
`
)

func TestReloadOnChange(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "relay.yaml")
	if err := os.WriteFile(file, []byte(domainA), 0o600); err != nil {
		t.Fatal(err)
	}
	src, err := New([]string{dir}, Options{KeysDir: t.TempDir(), Interval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if swapped, err := src.Reload(); swapped || err != nil {
		t.Errorf("reload without a change: swapped %v, err %v", swapped, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = src.Run(ctx) }()

	old := src.Table()
	// Each change is a rename, as editors and kubelet's Secret volumes
	// make them: a file truncated and then written lets the polling loop
	// read it empty, which is a valid empty manifest set.
	writeAtomic(t, file, domainA+domainB)
	testenv.EventuallyTrue(t, "the table in force lacks b.example.com", func() bool { return src.Table().Domain("b.example.com") != nil })
	if old.Domain("b.example.com") != nil {
		t.Error("the old table changed: tables must be immutable")
	}

	// A broken file keeps the table in force.
	good := src.Table()
	writeAtomic(t, file, "kind: [\n")
	if _, err := src.Reload(); err == nil {
		t.Error("reloading broken YAML: no error")
	}
	if src.Table() != good {
		t.Error("a broken manifest replaced the table")
	}
}

// Files the loader leaves out (an editor's hidden temporary file, a
// README) are not a change: the table in force stays, not reloaded.
func TestReloadIgnoresFilesNotRead(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "relay.yaml"), []byte(domainA), 0o600); err != nil {
		t.Fatal(err)
	}
	src, err := New([]string{dir}, Options{KeysDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{".relay.yaml.swp", ".tmp-relay.yaml", "README.md", "kustomization.yaml"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(domainA+domainB), 0o600); err != nil {
			t.Fatal(err)
		}
		if swapped, err := src.Reload(); swapped || err != nil {
			t.Errorf("after writing %s: swapped %v, err %v; want the table kept", name, swapped, err)
		}
	}
	if src.Table().Domain("b.example.com") != nil {
		t.Error("a file the loader does not read reached the table")
	}
}

// A file written in place is loaded once it has stayed the same for a
// whole interval: the moment it reads empty (a valid, empty manifest set)
// never becomes the table.
func TestReloadWaitsForTheFilesToSettle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		file := filepath.Join(dir, "relay.yaml")
		if err := os.WriteFile(file, []byte(domainA), 0o600); err != nil {
			t.Fatal(err)
		}
		src, err := New([]string{dir}, Options{KeysDir: t.TempDir(), Interval: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go func() { _ = src.Run(ctx) }()
		synctest.Wait()
		// Truncated: empty for one check, then written.
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if src.Table().Domain("a.example.com") == nil {
			t.Fatal("the empty file became the table")
		}
		if err := os.WriteFile(file, []byte(domainA+domainB), 0o600); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // the change is seen
		synctest.Wait()
		if src.Table().Domain("b.example.com") != nil {
			t.Fatal("loaded before the files settled")
		}
		time.Sleep(time.Second) // and settled
		synctest.Wait()
		if src.Table().Domain("b.example.com") == nil || src.Table().Domain("a.example.com") == nil {
			t.Fatal("the settled change was not loaded")
		}
	})
}

// writeAtomic replaces file with data in one rename.
func writeAtomic(t *testing.T, file, data string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(file), ".tmp-"+filepath.Base(file))
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
}

func TestStartRefusesUnreadableManifests(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "x.yaml"), []byte("apiVersion: postgate.io/v1alpha1\nkind: SenderDomain\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New([]string{dir}, Options{KeysDir: t.TempDir()}); err == nil {
		t.Error("started on a manifest without a name")
	}
	if _, err := New([]string{filepath.Join(dir, "missing")}, Options{KeysDir: t.TempDir()}); err == nil {
		t.Error("started on a missing path")
	}
}

// Standalone mode holds a route that cannot take effect as the operator's
// relays do: the mail of a route whose credentials Secret is not among the
// manifests is held, never sent by MX, until the Secret is added.
func TestHeldRouteStandalone(t *testing.T) {
	const route = `---
apiVersion: postgate.io/v1alpha1
kind: RelayRoute
metadata: {name: a}
spec:
  senderDomainRef: {name: a}
  target: {host: smarthost.relay.test, port: 587, tlsPolicy: Required, credentialsSecretRef: {name: creds}}
`
	const creds = `---
apiVersion: v1
kind: Secret
metadata: {name: creds}
type: kubernetes.io/basic-auth
stringData: {username: relay, password: s3cret}
`
	dir := t.TempDir()
	file := filepath.Join(dir, "relay.yaml")
	if err := os.WriteFile(file, []byte(domainA+route), 0o600); err != nil {
		t.Fatal(err)
	}
	src, err := New([]string{dir}, Options{KeysDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if dl := src.Table().Lookup("app@a.example.com"); dl.Hold == nil || dl.Route != nil {
		t.Fatalf("without the Secret: %+v, want held", dl)
	}
	if err := os.WriteFile(file, []byte(domainA+route+creds), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Reload(); err != nil {
		t.Fatal(err)
	}
	if dl := src.Table().Lookup("app@a.example.com"); dl.Hold != nil || dl.Route == nil || dl.Route.Username != "relay" {
		t.Fatalf("with the Secret: %+v, want routed", dl)
	}
}
