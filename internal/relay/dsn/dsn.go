// Package dsn builds and parses delivery status notifications (RFC 3464):
// the bounce a relay sends to a message's envelope sender when recipients
// failed permanently or their time in the queue ran out, and the report of
// recipients relayed to a next hop without DSN that asked for one
// (NOTIFY=SUCCESS, RFC 3461 section 5.2.2).
//
// A DSN is a multipart/report (RFC 6522) of three parts: a text for people,
// the message/delivery-status with one block of fields per recipient, and
// the original message's header (RET=HDRS, the default) or the whole
// message (RET=FULL, when small enough). It goes from the null sender, so a
// DSN that fails is never bounced in turn (RFC 5321 section 4.5.5), and a
// message from the null sender never gets one. The recipients' NOTIFY
// parameters decide who is reported (RFC 3461 section 4.1).
//
// The bytes are 7bit-safe with CRLF line ends and lines of at most 998
// octets; anything that is not (8bit original content, UTF-8 addresses)
// is encoded as RFC 6533 says. The one exception: a sender address that is
// not ASCII stands as it is in the To field (RFC 6532), and the
// notification must then go out with SMTPUTF8.
package dsn

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"mime/multipart"
	"mime/quotedprintable"
	"net/textproto"
	"slices"
	"strings"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/rfc5322"
)

// DefaultMaxFull bounds the message returned with RET=FULL: a larger one is
// returned as its header only.
const DefaultMaxFull = 256 << 10

// maxHeader bounds the original header returned; a longer one is cut at a
// line end.
const maxHeader = 64 << 10

// Params configure Build.
type Params struct {
	// Hostname is the relay's name: the Reporting-MTA and the domain of
	// MAILER-DAEMON and of the Message-ID. Required.
	Hostname string
	// Now dates the notification; the zero Time means time.Now().
	Now time.Time
	// MaxFull bounds the original message returned with RET=FULL; 0 means
	// DefaultMaxFull.
	MaxFull int64
	// RemoteMTA is the host whose reply decided the reported recipients'
	// fate (Remote-MTA, RFC 3464 section 2.3.5), "" when none did (a DNS
	// failure, an expiry without a reply).
	RemoteMTA string
	// LastAttempt, when set, is the Last-Attempt-Date of every reported
	// recipient: the attempt that decided. Otherwise each recipient's
	// RecipientStatus.LastAttempt is used.
	LastAttempt time.Time
}

// Notification is a DSN ready to be queued.
type Notification struct {
	// From is the envelope sender of the DSN: always "", the null
	// reverse-path.
	From string
	// To is the envelope recipient: the original message's sender.
	To []string
	// SMTPUTF8 is set when the recipient's address is not ASCII: the DSN
	// must be relayed with SMTPUTF8 (RFC 6531).
	SMTPUTF8 bool
	// Recipients are the indexes (into the original's Envelope.To) that
	// the DSN reports.
	Recipients []int
	// Data is the message, header and body.
	Data []byte
}

