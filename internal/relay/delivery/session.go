package delivery

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"syscall"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/shaping"
	"github.com/postgate/postgate/internal/relay/tlsrpt"
)

// connKey identifies the connections that may carry each other's
// messages: same address, host name (TLS verification), source IP, TLS
// policy and mode, trust roots and credentials.
type connKey struct {
	remote netip.AddrPort
	host   string
	source netip.Addr
	policy v1alpha1.TLSPolicy
	mode   v1alpha1.TLSMode
	roots  *x509.CertPool
	user   string
	// verify names what the recipient domain's policy checked (DANE's
	// records, MTA-STS), "" when none did.
	verify string
}

// session is one SMTP connection after EHLO (and STARTTLS, AUTH).
type session struct {
	key   connKey
	where string // host[ip]:port, for messages
	raw   net.Conn
	// c set the session up (EHLO, AUTH) and tells its extensions; wire
	// speaks its transactions (see pipeline.go).
	c      *smtp.Client
	wire   *smtpWire
	local  netip.AddrPort
	tls    TLSInfo
	opened time.Time
	// broken: the connection failed or its state is unknown; never reused.
	broken bool
	// copyBuf carries message bytes from the spool to the wire. One per
	// session, made at its first message: a session runs one transaction
	// at a time, and a buffer per message was most of delivery's garbage.
	copyBuf []byte
	// checkErr is the certificate check's failure under a recipient
	// policy (DANE, MTA-STS), rptResult the TLS-RPT result type of a
	// failed TLS negotiation (RFC 8460 section 4.3), both for reporting.
	checkErr  error
	rptResult string
	// shape is the session's admission to its traffic shaping site,
	// released when the session closes; nil without shaping.
	shape *shaping.Conn
	// retire: close the session after its transaction instead of pooling
	// it (its site throttled, or it carried its share of messages).
	retire bool
}

// close ends the session, with QUIT when it is healthy.
func (s *session) close(quit bool) {
	if quit && !s.broken && s.wire != nil {
		if s.wire.command("QUIT") == nil && s.wire.flush() == nil {
			if _, err := s.wire.reply(221, 5*time.Second); err == nil && s.shape != nil {
				s.awaitClose(closeWait)
			}
		}
	}
	_ = s.raw.Close()
	if s.shape != nil {
		// After the close: the receiver never sees more connections
		// than the site's limit.
		s.shape.Release()
	}
}

// closeWait bounds how long a shaped session waits for the receiver to
// close the connection after its 221.
const closeWait = 2 * time.Second

// awaitClose waits, at most d, for the receiver to close the connection,
// as it must after its 221 (RFC 5321 section 4.1.1.10), reading and
// dropping whatever comes first (a TLS close_notify). The site's place is
// given back only then: a receiver that counts the connections open from
// us has seen this one end before the next one to it begins, however late
// its own side noticed our close.
func (s *session) awaitClose(d time.Duration) {
	_ = s.raw.SetReadDeadline(time.Now().Add(d))
	var buf [256]byte
	for {
		if _, err := s.raw.Read(buf[:]); err != nil {
			return
		}
	}
}

// watch closes the connection if ctx ends before stop is called, so that an
// aborted attempt never waits for a socket timeout.
func (s *session) watch(ctx context.Context) (stop func() bool) {
	return context.AfterFunc(ctx, func() { _ = s.raw.Close() })
}

