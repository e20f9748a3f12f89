package testenv

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// STARTTLSStripper is a man in the middle on loopback: it passes an SMTP
// conversation to an upstream server but removes STARTTLS from the
// server's EHLO reply (the downgrade attack of RFC 3207 section 6 and RFC
// 7672 section 1.3.1), so the client sees a server without TLS. It counts
// the bytes the client sent after its EHLO, which must stay 0 for a client
// that refuses to go on in plaintext.
type STARTTLSStripper struct {
	ln       net.Listener
	upstream string
	wg       sync.WaitGroup
	close    sync.Once

	conns     atomic.Int64
	afterEHLO atomic.Int64
}

// StartSTARTTLSStripper listens on addr (a 127.0.0.x address with a port;
// DefaultAddr when empty) and forwards to upstream. It stops when the test
// ends.
func StartSTARTTLSStripper(tb testing.TB, addr, upstream string) *STARTTLSStripper {
	tb.Helper()
	addr, err := loopbackAddr(addr)
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	s := &STARTTLSStripper{ln: ln, upstream: upstream}
	s.wg.Go(s.serve)
	tb.Cleanup(s.Close)
	return s
}

// Addr is the address the stripper listens on.
func (s *STARTTLSStripper) Addr() string { return s.ln.Addr().String() }

// Conns is how many connections the client opened.
func (s *STARTTLSStripper) Conns() int64 { return s.conns.Load() }

// BytesAfterEHLO is how many bytes clients sent after their EHLO, over all
// connections: QUIT included, so a client that quits politely sends 6.
func (s *STARTTLSStripper) BytesAfterEHLO() int64 { return s.afterEHLO.Load() }

// Close stops listening and ends every connection.
func (s *STARTTLSStripper) Close() {
	s.close.Do(func() { _ = s.ln.Close() })
	s.wg.Wait()
}

func (s *STARTTLSStripper) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.conns.Add(1)
		s.wg.Go(func() { s.relay(c) })
	}
}

// relay runs one connection: server lines go to the client with STARTTLS
// dropped from multi-line 250 replies; client lines go to the server.
// Bounded: every read has a deadline, and the conversation ends with
// either side.
func (s *STARTTLSStripper) relay(client net.Conn) {
	defer func() { _ = client.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var d net.Dialer
	server, err := d.DialContext(ctx, "tcp", s.upstream)
	if err != nil {
		return
	}
	defer func() { _ = server.Close() }()
	deadline := time.Now().Add(30 * time.Second)
	_ = client.SetDeadline(deadline)
	_ = server.SetDeadline(deadline)
	var ehloSeen atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		r := bufio.NewReader(client)
		for {
			line, err := r.ReadString('\n')
			if ehloSeen.Load() {
				s.afterEHLO.Add(int64(len(line)))
			}
			if strings.HasPrefix(strings.ToUpper(line), "EHLO") {
				ehloSeen.Store(true)
			}
			if _, werr := io.WriteString(server, line); werr != nil || err != nil {
				_ = server.Close()
				return
			}
		}
	}()
	r := bufio.NewReader(server)
	var pending []string // a multi-line reply, held until its last line
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			break
		}
		pending = append(pending, line)
		if len(line) >= 4 && line[3] == '-' {
			continue
		}
		if werr := writeStripped(client, pending); werr != nil {
			break
		}
		pending = pending[:0]
	}
	_ = client.Close()
	<-done
}

// writeStripped writes a reply without its STARTTLS line, keeping the
// last line's space after the code.
func writeStripped(w io.Writer, reply []string) error {
	var kept []string
	for _, l := range reply {
		if len(l) > 4 && strings.HasPrefix(strings.ToUpper(strings.TrimSpace(l[4:])), "STARTTLS") {
			continue
		}
		kept = append(kept, l)
	}
	if len(kept) == 0 {
		return errors.New("empty reply")
	}
	for i, l := range kept {
		if len(l) >= 4 {
			sep := "-"
			if i == len(kept)-1 {
				sep = " "
			}
			l = l[:3] + sep + l[4:]
		}
		if _, err := io.WriteString(w, l); err != nil {
			return err
		}
	}
	return nil
}
