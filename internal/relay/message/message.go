// Package message prepares an accepted message for the queue: it prepends
// the relay's Received field (RFC 5321 section 4.4), adds Message-ID and
// Date when the client gave none (RFC 5322 section 3.6, RFC 6409 section
// 8.2 and 8.3: the relay is the submission agent of trusted clients), and
// DKIM-signs at accept time (docs/design.md contract 5), so the queued
// message carries its signature: with the key of the domain the caller
// names, or chooses once the From field is read (Params.Signing: the
// sender's SenderDomain, or the From field's for DMARC alignment).
//
// The client's bytes are never changed, only prepended to, but for one
// field meant for the relay alone: X-Postgate-Tag (TagField), which labels
// the message's delivery notifications and is removed before signing. A
// signature an upstream signer made stays valid unless it covered that
// field. What is prepended, top to bottom:
//
//	DKIM-Signature   only when signing
//	Received         always
//	Message-ID       only when the client's header has none
//	Date             only when the client's header has none
//	<the client's message, byte for byte>
//
// The DKIM-Signature goes on top, above the Received field: RFC 6376
// section 5.6 asks signers to put it before any other DKIM-Signature and
// notes that prepending it treats it as a trace field, in the order fields
// were added (the relay receives, then signs). The Received field is not
// signed (relays after us add theirs above it anyway); the added Message-ID
// and Date are.
//
// An unsigned message streams: only its header block is read up front (at
// most MaxHeaderBytes). A signed message is staged while the signer hashes
// it, since the signature must precede the body: up to Params.MaxMemory in
// memory, the rest in an unlinked temporary file in Params.StageDir.
package message

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/dkim"
	"github.com/postgate/postgate/internal/relay/rfc5322"
	"github.com/postgate/postgate/internal/routing"
)

// MaxHeaderBytes bounds the client's header block (everything up to the
// first empty line, or the whole message when it has none). Prepare reads it
// into memory before anything else; a longer one is refused with
// ErrHeaderTooLarge, as Exim refuses a header over its header_maxsize (1M).
const MaxHeaderBytes = 1 << 20

// MaxPrepended bounds what Prepare adds in front of the client's message.
// The queue's body limit must leave this much room above the message size
// the SMTP server accepts.
const MaxPrepended = 8 << 10

// DefaultMaxMemory is how much of a message being signed is staged in
// memory when Params.MaxMemory is 0.
const DefaultMaxMemory = 1 << 20

// Errors about the client's header. Prepare wraps them; the SMTP server
// maps them to replies with errors.Is.
var (
	// ErrHeaderTooLarge: the header block is over MaxHeaderBytes
	// (552 5.3.4).
	ErrHeaderTooLarge = errors.New("message header too large")
	// ErrMalformed: the message begins with a folded continuation line,
	// which a prepended field would absorb (550 5.6.0).
	ErrMalformed = errors.New("malformed message header")
	// ErrLoop: the message has MaxReceived Received fields or more; it
	// is going round in a loop (554 5.4.6).
	ErrLoop = errors.New("mail loop")
)

// MaxReceived is how many Received fields a message may carry when it
// arrives: with it, the relay's own would be one more than RFC 5321 section
// 6.3 asks a server to tolerate before it calls the message a loop
// ("normally at least 100"). A RelayRoute whose smart host sends the mail
// back (or two relays routing to each other) would otherwise pass it
// round until its size limit, adding a field at every pass.
const MaxReceived = 100

