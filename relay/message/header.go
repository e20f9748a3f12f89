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
		case strings.EqualFold(name, "From"):
			if !h.hasFrom {
				h.from = fromAddress(value)
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
