package dkim

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// GeneratedRSABits is the size of a generated RSA key: what the API's
// RSA2048 promises, and over RFC 8301 section 3.2's 1024-bit floor.
const GeneratedRSABits = 2048

// GenerateKeyPEM makes a new private key for alg and returns it as one
// PKCS#8 PEM block ("PRIVATE KEY"), the form the compiler reads from a
// Secret: an Ed25519 key (RFC 8463) for Ed25519, a 2048-bit RSA key for
// RSA2048 and for an empty algorithm (the API's default). The operator and
// the standalone relay both make their generated keys here, so a key is
// the same kind of key whichever made it.
func GenerateKeyPEM(alg v1alpha1.DKIMAlgorithm) ([]byte, error) {
	var key crypto.Signer
	var err error
	switch alg {
	case v1alpha1.DKIMAlgorithmEd25519:
		_, key, err = ed25519.GenerateKey(rand.Reader)
	default:
		key, err = rsa.GenerateKey(rand.Reader, GeneratedRSABits)
	}
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
