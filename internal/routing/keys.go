package routing

import (
	"crypto"
	"crypto/ed25519"
	"crypto/pbkdf2"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// minRSABits is the smallest RSA key accepted for signing: RFC 8301 section
// 3.2 makes 1024 bits the floor for verifiers; 2048 is what the API promises.
const minRSABits = 2048

// parseDKIMKey parses a PEM private key (PKCS#1, PKCS#8) and checks that it
// matches the declared algorithm.
func parseDKIMKey(pemBytes []byte, alg v1alpha1.DKIMAlgorithm) (crypto.Signer, error) {
	block, rest := pem.Decode(pemBytes)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	if next, _ := pem.Decode(rest); next != nil {
		// One key per Secret key: a second block would be silently ignored.
		return nil, errors.New("more than one PEM block")
	}
	var key any
	var err error
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key (want \"PRIVATE KEY\" or \"RSA PRIVATE KEY\")", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parsing the private key: %w", err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if alg != v1alpha1.DKIMAlgorithmRSA2048 {
			return nil, fmt.Errorf("the key is RSA but the algorithm is %s", alg)
		}
		if bits := k.N.BitLen(); bits < minRSABits {
			return nil, fmt.Errorf("the RSA key has %d bits, fewer than %d", bits, minRSABits)
		}
		return k, nil
	case ed25519.PrivateKey:
		if alg != v1alpha1.DKIMAlgorithmEd25519 {
			return nil, fmt.Errorf("the key is Ed25519 but the algorithm is %s", alg)
		}
		return k, nil
	default:
		return nil, fmt.Errorf("unsupported key type %T (want RSA or Ed25519)", key)
	}
}

// dkimRecordValue returns the TXT record value that publishes the public key
// of signer (RFC 6376 section 3.6.1; Ed25519 per RFC 8463 section 4: the raw
// 32-byte key, not SubjectPublicKeyInfo).
func dkimRecordValue(signer crypto.Signer) (string, error) {
	switch pub := signer.Public().(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return "", err
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der), nil
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub), nil
	default:
		return "", fmt.Errorf("unsupported public key type %T", pub)
	}
}

// parseCABundle parses PEM certificates; at least one is required.
func parseCABundle(pemBytes []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	n := 0
	for rest := pemBytes; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", n+1, err)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return pool, nil
}

// Credentials of SMTP AUTH users are stored as PBKDF2-SHA256 hashes
// (RFC 8018 section 5.2) with a per-user salt, never as passwords (docs/design.md
// contract 3). The iteration count keeps one AUTH check near a millisecond
// while making a leaked table expensive to brute-force.
const (
	pbkdf2Iterations = 4096
	pbkdf2KeyLen     = 32
)

// PasswordHash is a salted hash of one SMTP AUTH password.
type PasswordHash struct {
	Salt []byte `json:"salt"`
	Hash []byte `json:"hash"`
}

// hashPassword hashes password with salt.
func hashPassword(password string, salt []byte) (PasswordHash, error) {
	h, err := pbkdf2.Key(sha256.New, password, salt, pbkdf2Iterations, pbkdf2KeyLen)
	if err != nil {
		return PasswordHash{}, err
	}
	return PasswordHash{Salt: salt, Hash: h}, nil
}

// Verify reports whether password matches, in constant time.
func (p PasswordHash) Verify(password string) bool {
	h, err := pbkdf2.Key(sha256.New, password, p.Salt, pbkdf2Iterations, pbkdf2KeyLen)
	return err == nil && subtle.ConstantTimeCompare(h, p.Hash) == 1
}

// saltFor derives the salt of a user's hash from the Secret's identity and
// the username. It must be deterministic: the table's content hash must not
// change between two compiles of the same resources, or every compile would
// rewrite a shard. Distinct users still get distinct salts.
func saltFor(secretID, username string) []byte {
	sum := sha256.Sum256([]byte("postgate smtp-auth salt\x00" + secretID + "\x00" + username))
	return sum[:16]
}

// Cache keeps the results of expensive parses (DKIM keys, CA bundles,
// password hashes) across compiles, keyed by Secret identity and
// resourceVersion (or by content when there is no resourceVersion, as in
// standalone mode), so that a recompile does not parse thousands of keys
// again. Entries not used by the latest compile are dropped at its end. A
// Cache is safe for concurrent use; the zero value is not usable, use
// NewCache.
type Cache struct {
	mu      sync.Mutex
	entries map[cacheKey]*cacheEntry
	epoch   uint64
}

type cacheKey struct {
	kind string // what was parsed: "dkim", "ca", "auth"
	id   string // Secret identity and version, or a content hash
}

type cacheEntry struct {
	value any
	err   error
	epoch uint64
}

// NewCache returns an empty cache.
func NewCache() *Cache {
	return &Cache{entries: map[cacheKey]*cacheEntry{}}
}

// get returns the cached result for key, computing it with parse on a miss.
func (c *Cache) get(key cacheKey, parse func() (any, error)) (any, error) {
	if c == nil {
		return parse()
	}
	c.mu.Lock()
	e, ok := c.entries[key]
	if ok {
		e.epoch = c.epoch
	}
	c.mu.Unlock()
	if ok {
		return e.value, e.err
	}
	v, err := parse()
	c.mu.Lock()
	c.entries[key] = &cacheEntry{value: v, err: err, epoch: c.epoch}
	c.mu.Unlock()
	return v, err
}

// begin starts a compile; sweep drops what that compile did not use.
func (c *Cache) begin() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.epoch++
	c.mu.Unlock()
}

func (c *Cache) sweep() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.entries {
		if e.epoch != c.epoch {
			delete(c.entries, k)
		}
	}
}

// Len returns the number of cached results.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// contentID identifies bytes by their SHA-256.
func contentID(parts ...[]byte) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:", len(p))
		h.Write(p)
	}
	return base64.RawStdEncoding.EncodeToString(h.Sum(nil))
}
