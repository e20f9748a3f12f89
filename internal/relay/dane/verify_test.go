package dane

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/testenv"
)

// mxNames are the reference identifiers of the DANE-TA tests: the MX host
// (the TLSA base domain) and the next-hop domain (RFC 7672 section 3.2.2).
var mxNames = []string{"mx.example.net", "example.net"}

// pki is a root CA, an intermediate it signed, and leaves the intermediate
// issued, each with the chain a server would send: leaf then intermediate.
type pki struct {
	root, inter                                  *testenv.CA
	good, wildcard, wrongName, expired, cnOnly   *testenv.Cert
	cnIgnored, stranger, selfSigned, eeNeglected *testenv.Cert
}

func newPKI(tb testing.TB) *pki {
	tb.Helper()
	root := testenv.NewRootCA(tb, "DANE test root")
	inter := root.Intermediate(tb, "DANE test intermediate")
	other := testenv.NewCA(tb)
	long := time.Now().Add(-72 * time.Hour)
	return &pki{
		root:      root,
		inter:     inter,
		good:      inter.Issue(tb, "mx.example.net"),
		wildcard:  inter.Issue(tb, "*.example.net"),
		wrongName: inter.Issue(tb, "mx.example.org"),
		expired:   inter.IssueExpired(tb, "mx.example.net"),
		cnOnly: inter.IssueTemplate(tb, &x509.Certificate{
			Subject:     pkix.Name{CommonName: "mx.example.net"},
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}),
		cnIgnored: inter.IssueTemplate(tb, &x509.Certificate{
			Subject:  pkix.Name{CommonName: "mx.example.net"},
			DNSNames: []string{"mx.example.org"},
			KeyUsage: x509.KeyUsageDigitalSignature,
		}),
		stranger:   other.Issue(tb, "mx.example.net"),
		selfSigned: testenv.SelfSigned(tb, "mx.example.net"),
		// Expired two days ago, and named for another host: DANE-EE cares
		// for neither.
		eeNeglected: other.IssueCert(tb, testenv.CertOptions{
			Names: []string{testenv.WrongName}, NotBefore: long, NotAfter: long.Add(time.Hour),
		}),
	}
}

// chainOf parses the chain c's server sends, then extra certificates.
func chainOf(tb testing.TB, c *testenv.Cert, extra ...*x509.Certificate) []*x509.Certificate {
	tb.Helper()
	var chain []*x509.Certificate
	for _, der := range c.TLS.Certificate {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			tb.Fatal(err)
		}
		chain = append(chain, cert)
	}
	return append(chain, extra...)
}

// tlsa computes the record of cert for usage, selector and matching type
// independently of the package's own matching code.
func tlsa(usage, selector, matching uint8, cert *x509.Certificate) Record {
	der := cert.Raw
	if selector == SelectorSPKI {
		der = cert.RawSubjectPublicKeyInfo
	}
	switch matching {
	case MatchingSHA2256:
		sum := sha256.Sum256(der)
		der = sum[:]
	case MatchingSHA2512:
		sum := sha512.Sum512(der)
		der = sum[:]
	}
	return Record{Usage: usage, Selector: selector, MatchingType: matching, Data: der}
}

// wantResult fails the test unless err is an *Error with result want, or
// nil when want is "".
func wantResult(t *testing.T, err error, want string) {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Fatalf("Verify: %v, want a match", err)
		}
		return
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("Verify: %v (%T), want an *Error with result %q", err, err, want)
	}
	if e.Result != want || e.Reason == "" || e.Error() != e.Reason {
		t.Fatalf("Verify: result %q, reason %q; want result %q with a reason", e.Result, e.Reason, want)
	}
	t.Logf("%s: %s", e.Result, e.Reason)
}

func TestDANEEEMatches(t *testing.T) {
	p := newPKI(t)
	for _, selector := range []uint8{SelectorCert, SelectorSPKI} {
		for _, matching := range []uint8{MatchingFull, MatchingSHA2256, MatchingSHA2512} {
			r := tlsa(UsageDANEEE, selector, matching, p.selfSigned.Leaf)
			t.Run(brief(r), func(t *testing.T) {
				wantResult(t, Verify([]Record{r}, chainOf(t, p.selfSigned), mxNames, time.Now()), "")
			})
		}
	}
}

