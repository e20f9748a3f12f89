package testenv

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// handshake runs a TLS handshake over real loopback sockets: the server
// presents cert, the client uses cfg.
func handshake(t *testing.T, cert *Cert, cfg *tls.Config) (tls.ConnectionState, error) {
	t.Helper()
	l, err := tls.Listen("tcp", DefaultAddr, cert.ServerConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer func() { _ = c.Close() }()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_ = c.(*tls.Conn).Handshake()
	}()
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
	c, err := d.DialContext(t.Context(), "tcp", l.Addr().String())
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer func() { _ = c.Close() }()
	return c.(*tls.Conn).ConnectionState(), nil
}

func TestCertsVerify(t *testing.T) {
	ca := NewCA(t)
	other := NewCA(t)
	tests := []struct {
		name    string
		cert    *Cert
		cfg     *tls.Config
		wantErr string
	}{
		{"valid name", ca.Issue(t, "mx.example.test"), ca.ClientConfig("mx.example.test"), ""},
		{"valid IP", ca.Issue(t, "127.0.0.1"), ca.ClientConfig("127.0.0.1"), ""},
		{"second name", ca.Issue(t, "a.test", "b.test"), ca.ClientConfig("b.test"), ""},
		{"expired", ca.IssueExpired(t, "mx.example.test"), ca.ClientConfig("mx.example.test"), "expired"},
		{"wrong name", ca.IssueWrongName(t), ca.ClientConfig("mx.example.test"), "not mx.example.test"},
		{"other CA", other.Issue(t, "mx.example.test"), ca.ClientConfig("mx.example.test"), "unknown authority"},
		{"self-signed", SelfSigned(t, "mx.example.test"), ca.ClientConfig("mx.example.test"), "unknown authority"},
		{"unverified", SelfSigned(t, "mx.example.test"), &tls.Config{InsecureSkipVerify: true}, ""}, //nolint:gosec // the point of the case
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			state, err := handshake(t, tc.cert, tc.cfg)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("handshake: %v", err)
				}
				if len(state.PeerCertificates) == 0 || !state.PeerCertificates[0].Equal(tc.cert.Leaf) {
					t.Fatal("the server did not present the issued certificate")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("handshake error = %v, want one containing %q", err, tc.wantErr)
			}
			var verr *tls.CertificateVerificationError
			if !errors.As(err, &verr) {
				t.Fatalf("handshake error %T is not a certificate verification error", err)
			}
		})
	}
}

func TestCertsFiles(t *testing.T) {
	ca := NewCA(t)
	cert := ca.Issue(t, "relay.test", "127.0.0.1")
	dir := t.TempDir()
	certFile, keyFile := cert.WriteFiles(t, dir)
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatalf("the written files are not a key pair: %v", err)
	}
	if len(pair.Certificate) != 2 {
		t.Fatalf("the certificate file holds %d certificates, want leaf and CA", len(pair.Certificate))
	}
	if info, err := os.Stat(keyFile); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want mode 0600", info, err)
	}

	// A rotation overwrites the files in place.
	next := ca.Issue(t, "relay.test")
	if c2, k2 := next.WriteFiles(t, dir); c2 != certFile || k2 != keyFile {
		t.Fatalf("rewrite went to %s, %s", c2, k2)
	}
	pair, err = tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil || !pair.Leaf.Equal(next.Leaf) {
		t.Fatalf("after rotation the files hold another certificate (%v)", err)
	}

	bundle, err := os.ReadFile(ca.WriteBundle(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(bundle) {
		t.Fatal("the CA bundle holds no certificate")
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "relay.test"}); err != nil {
		t.Fatalf("the leaf does not verify against the written bundle: %v", err)
	}
}

func TestLoopbackAddr(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"", DefaultAddr},
		{"127.0.0.1:0", "127.0.0.1:0"},
		{"127.0.0.2:2525", "127.0.0.2:2525"},
		{"127.1.2.3:25", "127.1.2.3:25"},
		{"[::1]:0", "[::1]:0"},
		{"[::ffff:127.0.0.1]:0", "127.0.0.1:0"},
		{"0.0.0.0:25", ""},
		{":25", ""},
		{"[::]:25", ""},
		{"10.0.0.1:25", ""},
		{"localhost:25", ""},
		{"127.0.0.1", ""},
		{"127.0.0.1:smtp", ""},
	}
	for _, tc := range tests {
		got, err := loopbackAddr(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("loopbackAddr(%q) = %q, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("loopbackAddr(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}
