// Package dane decides whether the certificate chain an SMTP server presents
// satisfies the server's DANE TLSA records, as SMTP uses them: RFC 7672 on
// top of RFC 6698 and RFC 7671, with the RFC 7218 names. It owns the
// matching only; finding the records (at _25._tcp.<MX host>, with DNSSEC),
// deciding that TLS is mandatory, the SNI name and the deferral belong to
// delivery.
//
// The rules, each where it is implemented:
//
//   - Usable records (Usable, RFC 7672 section 3.1.3): only DANE-TA(2) and
//     DANE-EE(3), selector Cert(0) or SPKI(1), matching type Full(0),
//     SHA2-256(1) or SHA2-512(2); PKIX-TA(0), PKIX-EE(1) and unknown values
//     are unusable (RFC 6698 section 4.1 lets a client ignore what it does
//     not support). So is a record whose data cannot be what its type says: a
//     digest of the wrong length, or Full(0) data that is not a certificate
//     (selector Cert) or a public key (selector SPKI), as OpenSSL's
//     SSL_dane_tlsa_add refuses them. A record set with no usable record is,
//     for delivery, as if there were none (RFC 7672 section 2.2); Verify says
//     "tlsa-invalid" if it is asked anyway.
//   - What a record matches (RFC 6698 section 2.1.2 and 2.1.3): selector
//     Cert(0) is the certificate's DER, SPKI(1) its SubjectPublicKeyInfo DER;
//     matching type Full(0) compares that DER, SHA2-256(1) and SHA2-512(2)
//     its digest.
//   - Digest agility (RFC 7671 section 9): among usable records of one usage
//     and selector, a digest record is used only when no record of that usage
//     and selector has a stronger digest (SHA2-512 over SHA2-256); Full(0)
//     records are always used. OpenSSL, and so Postfix, do the same.
//   - DANE-EE(3) (RFC 7672 section 3.1.1, RFC 7671 section 5.1) matches the
//     leaf certificate, the first the server sent, and nothing else. A match
//     authenticates the server: its names and validity dates are not looked
//     at.
//   - DANE-TA(2) (RFC 7672 section 3.1.2, RFC 7671 section 5.2) matches a
//     trust anchor: a certificate of the chain other than the leaf (as
//     OpenSSL does: a record matching the leaf is DANE-EE's job), the
//     certificate of a "2 0 0" record even when the server omits it, or,
//     for a "2 1 0" record, a bare public key that signed a certificate of
//     the chain (RFC 7671 section 5.2.3). The leaf must then chain up to that
//     anchor through the certificates the server sent (signatures, CA and
//     path length constraints, name constraints), every certificate of that
//     path within its validity dates at the given time, and the leaf must
//     carry one of the reference identifiers.
//   - Reference identifiers (RFC 7672 section 3.2.2) are the names the caller
//     passes: the TLSA base domain, and the MX host name and next-hop domain
//     as RFC 7672 lists them. They apply to DANE-TA only.
//   - Name matching (RFC 7672 section 3.2.3): the leaf's DNS-ID subject
//     alternative names, or, only when it has none, its subject common name;
//     case-insensitive, a trailing dot ignored; a wildcard only as the whole
//     leftmost label ("*.example.com"), standing for exactly one label.
//     "smtp*.example.com" and "*smtp.example.com" match nothing.
//   - Several records (RFC 6698 section 4.1): the chain is authenticated when
//     any usable record matches.
//
// A failure is an *Error whose Result is the RFC 8460 section 4.3 result type
// TLS-RPT reports: "tlsa-invalid" (no usable record), "validation-failure"
// (no record matched the chain, or there was no chain),
// "certificate-not-trusted" (a DANE-TA anchor matched but the leaf does not
// chain up to it), "certificate-expired" (the path to the anchor holds a
// certificate outside its validity dates) and "certificate-host-mismatch"
// (the path is sound but the leaf carries none of the names). When records
// fail for different reasons, the one that got furthest is reported, in the
// order of that list.
//
// Chain building is crypto/x509's (Certificate.Verify with the anchor as the
// only root), so its limits apply: signatures with SHA-1 or MD5 are refused,
// as everywhere else in Go.
package dane