func TestDANEEEIgnoresNamesAndDates(t *testing.T) {
	p := newPKI(t)
	chain := chainOf(t, p.eeNeglected)
	for _, r := range []Record{
		tlsa(UsageDANEEE, SelectorSPKI, MatchingSHA2256, p.eeNeglected.Leaf),
		tlsa(UsageDANEEE, SelectorCert, MatchingSHA2512, p.eeNeglected.Leaf),
	} {
		// RFC 7672 section 3.1.1: neither the names nor the dates, whatever
		// the time and the reference identifiers.
		for _, now := range []time.Time{time.Now(), time.Now().AddDate(20, 0, 0), {}} {
			wantResult(t, Verify([]Record{r}, chain, mxNames, now), "")
			wantResult(t, Verify([]Record{r}, chain, nil, now), "")
		}
	}
}

func TestDANEEEMismatch(t *testing.T) {
	p := newPKI(t)
	tests := []struct {
		name   string
		record Record
		chain  []*x509.Certificate
	}{
		{"another server's key", tlsa(UsageDANEEE, SelectorSPKI, MatchingSHA2256, p.stranger.Leaf), chainOf(t, p.good)},
		{"another server's certificate", tlsa(UsageDANEEE, SelectorCert, MatchingFull, p.stranger.Leaf), chainOf(t, p.good)},
		// RFC 7672 section 3.1.1: DANE-EE is the leaf's, not its issuer's.
		{"the issuer in the chain", tlsa(UsageDANEEE, SelectorSPKI, MatchingSHA2256, p.inter.Cert), chainOf(t, p.good)},
		{"the leaf's key under the wrong selector", func() Record {
			r := tlsa(UsageDANEEE, SelectorSPKI, MatchingSHA2256, p.good.Leaf)
			r.Selector = SelectorCert
			return r
		}(), chainOf(t, p.good)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Verify([]Record{tt.record}, tt.chain, mxNames, time.Now())
			wantResult(t, err, ResultValidationFailure)
			// The reason gives the server's key, for comparing with the DNS.
			if key := tlsa(UsageDANEEE, SelectorSPKI, MatchingSHA2256, tt.chain[0]).String(); !strings.Contains(err.Error(), key) {
				t.Errorf("reason %q does not give the server's key %q", err, key)
			}
		})
	}
}

