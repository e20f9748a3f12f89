package smtpd

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/pires/go-proxyproto"

	"github.com/postgate/postgate/internal/routing"
)

// TableSource returns the routing table currently in force. The relay swaps
// tables atomically; the server asks at every decision.
type TableSource interface {
	Table() *routing.Table
}

// Spool is the durable queue as the server needs it.
type Spool interface {
	// CheckSpace fails when the spool cannot take a message of size bytes
	// (0 when unknown) now: the client gets 452 4.3.1 before sending data.
	CheckSpace(size int64) error
	// Enqueue stores the message and returns its queue id once message and
	// envelope are durable (fsynced). It fails, storing nothing, when body
	// returns an error or storage fails.
	Enqueue(ctx context.Context, env *Envelope, body io.Reader) (id string, err error)
}

// InFlow holds a new transaction back while delivery is behind acceptance
// (internal/relay/inflow); it never refuses one.
type InFlow interface {
	Wait(ctx context.Context) (time.Duration, string)
}

// Envelope is what the server knows of a message besides its bytes.
type Envelope struct {
	// From is MAIL FROM as the client gave it; empty for the null sender.
	From string
	// To are the RCPT TO addresses as the client gave them, in order.
	To []string
	// MailOptions are the ESMTP parameters of MAIL FROM (SIZE, BODY,
	// SMTPUTF8, RET, ENVID, AUTH).
	MailOptions smtp.MailOptions
	// RcptOptions are the ESMTP parameters of each RCPT TO (NOTIFY,
	// ORCPT), parallel to To.
	RcptOptions []smtp.RcptOptions
	// Client is the client's address (after PROXY protocol).
	Client netip.AddrPort
	// Identity is the SMTP AUTH identity, namespace/user, or empty.
	Identity string
	// Helo is the name the client gave in EHLO or HELO.
	Helo string
	// TLS describes the client connection's TLS, nil without TLS.
	TLS *tls.ConnectionState
	// MessageID and HeaderFrom are the message's Message-ID (the client's
	// or the one added) and From address, set once the header is read,
	// for delivery notifications; "" when unknown.
	MessageID, HeaderFrom string
	// TLSOptional: the message says "TLS-Required: No" (RFC 8689 section
	// 5) and MAIL FROM had no REQUIRETLS, which wins over it (section 4.2).
	TLSOptional bool
	// Tag is the message's X-Postgate-Tag (removed from the message), for
	// delivery notifications; "" when none.
	Tag string
}

// Config configures a Server. Zero limits take the defaults of the
// `postgate relay` flags.
type Config struct {
	// Hostname is the name in the greeting and in replies.
	Hostname string
	Tables   TableSource
	Spool    Spool
	// TLS enables STARTTLS and the implicit-TLS listener; nil disables
	// both. AUTH is offered only over TLS.
	TLS *tls.Config
	// ProxyCIDRs are the peers that must, and alone may, send a PROXY
	// protocol header (v1 or v2).
	ProxyCIDRs []netip.Prefix
	// MaxMessageBytes bounds a message (default 25 MiB).
	MaxMessageBytes int64
	// MaxRecipients bounds the recipients of one message (default 100).
	MaxRecipients int
	// MaxConnections bounds open connections (default 1000);
	// MaxConnectionsPerClient bounds them per client address (default 50).
	MaxConnections, MaxConnectionsPerClient int
	// IdleTimeout closes a connection that sends nothing for this long
	// (default 5 minutes, RFC 5321 section 4.5.3.2.7).
	IdleTimeout time.Duration
	// MinDataRate is the least average rate, in bytes per second, of a
	// message body (DATA or BDAT) once IdleTimeout has passed since it
	// began: the body must arrive within IdleTimeout + size/MinDataRate.
	// A client that keeps the idle timer alive with a byte now and then
	// (slow loris) is cut off like an idle one, 421 4.4.2. Default 100,
	// far below any real client (Postfix's smtpd_min_data_rate is 500);
	// negative: only silence counts.
	MinDataRate int64
	// ProxyHeaderTimeout bounds the wait for a PROXY header (default 5s).
	ProxyHeaderTimeout time.Duration
	// MaxLineLength bounds a line of a command or message, in octets
	// without CRLF (default 2000). RFC 5321 section 4.5.3.1.6 caps text
	// lines at 998, so every conforming message passes.
	MaxLineLength int
	// StageDir holds the temporary file of a message being DKIM-signed
	// when it does not fit in memory (internal/relay/message). Required when any
	// domain signs.
	StageDir string
	// Now is the clock of Received and added Date fields; default
	// time.Now.
	Now    func() time.Time
	Logger *slog.Logger
	// Metrics counts sessions, accepted and refused mail; nil counts
	// nothing.
	Metrics *Metrics
	// InFlow is waited on at MAIL FROM, before the client sends the body
	// (docs/design.md, "In-flow backpressure"); nil: never.
	InFlow InFlow
}

