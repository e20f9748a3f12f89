package message

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"strings"
)

// readHeader reads the header block: through the first empty line (which it
// includes), or to the end of the message when there is none (complete is
// false then). Lines end at LF, as DKIM verifiers read them; the SMTP server
// has already refused bare CR and LF.
func readHeader(br *bufio.Reader) (hdr []byte, complete bool, err error) {
	lineStart := 0
	for {
		chunk, err := br.ReadSlice('\n')
		if len(hdr)+len(chunk) > MaxHeaderBytes {
			return nil, false, fmt.Errorf("header block over %d bytes: %w", MaxHeaderBytes, ErrHeaderTooLarge)
		}
		hdr = append(hdr, chunk...)
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue // a long line: its rest follows
		case err == io.EOF:
			return hdr, false, nil
		case err != nil:
			return nil, false, err
		}
		line := hdr[lineStart:]
		if len(line) == 1 || (len(line) == 2 && line[0] == '\r') {
			return hdr, true, nil
		}
		lineStart = len(hdr)
	}
}

// header is what Prepare needs to know of the client's header block.
type header struct {
	// names are the field names in order, as go-msgauth reads them (the
	// text before the first colon, spaces trimmed), "" for a line with no
	// colon.
	names        []string
	hasDate      bool
	hasMessageID bool
	// messageID is the first Message-ID's value, unfolded and trimmed,
	// when printable ASCII.
	messageID string
	// from is the address of the first From field (RFC 5322 section
	// 3.6.2), when it parses; else its value when printable ASCII.
	from    string
	hasFrom bool
	// author is what the From field says for signing (Author).
	author Author
	// tlsRequiredNo: a "TLS-Required: No" field (RFC 8689 section 5).
	tlsRequiredNo bool
	// received counts the Received fields: the hops the message took.
	received int
}

// parseHeader splits the header block into fields: a line that begins with
// a space or a tab continues the field above it (RFC 5322 section 2.2.3).
// Field names compare case-insensitively (section 1.2.2). A line without a
// colon is kept as it is (the bytes are never changed) and names nothing.
func parseHeader(hdr []byte, complete bool) (*header, error) {
	h := &header{}
	if complete {
		hdr = hdr[:bytes.LastIndexByte(hdr[:len(hdr)-1], '\n')+1] // drop the empty line
	}
	if len(hdr) > 0 && (hdr[0] == ' ' || hdr[0] == '\t') {
		return nil, fmt.Errorf("the message begins with a continuation line: %w", ErrMalformed)
	}
	var field []byte // the current field, folded lines joined
	flush := func() {
		if field == nil {
			return
		}
		name, value, ok := strings.Cut(string(field), ":")
		if !ok {
			name = ""
		}
		name = strings.TrimSpace(name)
		h.names = append(h.names, name)
		switch {
		case strings.EqualFold(name, "Date"):
			h.hasDate = true
		case strings.EqualFold(name, "Message-ID"):
			if !h.hasMessageID {
				h.messageID = printable(strings.TrimSpace(value))
			}
			h.hasMessageID = true
		case strings.EqualFold(name, "Received"):
			h.received++
		case strings.EqualFold(name, "TLS-Required"):
			// The one value RFC 8689 section 5 defines; anything else is
			// not a request to relax.
			h.tlsRequiredNo = strings.EqualFold(strings.TrimSpace(value), "No")
		case strings.EqualFold(name, "From"):
			if !h.hasFrom {
				h.from = fromAddress(value)
				h.author = authorOf(value)
			} else {
				h.author = Author{} // several From fields: nobody in particular
			}
			h.hasFrom = true
		}
		field = nil
	}
	for len(hdr) > 0 {
		line := hdr
		if i := bytes.IndexByte(hdr, '\n'); i >= 0 {
			line = hdr[:i+1]
		}
		hdr = hdr[len(line):]
		content := bytes.TrimRight(line, "\r\n")
		if line[0] == ' ' || line[0] == '\t' {
			field = append(field, content...) // unfolding removes the line end only
			continue
		}
		flush()
		field = append([]byte{}, content...)
	}
	flush()
	return h, nil
}