func TestDANETA(t *testing.T) {
	p := newPKI(t)
	now := time.Now()
	rootKey, err := x509.ParsePKIXPublicKey(p.root.Cert.RawSubjectPublicKeyInfo)
	if err != nil || rootKey == nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		records []Record
		chain   []*x509.Certificate
		names   []string
		now     time.Time
		want    string
	}{
		{name: "the intermediate, certificate digest", records: []Record{tlsa(UsageDANETA, SelectorCert, MatchingSHA2256, p.inter.Cert)},
			chain: chainOf(t, p.good)},
		{name: "the intermediate, key digest SHA2-512", records: []Record{tlsa(UsageDANETA, SelectorSPKI, MatchingSHA2512, p.inter.Cert)},
			chain: chainOf(t, p.good)},
		{name: "the intermediate, whole certificate", records: []Record{tlsa(UsageDANETA, SelectorCert, MatchingFull, p.inter.Cert)},
			chain: chainOf(t, p.good)},
		{name: "the root the server sends", records: []Record{tlsa(UsageDANETA, SelectorCert, MatchingSHA2256, p.root.Cert)},
			chain: chainOf(t, p.good, p.root.Cert)},
		{name: "chain in disorder", records: []Record{tlsa(UsageDANETA, SelectorCert, MatchingSHA2256, p.root.Cert)},
			chain: func() []*x509.Certificate { c := chainOf(t, p.good, p.root.Cert); c[1], c[2] = c[2], c[1]; return c }()},
		// RFC 7671 section 5.2.2: a digest needs the anchor in the chain.
		{name: "the root the server omits, digest", records: []Record{tlsa(UsageDANETA, SelectorCert, MatchingSHA2256, p.root.Cert)},
			chain: chainOf(t, p.good), want: ResultValidationFailure},
		// RFC 7671 section 5.2.2: "2 0 0" carries the anchor itself.
		{name: "the root the server omits, whole certificate", records: []Record{tlsa(UsageDANETA, SelectorCert, MatchingFull, p.root.Cert)},
			chain: chainOf(t, p.good)},
		// RFC 7671 section 5.2.3: "2 1 0" is a bare key that signed the top.
		{name: "the root's bare key", records: []Record{tlsa(UsageDANETA, SelectorSPKI, MatchingFull, p.root.Cert)},
			chain: chainOf(t, p.good)},
		{name: "the intermediate's bare key over a lone leaf", records: []Record{tlsa(UsageDANETA, SelectorSPKI, MatchingFull, p.inter.Cert)},
			chain: chainOf(t, p.good)[:1]},
		{name: "a bare key that signed nothing", records: []Record{tlsa(UsageDANETA, SelectorSPKI, MatchingFull, p.stranger.Leaf)},
			chain: chainOf(t, p.good), want: ResultValidationFailure},
		{name: "wildcard", records: []Record{tlsa(UsageDANETA, SelectorSPKI, MatchingSHA2256, p.inter.Cert)},
			chain: chainOf(t, p.wildcard)},
		{name: "wildcard over two labels", records: []Record{tlsa(UsageDANETA, SelectorSPKI, MatchingSHA2256, p.inter.Cert)},
			chain: chainOf(t, p.wildcard), names: []string{"a.mx.example.net"}, want: ResultHostMismatch},
		{name: "the next-hop domain", records: []Record{tlsa(UsageDANETA, SelectorSPKI, MatchingSHA2256, p.inter.Cert)},
			chain: chainOf(t, p.good), names: []string{"mail.example.net", "mx.example.net"}},
		{name: "names in another case, with a trailing dot", records: []Record{tlsa(UsageDANETA, SelectorSPKI, MatchingSHA2256, p.inter.Cert)},
			chain: chainOf(t, p.good), names: []string{"MX.Example.NET."}},
		// RFC 7672 section 3.2.3: the CN only without DNS-IDs.
		{name: "common name only", records: []Record{tlsa(UsageDANETA, SelectorSPKI, MatchingSHA2256, p.inter.Cert)},
			chain: chainOf(t, p.cnOnly)},
		{name: "common name beside a DNS-ID", records: []Record{tlsa(UsageDANETA, SelectorSPKI, MatchingSHA2256, p.inter.Cert)},
			chain: chainOf(t, p.cnIgnored), want: ResultHostMismatch},
		{name: "wrong name", records: []Record{tlsa(UsageDANETA, SelectorSPKI, MatchingSHA2256, p.inter.Cert)},
			chain: chainOf(t, p.wrongName), want: ResultHostMismatch},
		{name: "no reference identifiers", records: []Record{tlsa(UsageDANETA, SelectorSPKI, MatchingSHA2256, p.inter.Cert)},
			chain: chainOf(t, p.good), names: []string{}, want: ResultHostMismatch},
		{name: "expired leaf", records: []Record{tlsa(UsageDANETA, SelectorSPKI, MatchingSHA2256, p.inter.Cert)},
			chain: chainOf(t, p.expired), want: ResultExpired},
		{name: "leaf not yet valid", records: []Record{tlsa(UsageDANETA, SelectorSPKI, MatchingSHA2256, p.inter.Cert)},
			chain: chainOf(t, p.good), now: now.Add(-48 * time.Hour), want: ResultExpired},
		{name: "expired anchor", records: []Record{tlsa(UsageDANETA, SelectorSPKI, MatchingSHA2256, p.root.Cert)},
			chain: chainOf(t, p.good, p.root.Cert), now: now.Add(48 * time.Hour), want: ResultExpired},
		{name: "expired leaf under a bare key", records: []Record{tlsa(UsageDANETA, SelectorSPKI, MatchingFull, p.inter.Cert)},
			chain: chainOf(t, p.expired)[:1], want: ResultExpired},
		// RFC 7671 section 5.2, as OpenSSL: a TA record does not match the leaf.
		{name: "a TA record of the leaf", records: []Record{tlsa(UsageDANETA, SelectorCert, MatchingSHA2256, p.good.Leaf)},
			chain: chainOf(t, p.good), want: ResultValidationFailure},
		{name: "a TA record of a self-signed leaf", records: []Record{tlsa(UsageDANETA, SelectorCert, MatchingFull, p.selfSigned.Leaf)},
			chain: chainOf(t, p.selfSigned), want: ResultValidationFailure},
		{name: "an anchor the leaf does not chain to", records: []Record{tlsa(UsageDANETA, SelectorSPKI, MatchingSHA2256, p.root.Cert)},
			chain: chainOf(t, p.stranger, p.root.Cert), want: ResultNotTrusted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			names, at := tt.names, tt.now
			if names == nil {
				names = mxNames
			}
			if at.IsZero() {
				at = now
			}
			wantResult(t, Verify(tt.records, tt.chain, names, at), tt.want)
		})
	}
}

