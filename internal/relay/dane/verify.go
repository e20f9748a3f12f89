package dane

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The RFC 8460 section 4.3 result types an *Error carries.
const (
	// ResultTLSAInvalid: no record of the set is usable (RFC 8460 section
	// 4.3.2.1: "None of the records in the RRset were found to be valid").
	ResultTLSAInvalid = "tlsa-invalid"
	// ResultValidationFailure: no usable record matched the chain, or the
	// server sent no certificate (RFC 8460 section 4.3.1's general failure).
	ResultValidationFailure = "validation-failure"
	// ResultNotTrusted: a DANE-TA record matched a trust anchor, but the
	// leaf does not chain up to it.
	ResultNotTrusted = "certificate-not-trusted"
	// ResultExpired: the chain up to a DANE-TA anchor holds a certificate
	// outside its validity dates.
	ResultExpired = "certificate-expired"
	// ResultHostMismatch: the chain up to a DANE-TA anchor is sound, but the
	// leaf carries none of the reference identifiers.
	ResultHostMismatch = "certificate-host-mismatch"
)

// rank orders the results by how far a record got: when records fail for
// different reasons, Verify reports the furthest.
var rank = map[string]int{
	ResultTLSAInvalid:       0,
	ResultValidationFailure: 1,
	ResultNotTrusted:        2,
	ResultExpired:           3,
	ResultHostMismatch:      4,
}

// Error says why no record matched.
type Error struct {
	// Result is the RFC 8460 section 4.3 result type for TLS-RPT: one of the
	// Result constants.
	Result string
	// Reason is a sentence for logs and the text of the 4.7.5 deferral.
	Reason string
}

// Error returns the reason.
func (e *Error) Error() string { return e.Reason }

// further returns whichever of a and b got further (a on a tie).
func further(a, b *Error) *Error {
	if b != nil && (a == nil || rank[b.Result] > rank[a.Result]) {
		return b
	}
	return a
}

// Verify checks chain (as the server sent it, leaf first) against the usable
// records among records. names are the reference identifiers for DANE-TA
// (RFC 7672 section 3.2.2); DANE-EE ignores names and validity dates (RFC
// 7672 section 3.1.1); now is the time DANE-TA's chain must be valid at. It
// returns nil when a record matches, else an *Error.
func Verify(records []Record, chain []*x509.Certificate, names []string, now time.Time) error {
	usable := usableRecords(records)
	if len(usable) == 0 {
		which := fmt.Sprintf("none of the %d TLSA records is", len(records))
		switch len(records) {
		case 0:
			which = "there is no TLSA record"
		case 1:
			which = "the TLSA record is not"
		}
		return &Error{Result: ResultTLSAInvalid, Reason: which +
			" usable for SMTP (RFC 7672 section 3.1.3: DANE-TA(2) or DANE-EE(3), a known selector and matching type, well-formed data)"}
	}
	if len(chain) == 0 || chain[0] == nil {
		return &Error{Result: ResultValidationFailure, Reason: "the server sent no certificate to match its TLSA records against"}
	}
	leaf := chain[0]
	var anchored []Record
	for _, r := range usable {
		if r.Usage == UsageDANEEE {
			// RFC 7672 section 3.1.1: the leaf alone, names and dates ignored.
			if bytes.Equal(associate(leaf, r.Selector, r.MatchingType), r.Data) {
				return nil
			}
			continue
		}
		anchored = append(anchored, r)
	}
	which := fmt.Sprintf("any of its %d usable TLSA records", len(usable))
	if len(usable) == 1 {
		which = "its usable TLSA record"
	}
	failure := &Error{Result: ResultValidationFailure, Reason: fmt.Sprintf(
		"the server's certificate chain does not match %s (its key is %s)",
		which, (Record{Usage: UsageDANEEE, Selector: SelectorSPKI, MatchingType: MatchingSHA2256,
			Data: associate(leaf, SelectorSPKI, MatchingSHA2256)}).String())}
	if len(anchored) == 0 {
		return failure
	}
	issuers := issuersOf(chain)
	pool := x509.NewCertPool()
	for _, c := range issuers {
		pool.AddCert(c)
	}
	for _, a := range trustAnchors(anchored, leaf, chain, issuers) {
		err := a.authenticate(leaf, pool, issuers, names, now)
		if err == nil {
			return nil
		}
		failure = further(failure, err)
	}
	return failure
}

// VerifyConnection returns a function for tls.Config.VerifyConnection, used
// with InsecureSkipVerify so that crypto/tls applies no PKIX check of its
// own, that calls Verify with the certificates the server sent and the time
// now returns (time.Now when now is nil).
func VerifyConnection(records []Record, names []string, now func() time.Time) func(tls.ConnectionState) error {
	records, names = slices.Clone(records), slices.Clone(names)
	if now == nil {
		now = time.Now
	}
	return func(cs tls.ConnectionState) error {
		return Verify(records, cs.PeerCertificates, names, now())
	}
}

