package testenv

import (
	"bufio"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Stage is a point of an SMTP conversation where the sink can inject a fault.
type Stage int

const (
	// StageConnect is the greeting (RFC 5321 section 3.1): 421 closes the
	// connection, 554 answers 503 to everything but QUIT.
	StageConnect Stage = iota
	// StageHello is the first EHLO or HELO of a session (again after
	// STARTTLS).
	StageHello
	// StageMail is MAIL FROM.
	StageMail
	// StageRcpt is each RCPT TO; a recipient's own fault wins.
	StageRcpt
	// StageData is the reply after the message: DATA's end of data, or the
	// last BDAT chunk. With Drop, the connection closes once the first bytes
	// of the message have arrived.
	StageData
)

// Fault is what the sink does at a stage instead of accepting. The zero
// Fault accepts.
type Fault struct {
	// Code is the reply code (4xx or 5xx); 0 accepts after Delay.
	Code int
	// Enhanced is the enhanced status code (RFC 3463), for example
	// smtp.EnhancedCode{4, 3, 0}; class.0.0 when zero.
	Enhanced smtp.EnhancedCode
	// Text is the reply text.
	Text string
	// Delay is how long the sink waits before replying (or dropping).
	Delay time.Duration
	// Drop closes the connection without a reply.
	Drop bool
	// Times is how many times the fault applies before the sink accepts
	// again; 0 means until the test changes it.
	Times int
}

// SMTPSinkOptions configure an SMTPSink; the zero value is a plain sink on
// DefaultAddr that accepts everything.
type SMTPSinkOptions struct {
	// Addr is a 127.0.0.x literal with a port; DefaultAddr when empty.
	Addr string
	// Hostname is the name in the greeting and EHLO reply; "sink.test" when
	// empty.
	Hostname string
	// TLS, when set, is offered with STARTTLS (RFC 3207), or from the first
	// byte with ImplicitTLS. CA.Issue, IssueExpired and IssueWrongName make
	// the certificate; MinVersion and MaxVersion pin the protocol.
	TLS *tls.Config
	// ImplicitTLS speaks TLS from the first byte (port 465 style, RFC 8314).
	ImplicitTLS bool
	// Users are the AUTH credentials, username to password. AUTH is offered
	// when there are some, after TLS only unless InsecureAuth.
	Users map[string]string
	// Mechanisms are the SASL mechanisms offered; PLAIN and LOGIN when empty.
	Mechanisms []string
	// RequireAuth refuses MAIL with 530 5.7.0 before a successful AUTH.
	RequireAuth bool
	// InsecureAuth offers AUTH without TLS too, so a test can prove a client
	// does not use it.
	InsecureAuth bool
	// AllowedClients, when set, are the only client addresses served; others
	// get a 554 5.7.1 greeting, as a relay that authenticates senders by
	// source address does.
	AllowedClients []netip.Prefix
	// MaxMessageBytes is the SIZE limit (RFC 1870); 64 MiB when zero.
	MaxMessageBytes int64
	// NoSMTPUTF8 leaves SMTPUTF8 (RFC 6531) out of the EHLO keywords, as
	// an MX that offers only 8BITMIME and PIPELINING does; the sink still
	// records whatever addresses it is sent.
	NoSMTPUTF8 bool
	// NoDSN leaves DSN (RFC 3461) out of the EHLO keywords, as a next hop
	// that does not report delivery status does; it then refuses NOTIFY,
	// ORCPT, RET and ENVID.
	NoDSN bool
	// IdleTimeout ends a connection whose client sends nothing for that
	// long; each read restarts it, so a slow but steady message gets through.
	// 30 seconds when zero.
	IdleTimeout time.Duration
}

// Message is one transaction the sink accepted.
type Message struct {
	// ConnID is the connection's SMTPConn.ID.
	ConnID int
	// Client is the client's address as the sink saw it: the relay's source
	// IP binding shows here (127.0.0.2, for example).
	Client netip.AddrPort
	// Hello is the EHLO (or HELO) name.
	Hello string
	// From and Rcpts are the envelope as go-smtp parsed it (no angle
	// brackets, quoted local parts unquoted); RawMail and RawRcpts are the
	// command lines exactly as sent, parameters included.
	From     string
	Rcpts    []string
	RawMail  string
	RawRcpts []string
	// MailOptions are the MAIL FROM parameters as go-smtp parsed them.
	MailOptions smtp.MailOptions
	// Data is the message as received: dot-unstuffed for DATA, the chunks'
	// bytes for BDAT. Bare CR, LF and NUL pass through unchanged.
	Data []byte
	// Chunked is true when the message came with BDAT (RFC 3030).
	Chunked bool
	// TLS is the connection's TLS state, nil for plaintext: Version and
	// CipherSuite tell what was negotiated, ServerName the SNI sent.
	TLS *tls.ConnectionState
	// AuthUser and AuthMechanism are set when the client authenticated.
	AuthUser, AuthMechanism string
	// Received is when the sink accepted the message.
	Received time.Time
}

// AuthAttempt is one AUTH exchange that reached the credential check.
type AuthAttempt struct {
	ConnID    int
	Mechanism string
	Username  string
	// TLS is whether the exchange ran over TLS.
	TLS bool
	OK  bool
}

// SMTPConn is one connection to the sink.
type SMTPConn struct {
	ID     int
	Client netip.AddrPort
	// Transcript holds the conversation above TLS, one line each, "C: " for
	// the client and "S: " for the sink; message data shows as its size.
	// A reply is added just after it is sent, so it may lag what the client
	// has read: wait for Closed (SinkStats.Closed) for the whole of it.
	Transcript []string
	// Closed is true once the connection ended and its transcript is final.
	Closed bool
}

// SinkStats count what happened at the sink.
type SinkStats struct {
	// Connections accepted by the listener, refused or not.
	Connections int
	// Closed counts connections that ended.
	Closed int
	// Messages accepted.
	Messages int
	// Rejected counts the 4xx and 5xx replies the sink chose: faults at
	// every stage and AllowedClients refusals.
	Rejected int
	// Dropped counts connections closed by a Drop fault.
	Dropped int
	// AuthFailures counts failed credential checks.
	AuthFailures int
}

// SMTPSink is an SMTP server on loopback that records every transaction and
// fails on command: a stand-in for an MX host or a smart host. Each
// connection is served by its own go-smtp server so its transcript is its
// own. Faults can change while it runs.
type SMTPSink struct {
	opts     SMTPSinkOptions
	listener net.Listener
	closed   chan struct{}
	close    sync.Once
	conns    sync.WaitGroup
	errorLog *log.Logger

	mu         sync.Mutex
	faults     map[Stage]Fault
	rcptFaults map[string]Fault
	messages   []Message
	auths      []AuthAttempt
	records    []*connRecord
	live       map[*tapConn]struct{}
	stats      SinkStats
	changed    chan struct{} // closed and replaced on every change
}

type connRecord struct {
	id     int
	client netip.AddrPort
	tr     *transcript
	closed bool // guarded by SMTPSink.mu
}

// StartSMTPSink starts a sink for the test and stops it when the test ends.
func StartSMTPSink(tb testing.TB, opts SMTPSinkOptions) *SMTPSink {
	tb.Helper()
	return startFixture(tb, NewSMTPSink, opts)
}

// NewSMTPSink starts a sink that stops when ctx is done or Close is called.
func NewSMTPSink(ctx context.Context, opts SMTPSinkOptions) (*SMTPSink, error) {
	addr, err := loopbackAddr(opts.Addr)
	if err != nil {
		return nil, err
	}
	if opts.ImplicitTLS && opts.TLS == nil {
		return nil, errors.New("SMTP sink: ImplicitTLS needs TLS")
	}
	if opts.Hostname == "" {
		opts.Hostname = "sink.test"
	}
	if len(opts.Mechanisms) == 0 {
		opts.Mechanisms = []string{sasl.Plain, sasl.Login}
	}
	if opts.MaxMessageBytes == 0 {
		opts.MaxMessageBytes = 64 << 20
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = 30 * time.Second
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("SMTP sink: %w", err)
	}
	s := &SMTPSink{
		opts:       opts,
		listener:   l,
		closed:     make(chan struct{}),
		errorLog:   log.New(io.Discard, "", 0),
		faults:     make(map[Stage]Fault),
		rcptFaults: make(map[string]Fault),
		live:       make(map[*tapConn]struct{}),
		changed:    make(chan struct{}),
	}
	s.conns.Go(s.accept)
	go closeWhenDone(ctx, s.closed, s.Close)
	return s, nil
}

// Addr returns the sink's host:port.
func (s *SMTPSink) Addr() string { return s.listener.Addr().String() }

// Port returns the sink's port, for the relay's --mx-port or a RelayRoute's
// target port.
func (s *SMTPSink) Port() int { return s.listener.Addr().(*net.TCPAddr).Port }

// Close stops the sink: it closes the listener and every connection, and
// waits for their goroutines. It is safe to call more than once.
func (s *SMTPSink) Close() {
	s.close.Do(func() {
		close(s.closed)
		_ = s.listener.Close()
		s.mu.Lock()
		for c := range s.live {
			_ = c.Close()
		}
		s.mu.Unlock()
		s.conns.Wait()
	})
}

// ExpireIdle makes every open connection's idle timeout fire now: the
// sink's go-smtp server answers "421 4.4.2 Idle timeout" and closes it, as
// when the client stayed quiet for IdleTimeout. A test means the event
// itself, not a short timeout that a loaded machine may also reach in the
// middle of a transaction.
func (s *SMTPSink) ExpireIdle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.live {
		c.expired.Store(true)
		_ = c.SetReadDeadline(time.Now())
	}
}