// Params describe the SMTP transaction that delivered the message.
type Params struct {
	// Hostname is the relay's name: the "by" of the Received field and
	// the right-hand side of an added Message-ID. Required.
	Hostname string
	// Helo is the name the client gave in EHLO or HELO.
	Helo string
	// Client is the client's address (after the PROXY protocol).
	Client netip.AddrPort
	// ClientName is the client's verified reverse DNS name, "" when
	// unknown; the relay does not look it up today.
	ClientName string
	// TLS is the client connection's TLS state; nil without TLS.
	TLS *tls.ConnectionState
	// Identity is the SMTP AUTH identity, "" when none. The Received field
	// says that the client authenticated (ESMTPA, RFC 3848) but not as
	// whom: Postfix's default (smtpd_sasl_authenticated_header = no), so
	// a recipient on the internet never learns an account name to attack.
	// The queue keeps the identity in the envelope for the operator.
	Identity string
	// Recipients are the RCPT TO addresses; with exactly one, the Received
	// field names it ("for"), with more it names none (RFC 5321 section
	// 7.6: do not disclose the other recipients).
	Recipients []string
	// ID is the queue ID when already known, "" otherwise.
	ID string
	// Now is the time of acceptance (the Received and added Date fields);
	// the zero Time means time.Now(). go-msgauth stamps the signature's t=
	// tag with its own clock.
	Now time.Time
	// SenderDomain is the domain of the envelope sender, the d= of the
	// signature. Required with DKIM.
	SenderDomain string
	// DKIM is the sender domain's key in the current routing table; nil
	// when the domain does not sign.
	DKIM *routing.DKIM
	// Signing, when set, decides who signs the message once its header is
	// read (who it is from, for the null sender; which domain aligns for
	// DMARC, for any sender): it is called with what the From field says,
	// and returns the domain that signs and its key, which replace
	// SenderDomain and DKIM (a nil key leaves the message unsigned), or an
	// error, which Prepare returns as it is.
	Signing func(Author) (domain string, key *routing.DKIM, err error)
	// StageDir holds the temporary file of a signed message larger than
	// MaxMemory: the spool's staging directory (not the queue's directory
	// itself). The file is unlinked as soon as it is created, so a crash
	// leaves nothing behind. Required with DKIM.
	StageDir string
	// MaxMemory is how much of a signed message is staged in memory before
	// StageDir is used; 0 means DefaultMaxMemory.
	MaxMemory int64
}

// Author is what the client's From field says of who wrote the message
// (RFC 5322 section 3.6.2), for deciding who signs it.
type Author struct {
	// Mailbox is the address of the From field when the header has
	// exactly one From field holding exactly one mailbox that parses,
	// "" otherwise.
	Mailbox string
	// Domain is the domain of every mailbox of the header's one From
	// field, as written; "" when it has none or several From fields, a
	// mailbox that does not parse, or mailboxes of different domains (a
	// DMARC verifier checks each of them, RFC 7489 section 6.6.1, and one
	// signature aligns with one domain only).
	Domain string
}

// Prepared is the message as it goes into the queue: the prepended fields,
// then the client's bytes. Read it to the end, then Close it.
type Prepared struct {
	r     io.Reader
	stage *stage
	// Signed reports whether a DKIM-Signature was prepended.
	Signed bool
	// SignedBy is the signature's domain (d=), "" when unsigned.
	SignedBy string
	// MessageID is the Message-ID field's value: the one added, or the
	// client's when it is printable ASCII ("" otherwise), for logs.
	MessageID string
	// HeaderFrom is the address in the client's From field (RFC 5322
	// section 3.6.2), "" when there is none or it is not printable ASCII.
	HeaderFrom string
	// TLSOptional: the message carries "TLS-Required: No" (RFC 8689
	// section 5): its author asks that the recipient domains' TLS
	// policies (DANE, MTA-STS) not stop its delivery
	// (queue.Envelope.TLSOptional).
	TLSOptional bool
	// Tag is the value of the client's TagField, which is not in the
	// prepared message; "" when it had none.
	Tag string
	// Prepended is the number of bytes in front of the client's message.
	Prepended int
}

// Read reads the prepared message. An error reading the client's message
// is returned wrapped (errors.Is and errors.As see it).
func (p *Prepared) Read(b []byte) (int, error) { return p.r.Read(b) }

// Close releases the staging file, if any. It does not close the input.
func (p *Prepared) Close() error {
	if p.stage == nil {
		return nil
	}
	err := p.stage.close()
	p.stage = nil
	return err
}

