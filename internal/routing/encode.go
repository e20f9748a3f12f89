package routing

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net/netip"
	"slices"
	"time"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// A table is encoded as units, one per SenderDomain (with its RelayRoute) and
// one per TrustedNetwork, each recording the ObjectRefs it came from. Units
// are spread over shards by a hash of their key, so that one changed object
// changes one shard (docs/design.md contract 1). Each shard is JSON, gzipped, and
// named by the SHA-256 of its content; the index names the shards.

// unit is one SenderDomain or TrustedNetwork, as encoded.
type unit struct {
	Domain  *domainUnit  `json:"domain,omitempty"`
	Network *networkUnit `json:"network,omitempty"`
	// Held is a domain with a hold or an unavailable signing key. It is a
	// member of its own, not Domain with one more field, so that a relay
	// built before held entries existed finds a unit it does not know and
	// refuses the whole table (keeping its last one) instead of reading
	// the domain as one without route or signing, which would send its
	// mail by MX or unsigned. Its key is the domain's, so a domain that
	// becomes held stays in its shard.
	Held *domainUnit `json:"held,omitempty"`
}

func (u unit) key() string {
	if u.Domain != nil {
		return "domain/" + u.Domain.Name
	}
	if u.Held != nil {
		return "domain/" + u.Held.Name
	}
	return "network/" + u.Network.Object.Namespace + "/" + u.Network.Object.Name
}

type domainUnit struct {
	Object           ObjectRef          `json:"object"`
	Name             string             `json:"name"`
	DKIM             *dkimUnit          `json:"dkim,omitempty"`
	SourceIP         string             `json:"sourceIP,omitempty"`
	MaxQueueLifetime string             `json:"maxQueueLifetime"`
	MXTLSPolicy      v1alpha1.TLSPolicy `json:"mxTLSPolicy"`
	Webhook          *webhookUnit       `json:"webhook,omitempty"`
	Route            *routeUnit         `json:"route,omitempty"`
	// Account and CustomerNo are left out when empty, so that a table
	// without them encodes (and hashes) as before.
	Account    string `json:"account,omitempty"`
	CustomerNo string `json:"customerNo,omitempty"`
	// Hold and SigningUnavailable appear only in a Held unit.
	Hold               *holdUnit `json:"hold,omitempty"`
	SigningUnavailable string    `json:"signingUnavailable,omitempty"`
}

// holdUnit is a RelayRoute that cannot take effect.
type holdUnit struct {
	Route   ObjectRef `json:"route"`
	Host    string    `json:"host"`
	Reason  string    `json:"reason"`
	Senders []string  `json:"senders,omitempty"`
}

type dkimUnit struct {
	Selector  string                 `json:"selector"`
	Algorithm v1alpha1.DKIMAlgorithm `json:"algorithm"`
	KeyPEM    string                 `json:"keyPEM"`
}

type webhookUnit struct {
	URL     string `json:"url"`
	HMACKey []byte `json:"hmacKey"`
}

type routeUnit struct {
	Object    ObjectRef          `json:"object"`
	Host      string             `json:"host"`
	Port      int                `json:"port"`
	TLSPolicy v1alpha1.TLSPolicy `json:"tlsPolicy"`
	TLSMode   v1alpha1.TLSMode   `json:"tlsMode"`
	CABundle  string             `json:"caBundle,omitempty"`
	Username  string             `json:"username,omitempty"`
	Password  string             `json:"password,omitempty"`
	Senders   []string           `json:"senders,omitempty"`
}

type networkUnit struct {
	Object ObjectRef             `json:"object"`
	CIDRs  []string              `json:"cidrs"`
	Auth   v1alpha1.SMTPAuthMode `json:"auth,omitempty"`
	Users  []userUnit            `json:"users,omitempty"`
}

type userUnit struct {
	Username string `json:"username"`
	PasswordHash
}

// keyParser turns the PEM in units into keys and certificate pools.
type keyParser interface {
	signer(pem string, alg v1alpha1.DKIMAlgorithm) (crypto.Signer, error)
	pool(pem string) (*x509.CertPool, error)
}

// compiledKeys serves what a compile has just parsed.
type compiledKeys struct{ c *compiler }