// SetFault sets what happens at stage from now on, replacing the previous
// fault there; the zero Fault accepts again.
func (s *SMTPSink) SetFault(stage Stage, f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	setFault(s.faults, stage, f)
}

// SetRcptFault sets what happens at RCPT TO for one recipient (as go-smtp
// parses it, compared exactly); it wins over the StageRcpt fault.
func (s *SMTPSink) SetRcptFault(rcpt string, f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	setFault(s.rcptFaults, rcpt, f)
}

func setFault[K comparable](faults map[K]Fault, k K, f Fault) {
	if f == (Fault{}) {
		delete(faults, k)
		return
	}
	faults[k] = f
}

// ClearFaults makes every stage accept again.
func (s *SMTPSink) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.faults)
	clear(s.rcptFaults)
}

// Messages returns the accepted messages, oldest first.
func (s *SMTPSink) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// AuthAttempts returns the AUTH exchanges that reached a credential check.
func (s *SMTPSink) AuthAttempts() []AuthAttempt {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]AuthAttempt(nil), s.auths...)
}

// Conns returns every connection so far with its transcript.
func (s *SMTPSink) Conns() []SMTPConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	conns := make([]SMTPConn, len(s.records))
	for i, r := range s.records {
		conns[i] = SMTPConn{ID: r.id, Client: r.client, Transcript: r.tr.snapshot(), Closed: r.closed}
	}
	return conns
}