// connect opens a session to addr, host's address, as d says. On failure
// it returns the session too (closed) when a connection was made, for its
// local address and TLS state.
func (w *Worker) connect(ctx context.Context, d *destination, p *connPolicy, host string, addr netip.Addr, plain bool) (*session, *failure) {
	name := strings.TrimSuffix(host, ".")
	remote := netip.AddrPortFrom(addr, uint16(d.port)) //nolint:gosec // ports are checked to be 1 to 65535
	where := fmt.Sprintf("%s[%s]:%d", name, addr, d.port)
	dctx, cancel := context.WithTimeout(ctx, w.opts.Timeouts.Connect)
	raw, err := w.opts.Dial(dctx, d.source, remote)
	cancel()
	if err != nil {
		if d.source.IsValid() && errors.Is(err, syscall.EADDRNOTAVAIL) {
			return nil, localFailure(false, CauseSourceIP, "4.4.0",
				"source address %s is not usable on this host (%v): not connecting to %s", d.source, err, where)
		}
		return nil, localFailure(false, CauseConnect, "4.4.1", "connect to %s: %v", where, err)
	}
	s := &session{
		key: d.connKey(host, remote, p), where: where, raw: raw, opened: w.clock.Now(),
		tls: TLSInfo{Requested: d.policy, Mode: d.mode, Policy: p.kind},
	}
	if a, ok := raw.LocalAddr().(*net.TCPAddr); ok {
		ap := a.AddrPort()
		s.local = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	stop := s.watch(ctx)
	f := w.open(ctx, s, d, p, name, plain)
	stop()
	if f == nil && ctx.Err() != nil {
		f = localFailure(false, CauseConnect, "4.4.2", "%s: attempt aborted: %v", where, ctx.Err())
	}
	if !plain && (f == nil || f.cause == CauseTLS) {
		w.reportSession(p, host, s, f)
	}
	if f != nil {
		s.broken = true
		_ = raw.Close()
	}
	return s, f
}

// open runs the session up to MAIL: TLS as the policy says, EHLO, AUTH.
//
// go-smtp's client can only send STARTTLS after an "EHLO localhost" of its
// own, and RFC 5321 section 4.1.1.1 wants our name there. So the greeting,
// the first EHLO and STARTTLS are spoken here (net/textproto), and go-smtp
// takes the connection after them, reading a stand-in greeting and sending
// EHLO again, which RFC 3207 section 4.2 requires after TLS anyway.
func (w *Worker) open(ctx context.Context, s *session, d *destination, p *connPolicy, name string, plain bool) *failure {
	var conn net.Conn = &deadlineConn{Conn: s.raw, block: w.opts.Timeouts.DataBlock}
	cfg := w.tlsConfig(p, name, s)
	switch {
	case d.mode == v1alpha1.TLSModeImplicit:
		tc := tls.Client(conn, cfg)
		if f := w.handshake(ctx, tc, s, p); f != nil {
			return f
		}
		conn = tc
	case !p.tls || plain:
	default:
		c, f := w.startTLS(ctx, conn, cfg, s, p)
		if f != nil {
			return f
		}
		conn = c
	}
	s.c = smtp.NewClient(conn)
	s.c.CommandTimeout = w.opts.Timeouts.Command
	s.c.SubmissionTimeout = w.opts.Timeouts.DataTermination
	if err := s.c.Hello(w.opts.Hostname); err != nil {
		var oe *net.OpError
		if s.tls.Established && errors.As(err, &oe) && oe.Op == "remote error" {
			// With TLS 1.3 the server's verdict on the handshake (a
			// client certificate it wanted, say) arrives with the first
			// read after it: a handshake failure all the same.
			s.broken = true
			f := localFailure(false, CauseTLS, "4.7.5", "TLS with %s failed: %v", s.where, err)
			f.plainRetry = true
			return f
		}
		return s.failed(err, "at greeting or EHLO")
	}
	if d.username != "" {
		if f := w.auth(s, d); f != nil {
			return f
		}
	}
	s.wire = newSMTPWire(conn)
	return nil
}

// failed turns an error of the session before MAIL into a failure of the
// connection: always temporary, whatever the reply, so that the next
// address is tried and the message stays queued.
func (s *session) failed(err error, during string) *failure {
	s.broken = true
	if e := smtpError(err); e != nil {
		return remoteFailure(e, CauseConnect, s.where+" refused us "+during).temporary()
	}
	var te *textproto.Error
	if errors.As(err, &te) {
		return remoteFailure(protoError(te), CauseConnect, s.where+" refused us "+during).temporary()
	}
	return localFailure(false, CauseConnect, "4.4.2", "%s: connection lost %s: %v", s.where, during, err)
}

// protoError converts a textproto reply to go-smtp's.
func protoError(e *textproto.Error) *smtp.SMTPError {
	se := &smtp.SMTPError{Code: e.Code, Message: e.Msg}
	if code, rest, ok := strings.Cut(e.Msg, " "); ok && isEnhanced(code) {
		_, _ = fmt.Sscanf(code, "%d.%d.%d", &se.EnhancedCode[0], &se.EnhancedCode[1], &se.EnhancedCode[2])
		se.Message = rest
	}
	return se
}

// handshake runs the TLS handshake and records what it negotiated.
func (w *Worker) handshake(ctx context.Context, tc *tls.Conn, s *session, p *connPolicy) *failure {
	hctx, cancel := context.WithTimeout(ctx, w.opts.Timeouts.Command)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		var verr *tls.CertificateVerificationError
		switch {
		case s.checkErr != nil && p.enforce:
			// The recipient policy's check (DANE's records) refused
			// the certificate: 4.7.5 with the reason, never in plaintext.
			s.rptResult = resultOf(s.checkErr)
			s.tls.PolicyResult = s.rptResult
			return localFailure(false, CauseTLS, "4.7.5", "%s: the certificate of %s does not satisfy %s: %v", s.rptResult, s.where, p.policyName(), s.checkErr)
		case errors.As(err, &verr):
			s.rptResult = resultOf(verr)
			s.tls.PolicyResult = s.rptResult
			return localFailure(false, CauseTLS, "4.7.5", "%s: TLS certificate of %s not verified for %s: %v", s.rptResult, s.where, p.policyName(), err)
		}
		s.rptResult = tlsrpt.ResultValidationFailure
		f := localFailure(false, CauseTLS, "4.7.5", "TLS handshake with %s failed: %v", s.where, err)
		f.plainRetry = true
		return f
	}
	s.tls.Established = true
	s.tls.Protocol, s.tls.CipherSuite = tlsInfoOf(tc.ConnectionState())
	return nil
}

