package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// WrongName is the only name on the certificates of CA.IssueWrongName: no
// test connects to it, so a client that verifies the name it dialed fails.
const WrongName = "wrong-name.invalid"

// CA is a throwaway certificate authority for one test: ECDSA P-256, valid
// from an hour ago for a day.
type CA struct {
	// Cert is the CA certificate.
	Cert *x509.Certificate
	// PEM is Cert PEM-encoded: a CA bundle for clients and for the data of a
	// RelayRoute's CA bundle Secret.
	PEM []byte
	key *ecdsa.PrivateKey
}

// Cert is a leaf certificate with its key.
type Cert struct {
	// TLS is the certificate chain (leaf, then the issuing CA) and key.
	TLS tls.Certificate
	// Leaf is the parsed leaf certificate.
	Leaf *x509.Certificate
	// CertPEM holds the chain PEM-encoded, KeyPEM the PKCS #8 private key.
	CertPEM, KeyPEM []byte
}

// CertOptions describe a leaf certificate.
type CertOptions struct {
	// Names are DNS names or IP addresses; IP literals become IP SANs. The
	// first name is also the subject's common name.
	Names []string
	// NotBefore and NotAfter bound the validity; zero values mean an hour
	// ago and a day from now.
	NotBefore, NotAfter time.Time
}

// NewCA creates a certificate authority for the test.
func NewCA(tb testing.TB) *CA {
	tb.Helper()
	key := newKey(tb)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(tb),
		Subject:               pkix.Name{CommonName: "postgate test CA", Organization: []string{"postgate testenv"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatalf("creating the test CA: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("parsing the test CA: %v", err)
	}
	return &CA{Cert: cert, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: key}
}

// Pool returns a certificate pool holding only this CA, for a client's
// tls.Config.RootCAs.
func (ca *CA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return pool
}

// ClientConfig returns a client TLS configuration that trusts only this CA
// and verifies serverName.
func (ca *CA) ClientConfig(serverName string) *tls.Config {
	return &tls.Config{RootCAs: ca.Pool(), ServerName: serverName, MinVersion: tls.VersionTLS12}
}

// WriteBundle writes PEM to ca.pem in dir (a new temporary directory when
// dir is empty) and returns the file's path.
func (ca *CA) WriteBundle(tb testing.TB, dir string) string {
	tb.Helper()
	if dir == "" {
		dir = tb.TempDir()
	}
	path := filepath.Join(dir, "ca.pem")
	writeFile(tb, path, ca.PEM)
	return path
}

// Issue issues a server (and client) certificate for names, DNS names or IP
// literals.
func (ca *CA) Issue(tb testing.TB, names ...string) *Cert {
	tb.Helper()
	return ca.IssueCert(tb, CertOptions{Names: names})
}

// IssueExpired issues a certificate for names that expired an hour ago.
func (ca *CA) IssueExpired(tb testing.TB, names ...string) *Cert {
	tb.Helper()
	now := time.Now()
	return ca.IssueCert(tb, CertOptions{Names: names, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)})
}

// IssueWrongName issues a valid certificate for WrongName only: a client
// that verifies the host it dialed, name or IP, rejects it.
func (ca *CA) IssueWrongName(tb testing.TB) *Cert {
	tb.Helper()
	return ca.IssueCert(tb, CertOptions{Names: []string{WrongName}})
}

// IssueCert issues a leaf certificate as opts describe.
func (ca *CA) IssueCert(tb testing.TB, opts CertOptions) *Cert {
	tb.Helper()
	return issue(tb, opts, ca.Cert, ca.key)
}

// SelfSigned returns a certificate for names that no CA vouches for: a
// client that verifies the chain rejects it whatever the name.
func SelfSigned(tb testing.TB, names ...string) *Cert {
	tb.Helper()
	return issue(tb, CertOptions{Names: names}, nil, nil)
}

// issue signs a leaf with parent and parentKey, or self-signs it when parent
// is nil.
func issue(tb testing.TB, opts CertOptions, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) *Cert {
	tb.Helper()
	if len(opts.Names) == 0 {
		tb.Fatal("a certificate needs at least one name")
	}
	now := time.Now()
	if opts.NotBefore.IsZero() {
		opts.NotBefore = now.Add(-time.Hour)
	}
	if opts.NotAfter.IsZero() {
		opts.NotAfter = now.Add(24 * time.Hour)
	}
	key := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(tb),
		Subject:      pkix.Name{CommonName: opts.Names[0]},
		NotBefore:    opts.NotBefore,
		NotAfter:     opts.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, name := range opts.Names {
		if ip := net.ParseIP(name); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, name)
		}
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		tb.Fatalf("issuing a certificate for %v: %v", opts.Names, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("parsing the certificate for %v: %v", opts.Names, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatalf("encoding the key for %v: %v", opts.Names, err)
	}
	chain := [][]byte{der}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if parent != tmpl {
		chain = append(chain, parent.Raw)
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: parent.Raw})...)
	}
	return &Cert{
		TLS:     tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf},
		Leaf:    leaf,
		CertPEM: certPEM,
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
}

// ServerConfig returns a server TLS configuration presenting c, accepting
// TLS 1.2 and 1.3. Callers may narrow the versions on the returned copy.
func (c *Cert) ServerConfig() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{c.TLS}, MinVersion: tls.VersionTLS12}
}

// WriteFiles writes CertPEM and KeyPEM to tls.crt and tls.key in dir (a new
// temporary directory when dir is empty), for --tls-cert-file and
// --tls-key-file, and returns their paths. Writing again into the same dir
// replaces the files, as a certificate rotation does.
func (c *Cert) WriteFiles(tb testing.TB, dir string) (certFile, keyFile string) {
	tb.Helper()
	if dir == "" {
		dir = tb.TempDir()
	}
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	writeFile(tb, certFile, c.CertPEM)
	writeFile(tb, keyFile, c.KeyPEM)
	return certFile, keyFile
}

// writeFile replaces path atomically (write then rename), so a process that
// watches the file never reads half of it.
func writeFile(tb testing.TB, path string, data []byte) {
	tb.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		tb.Fatal(err)
	}
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("generating an ECDSA key: %v", err)
	}
	return key
}

func newSerial(tb testing.TB) *big.Int {
	tb.Helper()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		tb.Fatalf("generating a serial number: %v", err)
	}
	return serial
}