// Stats returns the counters.
func (s *SMTPSink) Stats() SinkStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// WaitMessages waits until at least n messages were accepted and returns
// them, or returns ctx's error with what arrived so far.
func (s *SMTPSink) WaitMessages(ctx context.Context, n int) ([]Message, error) {
	_, err := s.WaitStats(ctx, func(st SinkStats) bool { return st.Messages >= n })
	msgs := s.Messages()
	if err != nil {
		return msgs, fmt.Errorf("waiting for %d messages, %d arrived: %w", n, len(msgs), err)
	}
	return msgs, nil
}

// WaitStats waits until cond holds for the counters, checking after every
// change, and returns them; or returns ctx's error with the last counters.
func (s *SMTPSink) WaitStats(ctx context.Context, cond func(SinkStats) bool) (SinkStats, error) {
	for {
		s.mu.Lock()
		st, changed := s.stats, s.changed
		s.mu.Unlock()
		if cond(st) {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-s.closed:
			return st, errors.New("SMTP sink closed")
		case <-changed:
		}
	}
}

// update changes the sink's state under its lock and wakes the waiters.
func (s *SMTPSink) update(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
	close(s.changed)
	s.changed = make(chan struct{})
}

// takeFault returns the fault for stage (and rcpt at StageRcpt), counting
// down its Times.
func (s *SMTPSink) takeFault(stage Stage, rcpt string) Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	if stage == StageRcpt {
		if f, ok := take(s.rcptFaults, rcpt); ok {
			return f
		}
	}
	f, _ := take(s.faults, stage)
	return f
}