// usableRecords returns the usable records among records less those digest
// agility sets aside (RFC 7671 section 9): for each usage and selector, the
// digest records of the strongest matching type present (SHA2-512 over
// SHA2-256), and every Full(0) record.
func usableRecords(records []Record) []Record {
	type kind struct{ usage, selector uint8 }
	strongest := map[kind]uint8{}
	var usable []Record
	for _, r := range records {
		if !Usable(r) {
			continue
		}
		usable = append(usable, r)
		k := kind{r.Usage, r.Selector}
		if r.MatchingType != MatchingFull && r.MatchingType > strongest[k] {
			strongest[k] = r.MatchingType
		}
	}
	return slices.DeleteFunc(usable, func(r Record) bool {
		return r.MatchingType != MatchingFull && r.MatchingType != strongest[kind{r.Usage, r.Selector}]
	})
}

// issuersOf returns the certificates the server sent after the leaf, less
// copies of the leaf: the candidates for DANE-TA anchors and intermediates.
func issuersOf(chain []*x509.Certificate) []*x509.Certificate {
	var issuers []*x509.Certificate
	for _, c := range chain[1:] {
		if c != nil && !bytes.Equal(c.Raw, chain[0].Raw) {
			issuers = append(issuers, c)
		}
	}
	return issuers
}

// anchor is a trust anchor a DANE-TA record designates.
type anchor struct {
	record Record
	// cert is the anchor's certificate, or, for a bare public key (RFC 7671
	// section 5.2.3), the certificate of the chain that key signed: the top
	// of the path, whose own issuer only the key stands for.
	cert *x509.Certificate
	// bareKey says cert is the certificate the record's key signed.
	bareKey bool
}

// trustAnchors returns the anchors DANE-TA records designate, each
// certificate once:
//   - a certificate the server sent, other than the leaf, that a record
//     matches (RFC 7671 section 5.2; the leaf is DANE-EE's, as in OpenSSL);
//   - the certificate of a "2 0 0" record, which the server may omit (RFC
//     7671 section 5.2.2);
//   - for a "2 1 0" record, a certificate the server sent, the leaf
//     included, that the record's public key signed (RFC 7671 section
//     5.2.3).
func trustAnchors(records []Record, leaf *x509.Certificate, chain, issuers []*x509.Certificate) []anchor {
	var anchors []anchor
	add := func(r Record, c *x509.Certificate, bareKey bool) {
		if !slices.ContainsFunc(anchors, func(a anchor) bool { return bytes.Equal(a.cert.Raw, c.Raw) }) {
			anchors = append(anchors, anchor{record: r, cert: c, bareKey: bareKey})
		}
	}
	for _, r := range records {
		for _, c := range issuers {
			if bytes.Equal(associate(c, r.Selector, r.MatchingType), r.Data) {
				add(r, c, false)
			}
		}
		if r.MatchingType != MatchingFull {
			continue
		}
		switch r.Selector {
		case SelectorCert:
			if c, err := x509.ParseCertificate(r.Data); err == nil && !bytes.Equal(c.Raw, leaf.Raw) {
				add(r, c, false)
			}
		case SelectorSPKI:
			key, err := x509.ParsePKIXPublicKey(r.Data)
			if err != nil {
				continue
			}
			signer := &x509.Certificate{PublicKey: key}
			for _, c := range chain {
				if c != nil && signer.CheckSignature(c.SignatureAlgorithm, c.RawTBSCertificate, c.Signature) == nil {
					add(r, c, true)
				}
			}
		}
	}
	return anchors
}

// authenticate checks that leaf chains up to a through the certificates the
// server sent, every certificate of the path valid at now, and that leaf
// carries one of names (RFC 7672 sections 3.1.2 and 3.2).
func (a anchor) authenticate(leaf *x509.Certificate, pool *x509.CertPool, issuers []*x509.Certificate, names []string, now time.Time) *Error {
	if err := a.chain(leaf, pool, now); err != nil {
		result := ResultNotTrusted
		if a.validSometime(leaf, pool, issuers) {
			result = ResultExpired
		}
		what := fmt.Sprintf("TLSA record %s designates %s as trust anchor", brief(a.record), subject(a.cert))
		if a.bareKey {
			what = fmt.Sprintf("the key of TLSA record %s signed %s", brief(a.record), subject(a.cert))
		}
		return &Error{Result: result, Reason: fmt.Sprintf("%s, but the server's certificate does not chain up to it at %s: %v",
			what, now.UTC().Format(time.RFC3339), err)}
	}
	if !matchesAny(leaf, names) {
		ids := strings.Join(presented(leaf), ", ")
		if len(names) == 0 {
			return &Error{Result: ResultHostMismatch, Reason: fmt.Sprintf(
				"the server's certificate chains up to the trust anchor of TLSA record %s, but no name was given to check its names (%s) against",
				brief(a.record), ids)}
		}
		return &Error{Result: ResultHostMismatch, Reason: fmt.Sprintf(
			"the server's certificate chains up to the trust anchor of TLSA record %s, but its names (%s) include none of %s",
			brief(a.record), ids, strings.Join(names, ", "))}
	}
	return nil
}