func (k compiledKeys) signer(pem string, alg v1alpha1.DKIMAlgorithm) (crypto.Signer, error) {
	if s, ok := k.c.signers[pem]; ok {
		return s, nil
	}
	return parseDKIMKey([]byte(pem), alg)
}

func (k compiledKeys) pool(pem string) (*x509.CertPool, error) {
	if p, ok := k.c.pools[pem]; ok {
		return p, nil
	}
	return parseCABundle([]byte(pem))
}

// cachedKeys parses through a Cache keyed by content, for decoded tables.
type cachedKeys struct{ cache *Cache }

func (k cachedKeys) signer(pem string, alg v1alpha1.DKIMAlgorithm) (crypto.Signer, error) {
	v, err := k.cache.get(cacheKey{"dkim", string(alg) + "/" + contentID([]byte(pem))}, func() (any, error) {
		return parseDKIMKey([]byte(pem), alg)
	})
	if err != nil {
		return nil, err
	}
	return v.(crypto.Signer), nil
}

func (k cachedKeys) pool(pem string) (*x509.CertPool, error) {
	v, err := k.cache.get(cacheKey{"ca", contentID([]byte(pem))}, func() (any, error) { return parseCABundle([]byte(pem)) })
	if err != nil {
		return nil, err
	}
	return v.(*x509.CertPool), nil
}

// build makes a Table from units.
func build(units []unit, keys keyParser) (*Table, error) {
	t := &Table{domains: map[string]*Domain{}, units: map[string]unit{}, held: map[ObjectKey]bool{}}
	for _, u := range units {
		k := u.key()
		if _, dup := t.units[k]; dup {
			return nil, fmt.Errorf("duplicate unit %s", k)
		}
		t.units[k] = u
		switch {
		case u.Domain != nil || u.Held != nil:
			du, held := u.Domain, u.Held != nil
			if held {
				du = u.Held
			}
			if n := btoi(u.Domain != nil) + btoi(u.Network != nil) + btoi(held); n != 1 {
				return nil, fmt.Errorf("%s: a unit is one of domain, held or network", k)
			}
			if hasHold := du.Hold != nil || du.SigningUnavailable != ""; hasHold != held || (du.Hold != nil && du.Route != nil) {
				return nil, fmt.Errorf("%s: a hold or an unavailable key only in a held unit, without route", k)
			}
			d, err := buildDomain(du, keys)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			t.domains[d.Name] = d
			t.objects = append(t.objects, d.Object)
			if d.Route != nil {
				t.objects = append(t.objects, d.Route.Object)
			}
			if held {
				t.held[d.Object.Key()] = true
			}
			if d.Hold != nil {
				t.objects = append(t.objects, d.Hold.Route)
				t.held[d.Hold.Route.Key()] = true
			}
		case u.Network != nil:
			n, err := buildNetwork(u.Network)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", k, err)
			}
			for _, p := range n.Prefixes {
				t.networks.insert(p, n)
			}
			t.objects = append(t.objects, n.Object)
		default:
			return nil, errors.New("empty unit")
		}
	}
	slices.SortFunc(t.objects, func(a, b ObjectRef) int { return compareKeys(a.Key(), b.Key()) })
	return t, nil
}