// startTLS reads the greeting, says EHLO and, when the server offers it,
// STARTTLS (RFC 3207). It returns the connection for go-smtp: TLS, or
// plaintext when the policy allows it.
func (w *Worker) startTLS(ctx context.Context, conn net.Conn, cfg *tls.Config, s *session, p *connPolicy) (net.Conn, *failure) {
	required := p.require
	step := func() { _ = conn.SetDeadline(time.Now().Add(w.opts.Timeouts.Command)) }
	// Replies before TLS are bounded, as go-smtp bounds its lines.
	limited := &io.LimitedReader{R: conn, N: 64 << 10}
	tp := textproto.NewConn(struct {
		io.Reader
		io.Writer
		io.Closer
	}{limited, conn, conn})
	step()
	if _, _, err := tp.ReadResponse(220); err != nil {
		return nil, s.failed(err, "at greeting")
	}
	step()
	if err := tp.PrintfLine("EHLO %s", w.opts.Hostname); err != nil {
		return nil, s.failed(err, "at EHLO")
	}
	_, ext, ehloErr := tp.ReadResponse(250)
	err := ehloErr
	starttls := false
	if err == nil {
		for _, line := range strings.Split(ext, "\n")[1:] {
			if f := strings.Fields(line); len(f) > 0 && strings.EqualFold(f[0], "STARTTLS") {
				starttls = true
			}
		}
	} else if te := (*textproto.Error)(nil); !errors.As(err, &te) || (te.Code != 500 && te.Code != 502) {
		return nil, s.failed(err, "at EHLO")
	}
	// (500 or 502 to EHLO: an old server; go-smtp falls back to HELO.)
	if starttls {
		step()
		if err := tp.PrintfLine("STARTTLS"); err != nil {
			return nil, s.failed(err, "at STARTTLS")
		}
		_, _, err := tp.ReadResponse(220)
		var te *textproto.Error
		switch {
		case err == nil:
		case !errors.As(err, &te):
			return nil, s.failed(err, "at STARTTLS")
		case required:
			s.rptResult = tlsrpt.ResultSTARTTLSNotSupported
			return nil, remoteFailure(protoError(te), CauseTLS, "TLS is required by "+p.policyName()+", but "+s.where+" refused STARTTLS").temporary()
		default:
			starttls = false // refused (454): go on in plaintext, RFC 3207 section 4
		}
	}
	if tp.R.Buffered() > 0 {
		// Bytes after a reply the client has not answered: a server (or a
		// man in the middle) injecting commands' replies (RFC 3207 section 5).
		return nil, localFailure(false, CauseConnect, "4.4.2", "%s sent data ahead of our command", s.where)
	}
	_ = conn.SetDeadline(time.Time{})
	if !starttls {
		s.rptResult = tlsrpt.ResultSTARTTLSNotSupported
		if required {
			return nil, localFailure(false, CauseTLS, "4.7.4", "TLS is required by %s, but %s does not offer STARTTLS: nothing sent in plaintext", p.policyName(), s.where)
		}
		gc := newGreetedConn(conn)
		if ehloErr == nil {
			gc.answerEHLO(w.opts.Hostname, ext)
		}
		return gc, nil
	}
	tc := tls.Client(conn, cfg)
	if f := w.handshake(ctx, tc, s, p); f != nil {
		return nil, f
	}
	return newGreetedConn(tc), nil
}

