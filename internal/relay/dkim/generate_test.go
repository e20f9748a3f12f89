package dkim

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"testing"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// TestGenerateKeyPEM: each algorithm gives one PKCS#8 PEM block holding a
// new key of its kind, which signs with the a= the algorithm names.
func TestGenerateKeyPEM(t *testing.T) {
	for _, tt := range []struct {
		alg  v1alpha1.DKIMAlgorithm
		want string
	}{
		{v1alpha1.DKIMAlgorithmEd25519, "ed25519-sha256"},
		{v1alpha1.DKIMAlgorithmRSA2048, "rsa-sha256"},
		{"", "rsa-sha256"}, // the API's default
	} {
		var keys [][]byte
		for range 2 {
			p, err := GenerateKeyPEM(tt.alg)
			if err != nil {
				t.Fatalf("%q: %v", tt.alg, err)
			}
			keys = append(keys, p)
		}
		block, rest := pem.Decode(keys[0])
		if block == nil || block.Type != "PRIVATE KEY" || len(bytes.TrimSpace(rest)) != 0 {
			t.Fatalf("%q: not one PRIVATE KEY block: %q", tt.alg, keys[0])
		}
		key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			t.Fatalf("%q: %v", tt.alg, err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			t.Fatalf("%q: %T is no signer", tt.alg, key)
		}
		if got, err := (Key{Domain: "example.com", Selector: "s", Signer: signer}).Algorithm(); got != tt.want || err != nil {
			t.Errorf("%q: signs as %q, %v; want %q", tt.alg, got, err, tt.want)
		}
		if k, ok := key.(*rsa.PrivateKey); ok && k.N.BitLen() != GeneratedRSABits {
			t.Errorf("%q: RSA key of %d bits, want %d", tt.alg, k.N.BitLen(), GeneratedRSABits)
		}
		if bytes.Equal(keys[0], keys[1]) {
			t.Errorf("%q: two calls made the same key", tt.alg)
		}
	}
}