// take returns the fault at k, counting down its Times.
func take[K comparable](faults map[K]Fault, k K) (Fault, bool) {
	f, ok := faults[k]
	switch {
	case !ok || f.Times == 0:
	case f.Times == 1:
		delete(faults, k)
	default:
		next := f
		next.Times--
		faults[k] = next
	}
	return f, ok
}

// errDropped is returned to go-smtp after a Drop fault closed the
// connection; no client sees it.
var errDropped = errors.New("connection dropped by a testenv fault")

// apply carries out f: it waits, drops the connection, or returns the reply
// as an *smtp.SMTPError; nil accepts.
func (s *SMTPSink) apply(f Fault, conn net.Conn) error {
	if f.Delay > 0 {
		timer := time.NewTimer(f.Delay)
		select {
		case <-timer.C:
		case <-s.closed:
			timer.Stop()
			return errDropped
		}
	}
	if f.Drop {
		s.update(func() { s.stats.Dropped++ })
		_ = conn.Close()
		return errDropped
	}
	if f.Code == 0 {
		return nil
	}
	s.update(func() { s.stats.Rejected++ })
	return f.reply()
}

func (f Fault) reply() *smtp.SMTPError {
	e := &smtp.SMTPError{Code: f.Code, EnhancedCode: f.Enhanced, Message: f.Text}
	if e.EnhancedCode == (smtp.EnhancedCode{}) {
		e.EnhancedCode = smtp.EnhancedCode{f.Code / 100, 0, 0}
	}
	if e.Message == "" {
		e.Message = "testenv fault"
	}
	return e
}

func (s *SMTPSink) accept() {
	for {
		raw, err := s.listener.Accept()
		if err != nil {
			return
		}
		tr := &transcript{}
		tap := &tapConn{Conn: raw, idle: s.opts.IdleTimeout, tr: tr, done: make(chan struct{})}
		rec := &connRecord{client: addrPort(raw.RemoteAddr()), tr: tr}
		s.update(func() {
			s.stats.Connections++
			rec.id = s.stats.Connections
			s.records = append(s.records, rec)
			s.live[tap] = struct{}{}
		})
		select {
		case <-s.closed:
			// Close may have run before this connection was listed.
			_ = tap.Close()
		default:
		}
		s.conns.Go(func() {
			defer func() {
				_ = tap.Close()
				s.update(func() {
					delete(s.live, tap)
					rec.closed = true
					s.stats.Closed++
				})
			}()
			s.serve(tap, rec)
		})
	}
}

// serve runs one connection: the greeting checks, then a go-smtp server of
// its own.
func (s *SMTPSink) serve(tap *tapConn, rec *connRecord) {
	var conn net.Conn = tap
	if s.opts.ImplicitTLS {
		conn = tls.Server(tap, s.opts.TLS)
	}
	if !s.greet(conn, rec) {
		return
	}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return s.newSession(c, tap, rec)
	}))
	srv.Domain = s.opts.Hostname
	srv.TLSConfig = s.opts.TLS
	srv.AllowInsecureAuth = s.opts.InsecureAuth
	srv.MaxMessageBytes = s.opts.MaxMessageBytes
	// A permissive sink: the relay's parameters are recorded, not refused.
	srv.EnableSMTPUTF8, srv.EnableDSN, srv.EnableREQUIRETLS = !s.opts.NoSMTPUTF8, !s.opts.NoDSN, true
	srv.WriteTimeout = 10 * time.Second
	srv.ErrorLog = s.errorLog
	srv.Debug = rec.tr
	_ = srv.Serve(&oneConnListener{conn: conn, done: tap.done})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
}

