package delivery

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// Transactions are spoken here, over the connection go-smtp's client set up
// (greeting, EHLO, STARTTLS, AUTH): go-smtp's client sends each command and
// waits for its reply, so it cannot pipeline (RFC 2920); after RSET it says
// EHLO again before the next MAIL; and its DATA writer dot-stuffs byte by
// byte. A transaction on a reused connection took six round trips (RSET,
// EHLO, MAIL, RCPT, DATA, the message), and delivery to one busy
// destination ran at half the rate the relay accepted mail. Here it takes
// two to a server that offers PIPELINING: RSET, MAIL, every RCPT and DATA
// in one group, then the message. go-smtp keeps what it does well (EHLO
// with its HELO fallback, the extensions, SASL), and never reads the
// connection again once a transaction layer owns it.

// Bounds of what a next hop may answer: go-smtp's line limit (twice RFC
// 5321 section 4.5.3.1.5's 512), and a whole multiline reply.
const (
	maxReplyLine  = 2000
	maxReplyBytes = 64 << 10
)

// wireBuffer is the size of the write buffer: the commands of a pipelined
// group and the message go out in writes this large, each under its own
// deadline (deadlineConn).
const wireBuffer = 32 << 10

// smtpWire reads replies and writes commands and the message on a session's
// connection.
type smtpWire struct {
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
}

func newSMTPWire(conn net.Conn) *smtpWire {
	return &smtpWire{conn: conn, r: bufio.NewReaderSize(conn, 4096), w: bufio.NewWriterSize(conn, wireBuffer)}
}

// command buffers one command line; flush sends what is buffered.
func (c *smtpWire) command(line string) error {
	if _, err := c.w.WriteString(line); err != nil {
		return err
	}
	_, err := c.w.WriteString("\r\n")
	return err
}

func (c *smtpWire) flush() error { return c.w.Flush() }

// reply reads one reply within timeout. A reply whose code does not start
// with expect (a prefix, as net/textproto's: 25 takes 250 to 259) is
// returned as an *smtp.SMTPError, as go-smtp's client returns it; a
// malformed reply or a read error as a plain error. The text is the lines'
// text joined by "\n", enhanced code included.
func (c *smtpWire) reply(expect int, timeout time.Duration) (string, error) {
	if err := c.conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return "", err
	}
	var (
		code  int
		text  strings.Builder
		total int
	)
	for first := true; ; first = false {
		line, err := c.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) || len(line) > maxReplyLine {
			return "", errors.New("reply line too long")
		}
		if err != nil {
			return "", err
		}
		if total += len(line); total > maxReplyBytes {
			return "", errors.New("reply too long")
		}
		line = bytes.TrimRight(line, "\r\n")
		n, more, ok := replyCode(line)
		if !ok || (!first && n != code) {
			return "", fmt.Errorf("malformed reply %q", boundText(string(line)))
		}
		code = n
		if !first {
			text.WriteByte('\n')
		}
		if len(line) > 4 {
			text.Write(line[4:])
		}
		if !more {
			break
		}
	}
	if !hasPrefixCode(code, expect) {
		return "", smtpErrorOf(code, text.String())
	}
	return text.String(), nil
}

// replyCode parses "250-", "250 " and "250" (RFC 5321 section 4.2).
func replyCode(line []byte) (code int, more, ok bool) {
	if len(line) < 3 || (len(line) > 3 && line[3] != ' ' && line[3] != '-') {
		return 0, false, false
	}
	for _, b := range line[:3] {
		if b < '0' || b > '9' {
			return 0, false, false
		}
		code = code*10 + int(b-'0')
	}
	if code < 200 || code > 599 {
		return 0, false, false
	}
	return code, len(line) > 3 && line[3] == '-', true
}

// hasPrefixCode reports whether code starts with the digits of expect, as
// net/textproto's ReadResponse checks it.
func hasPrefixCode(code, expect int) bool {
	switch {
	case expect < 10:
		return code/100 == expect
	case expect < 100:
		return code/10 == expect
	default:
		return code == expect
	}
}