func (c *Config) setDefaults() {
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = 25 << 20
	}
	if c.MaxRecipients == 0 {
		c.MaxRecipients = 100
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = 1000
	}
	if c.MaxConnectionsPerClient == 0 {
		c.MaxConnectionsPerClient = 50
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 5 * time.Minute
	}
	if c.MinDataRate == 0 {
		c.MinDataRate = 100
	}
	if c.ProxyHeaderTimeout == 0 {
		c.ProxyHeaderTimeout = 5 * time.Second
	}
	if c.MaxLineLength == 0 {
		c.MaxLineLength = 2000
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Server is the relay's SMTP server.
type Server struct {
	cfg    Config
	smtp   *smtp.Server
	limits *connLimits

	mu        sync.Mutex
	listeners []net.Listener
	closed    bool
	done      chan struct{}
	accepting sync.WaitGroup
	// conns are the admitted connections, so that Drain can wake the ones
	// blocked reading their next command.
	conns map[*clientConn]struct{}
	// draining: Drain was called; see there.
	draining atomic.Bool
}

// New returns a server for cfg.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if cfg.Tables == nil || cfg.Spool == nil {
		return nil, errors.New("smtpd: Tables and Spool are required")
	}
	s := &Server{
		cfg:    cfg,
		limits: &connLimits{total: cfg.MaxConnections, perClient: cfg.MaxConnectionsPerClient, open: map[netip.Addr]int{}},
		done:   make(chan struct{}),
		conns:  map[*clientConn]struct{}{},
	}
	srv := smtp.NewServer(&backend{s: s})
	srv.Domain = cfg.Hostname
	// TLS is protoConn's (it must see the plain text); AUTH is offered
	// by the session over TLS only.
	srv.AllowInsecureAuth = true
	// RFC 6531: the session takes non-ASCII addresses only in a
	// transaction opened with the SMTPUTF8 parameter.
	srv.EnableSMTPUTF8 = true
	// RFC 3461: RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT are
	// taken, queued with the message and passed on to a next hop that
	// offers DSN; delivery reports failures (unless NOTIFY says
	// otherwise) and, for NOTIFY=SUCCESS, a relay to a next hop without
	// DSN (Action: relayed, section 5.2.2).
	srv.EnableDSN = true
	srv.MaxMessageBytes = cfg.MaxMessageBytes
	srv.MaxRecipients = cfg.MaxRecipients
	srv.MaxLineLength = cfg.MaxLineLength
	// No ReadTimeout: go-smtp sets it once per command line, which would
	// bound a whole DATA body. clientConn extends a deadline on every read.
	srv.WriteTimeout = cfg.IdleTimeout
	srv.ErrorLog = slogLogger{cfg.Logger}
	s.smtp = srv
	return s, nil
}

