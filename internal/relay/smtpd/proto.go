package smtpd

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postgate/postgate/internal/relay/message"
)

// protoConn is the connection as go-smtp sees it: the plain-text SMTP
// stream, above TLS. It exists because go-smtp decides some things before
// the session is asked, in ways the relay must not inherit:
//
//   - its DATA reader goes byte by byte, and deletes a bare CR that
//     follows a leading dot (".\rX" arrives as "X"), so the session's byte
//     check would never see it; protoConn reads DATA bodies itself, a
//     buffer at a time (body), ending them where go-smtp's reader would,
//     flags that CR, which the session then refuses with 550 5.5.2 (RFC
//     5321 section 2.3.8; SMTP smuggling), and hands go-smtp's reader an
//     empty body;
//   - it answers commands out of sequence with 502 (not implemented) where
//     RFC 5321 sections 4.1.4 and 4.3.2 give 503 5.5.1, and invalid base64
//     in AUTH with 454 4.7.0 (temporary) where RFC 4954 section 4 gives
//     501 5.5.2, which counts toward the AUTH failures that close the
//     connection; protoConn rewrites those replies.
//
// To see the plain text of a TLS session protoConn does TLS itself, both
// implicit (RFC 8314) and STARTTLS (RFC 3207): go-smtp runs without a TLS
// configuration, and protoConn advertises STARTTLS, answers it, and hands
// go-smtp the decrypted stream.
//
// It hands go-smtp one command line per Read, so go-smtp never buffers a
// pipelined command before the replies to the ones before it are written:
// that is how protoConn knows, byte by byte, whether the client's bytes
// are a command, a SASL response, a DATA body or a BDAT chunk.
type protoConn struct {
	cc        *clientConn
	log       *slog.Logger
	transport net.Conn // cc, or TLS over it
	r         *bufio.Reader
	tlsConfig *tls.Config
	// tlsState is set once a TLS handshake has completed.
	tlsState atomic.Pointer[tls.ConnectionState]
	// implicitTLS: transport is TLS whose handshake has not run yet.
	implicitTLS bool
	// handshaking: a TLS handshake is under way, which no plain-text
	// reply may interrupt (see session.goodbye).
	handshaking atomic.Bool
	// maxAuthFailures closes the connection at that many AUTH failures.
	authFailures, maxAuthFailures int

	mode    streamMode
	pending []byte // bytes go-smtp has still to read
	scratch []byte
	// dot is the DATA reader's state, mirrored (go-smtp data.go).
	dot dotState
	// chunkLeft counts the BDAT chunk bytes still to pass.
	chunkLeft int64
	// dataFault is what was wrong with the current DATA body's raw bytes;
	// atomic, as the session's reader of a BDAT body runs in a goroutine of
	// its own.
	dataFault atomic.Pointer[message.UnsafeBytesError]
	dataBytes int64
	// dataStarted: a 354 began a DATA body that body has not handed out
	// yet. Atomic: the session's Data of a BDAT message, which asks,
	// runs in a goroutine of its own.
	dataStarted atomic.Bool
	// needHello: after STARTTLS, MAIL and AUTH wait for a new EHLO (RFC
	// 3207 section 4.2: the server discards what it knew of the client).
	needHello, greeting bool
	// swallow counts replies to commands protoConn injected itself.
	swallow int
	// midLine: a line longer than the buffer is being passed on as is
	// (go-smtp's own line limit refuses it).
	midLine bool
}

type streamMode int

const (
	modeCommand streamMode = iota // command lines
	modeSASL                      // the next line answers a 334 challenge
	modeData                      // a DATA body, until the end-of-data line
	modeDataEnd                   // the body was read: go-smtp's reader gets its end
	modeChunk                     // a BDAT chunk of chunkLeft bytes
)

// dotState mirrors go-smtp's DATA reader, which must end the body exactly
// where protoConn does.
type dotState int

const (
	dotBeginLine dotState = iota
	dotDot
	dotDotCR
	dotCR
	dotData
)

func newProtoConn(cc *clientConn, tlsConfig *tls.Config, implicitTLS bool, maxLine int, log *slog.Logger) *protoConn {
	c := &protoConn{cc: cc, log: log, transport: cc, tlsConfig: tlsConfig, maxAuthFailures: maxAuthFailures,
		scratch: make([]byte, 4096)}
	if implicitTLS {
		c.transport, c.implicitTLS = tls.Server(cc, tlsConfig), true
	}
	c.r = bufio.NewReaderSize(c.transport, max(4096, maxLine+2))
	return c
}

// handshakeImplicit runs the implicit TLS handshake before the greeting.
func (c *protoConn) handshakeImplicit() error {
	if !c.implicitTLS {
		return nil
	}
	c.implicitTLS = false
	return c.handshake(c.transport.(*tls.Conn))
}