func TestNameMatching(t *testing.T) {
	tests := []struct {
		id, name string
		want     bool
	}{
		{"mx.example.com", "mx.example.com", true},
		{"MX.Example.com.", "mx.EXAMPLE.com", true},
		{"*.example.com", "mx.example.com", true},
		{"*.EXAMPLE.com", "Mx.example.com.", true},
		{"*.example.com", "example.com", false},
		{"*.example.com", "a.mx.example.com", false},
		{"*.example.com", ".example.com", false},
		{"smtp*.example.com", "smtp1.example.com", false},
		{"*smtp.example.com", "mxsmtp.example.com", false},
		{"mx.*.example.com", "mx.a.example.com", false},
		{"*.*.example.com", "a.b.example.com", false},
		{"*.com", "example.com", false},
		{"*", "example", false},
		{"", "", false},
		{"mx.example.com", "", false},
		{"mx.example.com", "mx.example.org", false},
	}
	for _, tt := range tests {
		if got := matchName(tt.id, tt.name); got != tt.want {
			t.Errorf("matchName(%q, %q) = %v, want %v", tt.id, tt.name, got, tt.want)
		}
	}
}

func TestUsable(t *testing.T) {
	p := newPKI(t)
	leaf := p.good.Leaf
	short := tlsa(UsageDANEEE, SelectorSPKI, MatchingSHA2256, leaf)
	short.Data = short.Data[:31]
	long := tlsa(UsageDANEEE, SelectorSPKI, MatchingSHA2512, leaf)
	long.Data = append(long.Data, 0)
	swapped := tlsa(UsageDANEEE, SelectorSPKI, MatchingSHA2256, leaf)
	swapped.MatchingType = MatchingSHA2512
	tests := []struct {
		name   string
		record Record
		want   bool
	}{
		{"DANE-EE SPKI SHA2-256", tlsa(UsageDANEEE, SelectorSPKI, MatchingSHA2256, leaf), true},
		{"DANE-EE Cert Full", tlsa(UsageDANEEE, SelectorCert, MatchingFull, leaf), true},
		{"DANE-TA SPKI Full", tlsa(UsageDANETA, SelectorSPKI, MatchingFull, p.inter.Cert), true},
		{"DANE-TA Cert SHA2-512", tlsa(UsageDANETA, SelectorCert, MatchingSHA2512, p.inter.Cert), true},
		{"PKIX-TA", tlsa(UsagePKIXTA, SelectorCert, MatchingSHA2256, p.inter.Cert), false},
		{"PKIX-EE", tlsa(UsagePKIXEE, SelectorSPKI, MatchingSHA2256, leaf), false},
		{"unknown usage", tlsa(4, SelectorSPKI, MatchingSHA2256, leaf), false},
		{"private usage 255", tlsa(255, SelectorSPKI, MatchingSHA2256, leaf), false},
		{"unknown selector", tlsa(UsageDANEEE, 2, MatchingSHA2256, leaf), false},
		{"unknown matching type", tlsa(UsageDANEEE, SelectorSPKI, 3, leaf), false},
		{"SHA2-256 digest one byte short", short, false},
		{"SHA2-512 digest one byte long", long, false},
		{"SHA2-256 digest under SHA2-512", swapped, false},
		{"Full certificate that does not parse", Record{UsageDANEEE, SelectorCert, MatchingFull, []byte("not a certificate")}, false},
		{"Full key that does not parse", Record{UsageDANETA, SelectorSPKI, MatchingFull, leaf.Raw}, false},
		{"empty data", Record{UsageDANEEE, SelectorSPKI, MatchingFull, nil}, false},
	}
	for _, tt := range tests {
		if got := Usable(tt.record); got != tt.want {
			t.Errorf("%s: Usable(%s) = %v, want %v", tt.name, brief(tt.record), got, tt.want)
		}
	}
}

func TestVerifyWithoutUsableRecords(t *testing.T) {
	p := newPKI(t)
	chain := chainOf(t, p.good)
	malformed := tlsa(UsageDANEEE, SelectorSPKI, MatchingSHA2256, p.good.Leaf)
	malformed.Data = malformed.Data[:20]
	for name, records := range map[string][]Record{
		"none": nil,
		// They would match: PKIX usages are not for SMTP (RFC 7672 3.1.3).
		"PKIX-TA and PKIX-EE only": {
			tlsa(UsagePKIXTA, SelectorCert, MatchingSHA2256, p.inter.Cert),
			tlsa(UsagePKIXEE, SelectorSPKI, MatchingSHA2256, p.good.Leaf),
		},
		"a malformed digest": {malformed},
	} {
		t.Run(name, func(t *testing.T) {
			wantResult(t, Verify(records, chain, mxNames, time.Now()), ResultTLSAInvalid)
		})
	}
}

