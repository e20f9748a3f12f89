package smtpd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/postgate/postgate/internal/relay/message"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/routing"
)

// Replies. Each names the RFC 3463 enhanced code it carries.
var (
	// errStorage: 452 4.3.1, "mail system full" (RFC 3463 section 3.4).
	errStorage = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Insufficient system storage, try again later"}
	// errQueueWrite: 451 4.3.0, the message could not be stored.
	errQueueWrite = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Could not queue the message, try again later"}
	// errAuthFailed: 535 5.7.8 (RFC 4954 section 6).
	errAuthFailed = smtp.ErrAuthFailed
	// errTLSRequired: AUTH before STARTTLS, 523 5.7.10 (RFC 5248's
	// "Encryption Needed"; go-smtp's own answer, kept).
	errTLSRequired = &smtp.SMTPError{Code: 523, EnhancedCode: smtp.EnhancedCode{5, 7, 10}, Message: "TLS is required"}
	// errNestedMail: MAIL inside a transaction, 503 5.5.1 (RFC 5321
	// sections 4.1.1.2 and 4.1.4: RSET or end the transaction first).
	errNestedMail = &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "Nested MAIL command: a transaction is already open"}
)

// maxAuthFailures closes a session after this many failed AUTH attempts,
// slowing password guessing to one connection per few tries.
const maxAuthFailures = 3

type backend struct{ s *Server }

func (b *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	pc, ok := c.Conn().(*protoConn)
	if !ok {
		return nil, errors.New("smtpd: a connection that did not come through the accept path")
	}
	return &session{s: b.s, conn: c, pc: pc, cc: pc.cc, client: addrPort(c.Conn().RemoteAddr())}, nil
}

// session is one client's SMTP session. go-smtp calls its methods from the
// connection's goroutine (and Data, for BDAT, from one more), never
// concurrently.
type session struct {
	s        *Server
	conn     *smtp.Conn
	pc       *protoConn
	cc       *clientConn
	client   netip.AddrPort
	identity string

	// inTx: MAIL was accepted and the transaction has not ended.
	inTx     bool
	from     string
	mailOpts smtp.MailOptions
	to       []string
	rcptOpts []smtp.RcptOptions
}

func (s *session) table() *routing.Table { return s.s.cfg.Tables.Table() }

// errNotReady: 451 4.3.2, the system is not accepting messages (RFC 3463
// section 3.4): a relay in a cluster that has no table yet (first start,
// API server away, nothing spooled) asks clients to come back.
var errNotReady = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Relay not ready: no routing table loaded yet, try again later"}

// AuthMechanisms offers PLAIN and LOGIN over TLS to clients in a network
// that accepts AUTH.
func (s *session) AuthMechanisms() []string {
	if t := s.table(); t == nil || s.pc.TLS() == nil || !t.AuthOffered(s.client.Addr()) {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	if s.pc.TLS() == nil {
		return nil, errTLSRequired
	}
	check := func(username, password string) error {
		t := s.table()
		if t == nil {
			return errNotReady
		}
		id := t.Authenticate(s.client.Addr(), username, password)
		if id == "" {
			n := s.pc.authFailed()
			s.s.cfg.Logger.Info("SMTP AUTH failed", "client", s.client, "failures", n)
			s.s.cfg.Metrics.rejected("auth", errAuthFailed)
			return errAuthFailed
		}
		s.identity = id
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(authzid, username, password string) error {
			if authzid != "" && authzid != username {
				return errAuthFailed
			}
			return check(username, password)
		}), nil
	case sasl.Login:
		return newLoginServer(check), nil
	default:
		return nil, smtp.ErrAuthUnknownMechanism
	}
}

// The bounds of RFC 3461 on DSN parameters: an ENVID of at most 100
// characters (section 4.4), an ORCPT of at most 500 (section 4.2).
const (
	maxEnvID = 100
	maxORcpt = 500
)