// printable returns s when it is printable ASCII of at most 998 octets,
// "" otherwise.
// fromAddress is the first mailbox of a From field's value, for
// notifications (the "mimeFrom" a webhook consumer matches on); the trimmed
// value when net/mail cannot parse it (an RFC 5322 obsolete form, or 8-bit
// text), "" when that is not printable.
func fromAddress(value string) string {
	value = strings.TrimSpace(value)
	if list, err := mail.ParseAddressList(value); err == nil && len(list) > 0 {
		if a := printable(list[0].Address); a != "" {
			return a
		}
	}
	return printable(value)
}

// authorOf reads a From field's value (RFC 5322 section 3.6.2: a
// mailbox-list) for Author: its one mailbox, and the domain all of its
// mailboxes share.
func authorOf(value string) Author {
	list, err := mail.ParseAddressList(strings.TrimSpace(value))
	if err != nil || len(list) == 0 {
		return Author{}
	}
	var a Author
	if len(list) == 1 {
		a.Mailbox = printable(list[0].Address)
	}
	for i, m := range list {
		at := strings.LastIndexByte(m.Address, '@')
		if at < 0 || (i > 0 && !strings.EqualFold(m.Address[at+1:], a.Domain)) {
			a.Domain = ""
			break
		}
		if i == 0 {
			a.Domain = m.Address[at+1:]
		}
	}
	return a
}

func printable(s string) string {
	if len(s) > 998 {
		return ""
	}
	for i := range len(s) {
		if s[i] < ' ' || s[i] >= 0x7f {
			return ""
		}
	}
	return s
}

// TagField is the header field in which a client labels a message for its
// delivery notifications (their meta.tag). It is for the relay only: Prepare
// removes it from the message, before signing, so it never leaves.
const TagField = "X-Postgate-Tag"

// MaxTagBytes bounds a tag: it travels in the queue's envelope and in every
// notification of the message.
const MaxTagBytes = 128

// ErrBadTag is returned when the message has more than one TagField, or one whose value is
// not 1 to MaxTagBytes visible ASCII characters (550 5.6.0).
var ErrBadTag = errors.New("invalid " + TagField + " field")

// stripTag removes the TagField (with its continuation lines) from the
// header block and returns its value, unfolded and trimmed; "" when there
// is none or it is empty. hdr is returned as it is when it has none.
func stripTag(hdr []byte) (out []byte, tag string, err error) {
	var value []byte
	found, dropping := 0, false
	for rest, start := hdr, 0; len(rest) > 0; {
		line := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line = rest[:i+1]
		}
		rest = rest[len(line):]
		content := bytes.TrimRight(line, "\r\n")
		switch {
		case dropping && (line[0] == ' ' || line[0] == '\t'):
			value = append(value, content...)
		case isTagField(content):
			if found++; found == 1 {
				out = append(out, hdr[:start]...)
			}
			dropping = true
			value = append(value, content[bytes.IndexByte(content, ':')+1:]...)
		default:
			dropping = false
			if found > 0 {
				out = append(out, line...)
			}
		}
		start += len(line)
	}
	switch {
	case found == 0:
		return hdr, "", nil
	case found > 1:
		return nil, "", fmt.Errorf("%d %s fields, at most one: %w", found, TagField, ErrBadTag)
	}
	tag = strings.Trim(string(value), " \t")
	if len(tag) > MaxTagBytes {
		return nil, "", fmt.Errorf("%s is %d bytes, at most %d: %w", TagField, len(tag), MaxTagBytes, ErrBadTag)
	}
	for i := range len(tag) {
		if c := tag[i]; c <= ' ' || c >= 0x7f {
			return nil, "", fmt.Errorf("%s may hold visible ASCII characters only (no spaces): %w", TagField, ErrBadTag)
		}
	}
	return out, tag, nil
}

// isTagField reports whether a header line starts the TagField: its name,
// before the colon, compared case-insensitively (RFC 5322 section 1.2.2),
// with the spaces go-msgauth would trim.
func isTagField(line []byte) bool {
	name, _, ok := bytes.Cut(line, []byte(":"))
	return ok && len(line) > 0 && line[0] != ' ' && line[0] != '\t' &&
		strings.EqualFold(strings.TrimSpace(string(name)), TagField)
}