func buildDomain(u *domainUnit, keys keyParser) (*Domain, error) {
	d := &Domain{Object: u.Object, Name: u.Name, Namespace: u.Object.Namespace, MXTLSPolicy: u.MXTLSPolicy,
		Account: u.Account, CustomerNo: u.CustomerNo}
	var err error
	if d.MaxQueueLifetime, err = time.ParseDuration(u.MaxQueueLifetime); err != nil {
		return nil, err
	}
	if u.SourceIP != "" {
		if d.SourceIP, err = netip.ParseAddr(u.SourceIP); err != nil {
			return nil, err
		}
	}
	if k := u.DKIM; k != nil {
		signer, err := keys.signer(k.KeyPEM, k.Algorithm)
		if err != nil {
			return nil, fmt.Errorf("DKIM key: %w", err)
		}
		d.DKIM = &DKIM{Selector: k.Selector, Algorithm: k.Algorithm, Signer: signer}
	}
	if w := u.Webhook; w != nil {
		d.Webhook = &Webhook{URL: w.URL, HMACKey: w.HMACKey}
	}
	if r := u.Route; r != nil {
		d.Route = &Route{Object: r.Object, Host: r.Host, Port: r.Port, TLSPolicy: r.TLSPolicy, TLSMode: r.TLSMode,
			Username: r.Username, Password: r.Password}
		if r.CABundle != "" {
			if d.Route.RootCAs, err = keys.pool(r.CABundle); err != nil {
				return nil, fmt.Errorf("CA bundle: %w", err)
			}
		}
		d.Route.senders = newSenderSet(r.Senders)
	}
	if h := u.Hold; h != nil {
		d.Hold = &Hold{Route: h.Route, Host: h.Host, Reason: h.Reason, senders: newSenderSet(h.Senders)}
	}
	if d.SigningUnavailable = u.SigningUnavailable; d.SigningUnavailable != "" && d.DKIM != nil {
		return nil, errors.New("a signing key both given and unavailable")
	}
	return d, nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func buildNetwork(u *networkUnit) (*Network, error) {
	n := &Network{Object: u.Object, Namespace: u.Object.Namespace, Auth: u.Auth}
	for _, s := range u.CIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, err
		}
		n.Prefixes = append(n.Prefixes, p)
	}
	if len(u.Users) > 0 {
		n.users = make(map[string]PasswordHash, len(u.Users))
		for _, user := range u.Users {
			n.users[user.Username] = user.PasswordHash
		}
	}
	return n, nil
}

// Shard is one encoded shard: gzipped JSON, named by its content hash.
type Shard struct {
	Name string
	Hash string
	Data []byte
}

// Index names the shards of one table version. It is the last thing a
// publisher writes and the first a relay reads.
type Index struct {
	// Version grows with every published change.
	Version int64 `json:"version"`
	// Hash is the SHA-256 of the shard hashes in order: the table's
	// content hash.
	Hash   string     `json:"hash"`
	Shards []ShardRef `json:"shards"`
	// Shaping is the SHA-256 of the traffic shaping policy published
	// beside the index (ShapingDataKey), empty when there is none. It is a
	// field of its own rather than a part of Hash: a relay built before it
	// verifies Hash against the shards alone, and must keep accepting
	// tables during a rollout (it does not shape, so it has nothing to
	// apply).
	Shaping string `json:"shaping,omitempty"`
}

// SetShaping records policy, the canonical JSON of the shaping policy
// published with idx (nil for none), in idx.
func (idx *Index) SetShaping(policy []byte) {
	idx.Shaping = ""
	if len(policy) > 0 {
		sum := sha256.Sum256(policy)
		idx.Shaping = hex.EncodeToString(sum[:])
	}
}

// VerifyShaping checks that policy is the shaping policy idx names: both
// absent, or its hash the one idx records.
func (idx *Index) VerifyShaping(policy []byte) error {
	var want Index
	want.SetShaping(policy)
	switch {
	case want.Shaping == idx.Shaping:
		return nil
	case idx.Shaping == "":
		return fmt.Errorf("%s is there but the index names no shaping policy", ShapingDataKey)
	case len(policy) == 0:
		return fmt.Errorf("%s is missing: the index names a shaping policy", ShapingDataKey)
	default:
		return fmt.Errorf("%s: content hash %s does not match the index (%s)", ShapingDataKey, want.Shaping, idx.Shaping)
	}
}

// SameContent reports whether idx and o publish the same content: the same
// table and the same shaping policy, whatever their versions.
func (idx *Index) SameContent(o *Index) bool {
	return o != nil && idx.Hash == o.Hash && idx.Shaping == o.Shaping
}

// ShardRef names one shard and its content hash.
type ShardRef struct {
	Name string `json:"name"`
	Hash string `json:"hash"`
}

// ShardNamePrefix starts the name of every shard (a Secret name).
const ShardNamePrefix = "postgate-table-"

// targetShardBytes bounds the average uncompressed shard: gzipped JSON of
// PEM keys and hashes stays well under the 1 MiB of a Secret.
const targetShardBytes = 256 << 10