func (s *session) Mail(from string, opts *smtp.MailOptions) (err error) {
	defer func() { s.s.cfg.Metrics.rejected("mail", err) }()
	// A draining server starts no transaction (RFC 5321 section 3.8).
	if s.s.draining.Load() {
		if s.cc != nil {
			s.cc.closeAfterWrite.Store(true)
		}
		return s.s.shuttingDown()
	}
	if s.inTx {
		return errNestedMail
	}
	if from != "" {
		if err := checkAddress(from); err != nil {
			return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 7}, Message: "Sender address refused: " + err.Error()}
		}
		if opts == nil || !opts.UTF8 {
			if err := needsSMTPUTF8(from); err != nil {
				return err
			}
		}
	}
	// While delivery is behind, the transaction waits here, before the
	// client sends its body, for delivery to take a message or at most
	// --in-flow-delay; then it goes on. The MAIL reply is only late (the
	// client waits up to 5 minutes for it, RFC 5321 section 4.5.3.2.2),
	// nothing is refused.
	if s.s.cfg.InFlow != nil {
		s.s.cfg.InFlow.Wait(context.Background())
	}
	var size int64
	if opts != nil {
		size = opts.Size
		// RFC 3461 section 4.4: an ENVID is at most 100 characters.
		if len(opts.EnvelopeID) > maxEnvID {
			return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: fmt.Sprintf("ENVID longer than %d characters (RFC 3461 section 4.4)", maxEnvID)}
		}
	}
	if err := s.s.cfg.Spool.CheckSpace(size); err != nil {
		s.s.cfg.Logger.Warn("Refusing mail: spool low on space", "client", s.client, "error", err)
		return errStorage
	}
	s.from, s.inTx = from, true
	if opts != nil {
		s.mailOpts = *opts
	}
	if s.cc != nil {
		s.cc.inTx.Store(true)
	}
	return nil
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) (err error) {
	defer func() { s.s.cfg.Metrics.rejected("rcpt", err) }()
	if err := checkAddress(to); err != nil {
		return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Recipient address refused: " + err.Error()}
	}
	if !s.mailOpts.UTF8 {
		if err := needsSMTPUTF8(to); err != nil {
			return err
		}
	}
	// RFC 3461 section 4.2: an ORCPT is at most 500 characters.
	if opts != nil && len(opts.OriginalRecipientType)+1+len(opts.OriginalRecipient) > maxORcpt {
		return &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: fmt.Sprintf("ORCPT longer than %d characters (RFC 3461 section 4.2)", maxORcpt)}
	}
	if err := s.authorize(); err != nil {
		return err
	}
	s.to = append(s.to, to)
	if opts != nil {
		s.rcptOpts = append(s.rcptOpts, *opts)
	} else {
		s.rcptOpts = append(s.rcptOpts, smtp.RcptOptions{})
	}
	return nil
}

// authorize answers 554 5.7.1 Relay access denied unless the current table
// lets this client send as this sender. The null sender is for a trusted
// client only, and who it is from is decided by the From field at the end
// of the message (author).
func (s *session) authorize() error {
	t := s.table()
	if t == nil {
		return errNotReady
	}
	if s.from == "" {
		if t.Trusted(s.client.Addr()) {
			return nil
		}
		return s.denied(routing.DenyUntrusted, "")
	}
	return s.denied(t.MaySend(s.client.Addr(), s.identity, s.from), "")
}

// denied is the reply to a Denial, nil for Allowed; what prefixes the
// reason.
func (s *session) denied(d routing.Denial, what string) error {
	if d == routing.Allowed {
		return nil
	}
	s.s.cfg.Logger.Info("Relay access denied", "client", s.client, "identity", s.identity, "from", s.from, "reason", what+d.String())
	return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Relay access denied: " + what + d.String()}
}

// signing decides, once the header is read, which domain signs the
// message and with which key (nil: unsigned). A message from the null
// sender (an auto-reply, RFC 3834, or an application's bounce) may go only
// when its single From address is one the client may send as, exactly as
// a MAIL FROM would be (554 5.7.1 otherwise); delivery then takes that
// domain's route and source address. Any other message is signed by its
// From field's domain when that aligns it for DMARC and the table allows
// it (routing.Table.SigningDomain), else by the sender's. A signing domain
// whose key is unavailable is an unsignedError: its mail is never accepted
// unsigned.
func (s *session) signing(a message.Author) (string, *routing.DKIM, error) {
	t := s.table()
	if t == nil {
		return "", nil, errNotReady
	}
	sender := s.from
	if sender == "" {
		if a.Mailbox == "" {
			s.s.cfg.Logger.Info("Relay access denied", "client", s.client, "identity", s.identity, "from", "", "reason", "no single From address")
			return "", nil, &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
				Message: "Relay access denied: a message from the null sender needs exactly one From field with exactly one address"}
		}
		if err := s.denied(t.MaySend(s.client.Addr(), s.identity, a.Mailbox), "From field: "); err != nil {
			return "", nil, err
		}
		sender = a.Mailbox
	}
	d := t.SigningDomain(s.client.Addr(), s.identity, sender, a.Domain)
	switch {
	case d != nil && d.SigningUnavailable != "":
		return "", nil, &unsignedError{reason: d.SigningUnavailable}
	case d != nil && d.DKIM != nil:
		return d.Name, d.DKIM, nil
	}
	return "", nil, nil
}