// Build makes the DSN for the recipients at the given indexes of msg,
// reading the original message from original (as queued). A Failed or
// Expired recipient is reported as failed, unless its NOTIFY leaves out
// FAILURE (NOTIFY=NEVER, or a list without FAILURE); a Delivered one as
// relayed (Action: relayed, RFC 3461 section 5.2.2: the next hop took it
// and will not report), only when its NOTIFY lists SUCCESS. It returns nil
// and no error when no DSN is due: the original came from the null sender,
// or no recipient asked for one. Indexes of recipients in other states are
// ignored; an index out of range is an error. RET (section 4.3) applies
// to failures: a report of relayed recipients only carries the header.
func Build(p Params, msg queue.Message, rcpts []int, original io.Reader) (*Notification, error) {
	if p.Hostname == "" || strings.ContainsAny(p.Hostname, " \t\r\n<>()") {
		return nil, fmt.Errorf("dsn: hostname %q is not a host name", p.Hostname)
	}
	if p.Now.IsZero() {
		p.Now = time.Now()
	}
	if p.MaxFull <= 0 {
		p.MaxFull = DefaultMaxFull
	}
	env := msg.Envelope
	if env.From == "" {
		return nil, nil // never bounce a bounce
	}
	var report []int
	failures := false
	for _, i := range rcpts {
		if i < 0 || i >= len(env.To) || i >= len(msg.Recipients) {
			return nil, fmt.Errorf("dsn: recipient index %d out of range (%d recipients)", i, len(env.To))
		}
		if slices.Contains(report, i) {
			continue
		}
		switch s := msg.Recipients[i].State; {
		case (s == queue.Failed || s == queue.Expired) && env.To[i].Notifies("FAILURE"):
			report, failures = append(report, i), true
		case s == queue.Delivered && env.To[i].Notifies("SUCCESS"):
			report = append(report, i)
		}
	}
	if len(report) == 0 {
		return nil, nil
	}

	orig, full, err := readOriginal(original, failures && env.Ret == "FULL", p.MaxFull)
	if err != nil {
		return nil, err
	}
	subject := "Undelivered Mail Returned to Sender"
	if !failures {
		subject = "Successful Mail Delivery Report"
	}

	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	writeField(&b, "From", "Mail Delivery System <MAILER-DAEMON@"+p.Hostname+">")
	writeField(&b, "To", "<"+env.From+">")
	writeField(&b, "Subject", subject)
	writeField(&b, "Date", p.Now.Format(rfc5322.DateLayout))
	writeField(&b, "Message-ID", rfc5322.NewMessageID(p.Hostname))
	writeField(&b, "Auto-Submitted", "auto-replied") // RFC 3834 section 5
	writeField(&b, "MIME-Version", "1.0")
	writeField(&b, "Content-Type", `multipart/report; report-type=delivery-status; boundary="`+mw.Boundary()+`"`)
	writeField(&b, "Content-Transfer-Encoding", "7bit")
	b.WriteString("\r\nThis is a MIME-encapsulated message.\r\n")

	// 1. For people.
	if err := writePart(mw, "Notification", "text/plain", []byte(humanText(p, msg, report, full, failures && env.Ret == "FULL"))); err != nil {
		return nil, err
	}
	// 2. For programs (RFC 3464 section 2).
	if err := writePart(mw, "Delivery report", "message/delivery-status", statusFields(p, msg, report)); err != nil {
		return nil, err
	}
	// 3. What was sent (RFC 3462 section 2: text/rfc822-headers or
	// message/rfc822; RFC 6533 section 6: the message/global types when the
	// content is not 7bit).
	desc, ctype := "Undelivered message headers", "text/rfc822-headers"
	if !failures {
		desc = "Message headers"
	}
	if full {
		desc, ctype = "Undelivered message", "message/rfc822"
	}
	if !sevenBit(orig) {
		ctype = "message/global-headers"
		if full {
			ctype = "message/global"
		}
	}
	if err := writePart(mw, desc, ctype, orig); err != nil {
		return nil, err
	}
	if err := mw.Close(); err != nil {
		return nil, err
	}
	return &Notification{
		From: "", To: []string{env.From}, SMTPUTF8: !isASCII(env.From),
		Recipients: report, Data: b.Bytes(),
	}, nil
}

// readOriginal returns what to attach: the whole message when RET=FULL and
// it fits in maxFull, its header otherwise (full reports which).
func readOriginal(r io.Reader, wantFull bool, maxFull int64) (data []byte, full bool, err error) {
	limit := int64(maxHeader)
	if wantFull {
		limit = max(maxFull, maxHeader)
	}
	data, err = io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, false, fmt.Errorf("dsn: reading the original message: %w", err)
	}
	truncated := int64(len(data)) > limit
	if wantFull && int64(len(data)) <= maxFull {
		return data, true, nil
	}
	return headerOf(data, truncated), false, nil
}

// headerOf returns the header block of msg (its first len bytes of a longer
// message when truncated): through the first empty line, at most maxHeader
// bytes cut at a line end.
func headerOf(msg []byte, truncated bool) []byte {
	end := -1
	switch {
	case bytes.HasPrefix(msg, []byte("\r\n")):
		end = 0
	default:
		if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
			end = i + 2
		}
	}
	if end < 0 {
		end = len(msg)
		if truncated {
			end = bytes.LastIndexByte(msg, '\n') + 1
		}
	}
	if end > maxHeader {
		end = bytes.LastIndexByte(msg[:maxHeader], '\n') + 1
	}
	return msg[:end]
}