// chain verifies the path from leaf to the anchor at t. A leaf that is
// itself the anchor (signed by a "2 1 0" key) only needs to be within its
// dates; otherwise crypto/x509 builds the path with the anchor as the only
// root, so signatures, CA flags, path lengths and name constraints are its.
// Extended key usages are not checked: RFC 7672 asks for none, and private
// CAs, the reason for DANE-TA, rarely set them with care.
func (a anchor) chain(leaf *x509.Certificate, pool *x509.CertPool, t time.Time) error {
	if bytes.Equal(a.cert.Raw, leaf.Raw) {
		if t.Before(leaf.NotBefore) || t.After(leaf.NotAfter) {
			return x509.CertificateInvalidError{Cert: leaf, Reason: x509.Expired,
				Detail: fmt.Sprintf("valid from %s to %s", leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))}
		}
		return nil
	}
	roots := x509.NewCertPool()
	roots.AddCert(a.cert)
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: pool,
		CurrentTime:   t,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	return err
}

// validSometime reports whether the path to a verifies at some time, which
// makes a failure at the given time a matter of dates. A path is valid from
// the latest NotBefore of its certificates, so trying each certificate's
// NotBefore finds such a time when there is one.
func (a anchor) validSometime(leaf *x509.Certificate, pool *x509.CertPool, issuers []*x509.Certificate) bool {
	for _, c := range append([]*x509.Certificate{leaf, a.cert}, issuers...) {
		if a.chain(leaf, pool, c.NotBefore) == nil {
			return true
		}
	}
	return false
}

// presented returns the identifiers of leaf that name checks use (RFC 7672
// section 3.2.3): its DNS-ID subject alternative names, or, only when there
// are none, its subject common name.
func presented(leaf *x509.Certificate) []string {
	if len(leaf.DNSNames) > 0 {
		return leaf.DNSNames
	}
	if leaf.Subject.CommonName != "" {
		return []string{leaf.Subject.CommonName}
	}
	return nil
}

// matchesAny reports whether one of leaf's identifiers matches one of the
// reference identifiers.
func matchesAny(leaf *x509.Certificate, names []string) bool {
	for _, id := range presented(leaf) {
		for _, name := range names {
			if matchName(id, name) {
				return true
			}
		}
	}
	return false
}

// matchName matches a presented identifier against a reference identifier
// (RFC 7672 section 3.2.3): case-insensitively, a trailing dot ignored, and a
// wildcard only as the whole leftmost label, standing for exactly one label
// of the reference identifier ("*.example.com" matches "mx.example.com", not
// "example.com" nor "a.mx.example.com"). Partial wildcards ("smtp*.example.com",
// "*smtp.example.com") match nothing, and neither does a wildcard over a
// single label ("*.com"), as in OpenSSL.
func matchName(id, name string) bool {
	id, name = canonical(id), canonical(name)
	if id == "" || name == "" {
		return false
	}
	if suffix, ok := strings.CutPrefix(id, "*."); ok {
		if strings.Contains(suffix, "*") || !strings.Contains(suffix, ".") {
			return false
		}
		label, rest, ok := strings.Cut(name, ".")
		return ok && label != "" && rest == suffix
	}
	return !strings.Contains(id, "*") && id == name
}

// canonical lowers a DNS name and drops its trailing dot.
func canonical(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

// subject names a certificate in a reason.
func subject(c *x509.Certificate) string {
	if s := c.Subject.String(); s != "" {
		return fmt.Sprintf("%q", s)
	}
	return "a certificate without a subject"
}

// brief renders r for a reason, its data cut short: a Full(0) record holds a
// whole certificate, too long for an SMTP reply.
func brief(r Record) string {
	const keep = 16
	s := r.String()
	if prefix := len(fmt.Sprintf("%d %d %d ", r.Usage, r.Selector, r.MatchingType)); len(s) > prefix+keep {
		return s[:prefix+keep] + "..."
	}
	return s
}