// Prepare reads the client's header block from in, then returns the message
// to queue. Unsigned, the rest of in is read as the result is read; signed,
// Prepare reads all of in first. Errors reading in are returned wrapped with
// %w, from Prepare or from Prepared.Read.
func Prepare(ctx context.Context, in io.Reader, p Params) (*Prepared, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	now := p.Now
	if now.IsZero() {
		now = time.Now()
	}
	// A small buffer: it holds the header while it is parsed (readHeader
	// takes a longer line in pieces), and the body's reads, which the
	// queue makes 32 KB at a time, pass it by. Each message had 64 KB of
	// its own, most of the accept path's garbage at 1 KB messages.
	br := bufio.NewReaderSize(source{ctx: ctx, r: in}, 4<<10)
	hdr, complete, err := readHeader(br)
	if err != nil {
		return nil, err
	}
	hdr, tag, err := stripTag(hdr)
	if err != nil {
		return nil, err
	}
	h, err := parseHeader(hdr, complete)
	if err != nil {
		return nil, err
	}
	if h.received >= MaxReceived {
		return nil, fmt.Errorf("%w: %d Received fields, at most %d", ErrLoop, h.received, MaxReceived-1)
	}
	if p.Signing != nil {
		if p.SenderDomain, p.DKIM, err = p.Signing(h.author); err != nil {
			return nil, err
		}
		if err := p.check(); err != nil {
			return nil, err
		}
	}

	var added bytes.Buffer
	out := &Prepared{MessageID: h.messageID, HeaderFrom: h.from, Tag: tag, TLSOptional: h.tlsRequiredNo}
	if !h.hasMessageID {
		out.MessageID = rfc5322.NewMessageID(p.Hostname)
		fmt.Fprintf(&added, "Message-ID: %s\r\n", out.MessageID)
		h.names = append(h.names, "Message-ID")
	}
	if !h.hasDate {
		fmt.Fprintf(&added, "Date: %s\r\n", now.Format(rfc5322.DateLayout))
		h.names = append(h.names, "Date")
	}
	received := receivedField(p, now)

	if p.DKIM == nil {
		prefix := received + added.String()
		out.Prepended = len(prefix)
		out.r = io.MultiReader(strings.NewReader(prefix), bytes.NewReader(hdr), br)
		return out, nil
	}

	key := dkim.Key{Domain: strings.TrimSuffix(p.SenderDomain, "."), Selector: p.DKIM.Selector, Signer: p.DKIM.Signer}
	signer, err := dkim.NewSigner(key, dkim.SignedFields(h.names))
	if err != nil {
		return nil, fmt.Errorf("DKIM key of %s: %w", p.SenderDomain, err)
	}
	st := &stage{dir: p.StageDir, max: p.MaxMemory}
	if st.max <= 0 {
		st.max = DefaultMaxMemory
	}
	body, err := signAndStage(signer, st, added.Bytes(), hdr, br)
	if err != nil {
		_ = st.close()
		return nil, err
	}
	prefix := signer.Signature() + received + added.String()
	out.r = io.MultiReader(strings.NewReader(prefix), bytes.NewReader(hdr), body)
	out.stage, out.Signed, out.SignedBy, out.Prepended = st, true, key.Domain, len(prefix)
	return out, nil
}

// check validates what goes into the prepended fields and the signing
// configuration.
func (p *Params) check() error {
	if p.Hostname == "" || sanitize(p.Hostname, 255) != p.Hostname {
		return fmt.Errorf("hostname %q is not a host name", p.Hostname)
	}
	if p.DKIM == nil {
		return nil
	}
	if p.SenderDomain == "" {
		return errors.New("DKIM signing needs the sender domain")
	}
	if p.StageDir == "" {
		return errors.New("DKIM signing needs a staging directory")
	}
	if p.DKIM.Signer == nil {
		return fmt.Errorf("DKIM key of %s: no signer", p.SenderDomain)
	}
	// The routing compiler checks this too; a table from elsewhere (a
	// test, a future format) must not sign with what it does not declare.
	var ok bool
	switch pub := p.DKIM.Signer.Public().(type) {
	case *rsa.PublicKey:
		if bits := pub.N.BitLen(); bits < 2048 {
			return fmt.Errorf("DKIM key of %s: RSA key of %d bits, fewer than 2048", p.SenderDomain, bits)
		}
		ok = p.DKIM.Algorithm == v1alpha1.DKIMAlgorithmRSA2048
	case ed25519.PublicKey:
		ok = p.DKIM.Algorithm == v1alpha1.DKIMAlgorithmEd25519
	}
	if !ok {
		return fmt.Errorf("DKIM key of %s: a %T key does not match algorithm %q", p.SenderDomain, p.DKIM.Signer.Public(), p.DKIM.Algorithm)
	}
	return nil
}