func TestVerifyWithoutCertificates(t *testing.T) {
	p := newPKI(t)
	records := []Record{tlsa(UsageDANEEE, SelectorSPKI, MatchingSHA2256, p.good.Leaf)}
	wantResult(t, Verify(records, nil, mxNames, time.Now()), ResultValidationFailure)
	wantResult(t, Verify(records, []*x509.Certificate{nil}, mxNames, time.Now()), ResultValidationFailure)
}

func TestVerifySeveralRecords(t *testing.T) {
	p := newPKI(t)
	chain := chainOf(t, p.good)
	match := tlsa(UsageDANEEE, SelectorSPKI, MatchingSHA2256, p.good.Leaf)
	other := tlsa(UsageDANEEE, SelectorSPKI, MatchingSHA2256, p.stranger.Leaf)
	pkix := tlsa(UsagePKIXEE, SelectorSPKI, MatchingSHA2256, p.good.Leaf)
	taWrong := tlsa(UsageDANETA, SelectorSPKI, MatchingSHA2256, p.root.Cert)
	taMatch := tlsa(UsageDANETA, SelectorCert, MatchingSHA2256, p.inter.Cert)
	tests := []struct {
		name    string
		records []Record
		chain   []*x509.Certificate
		want    string
	}{
		{"mismatch then match", []Record{other, match}, chain, ""},
		{"match then mismatch", []Record{match, other}, chain, ""},
		{"an unusable record beside a match", []Record{pkix, match}, chain, ""},
		{"an unusable record beside a mismatch", []Record{pkix, other}, chain, ResultValidationFailure},
		{"a TA mismatch beside an EE match", []Record{taWrong, match}, chain, ""},
		{"an EE mismatch beside a TA match", []Record{other, taMatch}, chain, ""},
		// The result is the failure that got furthest.
		{"an EE mismatch beside a TA name mismatch", []Record{other, taMatch}, chainOf(t, p.wrongName), ResultHostMismatch},
		{"an EE mismatch beside an expired TA chain", []Record{taMatch, other}, chainOf(t, p.expired), ResultExpired},
		// RFC 7671 section 9: a stronger digest of the same usage and
		// selector sets the weaker aside; another selector is apart.
		{"SHA2-256 match under a SHA2-512 mismatch", []Record{match, tlsa(UsageDANEEE, SelectorSPKI, MatchingSHA2512, p.stranger.Leaf)}, chain, ResultValidationFailure},
		{"SHA2-256 match beside a SHA2-512 mismatch of the certificate", []Record{match, tlsa(UsageDANEEE, SelectorCert, MatchingSHA2512, p.stranger.Leaf)}, chain, ""},
		{"Full match beside a SHA2-512 mismatch", []Record{tlsa(UsageDANEEE, SelectorSPKI, MatchingFull, p.good.Leaf), tlsa(UsageDANEEE, SelectorSPKI, MatchingSHA2512, p.stranger.Leaf)}, chain, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantResult(t, Verify(tt.records, tt.chain, mxNames, time.Now()), tt.want)
		})
	}
}

// BenchmarkVerify measures one check per handshake: DANE-EE is a digest;
// DANE-TA adds chain building and a signature check; a failing DANE-TA
// check also looks for a time the chain would have been valid at.
func BenchmarkVerify(b *testing.B) {
	p := newPKI(b)
	now := time.Now()
	for _, bb := range []struct {
		name    string
		records []Record
		chain   []*x509.Certificate
	}{
		{"DANE-EE 3 1 1", []Record{tlsa(UsageDANEEE, SelectorSPKI, MatchingSHA2256, p.good.Leaf)}, chainOf(b, p.good)},
		{"DANE-TA 2 0 1", []Record{tlsa(UsageDANETA, SelectorCert, MatchingSHA2256, p.inter.Cert)}, chainOf(b, p.good)},
		{"DANE-TA 2 1 0 bare key", []Record{tlsa(UsageDANETA, SelectorSPKI, MatchingFull, p.root.Cert)}, chainOf(b, p.good)},
		{"DANE-TA 2 0 1 expired", []Record{tlsa(UsageDANETA, SelectorCert, MatchingSHA2256, p.inter.Cert)}, chainOf(b, p.expired)},
	} {
		b.Run(bb.name, func(b *testing.B) {
			for b.Loop() {
				_ = Verify(bb.records, bb.chain, mxNames, now)
			}
		})
	}
}