// greet applies AllowedClients and the StageConnect fault. It returns true
// when go-smtp should take the connection and greet with 220.
func (s *SMTPSink) greet(conn net.Conn, rec *connRecord) bool {
	var f Fault
	if len(s.opts.AllowedClients) > 0 && !allowed(s.opts.AllowedClients, rec.client.Addr()) {
		f = Fault{Code: 554, Enhanced: smtp.EnhancedCode{5, 7, 1}, Text: fmt.Sprintf("not accepting mail from %s", rec.client.Addr())}
	} else {
		f = s.takeFault(StageConnect, "")
	}
	err := s.apply(f, conn)
	var reply *smtp.SMTPError
	if !errors.As(err, &reply) {
		return err == nil
	}
	_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	line := fmt.Sprintf("%d %d.%d.%d %s %s", reply.Code, reply.EnhancedCode[0], reply.EnhancedCode[1], reply.EnhancedCode[2], s.opts.Hostname, reply.Message)
	rec.tr.note(line, false)
	if _, err := io.WriteString(conn, line+"\r\n"); err != nil || reply.Code/100 != 5 {
		return false
	}
	// After a 554 greeting the server waits for QUIT and answers 503 to
	// anything else (RFC 5321 section 3.1). A bounded number of lines.
	r := bufio.NewReader(io.LimitReader(conn, 64<<10))
	for range 100 {
		cmd, err := r.ReadString('\n')
		if err != nil {
			return false
		}
		cmd = strings.TrimRight(cmd, "\r\n")
		rec.tr.note(cmd, true)
		reply := "503 5.5.1 No SMTP service here"
		if strings.EqualFold(strings.TrimSpace(cmd), "QUIT") {
			reply = "221 2.0.0 Bye"
		}
		rec.tr.note(reply, false)
		if _, err := io.WriteString(conn, reply+"\r\n"); err != nil || reply[0] == '2' {
			return false
		}
	}
	return false
}

