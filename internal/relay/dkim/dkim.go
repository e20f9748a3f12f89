// Package dkim signs messages with DKIM (RFC 6376) for the relay: RSA-SHA256
// and Ed25519-SHA256 (RFC 8463), relaxed/relaxed canonicalization, and the
// list of header fields a relay acting as a submission agent signs. The
// cryptography and canonicalization are github.com/emersion/go-msgauth's;
// this package chooses the options and makes the signer accept every message
// the relay accepts (one without a header/body separator included).
//
// A Signer hashes a message as it streams through, so the caller can stage
// the bytes elsewhere and put the signature in front of them afterwards
// (package internal/relay/message does).
package dkim

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"strings"

	msgauth "github.com/emersion/go-msgauth/dkim"
)

// FieldName is the name of the header field a Signer produces.
const FieldName = "DKIM-Signature"

// minRSABits is the smallest RSA key a verifier must accept (RFC 8301
// section 3.2); the API only generates and accepts 2048-bit keys.
const minRSABits = 1024

// maxInstances bounds how many instances of one field name are signed, so a
// message with thousands of To fields cannot make the signature's h= tag
// (and the header the relay prepends) unbounded. DKIM picks instances from
// the bottom up (RFC 6376 section 5.4.2), so the lowest ones are signed.
const maxInstances = 4

// signedFields are the header fields signed when present (RFC 6376 section
// 5.4.1): those that carry what a reader sees and trusts (originator,
// recipients, subject, date, identity and threading), the MIME fields that
// decide how the body is read, the one-click unsubscribe pair (RFC 8058
// section 4 requires both to be signed), and the two fields that say whose
// TLS report a message is (RFC 8460 section 5.3; a receiver trusts a
// report by its signature). Received and other trace fields
// are not: relays add them on the way. From is also oversigned (listed once
// more than it appears), so a second From cannot be added without breaking
// the signature (RFC 6376 section 8.15).
var signedFields = []string{
	"From", "Reply-To", "Subject", "Date", "Message-ID", "To", "Cc",
	"In-Reply-To", "References", "MIME-Version", "Content-Type",
	"Content-Transfer-Encoding", "List-Unsubscribe", "List-Unsubscribe-Post",
	"TLS-Report-Domain", "TLS-Report-Submitter",
}

// Key is one domain's signing key.
type Key struct {
	// Domain is the SDID (d=), the domain whose DNS publishes the key.
	Domain string
	// Selector (s=) names the key under Domain: the TXT record is at
	// <selector>._domainkey.<domain>.
	Selector string
	// Signer is an *rsa.PrivateKey (at least 1024 bits; rsa-sha256) or an
	// ed25519.PrivateKey (ed25519-sha256, RFC 8463). Any crypto.Signer whose
	// Public() is one of those works (a key in an HSM, say).
	Signer crypto.Signer
}

// Algorithm returns the a= tag value the key signs with.
func (k Key) Algorithm() (string, error) {
	if k.Signer == nil {
		return "", errors.New("no signing key")
	}
	switch pub := k.Signer.Public().(type) {
	case *rsa.PublicKey:
		if bits := pub.N.BitLen(); bits < minRSABits {
			return "", fmt.Errorf("RSA key of %d bits, fewer than %d (RFC 8301)", bits, minRSABits)
		}
		return "rsa-sha256", nil
	case ed25519.PublicKey:
		return "ed25519-sha256", nil
	default:
		return "", fmt.Errorf("unsupported key type %T", pub)
	}
}

// SignedFields returns the h= list for a header that holds the given field
// names (in any order; repeats count): each signed field name once per
// instance present (at most maxInstances), and From once more than present.
// Names absent from the header are not listed (apart from From), so a
// mailing list may add its own List-* or Cc fields and still pass on a valid
// signature of what the author wrote.
func SignedFields(present []string) []string {
	counts := make(map[string]int, len(signedFields))
	for _, name := range present {
		for _, f := range signedFields {
			if strings.EqualFold(name, f) {
				counts[f]++
				break
			}
		}
	}
	var h []string
	for _, f := range signedFields {
		n := min(counts[f], maxInstances)
		if f == "From" {
			n++ // oversigned
		}
		for range n {
			h = append(h, f)
		}
	}
	return h
}

// Signer computes the DKIM-Signature of the message written to it: the
// whole message, header and body, exactly as it will be sent. Close ends the
// message; Signature then returns the header field to prepend.
type Signer struct {
	s   *msgauth.Signer
	sep separator
	err error
}

// NewSigner starts a signature over the fields named in h (see
// SignedFields; it must name From).
func NewSigner(key Key, h []string) (*Signer, error) {
	if _, err := key.Algorithm(); err != nil {
		return nil, err
	}
	if key.Domain == "" || key.Selector == "" {
		return nil, errors.New("dkim: a domain and a selector are required")
	}
	s, err := msgauth.NewSigner(&msgauth.SignOptions{
		Domain:                 key.Domain,
		Selector:               key.Selector,
		Signer:                 key.Signer,
		Hash:                   crypto.SHA256,
		HeaderCanonicalization: msgauth.CanonicalizationRelaxed,
		BodyCanonicalization:   msgauth.CanonicalizationRelaxed,
		HeaderKeys:             h,
	})
	if err != nil {
		return nil, err
	}
	return &Signer{s: s}, nil
}

// Write hashes message bytes.
func (s *Signer) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	s.sep.scan(p)
	n, err := s.s.Write(p)
	if err != nil {
		s.err = fmt.Errorf("dkim: %w", err)
	}
	return n, s.err
}

// Close ends the message and computes the signature. A message that has no
// empty line is all header and no body (RFC 5322 section 2.1): go-msgauth
// wants the separator, so Close hashes one as a verifier sees the message
// (an empty body canonicalizes to nothing, RFC 6376 section 3.4.4).
func (s *Signer) Close() error {
	if s.err == nil && !s.sep.found {
		tail := "\r\n"
		if s.sep.line > 0 { // the last line has no line end
			tail = "\r\n\r\n"
		}
		if _, err := s.s.Write([]byte(tail)); err != nil {
			s.err = fmt.Errorf("dkim: %w", err)
		}
	}
	if err := s.s.Close(); err != nil && s.err == nil {
		s.err = fmt.Errorf("dkim: %w", err)
	}
	return s.err
}

// Signature returns the DKIM-Signature header field, folded, with its final
// CRLF. It is valid only after Close returned nil.
func (s *Signer) Signature() string {
	if s.err != nil {
		return ""
	}
	return s.s.Signature()
}

// separator finds the end of the header: the first empty line, with a CRLF
// or a bare LF line end as go-msgauth (net/textproto) reads lines.
type separator struct {
	found bool
	line  int  // bytes in the current line so far, line end excluded
	cr    bool // the current line's last byte is CR
}

func (t *separator) scan(p []byte) {
	for _, b := range p {
		if t.found {
			return
		}
		if b == '\n' {
			if t.line == 0 || (t.line == 1 && t.cr) {
				t.found = true
			}
			t.line, t.cr = 0, false
			continue
		}
		t.line++
		t.cr = b == '\r'
	}
}