// smtpErrorOf is go-smtp's client's error for a reply: the enhanced code
// taken from the front of the text when it parses (RFC 2034), and removed
// from the front of its other lines.
func smtpErrorOf(code int, text string) *smtp.SMTPError {
	e := &smtp.SMTPError{Code: code, Message: text}
	first, rest, ok := strings.Cut(text, " ")
	if !ok {
		return e
	}
	parts := strings.Split(first, ".")
	if len(parts) != 3 {
		return e
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return e
		}
		e.EnhancedCode[i] = n
	}
	e.Message = strings.ReplaceAll(rest, "\n"+first+" ", "\n")
	return e
}

// dotWriter writes a message in DATA: a line that begins with "." gets
// one more (RFC 5321 section 4.5.2), and Close ends it with CRLF.CRLF (a
// CRLF first when the message does not end with one). It scans each buffer
// for "\n." (an SSE search of the whole buffer, not a loop over its bytes)
// and writes the runs between in one piece each; the message bytes are
// checked before they get here (message.Checker), so CR and LF only come
// as CRLF.
type dotWriter struct {
	w *bufio.Writer
	// bol: the next byte begins a line; begun: a byte was written.
	bol, begun bool
}

func newDotWriter(w *bufio.Writer) *dotWriter { return &dotWriter{w: w, bol: true} }

var newlineDot = []byte("\n.")

func (d *dotWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if d.bol && p[0] == '.' {
		if err := d.w.WriteByte('.'); err != nil {
			return 0, err
		}
	}
	start := 0
	for {
		i := bytes.Index(p[start:], newlineDot)
		if i < 0 {
			break
		}
		cut := start + i + 1 // after the LF: the dot goes out with the next run
		if _, err := d.w.Write(p[start:cut]); err != nil {
			return start, err
		}
		if err := d.w.WriteByte('.'); err != nil {
			return cut, err
		}
		start = cut
	}
	if _, err := d.w.Write(p[start:]); err != nil {
		return start, err
	}
	d.bol, d.begun = p[len(p)-1] == '\n', true
	return len(p), nil
}

// Close writes the end of data and sends what is buffered. An empty
// message goes as one empty line, as net/textproto's DotWriter sends it.
func (d *dotWriter) Close() error {
	if !d.bol || !d.begun {
		if _, err := d.w.WriteString("\r\n"); err != nil {
			return err
		}
	}
	if _, err := d.w.WriteString(".\r\n"); err != nil {
		return err
	}
	return d.w.Flush()
}

// mailCommand formats MAIL FROM as go-smtp's client does, with the same
// parameters for the same extensions, and the same errors for what it
// would refuse to send.
func mailCommand(from string, opts *smtp.MailOptions, ext func(string) (bool, string)) (string, error) {
	if strings.ContainsAny(from, "\r\n") {
		return "", errors.New("smtp: a line must not contain CR or LF")
	}
	has := func(name string) bool { ok, _ := ext(name); return ok }
	var sb strings.Builder
	fmt.Fprintf(&sb, "MAIL FROM:<%s>", from)
	if has("8BITMIME") {
		sb.WriteString(" BODY=8BITMIME")
	}
	if has("SIZE") && opts.Size != 0 {
		fmt.Fprintf(&sb, " SIZE=%v", opts.Size)
	}
	if opts.RequireTLS {
		if !has("REQUIRETLS") {
			return "", errors.New("smtp: server does not support REQUIRETLS")
		}
		sb.WriteString(" REQUIRETLS")
	}
	if opts.UTF8 {
		if !has("SMTPUTF8") {
			return "", errors.New("smtp: server does not support SMTPUTF8")
		}
		sb.WriteString(" SMTPUTF8")
	}
	if has("DSN") {
		switch opts.Return {
		case smtp.DSNReturnFull, smtp.DSNReturnHeaders:
			fmt.Fprintf(&sb, " RET=%s", string(opts.Return))
		case "":
		default:
			return "", errors.New("smtp: Unknown RET parameter value")
		}
		if opts.EnvelopeID != "" {
			if !printableASCII(opts.EnvelopeID) {
				return "", errors.New("smtp: Malformed ENVID parameter value")
			}
			sb.WriteString(" ENVID=" + encodeXtext(opts.EnvelopeID))
		}
	}
	return sb.String(), nil
}