// humanText is the first part: what happened, for each recipient.
func humanText(p Params, msg queue.Message, report []int, full, wantFull bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "This is the mail system at %s.\r\n\r\n", p.Hostname)
	failures, relayed := false, false
	for _, i := range report {
		if msg.Recipients[i].State == queue.Delivered {
			relayed = true
		} else {
			failures = true
		}
	}
	if failures {
		b.WriteString("Your message could not be delivered to one or more recipients.\r\n")
	}
	if relayed {
		b.WriteString("Your message was relayed to one or more recipients' mail servers, as you asked to be told\r\n")
		b.WriteString("(NOTIFY=SUCCESS). These servers do not report delivery status, so no further notice will come.\r\n")
	}
	if full {
		b.WriteString("The details follow; the message is attached.\r\n")
	} else {
		b.WriteString("The details follow; the message's header is attached.\r\n")
		if wantFull {
			fmt.Fprintf(&b, "(You asked for the whole message back, but it is larger than %d KiB.)\r\n", p.MaxFull>>10)
		}
	}
	fmt.Fprintf(&b, "\r\nQueue ID: %s\r\n\r\n", msg.ID)
	for _, i := range report {
		rs := msg.Recipients[i]
		line := "<" + msg.Envelope.To[i].Addr + ">: "
		if rs.State == queue.Delivered {
			line += "relayed"
			if remote := remoteMTA(p.RemoteMTA); remote != "" {
				line += " to " + remote
			}
			if r := rs.Reply.String(); r != "" {
				line += ", which said: " + r
			}
		} else if rs.State == queue.Expired {
			line += "delivery time expired, the message stayed in the queue too long"
			if r := rs.Reply.String(); r != "" {
				if remote := remoteMTA(p.RemoteMTA); remote != "" && rs.Reply.Code != 0 {
					line += "; last reply from " + remote + ": " + r
				} else {
					line += "; last reply: " + r
				}
			}
		} else if r := rs.Reply.String(); r != "" {
			if remote := remoteMTA(p.RemoteMTA); remote != "" && rs.Reply.Code != 0 {
				line += "host " + remote + " said: "
			}
			line += r
		} else {
			line += "delivery failed permanently"
		}
		b.WriteString(line + "\r\n")
	}
	return b.String()
}

// statusFields is the message/delivery-status body (RFC 3464 section 2.2
// and 2.3): the per-message fields, then one block per recipient.
func statusFields(p Params, msg queue.Message, report []int) []byte {
	var b bytes.Buffer
	env := msg.Envelope
	writeField(&b, "Reporting-MTA", "dns; "+p.Hostname)
	writeField(&b, "X-Postgate-Queue-ID", string(msg.ID))
	if env.EnvID != "" {
		writeField(&b, "Original-Envelope-Id", xtextIfNeeded(env.EnvID))
	}
	if !msg.Arrival.IsZero() {
		writeField(&b, "Arrival-Date", msg.Arrival.Format(rfc5322.DateLayout))
	}
	for _, i := range report {
		rcpt, rs := env.To[i], msg.Recipients[i]
		b.WriteString("\r\n")
		if rcpt.ORcpt != "" {
			writeField(&b, "Original-Recipient", originalRecipient(rcpt.ORcpt))
		}
		writeField(&b, "Final-Recipient", typedAddress(rcpt.Addr))
		if rs.State == queue.Delivered {
			writeField(&b, "Action", "relayed")
		} else {
			writeField(&b, "Action", "failed")
		}
		writeField(&b, "Status", status(rs))
		if remote := remoteMTA(p.RemoteMTA); remote != "" {
			writeField(&b, "Remote-MTA", "dns; "+remote)
		}
		switch {
		case rs.Reply.Code != 0:
			writeField(&b, "Diagnostic-Code", "smtp; "+asciiOnly(rs.Reply.String()))
		case rs.Reply.String() != "":
			writeField(&b, "Diagnostic-Code", "X-Postgate; "+asciiOnly(rs.Reply.String()))
		}
		if t := cmp.Or(p.LastAttempt, rs.LastAttempt); !t.IsZero() {
			writeField(&b, "Last-Attempt-Date", t.Format(rfc5322.DateLayout))
		}
	}
	return b.Bytes()
}

// remoteMTA returns the host name when it can stand in a field as it is,
// "" otherwise.
func remoteMTA(host string) string {
	if len(host) > 255 || !isPrintableASCII(host) || strings.ContainsAny(host, ";()<>") {
		return ""
	}
	return host
}

// status is the RFC 3463 code of a reported recipient: for a failed one
// the reply's own when it is permanent, 4.4.7 (delivery time expired) for
// an expired one; for a relayed one the acceptance's own, or 2.0.0.
func status(rs queue.RecipientStatus) string {
	if rs.State == queue.Delivered {
		if strings.HasPrefix(rs.Reply.Enhanced, "2.") {
			return rs.Reply.Enhanced
		}
		return "2.0.0"
	}
	if rs.State == queue.Expired {
		return "4.4.7"
	}
	if strings.HasPrefix(rs.Reply.Enhanced, "5.") {
		return rs.Reply.Enhanced
	}
	return "5.0.0"
}

// typedAddress formats an address as "rfc822; addr", or for an address
// that is not ASCII "utf-8; " and the RFC 6533 section 3 utf-8-addr-xtext
// form that keeps the field 7bit.
func typedAddress(addr string) string {
	if isPrintableASCII(addr) {
		return "rfc822; " + addr
	}
	return "utf-8; " + utf8AddrXtext(addr)
}