// Serve accepts connections on ln until Shutdown. With implicitTLS, TLS
// starts before the greeting (RFC 8314 section 3.3, port 465).
func (s *Server) Serve(ln net.Listener, implicitTLS bool) error {
	if implicitTLS && s.cfg.TLS == nil {
		return errors.New("smtpd: implicit TLS needs a TLS configuration")
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return smtp.ErrServerClosed
	}
	s.listeners = append(s.listeners, ln)
	s.accepting.Add(1)
	s.mu.Unlock()
	defer s.accepting.Done()

	admitted := &chanListener{conns: make(chan net.Conn), addr: ln.Addr(), done: s.done}
	// go-smtp serves what the accept path admits; it returns when done is
	// closed, which Shutdown does.
	go func() { _ = s.smtp.Serve(admitted) }()

	var delay time.Duration
	for {
		raw, err := ln.Accept()
		if err != nil {
			select {
			case <-s.done:
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		go s.admit(raw, implicitTLS, admitted)
	}
}

// admit runs the accept path of one connection: PROXY protocol, limits,
// then hands it to go-smtp.
func (s *Server) admit(raw net.Conn, implicitTLS bool, out *chanListener) {
	log := s.cfg.Logger
	peer := addrPort(raw.RemoteAddr())
	client := peer
	var conn net.Conn
	if s.fromProxy(peer.Addr()) {
		pc := proxyproto.NewConn(raw, proxyproto.WithPolicy(proxyproto.REQUIRE), proxyproto.SetReadHeaderTimeout(s.cfg.ProxyHeaderTimeout))
		src := addrPort(pc.RemoteAddr()) // reads the header, bounded by the timeout
		h := pc.ProxyHeader()
		if h == nil || h.Command.IsLocal() || !src.IsValid() {
			log.Info("Refused connection without a PROXY header from a proxy address", "peer", peer)
			s.cfg.Metrics.connectionRefused("proxy_header")
			_ = raw.Close()
			return
		}
		client, conn = src, pc
	} else {
		// Anyone else sending a PROXY header is refused at its first read:
		// they would otherwise choose the address we admit them by.
		// (proxyproto's REJECT policy cannot serve here: it holds back
		// every write, the greeting included, until the client has sent
		// its first bytes, and SMTP clients wait for the greeting.)
		conn = &noProxyConn{Conn: raw, hostname: s.cfg.Hostname, refused: func() { s.cfg.Metrics.connectionRefused("proxy_header") }}
	}
	if s.draining.Load() {
		s.refuseDraining(conn, implicitTLS)
		return
	}
	if !s.limits.acquire(client.Addr()) {
		// Counted before the client can see the 421, so that whoever
		// reads the metric after the reply finds it.
		s.cfg.Metrics.connectionRefused("connection_limit")
		log.Info("Refused connection over the limits", "client", client)
		_ = raw.SetWriteDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(raw, "421 4.7.0 %s Too many connections, try again later\r\n", s.cfg.Hostname)
		_ = raw.Close()
		return
	}
	cc := &clientConn{Conn: conn, remote: net.TCPAddrFromAddrPort(client), idle: s.cfg.IdleTimeout, minRate: s.cfg.MinDataRate, draining: &s.draining}
	cc.release = func() {
		s.mu.Lock()
		delete(s.conns, cc)
		s.mu.Unlock()
		s.limits.release(client.Addr())
		s.cfg.Metrics.sessionEnded()
	}
	// Registered before go-smtp greets it: a Drain from now on wakes it.
	s.mu.Lock()
	s.conns[cc] = struct{}{}
	s.mu.Unlock()
	pc := newProtoConn(cc, s.cfg.TLS, implicitTLS, s.cfg.MaxLineLength, s.cfg.Logger)
	goodbye := func() error { return pc.goodbye(s.shuttingDown()) }
	cc.goodbye.Store(&goodbye)
	var c net.Conn = pc
	s.cfg.Metrics.sessionStarted()
	select {
	case out.conns <- c:
	case <-s.done:
		_ = c.Close()
	}
}

func (s *Server) fromProxy(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range s.cfg.ProxyCIDRs {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// shuttingDown is the reply of a draining server (RFC 5321 sections 3.8
// and 4.2.2: 421 <domain> Service not available, closing transmission
// channel; RFC 3463 4.3.2, system not accepting network messages).
func (s *Server) shuttingDown() *smtp.SMTPError {
	return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: s.cfg.Hostname + " Service shutting down"}
}

// refuseDraining answers a connection that arrives while the server drains
// with the 421 greeting and closes it (RFC 5321 section 3.1: a server may
// open with 421 when it cannot serve). The listener stays open while the
// relay drains so that clients read a 421 and retry elsewhere later,
// rather than a connection refused that some clients report as a hard
// error. Over implicit TLS the reply goes after the handshake, bounded by
// the proxy header timeout.
func (s *Server) refuseDraining(conn net.Conn, implicitTLS bool) {
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(s.cfg.ProxyHeaderTimeout))
	if implicitTLS {
		tc := tls.Server(conn, s.cfg.TLS)
		if err := tc.Handshake(); err != nil {
			return
		}
		conn = tc
	}
	e := s.shuttingDown()
	fmt.Fprintf(conn, "%d %d.%d.%d %s\r\n", e.Code, e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2], e.Message)
}

// Drain makes the server stop taking mail, at once, while its listeners
// stay open: a new connection is greeted with 421 4.3.2 and closed; a
// session between transactions gets the same 421 and is closed (RFC 5321
// section 3.8 lets a server that is shutting down send 421 and close); a
// session in a transaction (MAIL accepted, message not yet answered)
// finishes it, and gets 421 for its next command. A message is answered
// 250 only once it is queued durably, as always, so nothing answered 250
// is lost. Shutdown then closes the listeners. Drain
// returns at once; Idle tells when the sessions are gone.
func (s *Server) Drain() {
	if s.draining.Swap(true) {
		return
	}
	s.mu.Lock()
	conns := make([]*clientConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.wake()
	}
}

// Idle waits until no session is open, or ctx ends (its error then).
func (s *Server) Idle(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Shutdown stops accepting connections and waits, until ctx ends, for the
// sessions to finish; then it closes what is left. Call Drain and Idle
// first for a graceful stop that keeps answering 421.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.done)
		for _, ln := range s.listeners {
			_ = ln.Close()
		}
	}
	s.mu.Unlock()
	s.accepting.Wait()
	err := s.smtp.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		_ = s.smtp.Close()
	}
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// chanListener feeds go-smtp the connections the accept path admitted.
type chanListener struct {
	conns chan net.Conn
	addr  net.Addr
	done  chan struct{}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error   { return nil }
func (l *chanListener) Addr() net.Addr { return l.addr }

// clientConn is an admitted connection: its address is the client's (after
// PROXY protocol), every read extends an idle deadline, and closing it
// releases its connection slot.
type clientConn struct {
	net.Conn
	remote  net.Addr
	idle    time.Duration
	release func()
	closed  atomic.Bool
	// closeAfterWrite makes the next write the last: after a line too long
	// for the stream to be parsed safely, the reply is sent and the
	// connection closed, so the rest of the body is never read as commands.
	closeAfterWrite atomic.Bool
	// draining is the server's Drain flag; inTx is set by the session
	// from an accepted MAIL until the transaction ends.
	draining *atomic.Bool
	inTx     atomic.Bool
	// goodbye answers the next command of a session that is draining
	// (protoConn.goodbye); nil closes the connection without a word.
	goodbye atomic.Pointer[func() error]
	// minRate is Config.MinDataRate; dataSince (Unix nanoseconds) is when
	// the message body being read began, 0 outside one, and dataBytes
	// what has been read of it.
	minRate   int64
	dataSince atomic.Int64
	dataBytes atomic.Int64
	// timedOut: a message body timed out; every later read fails at
	// once, so go-smtp stops reading the body and sends the reply.
	timedOut atomic.Bool
}

// beginData and endData bracket a message body, for MinDataRate.
func (c *clientConn) beginData() {
	c.dataBytes.Store(0)
	c.dataSince.Store(time.Now().UnixNano())
}

func (c *clientConn) endData() { c.dataSince.Store(0) }

// readDeadline is the idle deadline, or sooner inside a message body when
// the body is behind MinDataRate.
func (c *clientConn) readDeadline(now time.Time) time.Time {
	d := now.Add(c.idle)
	since := c.dataSince.Load()
	if since == 0 || c.minRate <= 0 {
		return d
	}
	allowance := c.idle + time.Duration(float64(c.dataBytes.Load())/float64(c.minRate)*float64(time.Second))
	if rate := time.Unix(0, since).Add(allowance); rate.Before(d) {
		return rate
	}
	return d
}

// Read waits for the client's next bytes, extending the idle deadline. A
// session between transactions of a draining server is ended instead, with
// 421 (see Server.Drain); Drain wakes a blocked read by moving its
// deadline to now.
func (c *clientConn) Read(p []byte) (int, error) {
	for {
		if c.timedOut.Load() {
			return 0, os.ErrDeadlineExceeded
		}
		if c.ending() {
			return 0, c.sayGoodbye()
		}
		if err := c.Conn.SetReadDeadline(c.readDeadline(time.Now())); err != nil {
			return 0, err
		}
		// Drain may have moved the deadline just before this read set it.
		if c.ending() {
			return 0, c.sayGoodbye()
		}
		n, err := c.Conn.Read(p)
		if c.dataSince.Load() != 0 {
			c.dataBytes.Add(int64(n))
		}
		var ne net.Error
		if n == 0 && c.draining.Load() && errors.As(err, &ne) && ne.Timeout() {
			continue // woken by Drain: end the session, or read on in a transaction
		}
		return n, err
	}
}

func (c *clientConn) ending() bool { return c.draining.Load() && !c.inTx.Load() }

func (c *clientConn) sayGoodbye() error {
	if f := c.goodbye.Load(); f != nil {
		return (*f)()
	}
	_ = c.Close()
	return net.ErrClosed
}

// wake interrupts a blocked Read so that it sees the drain.
func (c *clientConn) wake() { _ = c.Conn.SetReadDeadline(time.Now()) }

func (c *clientConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if c.closeAfterWrite.Load() {
		_ = c.Close()
	}
	return n, err
}

func (c *clientConn) RemoteAddr() net.Addr { return c.remote }

func (c *clientConn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.release()
	return c.Conn.Close()
}

// noProxyConn refuses a connection whose first bytes are a PROXY protocol
// header (v1 "PROXY ", or the v2 signature), from a peer not allowed to
// send one.
type noProxyConn struct {
	net.Conn
	hostname string
	checked  bool
	refused  func() // counts the refusal
}

var errProxyHeaderRefused = errors.New("PROXY protocol header from a peer outside --proxy-protocol-cidrs")

func (c *noProxyConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if !c.checked && n > 0 {
		c.checked = true
		if bytes.HasPrefix(p[:n], proxyproto.SIGV1) || bytes.HasPrefix(p[:n], proxyproto.SIGV2[:4]) {
			fmt.Fprintf(c.Conn, "554 5.7.0 %s PROXY protocol is not accepted from your address\r\n", c.hostname)
			_ = c.Conn.Close()
			c.refused()
			return 0, errProxyHeaderRefused
		}
	}
	return n, err
}

// connLimits counts open connections in total and per client address.
type connLimits struct {
	mu               sync.Mutex
	total, perClient int
	n                int
	open             map[netip.Addr]int
}

func (l *connLimits) acquire(a netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n >= l.total || l.open[a] >= l.perClient {
		return false
	}
	l.n++
	l.open[a]++
	return true
}

func (l *connLimits) release(a netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n--
	if l.open[a]--; l.open[a] <= 0 {
		delete(l.open, a)
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// slogLogger adapts slog to go-smtp's Logger.
type slogLogger struct{ l *slog.Logger }

func (l slogLogger) Printf(format string, v ...any) { l.l.Warn(fmt.Sprintf(format, v...)) }
func (l slogLogger) Println(v ...any)               { l.l.Warn(fmt.Sprint(v...)) }
