package testenv

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"testing"
	"time"
)

// NewRootCA creates a root certificate authority that, unlike NewCA's, may
// sign intermediate CAs (CA.Intermediate): ECDSA P-256, valid from an hour
// ago for a day, no path length limit.
func NewRootCA(tb testing.TB, name string) *CA {
	tb.Helper()
	return newCA(tb, name, nil)
}

// Intermediate creates a certificate authority signed by ca, limited to
// issuing leaves. Its leaves' TLS chains (CA.Issue) hold the leaf and this
// intermediate, not the root: a server that sends the root too appends
// ca.Cert.Raw.
func (ca *CA) Intermediate(tb testing.TB, name string) *CA {
	tb.Helper()
	return newCA(tb, name, ca)
}

// IssueTemplate signs tmpl with ca for a new key, after giving it a serial
// number, and fills in the validity when tmpl leaves it zero (an hour ago, a
// day from now): for certificates the other helpers do not make, such as one
// with only a subject common name. The TLS chain holds the leaf and ca.
func (ca *CA) IssueTemplate(tb testing.TB, tmpl *x509.Certificate) *Cert {
	tb.Helper()
	key := newKey(tb)
	t := *tmpl
	t.SerialNumber = newSerial(tb)
	if t.NotBefore.IsZero() {
		t.NotBefore = time.Now().Add(-time.Hour)
	}
	if t.NotAfter.IsZero() {
		t.NotAfter = time.Now().Add(24 * time.Hour)
	}
	der, err := x509.CreateCertificate(rand.Reader, &t, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		tb.Fatalf("issuing a certificate for %q: %v", t.Subject.CommonName, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("parsing the certificate for %q: %v", t.Subject.CommonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatalf("encoding the key for %q: %v", t.Subject.CommonName, err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})...)
	c := &Cert{Leaf: leaf, CertPEM: certPEM, KeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})}
	c.TLS.Certificate = [][]byte{der, ca.Cert.Raw}
	c.TLS.PrivateKey, c.TLS.Leaf = key, leaf
	return c
}

// newCA creates a CA certificate named name, self-signed when parent is
// nil (no path length limit), else signed by parent (leaves only).
func newCA(tb testing.TB, name string, parent *CA) *CA {
	tb.Helper()
	key := newKey(tb)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(tb),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"postgate testenv"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            -1,
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		tmpl.MaxPathLen, tmpl.MaxPathLenZero = 0, true
		signer, signerKey = parent.Cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		tb.Fatalf("creating the CA %q: %v", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("parsing the CA %q: %v", name, err)
	}
	return &CA{Cert: cert, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: key}
}