func (s *session) Data(r io.Reader) (err error) {
	defer func() { s.s.cfg.Metrics.rejected("data", err) }()
	if s.cc != nil {
		s.cc.beginData()
		defer s.cc.endData()
	}
	// The table may have changed since RCPT: decide again, now.
	if err := s.authorize(); err != nil {
		return err
	}
	env := &Envelope{
		From: s.from, To: s.to, MailOptions: s.mailOpts, RcptOptions: s.rcptOpts,
		Client: s.client, Identity: s.identity, Helo: s.conn.Hostname(),
	}
	env.TLS = s.pc.TLS()
	ctx := context.Background()
	// Received, Message-ID and Date when missing, and the DKIM signature of
	// a signing domain, are added now, at accept time (docs/design.md contract
	// 5): the queued message carries them. The bytes are checked first.
	params := message.Params{
		Hostname: s.s.cfg.Hostname, Helo: env.Helo, Client: env.Client, TLS: env.TLS, Identity: env.Identity,
		Recipients: env.To, Now: s.s.cfg.Now(), StageDir: s.s.cfg.StageDir,
		Signing: s.signing,
	}
	// A DATA body is read by protoConn, a buffer at a time; go-smtp's own
	// reader (r) goes byte by byte, and reads BDAT messages' chunks.
	if body := s.pc.body(s.s.cfg.MaxMessageBytes); body != nil {
		r = body
	}
	in := message.NewChecker(&rawFaults{r: r, pc: s.pc}, s.s.cfg.MaxLineLength)
	prepared, err := message.Prepare(ctx, in, params)
	var unsigned *unsignedError
	if errors.As(err, &unsigned) {
		// A signing domain without its key: the message is read to its
		// end and refused for now, never queued unsigned; a broken stream
		// is answered as such.
		if _, cerr := io.Copy(io.Discard, in); cerr != nil {
			err = cerr
		}
	}
	var id string
	body := &countingReader{}
	if err == nil {
		env.MessageID, env.HeaderFrom, env.Tag = prepared.MessageID, prepared.HeaderFrom, prepared.Tag
		env.TLSOptional = prepared.TLSOptional && !env.MailOptions.RequireTLS
		body.r = prepared
		id, err = s.s.cfg.Spool.Enqueue(ctx, env, body)
		_ = prepared.Close()
	}
	var be *message.UnsafeBytesError
	var refused *smtp.SMTPError
	switch {
	case err == nil:
		s.s.cfg.Metrics.messageAccepted(body.n)
		s.s.cfg.Logger.Info("Queued", "id", id, "client", s.client, "from", s.from, "recipients", len(s.to), "dkim", prepared.SignedBy)
		// go-smtp answers a nil error with a bare "OK: queued"; the queue
		// id in the reply is what lets a sender trace a message.
		return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK: queued as " + id}
	case errors.As(err, &refused):
		return refused
	case errors.As(err, &unsigned):
		// 451 4.3.0 at the end of DATA (or BDAT LAST): signing happens
		// at accept time, and the key may come back (RFC 3463 section
		// 3.4: a temporary system problem).
		s.s.cfg.Logger.Warn("Message refused for now: signing key unavailable", "client", s.client, "from", s.from, "reason", unsigned.reason)
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
			Message: "Not accepted for now: " + boundReason(unsigned.reason) + "; mail of a signing domain is never sent unsigned, try again later"}
	case errors.As(err, &be) && be.LongLine:
		// 550 5.6.0: the content is unacceptable (RFC 3463 section 3.7).
		// The reply is the connection's last: a client that sends such
		// lines is not one to go on with (the body was read to its end,
		// so nothing of it is taken for a command either way).
		if s.cc != nil {
			s.cc.closeAfterWrite.Store(true)
		}
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: fmt.Sprintf("Message refused: %s (RFC 5321 section 4.5.3.1.6 allows 998)", be)}
	case errors.As(err, &be):
		// 550 5.5.2: a syntax error in the message bytes, the defense
		// against SMTP smuggling.
		s.s.cfg.Logger.Info("Message bytes refused", "client", s.client, "reason", be.Error())
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: fmt.Sprintf("Message refused: %s; lines must end with CRLF and contain no NUL (RFC 5321 section 2.3.8)", be)}
	case errors.Is(err, smtp.ErrDataTooLarge), errors.Is(err, message.ErrHeaderTooLarge):
		return smtp.ErrDataTooLarge
	case errors.Is(err, message.ErrBadTag):
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: fmt.Sprintf(
			"Message refused: %s; one %s field of 1 to %d visible ASCII characters is allowed", err, message.TagField, message.MaxTagBytes)}
	case errors.Is(err, message.ErrLoop):
		// RFC 5321 section 6.3; 5.4.6, routing loop detected (RFC 3463).
		s.s.cfg.Logger.Warn("Message refused: a mail loop", "client", s.client, "reason", err.Error())
		return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 4, 6}, Message: fmt.Sprintf("Message refused: %v (RFC 5321 section 6.3)", err)}
	case errors.Is(err, message.ErrMalformed):
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Message refused: the header begins with a folded continuation line"}
	case errors.Is(err, smtp.ErrTooLongLine):
		// The stream can no longer be parsed safely: answer and close.
		if s.cc != nil {
			s.cc.closeAfterWrite.Store(true)
		}
		return &smtp.SMTPError{Code: 500, EnhancedCode: smtp.EnhancedCode{5, 5, 6}, Message: fmt.Sprintf("Line longer than %d octets, closing the connection", s.s.cfg.MaxLineLength)}
	case errors.Is(err, smtp.ErrDataReset), errors.Is(err, io.ErrUnexpectedEOF):
		return err
	case isTimeout(err) && s.cc != nil:
		// Silence, or a body behind MinDataRate: the rest of the body is
		// not read (the stream cannot be resynchronized), the reply is
		// the last word, as for an idle client (RFC 5321 section
		// 4.5.3.2.7 lets a server close a connection that times out).
		s.cc.timedOut.Store(true)
		s.cc.closeAfterWrite.Store(true)
		s.s.cfg.Logger.Info("Message body timed out", "client", s.client, "minDataRate", s.s.cfg.MinDataRate)
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
			Message: fmt.Sprintf("%s Timeout: the message arrived too slowly (idle %s, or under %d bytes/s), closing the connection",
				s.s.cfg.Hostname, s.s.cfg.IdleTimeout, s.s.cfg.MinDataRate)}
	case errors.Is(err, queue.ErrNoSpace):
		s.s.cfg.Logger.Warn("Refusing mail: spool full", "client", s.client, "error", err)
		return errStorage
	case errors.Is(err, queue.ErrTooLarge):
		return smtp.ErrDataTooLarge
	case errors.Is(err, queue.ErrInvalid):
		// The same envelope would fail the same way on every retry.
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: "Envelope refused: " + err.Error()}
	default:
		s.s.cfg.Logger.Error("Could not queue a message", "client", s.client, "error", err)
		return errQueueWrite
	}
}

