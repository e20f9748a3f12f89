package delivery

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-smtp"

	"github.com/postgate/postgate/internal/relay/message"
	"github.com/postgate/postgate/internal/relay/queue"
)

// transaction sends msg to d's recipients over s: MAIL FROM, one RCPT TO
// per recipient (the address exactly as the client gave it), DATA. It
// fills t per recipient. It returns a failure, with t to be discarded,
// when the host failed before it took responsibility for anything (421,
// a lost connection before the end of data): the next address may take
// the message instead.
func (w *Worker) transaction(ctx context.Context, s *session, msg *queue.Message, d *destination, body bodyFunc, t *outcome) *failure {
	env := &msg.Envelope
	opts := &smtp.MailOptions{Size: msg.Size, Return: smtp.DSNReturn(env.Ret)}
	if printableASCII(env.EnvID) {
		opts.EnvelopeID = env.EnvID
	}
	// RFC 6531 section 3.2: a non-ASCII address never goes to a server
	// that does not offer SMTPUTF8; its recipient (every recipient, for a
	// non-ASCII sender) fails with 5.6.7 and the others go on. A message
	// whose header alone is UTF-8 goes as 8-bit, without SMTPUTF8. The
	// envelope is looked at, not only the SMTPUTF8 flag: a message queued
	// without the flag may still hold a UTF-8 address.
	utf8Offered, _ := s.c.Extension("SMTPUTF8")
	ascii := asciiEnvelope(env, d.rcpts)
	if utf8Offered && (env.SMTPUTF8 || !ascii) {
		opts.UTF8 = true
	}
	var utf8Refused *failure
	if !utf8Offered && !ascii {
		utf8Refused = localFailure(true, CauseMessage, "5.6.7", "the address needs SMTPUTF8 (RFC 6531), which %s does not offer", s.where)
		if !isASCII(env.From) || !slices.ContainsFunc(d.rcpts, func(idx int) bool { return isASCII(env.To[idx].Addr) }) {
			t.failAll(utf8Refused)
			return nil
		}
	}
	if err := s.c.Mail(env.From, opts); err != nil {
		return commandFailed(s, err, "MAIL FROM", t.failAll)
	}
	var accepted []int
	for i, idx := range d.rcpts {
		rcpt := env.To[idx]
		if utf8Refused != nil && !isASCII(rcpt.Addr) {
			t.fail(i, utf8Refused)
			continue
		}
		err := s.c.Rcpt(rcpt.Addr, rcptOptions(rcpt))
		if err == nil {
			accepted = append(accepted, i)
			continue
		}
		if f := commandFailed(s, err, "RCPT TO", func(f *failure) { t.fail(i, f) }); f != nil {
			return f
		}
	}
	if len(accepted) == 0 {
		return nil // the next transaction on s starts with RSET
	}
	failAccepted := func(f *failure) {
		for _, i := range accepted {
			t.fail(i, f)
		}
	}
	wc, err := s.c.Data()
	if err != nil {
		return commandFailed(s, err, "DATA", failAccepted)
	}
	if f := w.copyBody(ctx, s, wc, body); f != nil {
		if f.cause == CauseConnect {
			return f
		}
		failAccepted(f)
		return nil
	}
	resp, err := wc.CloseWithResponse()
	switch e := smtpError(err); {
	case err == nil:
		for _, i := range accepted {
			t.sent(i, successReply(resp.StatusText))
		}
	case e != nil && e.Code != 421:
		failAccepted(remoteFailure(e, CauseReply, ""))
	case e != nil:
		s.broken = true
		return remoteFailure(e, CauseConnect, s.where+" closed the session after the message").temporary()
	default:
		// The message went out and no reply came: the next hop may have
		// it. Deferred: a duplicate is better than a loss (RFC 5321
		// section 4.1.1.4 leaves no other choice).
		s.broken = true
		failAccepted(localFailure(false, CauseConnect, "4.4.2", "%s: no reply to the end of data: %v", s.where, err))
	}
	return nil
}

// commandFailed handles an error to a command: a reply other than 421
// decides for the recipients it concerns (record), anything else fails
// the session and is returned.
func commandFailed(s *session, err error, cmd string, record func(*failure)) *failure {
	if e := smtpError(err); e != nil && e.Code != 421 {
		record(remoteFailure(e, CauseReply, ""))
		return nil
	}
	return s.failed(err, "at "+cmd)
}

// copyBody streams the message as stored into DATA. A body that cannot be
// read, or has bytes unsafe for the wire, aborts the transaction: the
// connection is closed before the final dot, so the next hop discards what
// it got (RFC 5321 section 4.1.1.4 has no other way out of DATA).
func (w *Worker) copyBody(ctx context.Context, s *session, wc io.Writer, body bodyFunc) *failure {
	rc, err := body(ctx)
	if err != nil {
		s.broken = true
		_ = s.raw.Close()
		return bodyFailure(err)
	}
	defer func() { _ = rc.Close() }()
	src := message.NewChecker(rc, 0)
	buf := make([]byte, 32<<10)
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := wc.Write(buf[:n]); werr != nil {
				return s.failed(werr, "while sending the message")
			}
		}
		if errors.Is(rerr, io.EOF) {
			return nil
		}
		if rerr != nil {
			s.broken = true
			_ = s.raw.Close()
			return bodyFailure(rerr)
		}
	}
}

// bodyFailure is a message that cannot be read or sent: permanent when the
// stored bytes are bad, temporary otherwise (storage, shutdown).
func bodyFailure(err error) *failure {
	if errors.Is(err, message.ErrUnsafeBytes) || errors.Is(err, queue.ErrCorrupt) {
		return localFailure(true, CauseMessage, "5.6.0", "message not sent: %v", err)
	}
	return localFailure(false, CauseMessage, "4.3.0", "cannot read the queued message: %v", err)
}

// rcptOptions passes the DSN parameters of a recipient on (RFC 3461); go-smtp
// drops them when the next hop does not offer DSN.
func rcptOptions(r queue.Rcpt) *smtp.RcptOptions {
	o := &smtp.RcptOptions{}
	for _, n := range r.Notify {
		o.Notify = append(o.Notify, smtp.DSNNotify(n))
	}
	if typ, addr, ok := strings.Cut(r.ORcpt, ";"); ok && addr != "" {
		switch {
		case strings.EqualFold(typ, string(smtp.DSNAddressTypeRFC822)) && printableASCII(addr):
			o.OriginalRecipientType, o.OriginalRecipient = smtp.DSNAddressTypeRFC822, addr
		case strings.EqualFold(typ, string(smtp.DSNAddressTypeRFC822)), strings.EqualFold(typ, string(smtp.DSNAddressTypeUTF8)):
			// An RFC 822 address with UTF-8 in it can only go as utf-8
			// (RFC 6533 section 3).
			o.OriginalRecipientType, o.OriginalRecipient = smtp.DSNAddressTypeUTF8, addr
		}
	}
	if len(o.Notify) == 0 && o.OriginalRecipient == "" {
		return nil
	}
	return o
}

// printableASCII is go-smtp's condition on xtext values; anything else
// would make it refuse the whole command.
func printableASCII(s string) bool {
	for i := range len(s) {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// asciiEnvelope reports whether the sender and the recipients at idx are
// ASCII, so that the message may go to a server without SMTPUTF8.
func asciiEnvelope(env *queue.Envelope, idx []int) bool {
	if !isASCII(env.From) {
		return false
	}
	for _, i := range idx {
		if !isASCII(env.To[i].Addr) {
			return false
		}
	}
	return true
}

// isASCII: invalid UTF-8 decodes as U+FFFD, which is not ASCII either.
func isASCII(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return r >= utf8.RuneSelf })
}