// originalRecipient formats an ORCPT parameter ("type;address"; go-smtp
// hands it over decoded) for the Original-Recipient field.
func originalRecipient(orcpt string) string {
	typ, addr, ok := strings.Cut(orcpt, ";")
	if !ok {
		typ, addr = "rfc822", orcpt
	}
	typ = strings.ToLower(strings.TrimSpace(typ))
	switch {
	case typ == "utf-8" || (typ == "rfc822" && !isASCII(addr) && isValidUTF8Text(addr)):
		return "utf-8; " + utf8AddrXtext(addr)
	case !isPrintableASCII(typ) || typ == "":
		return "rfc822; " + xtext(addr)
	default:
		return typ + "; " + xtextIfNeeded(addr)
	}
}

// writePart writes one body part: 7bit when the content is 7bit-safe,
// quoted-printable otherwise (which every type used here allows: text/*,
// and the RFC 6533 message/global types).
func writePart(mw *multipart.Writer, desc, ctype string, content []byte) error {
	h := textproto.MIMEHeader{}
	h.Set("Content-Description", desc)
	enc := "7bit"
	if !sevenBit(content) {
		enc = "quoted-printable"
		if strings.HasPrefix(ctype, "text/plain") {
			ctype += "; charset=utf-8"
		}
	} else if strings.HasPrefix(ctype, "text/plain") {
		ctype += "; charset=us-ascii"
	}
	h.Set("Content-Type", ctype)
	h.Set("Content-Transfer-Encoding", enc)
	w, err := mw.CreatePart(h)
	if err != nil {
		return err
	}
	if enc == "7bit" {
		_, err = w.Write(content)
		return err
	}
	qp := quotedprintable.NewWriter(w)
	if _, err := qp.Write(content); err != nil {
		return err
	}
	return qp.Close()
}

// writeField writes "Name: value" folded at spaces to lines of at most 78
// characters where it can, and never over 998 (RFC 5322 section 2.1.1): a
// word too long for that is broken, which unfolding turns into a space.
// Runs of spaces become one.
func writeField(b *bytes.Buffer, name, value string) {
	first := name + ":"
	line := first
	for _, word := range strings.Fields(value) {
		if line != first && len(line)+1+len(word) > 78 {
			b.WriteString(line + "\r\n")
			line = ""
		}
		line += " " + word
		for len(line) > 998 {
			b.WriteString(line[:998] + "\r\n")
			line = " " + line[998:]
		}
	}
	b.WriteString(line + "\r\n")
}

// sevenBit reports whether b can travel as 7bit (RFC 2045 section 2.7):
// no NUL, no 8bit byte, CR and LF only as CRLF, lines of at most 998
// octets.
func sevenBit(b []byte) bool {
	line := 0
	for i, c := range b {
		switch {
		case c == 0 || c >= 0x80:
			return false
		case c == '\r':
			if i+1 >= len(b) || b[i+1] != '\n' {
				return false
			}
		case c == '\n':
			if i == 0 || b[i-1] != '\r' {
				return false
			}
			line = 0
			continue
		}
		if c != '\r' {
			line++
			if line > 998 {
				return false
			}
		}
	}
	return true
}

func isASCII(s string) bool {
	for i := range len(s) {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func isPrintableASCII(s string) bool {
	for i := range len(s) {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return s != ""
}

func isValidUTF8Text(s string) bool {
	for _, r := range s {
		if r == 0xfffd || r < ' ' || r == 0x7f {
			return false
		}
	}
	return true
}

// asciiOnly replaces what is not printable ASCII with '?', for the 7bit
// message/delivery-status.
func asciiOnly(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r < ' ' || r >= 0x7f {
			r = '?'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// xtext encodes s as RFC 3461 section 4 does: "+" and "=", and bytes
// outside "!" to "~", as "+" and two upper-case hex digits.
func xtext(s string) string {
	var b strings.Builder
	for i := range len(s) {
		c := s[i]
		if c < '!' || c > '~' || c == '+' || c == '=' {
			fmt.Fprintf(&b, "+%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// xtextIfNeeded leaves printable ASCII as it is and xtext-encodes the rest.
func xtextIfNeeded(s string) string {
	if isPrintableASCII(s) {
		return s
	}
	return xtext(s)
}

// utf8AddrXtext is RFC 6533 section 3's utf-8-addr-xtext: printable ASCII
// but "+", "=" and "\" as they are, everything else as \x{HEX}.
func utf8AddrXtext(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r > ' ' && r < 0x7f && r != '+' && r != '=' && r != '\\' {
			b.WriteRune(r)
			continue
		}
		fmt.Fprintf(&b, `\x{%X}`, r)
	}
	return b.String()
}