// signAndStage hashes added fields and the client's message, staging the
// client's body (the header is already in memory), and returns a reader of
// the staged body.
func signAndStage(signer *dkim.Signer, st *stage, added, hdr []byte, body io.Reader) (_ io.Reader, err error) {
	closed := false
	defer func() {
		if !closed {
			_ = signer.Close() // ends the signer's goroutine
		}
	}()
	if _, err := signer.Write(added); err != nil {
		return nil, err
	}
	if _, err := signer.Write(hdr); err != nil {
		return nil, err
	}
	buf := make([]byte, 64<<10)
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, err := st.Write(buf[:n]); err != nil {
				return nil, err
			}
			if _, err := signer.Write(buf[:n]); err != nil {
				return nil, err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return nil, rerr
		}
	}
	closed = true
	if err := signer.Close(); err != nil {
		return nil, err
	}
	return st.reader()
}

// source reads the client's message, wrapping its errors and honoring ctx.
type source struct {
	ctx context.Context
	r   io.Reader
}

func (s source) Read(p []byte) (int, error) {
	if err := s.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := s.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		err = fmt.Errorf("reading the message: %w", err)
	}
	return n, err
}

// receivedField formats the Received field in Postfix's layout:
//
//	Received: from <helo> (<name> [<ip>])
//		(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256)
//		by <hostname> (postgate) with ESMTPSA id <id>
//		for <rcpt>; <date>
//
// RFC 5321 section 4.4 gives the clauses; comments may stand between them.
// The protocol is ESMTP, ESMTPS with TLS, ESMTPA with AUTH, ESMTPSA with
// both (RFC 3848). Every value the client chose is sanitized so it cannot
// end the field or inject one.
func receivedField(p Params, now time.Time) string {
	var b strings.Builder
	helo := sanitize(p.Helo, 255)
	if helo == "" {
		helo = "unknown"
	}
	b.WriteString("Received: from " + helo)
	if p.Client.IsValid() {
		// TCP-info is an address literal, or a domain and an address
		// literal (RFC 5321 section 4.4).
		b.WriteString(" (")
		if name := sanitize(p.ClientName, 255); name != "" {
			b.WriteString(name + " ")
		}
		b.WriteString(addressLiteral(p.Client.Addr()) + ")")
	}
	with := "ESMTP"
	if p.TLS != nil {
		with += "S"
		fmt.Fprintf(&b, "\r\n\t(using %s with cipher %s)", tlsVersion(p.TLS.Version), tls.CipherSuiteName(p.TLS.CipherSuite))
	}
	if p.Identity != "" {
		with += "A"
	}
	b.WriteString("\r\n\tby " + p.Hostname + " (postgate) with " + with)
	if id := sanitize(p.ID, 64); id != "" {
		b.WriteString(" id " + id)
	}
	if len(p.Recipients) == 1 && forPath(p.Recipients[0]) {
		b.WriteString("\r\n\tfor <" + p.Recipients[0] + ">; ")
	} else {
		b.WriteString(";\r\n\t")
	}
	b.WriteString(now.Format(rfc5322.DateLayout) + "\r\n")
	return b.String()
}

// addressLiteral formats an address as RFC 5321 section 4.1.3 does.
func addressLiteral(a netip.Addr) string {
	a = a.Unmap()
	if a.Is6() {
		return "[IPv6:" + a.WithZone("").String() + "]"
	}
	return "[" + a.String() + "]"
}

// tlsVersion names a TLS version as Postfix does (TLSv1.3).
func tlsVersion(v uint16) string {
	return strings.Replace(tls.VersionName(v), "TLS ", "TLSv", 1)
}

// sanitize keeps the characters of a host name, an address literal or a
// queue ID, replacing any other with '?' (as Postfix does with the HELO
// name), and cuts the result to max bytes.
func sanitize(s string, max int) string {
	if len(s) > max {
		s = s[:max]
	}
	b := []byte(s)
	for i, c := range b {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte(".-_:[]", c) >= 0:
		default:
			b[i] = '?'
		}
	}
	return string(b)
}

// forPath reports whether a recipient can stand in the Received field as
// given: printable ASCII without angle brackets, at most 256 octets (RFC
// 5321 section 4.5.3.1.3). Others (SMTPUTF8 addresses) are left out.
func forPath(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for i := range len(s) {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == '<' || c == '>' {
			return false
		}
	}
	return true
}
