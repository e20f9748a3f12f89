package smtpd

import (
	"crypto/tls"
	"os"
	"testing"
	"time"

	"github.com/postgate/postgate/relay/testenv"
)

func TestCertReloader(t *testing.T) {
	ca := testenv.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := ca.Issue(t, "relay.test").WriteFiles(t, dir)
	r, err := NewCertReloader(certFile, keyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	first, _ := r.GetCertificate(nil)

	// Renewal: new files in place. Make sure the modification time moves.
	renewed := ca.Issue(t, "relay.test", "smtp.relay.test")
	if err := os.WriteFile(certFile, renewed.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, renewed.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	future := time.Now().Add(time.Minute)
	_ = os.Chtimes(certFile, future, future)
	r.lastCheck = time.Time{}
	got, _ := r.GetCertificate(nil)
	if got == first || got.Leaf == nil && len(got.Certificate) == 0 {
		t.Fatal("the renewed pair was not loaded")
	}

	// A broken renewal keeps the pair in use.
	if err := os.WriteFile(keyFile, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.Chtimes(keyFile, future.Add(time.Minute), future.Add(time.Minute))
	r.lastCheck = time.Time{}
	if kept, _ := r.GetCertificate(nil); kept != got {
		t.Error("a broken key file replaced the pair in use")
	}
	if _, err := NewCertReloader(certFile, keyFile, nil); err == nil {
		t.Error("NewCertReloader accepted a broken key file")
	}
	cfg := r.TLSConfig()
	if cfg.MinVersion != tls.VersionTLS12 {
		t.Error("TLS below 1.2 allowed")
	}
}
