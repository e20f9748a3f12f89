package smtpd

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postgate/postgate/internal/testenv"
)

// servedNames returns the DNS names of the certificate the server at addr
// presents in a STARTTLS handshake.
func servedNames(t *testing.T, addr string, client *tls.Config) []string {
	t.Helper()
	c := dialSMTP(t, "127.0.0.1", addr, client)
	// The client's handshake runs with its first write under TLS.
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	state, ok := c.TLSConnectionState()
	if !ok || len(state.PeerCertificates) == 0 {
		t.Fatal("no TLS after STARTTLS")
	}
	_ = c.Quit()
	return state.PeerCertificates[0].DNSNames
}

// leafOf parses the first certificate of a PEM file.
func leafOf(t *testing.T, certFile string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(certFile) //nolint:gosec // the test's own file
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatal("no PEM block in", certFile)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// watch runs r's watch until the test ends.
func watch(t *testing.T, r *CertReloader) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
}

// waitReload waits for a new pair to come into force after ch was taken.
func waitReload(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatal("the new key pair was not loaded")
	}
}

// TestCertReloader rotates the key pair under a running server: the next
// STARTTLS handshake presents the new certificate, without a restart; a
// broken pair keeps the one in force; a good pair after it is loaded.
func TestCertReloader(t *testing.T) {
	ca := testenv.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := ca.Issue(t, "relay.test").WriteFiles(t, dir)
	r, err := NewCertReloader(certFile, keyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg := r.TLSConfig(); cfg.MinVersion != tls.VersionTLS12 {
		t.Error("TLS below 1.2 allowed")
	}
	watch(t, r)
	addr, _, _ := testServer(t, Config{TLS: r.TLSConfig()})
	client := ca.ClientConfig("relay.test")
	if got := servedNames(t, addr, client); !slices.Equal(got, []string{"relay.test"}) {
		t.Fatalf("served %v", got)
	}

	// The expiry gauge follows the pair in force.
	reg := prometheus.NewRegistry()
	reg.MustRegister(r)
	expiry := func() float64 { return testenv.Gather(t, reg)[MetricCertificateExpiry+"{}"] }
	if got, want := expiry(), float64(leafOf(t, certFile).NotAfter.Unix()); got != want {
		t.Errorf("%s = %v, want the certificate's NotAfter %v", MetricCertificateExpiry, got, want)
	}

	// Renewal: new files in place, each replaced by a rename.
	reloaded := r.reloaded()
	renewedNotAfter := time.Now().Add(90 * 24 * time.Hour).Truncate(time.Second)
	ca.IssueCert(t, testenv.CertOptions{Names: []string{"relay.test", "smtp.relay.test"}, NotAfter: renewedNotAfter}).WriteFiles(t, dir)
	waitReload(t, reloaded)
	if got := expiry(); got != float64(renewedNotAfter.Unix()) {
		t.Errorf("after renewal %s = %v, want %v", MetricCertificateExpiry, got, renewedNotAfter.Unix())
	}
	renewed := []string{"relay.test", "smtp.relay.test"}
	if got := servedNames(t, addr, client); !slices.Equal(got, renewed) {
		t.Fatalf("after renewal served %v", got)
	}

	// A broken renewal keeps the pair in force. Reading the files here
	// rather than waiting for the watcher makes the check deterministic;
	// the watcher reads them the same way.
	if err := os.WriteFile(keyFile, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.cw.ReadCertificate(); err == nil {
		t.Fatal("a garbage key file loaded")
	}
	if got := servedNames(t, addr, client); !slices.Equal(got, renewed) {
		t.Fatalf("after a broken renewal served %v", got)
	}
	if _, err := NewCertReloader(certFile, keyFile, nil); err == nil {
		t.Error("NewCertReloader accepted a broken key file")
	}

	// The next good pair is loaded.
	reloaded = r.reloaded()
	ca.Issue(t, "relay.test", "mx.relay.test").WriteFiles(t, dir)
	waitReload(t, reloaded)
	if got := servedNames(t, addr, client); !slices.Equal(got, []string{"relay.test", "mx.relay.test"}) {
		t.Fatalf("after a broken renewal and a good one served %v", got)
	}
}

// TestCertReloaderSecretVolume rotates the pair the way the kubelet updates
// a mounted Secret: the files are symlinks through "..data" to a
// timestamped directory; the update writes a new directory, swaps "..data"
// by rename and removes the old directory.
func TestCertReloaderSecretVolume(t *testing.T) {
	ca := testenv.NewCA(t)
	dir := t.TempDir()
	version := func(name string, c *testenv.Cert) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(dir, name), 0o700); err != nil {
			t.Fatal(err)
		}
		c.WriteFiles(t, filepath.Join(dir, name))
		if err := os.Symlink(name, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..v1", ca.Issue(t, "relay.test"))
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	for _, f := range []string{certFile, keyFile} {
		if err := os.Symlink(filepath.Join("..data", filepath.Base(f)), f); err != nil {
			t.Fatal(err)
		}
	}
	r, err := NewCertReloader(certFile, keyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	watch(t, r)
	addr, _, _ := testServer(t, Config{TLS: r.TLSConfig()})

	reloaded := r.reloaded()
	version("..v2", ca.Issue(t, "relay.test", "smtp.relay.test"))
	if err := os.RemoveAll(filepath.Join(dir, "..v1")); err != nil {
		t.Fatal(err)
	}
	waitReload(t, reloaded)
	if got := servedNames(t, addr, ca.ClientConfig("relay.test")); !slices.Equal(got, []string{"relay.test", "smtp.relay.test"}) {
		t.Fatalf("after the update served %v", got)
	}
}

// TestCertReloaderUnwatched: when the files cannot be watched (here the
// certificate is gone when the watch starts; on a node, inotify watches
// run out), the reloader says so and reads the files every pollInterval:
// a renewal still applies without a restart, and a broken pair is logged
// and keeps the one in force. In a testing/synctest bubble, time being the
// subject.
func TestCertReloaderUnwatched(t *testing.T) {
	ca := testenv.NewCA(t)
	dir := t.TempDir()
	first := ca.Issue(t, "relay.test")
	certFile, keyFile := first.WriteFiles(t, dir)
	var logs testenv.LogBuffer
	r, err := NewCertReloader(certFile, keyFile, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(certFile); err != nil {
		t.Fatal(err)
	}
	renewed := ca.Issue(t, "relay.test", "smtp.relay.test")
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- r.Start(ctx) }()
		synctest.Wait()
		// certwatcher tries to add its watches for 10 seconds.
		time.Sleep(11 * time.Second)
		synctest.Wait()
		if !strings.Contains(logs.String(), "not watched") {
			t.Fatalf("no word of the failed watch in the log: %s", logs.String())
		}

		// A broken pair: logged at the next read, the first pair stays.
		if err := os.WriteFile(certFile, []byte("garbage"), 0o600); err != nil {
			t.Fatal(err)
		}
		time.Sleep(pollInterval)
		synctest.Wait()
		if !strings.Contains(logs.String(), "New TLS key pair not loaded") {
			t.Errorf("broken pair not logged: %s", logs.String())
		}
		if c, _ := r.GetCertificate(nil); !bytes.Equal(c.Certificate[0], first.TLS.Certificate[0]) {
			t.Error("a broken pair replaced the one in force")
		}

		reloaded := r.reloaded()
		renewed.WriteFiles(t, dir)
		time.Sleep(pollInterval)
		synctest.Wait()
		select {
		case <-reloaded:
		default:
			t.Fatalf("renewed pair not loaded: %s", logs.String())
		}
		if c, _ := r.GetCertificate(nil); !bytes.Equal(c.Certificate[0], renewed.TLS.Certificate[0]) {
			t.Error("the renewed pair is not served")
		}
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
}