// formatRcpt formats RCPT TO as go-smtp's client does, for the
// parameters the relay passes on (RFC 3461 NOTIFY and ORCPT).
func formatRcpt(to string, opts *smtp.RcptOptions, ext func(string) (bool, string)) (string, error) {
	if strings.ContainsAny(to, "\r\n") {
		return "", errors.New("smtp: a line must not contain CR or LF")
	}
	has := func(name string) bool { ok, _ := ext(name); return ok }
	var sb strings.Builder
	fmt.Fprintf(&sb, "RCPT TO:<%s>", to)
	if opts == nil || !has("DSN") {
		return sb.String(), nil
	}
	if len(opts.Notify) != 0 {
		if !validNotify(opts.Notify) {
			return "", errors.New("smtp: Malformed NOTIFY parameter value")
		}
		sb.WriteString(" NOTIFY=")
		for i, v := range opts.Notify {
			if i != 0 {
				sb.WriteString(",")
			}
			sb.WriteString(string(v))
		}
	}
	if opts.OriginalRecipient != "" {
		var enc string
		switch opts.OriginalRecipientType {
		case smtp.DSNAddressTypeRFC822:
			if !printableASCII(opts.OriginalRecipient) {
				return "", errors.New("smtp: Illegal address")
			}
			enc = encodeXtext(opts.OriginalRecipient)
		case smtp.DSNAddressTypeUTF8:
			enc = encodeUTF8Addr(opts.OriginalRecipient, has("SMTPUTF8"))
		default:
			return "", errors.New("smtp: Unknown address type")
		}
		fmt.Fprintf(&sb, " ORCPT=%s;%s", string(opts.OriginalRecipientType), enc)
	}
	return sb.String(), nil
}

// validNotify: NEVER alone, or distinct SUCCESS, FAILURE, DELAY (RFC 3461
// section 4.1).
func validNotify(values []smtp.DSNNotify) bool {
	seen := map[smtp.DSNNotify]bool{}
	for _, v := range values {
		switch v {
		case smtp.DSNNotifyNever, smtp.DSNNotifyDelayed, smtp.DSNNotifyFailure, smtp.DSNNotifySuccess:
			if seen[v] {
				return false
			}
		default:
			return false
		}
		seen[v] = true
	}
	return !seen[smtp.DSNNotifyNever] || len(seen) == 1
}

// encodeXtext is RFC 3461 section 4's xtext: printable ASCII but "+" and
// "=" as is, everything else as "+" and two hex digits.
func encodeXtext(raw string) string {
	var out strings.Builder
	for _, ch := range raw {
		if ch >= '!' && ch <= '~' && ch != '+' && ch != '=' {
			out.WriteRune(ch)
			continue
		}
		out.WriteString("+" + strings.ToUpper(strconv.FormatInt(int64(ch), 16)))
	}
	return out.String()
}

// encodeUTF8Addr is RFC 6533 section 3's utf-8-addr-unitext (to a server
// that offers SMTPUTF8) or utf-8-addr-xtext: other ASCII as \x{HEX}, and
// non-ASCII as is or also escaped.
func encodeUTF8Addr(raw string, unitext bool) string {
	var out strings.Builder
	for _, ch := range raw {
		switch {
		case ch >= '!' && ch <= '~' && ch != '+' && ch != '=':
			out.WriteRune(ch)
		case unitext && ch > 0x7f:
			out.WriteRune(ch)
		default:
			out.WriteString(`\x{` + strings.ToUpper(strconv.FormatInt(int64(ch), 16)) + "}")
		}
	}
	return out.String()
}