func (c *protoConn) handshake(tc *tls.Conn) error {
	c.handshaking.Store(true)
	err := tc.Handshake()
	c.handshaking.Store(false)
	if err != nil {
		_ = c.cc.Close()
		return err
	}
	st := tc.ConnectionState()
	c.tlsState.Store(&st)
	return nil
}

// TLS returns the state of the connection's TLS, nil without TLS.
func (c *protoConn) TLS() *tls.ConnectionState { return c.tlsState.Load() }

// authFailed counts a failed AUTH exchange; at maxAuthFailures the reply
// about to be written is the connection's last.
func (c *protoConn) authFailed() int {
	c.authFailures++
	if c.authFailures >= c.maxAuthFailures {
		c.cc.closeAfterWrite.Store(true)
	}
	return c.authFailures
}

// takeDataFault returns, once, what was wrong with the raw bytes of the
// current DATA body so far, nil when nothing was.
func (c *protoConn) takeDataFault() *message.UnsafeBytesError {
	return c.dataFault.Swap(nil)
}

func (c *protoConn) Read(p []byte) (int, error) {
	if err := c.handshakeImplicit(); err != nil {
		return 0, err
	}
	for len(c.pending) == 0 {
		if err := c.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// next reads what go-smtp reads next into pending (possibly nothing, when
// protoConn answered a command itself).
func (c *protoConn) next() error {
	switch c.mode {
	case modeData, modeDataEnd:
		return c.nextData()
	case modeChunk:
		return c.nextChunk()
	}
	line, err := c.r.ReadSlice('\n')
	if len(line) == 0 {
		if errors.Is(err, bufio.ErrBufferFull) {
			err = nil
		}
		return err
	}
	c.pending = append(c.scratch[:0], line...)
	if errors.Is(err, bufio.ErrBufferFull) {
		c.midLine = true
		return nil
	}
	if c.midLine || err != nil {
		// The bytes read go to go-smtp first; a read error (EOF after a
		// last line without CRLF) comes back on the next call, which reads
		// nothing.
		c.midLine = false
		return nil //nolint:nilerr // the error is returned by the next read, after these bytes
	}
	if c.mode == modeSASL {
		c.mode = modeCommand
		return nil
	}
	return c.command(string(bytes.TrimRight(line, "\r\n")))
}

// command looks at a command line before go-smtp does.
func (c *protoConn) command(line string) error {
	verb, arg, _ := strings.Cut(line, " ")
	verb = strings.ToUpper(verb)
	switch verb {
	case "EHLO", "HELO":
		c.greeting = true
	case "MAIL", "AUTH":
		if c.needHello {
			c.pending = nil
			return c.reply("503 5.5.1 Say EHLO again after STARTTLS (RFC 3207 section 4.2)")
		}
	case "BDAT":
		c.dataFault.Store(nil) // a DATA body's, its reader never asked
		// go-smtp reads exactly the announced chunk once the arguments
		// parse, whatever it answers; when they do not, it reads none.
		args := strings.Fields(arg)
		if len(args) >= 1 && len(args) <= 2 && (len(args) == 1 || strings.EqualFold(args[1], "LAST")) {
			if size, err := strconv.ParseUint(args[0], 10, 32); err == nil && size > 0 {
				c.mode, c.chunkLeft = modeChunk, int64(size)
			}
		}
	case "STARTTLS":
		if c.tlsConfig == nil {
			return nil // go-smtp, without a TLS configuration: 502
		}
		c.pending = nil
		return c.startTLS(arg)
	}
	return nil
}

// startTLS answers STARTTLS (RFC 3207 section 4) and runs the handshake.
func (c *protoConn) startTLS(arg string) error {
	switch {
	case c.TLS() != nil:
		return c.reply("503 5.5.1 TLS is already active")
	case strings.TrimSpace(arg) != "":
		return c.reply("501 5.5.4 Syntax error (no parameters allowed)")
	}
	if err := c.reply("220 2.0.0 Ready to start TLS"); err != nil {
		return err
	}
	// Whatever the client sent after STARTTLS in plain text is dropped
	// unread: it must not count as said under TLS (command injection).
	tc := tls.Server(c.cc, c.tlsConfig)
	if err := c.handshake(tc); err != nil {
		return err
	}
	c.transport, c.r = tc, bufio.NewReaderSize(tc, c.r.Size())
	// go-smtp forgets the transaction (an RSET it is fed, whose reply is
	// not sent); MAIL and AUTH wait for a new EHLO.
	c.needHello, c.swallow = true, c.swallow+1
	c.pending = append(c.scratch[:0], "RSET\r\n"...)
	return nil
}

// nextData is go-smtp's DATA reader asking for the body: the session
// read it through body (or gave up on it) already. The rest of the body
// is read and dropped up to the end-of-data line, and go-smtp gets an
// empty body's end-of-data line: its reader ends where protoConn ended
// the body, and never goes over the body byte by byte.
func (c *protoConn) nextData() error {
	for c.mode == modeData {
		if _, err := c.decode(nil); err != nil {
			return err
		}
	}
	c.mode = modeCommand
	c.pending = append(c.scratch[:0], ".\r\n"...)
	return nil
}

// body returns the reader of the DATA body whose 354 protoConn wrote last,
// and nil when there is none (the session's Data is reading a BDAT
// message). It must be called, and read, in the connection's goroutine,
// as go-smtp calls Session.Data for DATA. It reads the body as go-smtp's
// reader would (dot-unstuffed, the end-of-data line left out; at most max
// bytes, then smtp.ErrDataTooLarge), a buffer at a time.
func (c *protoConn) body(max int64) io.Reader {
	if !c.dataStarted.Swap(false) {
		return nil
	}
	return &dataBody{c: c, left: max}
}

// dataBody reads a DATA body through protoConn.decode.
type dataBody struct {
	c    *protoConn
	left int64
}

func (b *dataBody) Read(p []byte) (int, error) {
	if b.c.mode != modeData {
		return 0, io.EOF
	}
	// go-smtp's reader: the limit's bytes, then an error.
	if b.left <= 0 {
		return 0, smtp.ErrDataTooLarge
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.c.decode(p)
	b.left -= int64(n)
	if err == nil && b.c.mode != modeData {
		err = io.EOF
	}
	if errors.Is(err, io.EOF) && b.c.mode == modeData {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// decode reads DATA body bytes from what is buffered (reading more when
// nothing is) and writes them dot-unstuffed to dst, up to the end-of-data
// line, which it consumes and which ends modeData; a nil dst drops them.
// Runs of ordinary bytes are found with IndexByte and copied in one piece.
// It ends the body exactly where go-smtp's DATA reader (go-smtp data.go,
// after net/textproto) does, a line beginning only after CR LF. A bare CR
// right after a leading dot, which go-smtp's reader would delete with the
// dot, is noted as the body's fault (the session refuses the message with
// 550 5.5.2, RFC 5321 section 2.3.8) and read as a space.
func (c *protoConn) decode(dst []byte) (int, error) {
	want := 1
	if c.dot == dotDot {
		want = 2 // a CR after the leading dot needs the byte after it
	}
	_, perr := c.r.Peek(want)
	if perr != nil && c.r.Buffered() < 1 {
		return 0, perr
	}
	buf, _ := c.r.Peek(c.r.Buffered())
	discard := dst == nil
	out, in := 0, 0
	emit := func(b []byte) {
		if !discard {
			copy(dst[out:], b)
		}
		out += len(b)
	}
	room := func() int {
		if discard {
			return len(buf)
		}
		return len(dst) - out
	}
	for in < len(buf) && c.mode == modeData && room() > 0 {
		b := buf[in]
		switch c.dot {
		case dotBeginLine, dotData:
			if c.dot == dotBeginLine && b == '.' {
				c.dot = dotDot
				in++
				continue
			}
			// Up to the next CR, the bytes are the body's as they are.
			run := buf[in:]
			if j := bytes.IndexByte(run, '\r'); j >= 0 {
				run = run[:j]
			}
			run = run[:min(len(run), room())]
			if len(run) > 0 {
				emit(run)
				in += len(run)
				c.dot = dotData
				continue
			}
			emit(buf[in : in+1]) // the CR
			in++
			c.dot = dotCR
		case dotDot:
			switch {
			case b != '\r':
				emit(buf[in : in+1])
				in++
				c.dot = dotData
			case in+1 == len(buf):
				// The byte after the CR is not here yet: the next call
				// reads on from the CR, with two bytes at least, unless
				// the stream ended (perr).
				c.discardData(in)
				if in == 0 {
					return out, perr
				}
				return out, nil
			case buf[in+1] == '\n':
				in += 2
				c.mode = modeDataEnd // the end-of-data line
			default:
				c.dataFault.CompareAndSwap(nil, &message.UnsafeBytesError{What: "bare CR after a leading dot", Offset: c.dataBytes + int64(in)})
				emit([]byte{' '})
				in++
				c.dot = dotData
			}
		case dotCR:
			emit(buf[in : in+1])
			in++
			if b == '\n' {
				c.dot = dotBeginLine
			} else {
				c.dot = dotData // go-smtp's reader: even a second CR
			}
		}
	}
	c.discardData(in)
	return out, nil
}

// discardData consumes n bytes of the body from the reader.
func (c *protoConn) discardData(n int) {
	c.dataBytes += int64(n)
	_, _ = c.r.Discard(n) // buffered already: Discard cannot fail
}

// nextChunk passes on BDAT chunk bytes.
func (c *protoConn) nextChunk() error {
	if _, err := c.r.Peek(1); err != nil {
		return err
	}
	n := int(min(int64(c.r.Buffered()), int64(len(c.scratch)), c.chunkLeft))
	buf, _ := c.r.Peek(n)
	c.pending = append(c.scratch[:0], buf...)
	if c.chunkLeft -= int64(n); c.chunkLeft == 0 {
		c.mode = modeCommand
	}
	_, err := c.r.Discard(n)
	return err
}

// reply writes a reply of protoConn's own.
func (c *protoConn) reply(line string) error {
	_, err := c.transport.Write([]byte(line + "\r\n"))
	return err
}

// outOfSequence are go-smtp's 502 replies to commands given out of
// sequence, which RFC 5321 sections 4.1.4 and 4.3.2 answer with 503.
var outOfSequence = []string{
	"502 5.5.1 Please introduce yourself first.",
	"502 5.5.1 Missing MAIL FROM command.",
	"502 5.5.1 Missing RCPT TO command.",
	"502 5.5.1 MAIL not allowed during message transfer",
	"502 5.5.1 RCPT not allowed during message transfer",
	"502 5.5.1 DATA not allowed during message transfer",
}

const invalidBase64 = "454 4.7.0 Invalid base64 data"

// Write passes go-smtp's replies on, after noting what they start (354: a
// DATA body; 334: a SASL response), adding STARTTLS to the EHLO keywords,
// and correcting the reply codes above. go-smtp writes one reply line per
// Write.
func (c *protoConn) Write(p []byte) (int, error) {
	if err := c.handshakeImplicit(); err != nil {
		return 0, err
	}
	line := string(bytes.TrimRight(p, "\r\n"))
	final := len(line) < 4 || line[3] != '-'
	if c.swallow > 0 {
		if final {
			c.swallow--
		}
		return len(p), nil
	}
	if c.greeting {
		if strings.HasPrefix(line, "250") {
			c.needHello = false
		}
		c.greeting = !final
	}
	out := p
	switch {
	case strings.HasPrefix(line, "354 "):
		c.mode, c.dot, c.dataBytes = modeData, dotBeginLine, 0
		c.dataFault.Store(nil)
		c.dataStarted.Store(true)
	case strings.HasPrefix(line, "334 "):
		c.mode = modeSASL
	case strings.HasPrefix(line, "250-Hello ") && c.tlsConfig != nil && c.TLS() == nil:
		out = append(append([]byte(nil), p...), "250-STARTTLS\r\n"...)
	case line == invalidBase64:
		n := c.authFailed()
		c.log.Info("SMTP AUTH failed: invalid base64", "client", c.cc.RemoteAddr(), "failures", n)
		out = []byte("501 5.5.2 Invalid base64 data (RFC 4954 section 4)\r\n")
	default:
		for _, s := range outOfSequence {
			if line == s {
				out = fmt.Appendf(nil, "503%s\r\n", line[3:])
				break
			}
		}
	}
	if _, err := c.transport.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// goodbye ends a session between transactions of a draining server (see
// Server.Drain) with e and closes it. It runs in the session's reading
// goroutine, inside the read, which is also the goroutine that writes
// replies, so nothing interleaves; under TLS the reply goes through TLS.
// During a TLS handshake no reply can be written, plain or not: the
// connection just closes, and the client retries later.
func (c *protoConn) goodbye(e *smtp.SMTPError) error {
	if !c.handshaking.Load() && !c.implicitTLS {
		_ = c.cc.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_ = c.reply(fmt.Sprintf("%d %d.%d.%d %s", e.Code, e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2], e.Message))
	}
	_ = c.cc.Close()
	return net.ErrClosed // go-smtp ends the session without a word more
}

func (c *protoConn) Close() error                       { return c.cc.Close() }
func (c *protoConn) LocalAddr() net.Addr                { return c.cc.LocalAddr() }
func (c *protoConn) RemoteAddr() net.Addr               { return c.cc.RemoteAddr() }
func (c *protoConn) SetDeadline(t time.Time) error      { return c.cc.SetDeadline(t) }
func (c *protoConn) SetReadDeadline(t time.Time) error  { return c.cc.SetReadDeadline(t) }
func (c *protoConn) SetWriteDeadline(t time.Time) error { return c.cc.SetWriteDeadline(t) }