func allowed(prefixes []netip.Prefix, ip netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func addrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// newSession starts a go-smtp session: at the first EHLO, and again after
// STARTTLS.
func (s *SMTPSink) newSession(c *smtp.Conn, tap *tapConn, rec *connRecord) (smtp.Session, error) {
	if err := s.apply(s.takeFault(StageHello, ""), tap); err != nil {
		return nil, err
	}
	sess := &session{sink: s, conn: c, tap: tap, rec: rec}
	if state, ok := c.TLSConnectionState(); ok {
		sess.tls = &state
	}
	return sess, nil
}

// session is one go-smtp session; go-smtp calls it from one goroutine at a
// time.
type session struct {
	sink *SMTPSink
	conn *smtp.Conn
	tap  *tapConn
	rec  *connRecord
	tls  *tls.ConnectionState

	authUser, authMech string

	from     string
	rawMail  string
	mailOpts smtp.MailOptions
	rcpts    []string
	rawRcpts []string
}

var _ smtp.AuthSession = (*session)(nil)

func (ss *session) AuthMechanisms() []string {
	if len(ss.sink.opts.Users) == 0 {
		return nil
	}
	return ss.sink.opts.Mechanisms
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	offered := false
	for _, m := range ss.AuthMechanisms() {
		offered = offered || strings.EqualFold(m, mech)
	}
	if !offered {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, username, password string) error {
			return ss.checkAuth(mech, identity, username, password)
		}), nil
	case sasl.Login:
		return &loginServer{check: func(username, password string) error {
			return ss.checkAuth(mech, "", username, password)
		}}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// checkAuth checks credentials; an authorization identity other than the
// username (RFC 4616 section 2) is refused, as the sink proxies for no one.
func (ss *session) checkAuth(mech, identity, username, password string) error {
	want, known := ss.sink.opts.Users[username]
	ok := known && (identity == "" || identity == username) && subtle.ConstantTimeCompare([]byte(want), []byte(password)) == 1
	ss.sink.update(func() {
		ss.sink.auths = append(ss.sink.auths, AuthAttempt{ConnID: ss.rec.id, Mechanism: mech, Username: username, TLS: ss.tls != nil, OK: ok})
		if !ok {
			ss.sink.stats.AuthFailures++
		}
	})
	if !ok {
		return smtp.ErrAuthFailed
	}
	ss.authUser, ss.authMech = username, mech
	return nil
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	if err := ss.sink.apply(ss.sink.takeFault(StageMail, ""), ss.tap); err != nil {
		return err
	}
	if ss.sink.opts.RequireAuth && ss.authUser == "" {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	}
	ss.from, ss.rawMail = from, ss.rec.tr.current()
	if opts != nil {
		ss.mailOpts = *opts
	}
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if err := ss.sink.apply(ss.sink.takeFault(StageRcpt, to), ss.tap); err != nil {
		return err
	}
	ss.rcpts = append(ss.rcpts, to)
	ss.rawRcpts = append(ss.rawRcpts, ss.rec.tr.current())
	return nil
}

func (ss *session) Data(r io.Reader) error {
	chunked := strings.HasPrefix(strings.ToUpper(ss.rec.tr.current()), "BDAT")
	f := ss.sink.takeFault(StageData, "")
	if f.Drop {
		// Let the message start, then cut the connection in its middle.
		_, _ = r.Read(make([]byte, 512))
		return ss.sink.apply(f, ss.tap)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if err := ss.sink.apply(f, ss.tap); err != nil {
		return err
	}
	msg := Message{
		ConnID:        ss.rec.id,
		Client:        ss.rec.client,
		Hello:         ss.conn.Hostname(),
		From:          ss.from,
		Rcpts:         append([]string(nil), ss.rcpts...),
		RawMail:       ss.rawMail,
		RawRcpts:      append([]string(nil), ss.rawRcpts...),
		MailOptions:   ss.mailOpts,
		Data:          data,
		Chunked:       chunked,
		TLS:           ss.tls,
		AuthUser:      ss.authUser,
		AuthMechanism: ss.authMech,
		Received:      time.Now(),
	}
	var n int
	ss.sink.update(func() {
		ss.sink.messages = append(ss.sink.messages, msg)
		ss.sink.stats.Messages++
		n = ss.sink.stats.Messages
	})
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK: queued as sink-" + strconv.Itoa(n)}
}

func (ss *session) Reset() {
	ss.from, ss.rawMail, ss.mailOpts = "", "", smtp.MailOptions{}
	ss.rcpts, ss.rawRcpts = nil, nil
}

func (ss *session) Logout() error { return nil }

// tapConn is the raw TCP connection: each read restarts the idle deadline,
// each write is noted for the transcript, and Close wakes the connection's
// one-shot listener.
type tapConn struct {
	net.Conn
	idle      time.Duration
	tr        *transcript
	done      chan struct{}
	closeOnce sync.Once
	expired   atomic.Bool // ExpireIdle: every read times out from now on
}

func (c *tapConn) Read(p []byte) (int, error) {
	deadline := time.Now().Add(c.idle)
	if c.expired.Load() {
		deadline = time.Now()
	}
	if err := c.SetReadDeadline(deadline); err != nil {
		return 0, err
	}
	return c.Conn.Read(p)
}

func (c *tapConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.tr.noteRawWrite()
	}
	return n, err
}

func (c *tapConn) Close() error {
	err := net.ErrClosed
	c.closeOnce.Do(func() {
		close(c.done)
		err = c.Conn.Close()
	})
	return err
}

// oneConnListener hands go-smtp one connection, then blocks until that
// connection is closed, so Serve returns when the connection ends.
type oneConnListener struct {
	conn   net.Conn
	done   <-chan struct{}
	handed bool
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if !l.handed {
		l.handed = true
		return l.conn, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error   { return nil }
func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }
