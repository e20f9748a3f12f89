package delivery

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-smtp"

	"github.com/postgate/postgate/internal/relay/message"
	"github.com/postgate/postgate/internal/relay/queue"
)

// transaction sends msg to d's recipients over s: MAIL FROM, one RCPT TO
// per recipient (the address exactly as the client gave it), DATA, after
// an RSET when the session carried a transaction before (reset). To a
// server that offers PIPELINING (RFC 2920) they go in one group, and the
// replies are read in order, each RCPT's for its recipient, as if the
// commands had gone one by one. It fills t per recipient. It returns a
// failure, with t to be discarded, when the host failed before it took
// responsibility for anything (421, a lost connection before the end of
// data): the next address may take the message instead; and stale when
// the RSET of a reused session failed, so that nothing was taken and a new
// connection should carry the transaction.
func (w *Worker) transaction(ctx context.Context, s *session, msg *queue.Message, d *destination, body bodyFunc, t *outcome, reset bool) (_ *failure, stale bool) {
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
			return nil, false
		}
	}
	mail, err := mailCommand(env.From, opts, s.c.Extension)
	if err != nil {
		return s.failed(err, "at MAIL FROM"), false
	}
	type rcptCommand struct {
		i    int // position in d.rcpts and t
		line string
	}
	var rcpts []rcptCommand
	for i, idx := range d.rcpts {
		rcpt := env.To[idx]
		if utf8Refused != nil && !isASCII(rcpt.Addr) {
			t.fail(i, utf8Refused)
			continue
		}
		line, err := formatRcpt(rcpt.Addr, rcptOptions(rcpt), s.c.Extension)
		if err != nil {
			return s.failed(err, "at RCPT TO"), false
		}
		rcpts = append(rcpts, rcptCommand{i, line})
	}

	c, timeout := s.wire, w.opts.Timeouts.Command
	pipelined, _ := s.c.Extension("PIPELINING")
	// send sends a command on its own, or nothing when the group went
	// out already.
	send := func(line string) error {
		if pipelined {
			return nil
		}
		if err := c.command(line); err != nil {
			return err
		}
		return c.flush()
	}
	if pipelined {
		// RFC 2920 section 3.1: RSET, MAIL and RCPT anywhere in a group,
		// DATA last. Buffered writes cannot fail before the flush.
		if reset {
			_ = c.command("RSET")
		}
		_ = c.command(mail)
		for _, r := range rcpts {
			_ = c.command(r.line)
		}
		_ = c.command("DATA")
		if err := c.flush(); err != nil {
			if reset {
				s.broken = true
				return nil, true
			}
			return s.failed(err, "at MAIL FROM"), false
		}
	}
	if reset {
		// Within a short timeout: a session the server closed while it
		// was idle fails here, and the caller dials again.
		err := send("RSET")
		if err == nil {
			_, err = c.reply(250, min(timeout, 30*time.Second))
		}
		if err != nil {
			s.broken = true
			return nil, true
		}
	}
	err = send(mail)
	if err == nil {
		_, err = c.reply(250, timeout)
	}
	if err != nil {
		if f := commandFailed(s, err, "MAIL FROM", t.failAll); f != nil {
			return f, false
		}
		if pipelined {
			w.discard(s, len(rcpts))
		}
		return nil, false // the next transaction on s starts with RSET
	}
	var accepted []int
	for _, r := range rcpts {
		err := send(r.line)
		if err == nil {
			_, err = c.reply(25, timeout)
		}
		if err == nil {
			accepted = append(accepted, r.i)
			continue
		}
		if f := commandFailed(s, err, "RCPT TO", func(f *failure) { t.fail(r.i, f) }); f != nil {
			return f, false
		}
	}
	if len(accepted) == 0 {
		if pipelined {
			w.discard(s, 0)
		}
		return nil, false
	}
	failAccepted := func(f *failure) {
		for _, i := range accepted {
			t.fail(i, f)
		}
	}
	err = send("DATA")
	if err == nil {
		_, err = c.reply(354, timeout)
	}
	if err != nil {
		return commandFailed(s, err, "DATA", failAccepted), false
	}
	dw := newDotWriter(c.w)
	if f := w.copyBody(ctx, s, dw, body); f != nil {
		if f.cause == CauseConnect {
			return f, false
		}
		failAccepted(f)
		return nil, false
	}
	err = dw.Close()
	var text string
	if err == nil {
		text, err = c.reply(250, w.opts.Timeouts.DataTermination)
	}
	switch e := smtpError(err); {
	case err == nil:
		// RFC 3461 section 5.2.1: a next hop that offers DSN took the
		// recipients' NOTIFY with them and reports in our stead.
		dsn, _ := s.c.Extension("DSN")
		for _, i := range accepted {
			t.sent(i, successReply(text), dsn)
		}
	case e != nil && e.Code != 421:
		failAccepted(remoteFailure(e, CauseReply, ""))
	case e != nil:
		s.broken = true
		return remoteFailure(e, CauseConnect, s.where+" closed the session after the message").temporary(), false
	default:
		// The message went out and no reply came: the next hop may have
		// it. Deferred: a duplicate is better than a loss (RFC 5321
		// section 4.1.1.4 leaves no other choice).
		s.broken = true
		failAccepted(localFailure(false, CauseConnect, "4.4.2", "%s: no reply to the end of data: %v", s.where, err))
	}
	return nil, false
}

// discard reads the replies to the rest of a pipelined group that a
// refused MAIL, or the refusal of every RCPT, left without effect: n RCPT
// replies, then DATA's (RFC 2920 section 3.1: the server refuses DATA
// then). A server that takes DATA all the same gets an empty message,
// which it has no recipient for. The session is not reused when anything
// goes wrong.
func (w *Worker) discard(s *session, n int) {
	timeout := w.opts.Timeouts.Command
	lost := func(err error) bool {
		if e := smtpError(err); err != nil && (e == nil || e.Code == 421) {
			s.broken = true
			return true
		}
		return false
	}
	for range n {
		if _, err := s.wire.reply(25, timeout); lost(err) {
			return
		}
	}
	_, err := s.wire.reply(354, timeout)
	if err != nil {
		lost(err)
		return
	}
	if err := newDotWriter(s.wire.w).Close(); err != nil {
		s.broken = true
		return
	}
	_, err = s.wire.reply(250, w.opts.Timeouts.DataTermination)
	lost(err)
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

// copyBody streams the message as stored into DATA (wc dot-stuffs it). A
// body that cannot be read, or has bytes unsafe for the wire, aborts the
// transaction: the connection is closed before the final dot, so the next
// hop discards what it got (RFC 5321 section 4.1.1.4 has no other way out
// of DATA).
func (w *Worker) copyBody(ctx context.Context, s *session, wc io.Writer, body bodyFunc) *failure {
	rc, err := body(ctx)
	if err != nil {
		s.broken = true
		_ = s.raw.Close()
		return bodyFailure(err)
	}
	defer func() { _ = rc.Close() }()
	src := message.NewChecker(rc, 0)
	if s.copyBuf == nil {
		s.copyBuf = make([]byte, 32<<10)
	}
	buf := s.copyBuf
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
