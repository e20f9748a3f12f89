package dane

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/miekg/dns"
)

// Certificate usages (RFC 6698 section 2.1.1), with their RFC 7218 names.
const (
	UsagePKIXTA uint8 = 0 // PKIX-TA: unusable for SMTP (RFC 7672 section 3.1.3)
	UsagePKIXEE uint8 = 1 // PKIX-EE: unusable for SMTP (RFC 7672 section 3.1.3)
	UsageDANETA uint8 = 2 // DANE-TA: a trust anchor of the chain, names checked
	UsageDANEEE uint8 = 3 // DANE-EE: the server's own certificate or key
)

// Selectors (RFC 6698 section 2.1.2), with their RFC 7218 names.
const (
	SelectorCert uint8 = 0 // Cert: the whole certificate, DER
	SelectorSPKI uint8 = 1 // SPKI: the SubjectPublicKeyInfo, DER
)

// Matching types (RFC 6698 section 2.1.3), with their RFC 7218 names.
const (
	MatchingFull    uint8 = 0 // Full: the selected DER itself
	MatchingSHA2256 uint8 = 1 // SHA2-256: its SHA-256 digest
	MatchingSHA2512 uint8 = 2 // SHA2-512: its SHA-512 digest
)

// Record is one TLSA record (RFC 6698 section 2.1).
type Record struct {
	Usage, Selector, MatchingType uint8
	// Data is the certificate association data: the selected DER or its
	// digest, as the matching type says.
	Data []byte
}

// String renders r as in a zone file (RFC 6698 section 2.2), "3 1 1 <hex>",
// for logs and the policy-string of a TLS-RPT report (RFC 8460 section 4.4,
// whose example writes the hex in upper case, as dig does).
func (r Record) String() string {
	return fmt.Sprintf("%d %d %d %s", r.Usage, r.Selector, r.MatchingType, strings.ToUpper(hex.EncodeToString(r.Data)))
}

// Usable reports whether SMTP DANE can use r: usage DANE-TA(2) or DANE-EE(3)
// (RFC 7672 section 3.1.3: PKIX-TA(0) and PKIX-EE(1) are unusable, as are
// values RFC 6698 does not define), selector Cert(0) or SPKI(1), matching
// type Full(0), SHA2-256(1) or SHA2-512(2), and data that can be what the
// matching type says (the digest's length; for Full, a certificate or a
// public key that parses), since a record that cannot match anything is one
// the client does not support (RFC 6698 section 4.1).
func Usable(r Record) bool {
	if r.Usage != UsageDANETA && r.Usage != UsageDANEEE {
		return false
	}
	if r.Selector != SelectorCert && r.Selector != SelectorSPKI {
		return false
	}
	switch r.MatchingType {
	case MatchingSHA2256:
		return len(r.Data) == sha256.Size
	case MatchingSHA2512:
		return len(r.Data) == sha512.Size
	case MatchingFull:
		return parseFull(r) == nil
	}
	return false
}

// parseFull checks the data of a Full(0) record: a certificate for selector
// Cert, a public key for selector SPKI.
func parseFull(r Record) error {
	if r.Selector == SelectorCert {
		_, err := x509.ParseCertificate(r.Data)
		return err
	}
	_, err := x509.ParsePKIXPublicKey(r.Data)
	return err
}

// FromDNS converts TLSA resource records as miekg/dns decodes them. A record
// whose data is not hexadecimal (only possible in one built by hand: the wire
// format is bytes) keeps empty data, which no rule finds usable. Nil records
// are skipped.
func FromDNS(rrs []*dns.TLSA) []Record {
	records := make([]Record, 0, len(rrs))
	for _, rr := range rrs {
		if rr == nil {
			continue
		}
		data, err := hex.DecodeString(rr.Certificate)
		if err != nil {
			data = nil
		}
		records = append(records, Record{Usage: rr.Usage, Selector: rr.Selector, MatchingType: rr.MatchingType, Data: data})
	}
	return records
}

// selected is the DER a selector picks out of cert (RFC 6698 section 2.1.2).
func selected(cert *x509.Certificate, selector uint8) []byte {
	if selector == SelectorSPKI {
		return cert.RawSubjectPublicKeyInfo
	}
	return cert.Raw
}

// associate computes what a record of the given selector and matching type
// holds for cert (RFC 6698 section 2.1.3).
func associate(cert *x509.Certificate, selector, matching uint8) []byte {
	der := selected(cert, selector)
	switch matching {
	case MatchingSHA2256:
		sum := sha256.Sum256(der)
		return sum[:]
	case MatchingSHA2512:
		sum := sha512.Sum512(der)
		return sum[:]
	}
	return der
}