// Encode splits the table into shards. prevShards is the shard count of the
// previous publication (0 if none): it is kept while the average shard stays
// between a quarter and twice the target size, so that one changed object
// rewrites one shard instead of reshuffling all of them.
func Encode(t *Table, version int64, prevShards int) (*Index, []Shard, error) {
	keys := make([]string, 0, len(t.units))
	encoded := make(map[string][]byte, len(t.units))
	total := 0
	for k, u := range t.units {
		b, err := json.Marshal(u)
		if err != nil {
			return nil, nil, err
		}
		keys = append(keys, k)
		encoded[k] = b
		total += len(b)
	}
	slices.Sort(keys)
	n := shardCount(total, prevShards)
	buckets := make([][]string, n)
	for _, k := range keys {
		i := bucketOf(k, n)
		buckets[i] = append(buckets[i], k)
	}
	idx := &Index{Version: version}
	shards := make([]Shard, 0, n)
	whole := sha256.New()
	for _, bucket := range buckets {
		var raw bytes.Buffer
		raw.WriteString(`{"units":[`)
		for j, k := range bucket {
			if j > 0 {
				raw.WriteByte(',')
			}
			raw.Write(encoded[k])
		}
		raw.WriteString("]}")
		sum := sha256.Sum256(raw.Bytes())
		hash := hex.EncodeToString(sum[:])
		data, err := gzipBytes(raw.Bytes())
		if err != nil {
			return nil, nil, err
		}
		s := Shard{Name: ShardNamePrefix + hash[:32], Hash: hash, Data: data}
		shards = append(shards, s)
		idx.Shards = append(idx.Shards, ShardRef{Name: s.Name, Hash: s.Hash})
		whole.Write([]byte(hash))
	}
	idx.Hash = hex.EncodeToString(whole.Sum(nil))
	return idx, shards, nil
}

func shardCount(total, prev int) int {
	if prev > 0 && total/prev <= 2*targetShardBytes && (prev == 1 || total/prev >= targetShardBytes/4) {
		return prev
	}
	n := 1
	for total/n > targetShardBytes {
		n *= 2
	}
	return n
}

func bucketOf(key string, n int) int {
	h := fnv.New64a()
	_, _ = h.Write([]byte(key))       // a hash.Hash never returns an error
	return int(h.Sum64() % uint64(n)) //nolint:gosec // n is a positive shard count

}

// gzipBytes compresses deterministically: no name, no modification time.
func gzipBytes(b []byte) ([]byte, error) {
	var out bytes.Buffer
	zw, err := gzip.NewWriterLevel(&out, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// maxShardBytes bounds a decompressed shard, against a hostile or corrupt
// shard that decompresses without end.
const maxShardBytes = 64 << 20

// Decode rebuilds a table from an index and the data of its shards (by
// name), verifying every hash; it fails, and nothing is half-applied, when a
// shard is missing or does not match. cache may be nil.
func Decode(idx *Index, shards map[string][]byte, cache *Cache) (*Table, error) {
	whole := sha256.New()
	var units []unit
	for _, ref := range idx.Shards {
		data, ok := shards[ref.Name]
		if !ok {
			return nil, fmt.Errorf("shard %s is missing", ref.Name)
		}
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("shard %s: %w", ref.Name, err)
		}
		raw, err := io.ReadAll(io.LimitReader(zr, maxShardBytes+1))
		if err != nil {
			return nil, fmt.Errorf("shard %s: %w", ref.Name, err)
		}
		if len(raw) > maxShardBytes {
			return nil, fmt.Errorf("shard %s decompresses to more than %d bytes", ref.Name, maxShardBytes)
		}
		sum := sha256.Sum256(raw)
		if hash := hex.EncodeToString(sum[:]); hash != ref.Hash {
			return nil, fmt.Errorf("shard %s: content hash %s does not match the index (%s)", ref.Name, hash, ref.Hash)
		}
		whole.Write([]byte(ref.Hash))
		var s struct {
			Units []unit `json:"units"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("shard %s: %w", ref.Name, err)
		}
		units = append(units, s.Units...)
	}
	if hash := hex.EncodeToString(whole.Sum(nil)); hash != idx.Hash {
		return nil, fmt.Errorf("table hash %s does not match the index (%s)", hash, idx.Hash)
	}
	slices.SortFunc(units, func(a, b unit) int { return cmp.Compare(a.key(), b.key()) })
	t, err := build(units, cachedKeys{cache})
	if err != nil {
		return nil, err
	}
	t.Version = idx.Version
	return t, nil
}