func (s *session) Reset() {
	s.from, s.mailOpts, s.to, s.rcptOpts, s.inTx = "", smtp.MailOptions{}, nil, nil, false
	if s.cc != nil {
		s.cc.inTx.Store(false)
	}
}

func (s *session) Logout() error { return nil }

// unsignedError refuses the message of a signing domain whose key is
// unavailable.
type unsignedError struct{ reason string }

func (e *unsignedError) Error() string { return e.reason }

// boundReason makes a reason printable ASCII that fits in an SMTP reply
// line (512 octets, RFC 5321 section 4.5.3.1.5) with the rest of the reply.
func boundReason(s string) string {
	const limit = 300
	b := make([]byte, 0, min(len(s), limit))
	for i := 0; i < len(s) && len(b) < limit; i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e {
			c = '?'
		}
		b = append(b, c)
	}
	return string(b)
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

// isTimeout reports whether err is a read deadline that passed.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// rawFaults fails a DATA body with the fault protoConn saw in its raw
// bytes (a bare CR after a leading dot, which go-smtp's dot-decoding
// deletes): the message is refused, not stored changed.
type rawFaults struct {
	r  io.Reader
	pc *protoConn
}

func (f *rawFaults) Read(b []byte) (int, error) {
	n, err := f.r.Read(b)
	// protoConn has seen these bytes, and the bytes of the end-of-data
	// line before the EOF, in their raw form already.
	if fault := f.pc.takeDataFault(); fault != nil {
		return 0, fault
	}
	return n, err
}