// auth authenticates to a smart host with the route's credentials: PLAIN,
// or LOGIN when only LOGIN is offered, and never without TLS.
func (w *Worker) auth(s *session, d *destination) *failure {
	if !s.tls.Established {
		return localFailure(false, CauseAuth, "4.7.10", "%s: not sending credentials over a connection without TLS", s.where)
	}
	var mech sasl.Client
	switch {
	case s.c.SupportsAuth(sasl.Plain):
		mech = sasl.NewPlainClient("", d.username, d.password)
	case s.c.SupportsAuth(sasl.Login):
		mech = sasl.NewLoginClient(d.username, d.password)
	default:
		_, offered := s.c.Extension("AUTH")
		return localFailure(false, CauseAuth, "4.7.0", "%s offers no AUTH mechanism we use (PLAIN, LOGIN); it offers %q", s.where, offered)
	}
	if err := s.c.Auth(mech); err != nil {
		if e := smtpError(err); e != nil && e.Code != 421 {
			return remoteFailure(e, CauseAuth, "authentication to "+s.where+" failed").temporary()
		}
		return s.failed(err, "at AUTH")
	}
	return nil
}

// deadlineConn sets a write deadline before each write, so each block of
// the message has its own timeout (RFC 5321 section 4.5.3.2.5) while
// go-smtp leaves writes of DATA unbounded.
type deadlineConn struct {
	net.Conn
	block time.Duration
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	if err := c.SetWriteDeadline(time.Now().Add(c.block)); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

// greetedConn hands go-smtp a connection whose greeting was already read
// (and STARTTLS done): its first read is a stand-in 220. On a connection
// that stays in plaintext the server's answer to our EHLO still holds, so
// go-smtp's own EHLO (its first write, the same name) is answered with it
// here instead of crossing the network again: one round trip less per
// connection, and the server sees one EHLO.
type greetedConn struct {
	net.Conn
	greeting *strings.Reader
	// ehlo is the command answered here and reply its answer; both are
	// cleared by the first write, whatever it is.
	ehlo  string
	reply *strings.Reader
}

func newGreetedConn(c net.Conn) *greetedConn {
	return &greetedConn{Conn: c, greeting: strings.NewReader("220 greeting read before STARTTLS\r\n")}
}

// answerEHLO makes the first write, when it is "EHLO name", be answered
// with the 250 reply whose lines (without their codes) are ext, as
// net/textproto gave them.
func (c *greetedConn) answerEHLO(name, ext string) {
	var b strings.Builder
	lines := strings.Split(ext, "\n")
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		b.WriteString("250" + sep + l + "\r\n")
	}
	c.ehlo, c.reply = "EHLO "+name+"\r\n", strings.NewReader(b.String())
}

func (c *greetedConn) Read(p []byte) (int, error) {
	if c.greeting.Len() > 0 {
		return c.greeting.Read(p)
	}
	if c.reply != nil && c.reply.Len() > 0 {
		return c.reply.Read(p)
	}
	return c.Conn.Read(p)
}

func (c *greetedConn) Write(p []byte) (int, error) {
	if c.ehlo != "" {
		answered := string(p) == c.ehlo
		c.ehlo = ""
		if answered {
			return len(p), nil
		}
		c.reply = nil
	}
	return c.Conn.Write(p)
}
