// Package load is the SMTP load client of the benchmark (hack/bench) and the
// crash harness (hack/crash): concurrent sessions that each send messages
// one after another over one connection, every message to a recipient of
// its own, and report each message's reply and accept latency (from MAIL
// FROM to the reply after the data). smtp-source sends the same load but
// measures no latency.
package load

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Options describe one load.
type Options struct {
	// Addr is the relay's SMTP address, host:port on loopback.
	Addr string
	// Sessions is the number of concurrent SMTP sessions.
	Sessions int
	// Size is the approximate size of each message in bytes.
	Size int
	// From is the envelope and header sender.
	From string
	// RcptDomain is the domain of the recipients; each message goes to
	// <Prefix>-<n>@RcptDomain, n counting from 0.
	RcptDomain string
	// Prefix makes recipients unique across runs.
	Prefix string
	// Max bounds the messages sent by all sessions together; 0: until ctx
	// ends.
	Max int
	// Duration, when set, makes every session connect and say EHLO first;
	// the clock (Stats.Start) starts once all are ready, so that a relay
	// that starts a process per connection is not timed doing so, and the
	// sessions take no new message Duration later (those under way
	// finish).
	Duration time.Duration
	// Reconnect makes a session whose connection fails dial again (after
	// a short pause) until ctx ends, as the crash harness needs; otherwise
	// the session ends with its first connection error.
	Reconnect bool
	// OnResult, when set, sees every message's result, from the session's
	// goroutine.
	OnResult func(Result)
}

// Result is the outcome of one message.
type Result struct {
	// Rcpt is the message's only recipient; unique within one Run.
	Rcpt string
	// Code is the reply code to the message (250 when acknowledged), or
	// the refusal of MAIL, RCPT or DATA; 0 when the connection failed
	// before any reply, in which case nothing is known of the message.
	Code int
	// Latency is from MAIL FROM to the reply after the data.
	Latency time.Duration
	// Err is the refusal or the connection error; nil when acknowledged.
	Err error
}

// Acknowledged reports whether the relay took responsibility for the message.
func (r Result) Acknowledged() bool { return r.Err == nil && r.Code == 250 }

// Stats sum up a Run.
type Stats struct {
	// Sent counts the messages whose data was sent, Acknowledged those
	// answered 250.
	Sent, Acknowledged int
	// Start is when the sessions were let go (with Duration, once all
	// had said EHLO); LastAck when the last 250 arrived.
	Start, LastAck time.Time
	// Latencies of the acknowledged messages, in arrival order.
	Latencies []time.Duration
	// Errors counts results by their error text (first 60 bytes).
	Errors map[string]int
}

// Run sends the load until ctx ends or Max messages are sent, and waits for
// every session to finish.
func Run(ctx context.Context, o Options) Stats {
	filler := fillerLines(o.Size)
	var next atomic.Int64
	var mu sync.Mutex
	st := Stats{Errors: map[string]int{}}
	record := func(r Result) {
		if o.OnResult != nil {
			o.OnResult(r)
		}
		mu.Lock()
		defer mu.Unlock()
		st.Sent++
		if r.Acknowledged() {
			st.Acknowledged++
			st.LastAck = time.Now()
			st.Latencies = append(st.Latencies, r.Latency)
			return
		}
		msg := r.Err.Error()
		if r.Code == 0 && ctx.Err() != nil {
			msg = "cut off at the end of the run"
		}
		if len(msg) > 60 {
			msg = msg[:60]
		}
		st.Errors[msg]++
	}
	var deadline atomic.Int64 // Unix nanoseconds; 0: none
	take := func() (int, bool) {
		if d := deadline.Load(); d != 0 && time.Now().UnixNano() >= d {
			return 0, false
		}
		n := int(next.Add(1) - 1)
		return n, ctx.Err() == nil && (o.Max == 0 || n < o.Max)
	}
	gate := make(chan struct{})
	var ready, wg sync.WaitGroup
	ready.Add(o.Sessions)
	for range o.Sessions {
		wg.Go(func() {
			arrive := sync.OnceFunc(ready.Done)
			defer arrive()
			waitStart := func() {
				arrive()
				select {
				case <-gate:
				case <-ctx.Done():
				}
			}
			for ctx.Err() == nil {
				err := session(ctx, o, filler, waitStart, take, record)
				arrive()
				if !o.Reconnect || (o.Max > 0 && int(next.Load()) >= o.Max) {
					return
				}
				if err != nil {
					select {
					case <-ctx.Done():
					case <-time.After(50 * time.Millisecond):
					}
				}
			}
		})
	}
	if o.Duration > 0 {
		ready.Wait()
	}
	mu.Lock()
	st.Start = time.Now()
	if o.Duration > 0 {
		deadline.Store(st.Start.Add(o.Duration).UnixNano())
	}
	mu.Unlock()
	close(gate)
	wg.Wait()
	return st
}

// session sends messages over one connection, from when waitStart returns
// until take says stop or the connection fails. It speaks SMTP itself, without dot-stuffing (no line
// of the message starts with a dot), so that the client costs little CPU
// next to the relay it measures.
func session(ctx context.Context, o Options, filler []byte, waitStart func(), take func() (int, bool), record func(Result)) error {
	d := net.Dialer{Timeout: 5 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", o.Addr)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	// Unblock the session when ctx ends mid-command.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	c := &client{conn: conn, r: bufio.NewReader(conn), w: bufio.NewWriterSize(conn, 64<<10)}
	if _, err := c.reply(220); err != nil {
		return err
	}
	if _, err := c.cmd(250, "EHLO load.test"); err != nil {
		return err
	}
	waitStart()
	for {
		n, ok := take()
		if !ok {
			_, _ = c.cmd(221, "QUIT")
			return nil
		}
		rcpt := fmt.Sprintf("%s-%d@%s", o.Prefix, n, o.RcptDomain)
		start := time.Now()
		code, err := c.send(o.From, rcpt, filler)
		if code == 0 {
			// The connection failed: nothing is known of this message.
			record(Result{Rcpt: rcpt, Err: err})
			return err
		}
		record(Result{Rcpt: rcpt, Code: code, Latency: time.Since(start), Err: err})
		if err != nil {
			if _, err := c.cmd(250, "RSET"); err != nil {
				return err
			}
		}
	}
}

// client is the client side of one SMTP connection.
type client struct {
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
}

// ReplyError is a reply other than the one expected.
type ReplyError struct {
	Code int
	Line string
}

func (e *ReplyError) Error() string { return e.Line }

// reply reads a whole reply and returns its code, with a *ReplyError when
// it is not want, or the connection's error (code 0).
func (c *client) reply(want int) (int, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(time.Minute))
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return 0, err
		}
		if len(line) < 4 {
			return 0, fmt.Errorf("malformed reply %q", line)
		}
		if line[3] == '-' {
			continue
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil {
			return 0, fmt.Errorf("malformed reply %q", line)
		}
		if code != want {
			return code, &ReplyError{Code: code, Line: strings.TrimSpace(line)}
		}
		return code, nil
	}
}

// cmd sends a command line and reads its reply.
func (c *client) cmd(want int, line string) (int, error) {
	if _, err := c.w.WriteString(line + "\r\n"); err != nil {
		return 0, err
	}
	if err := c.w.Flush(); err != nil {
		return 0, err
	}
	return c.reply(want)
}

// send runs one transaction and returns the reply code that ended it.
func (c *client) send(from, rcpt string, filler []byte) (int, error) {
	if code, err := c.cmd(250, "MAIL FROM:<"+from+">"); err != nil {
		return code, err
	}
	if code, err := c.cmd(250, "RCPT TO:<"+rcpt+">"); err != nil {
		return code, err
	}
	if code, err := c.cmd(354, "DATA"); err != nil {
		return code, err
	}
	local := rcpt[:strings.IndexByte(rcpt, '@')]
	_, _ = fmt.Fprintf(c.w, "From: <%s>\r\nTo: <%s>\r\nSubject: load %s\r\nMessage-ID: <%s@load.test>\r\n\r\n", from, rcpt, local, local)
	_, _ = c.w.Write(filler)
	if _, err := c.w.WriteString(".\r\n"); err != nil {
		return 0, err
	}
	if err := c.w.Flush(); err != nil {
		return 0, err
	}
	return c.reply(250)
}

// fillerLines is a body of about size bytes in 78-byte lines, none of
// which starts with a dot.
func fillerLines(size int) []byte {
	line := strings.Repeat("0123456789", 7) + "abcdef\r\n"
	n := max(size/len(line), 1)
	return []byte(strings.Repeat(line, n))
}

// Percentile returns the p-th percentile (0 to 100) of sorted durations,
// nearest rank; 0 when there are none.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p/100*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// RelayManifests are the standalone relay's configuration for a load: loopback
// clients may send as bench.example.com, whose mail goes to the sink as a
// RelayRoute target without TLS.
func RelayManifests(sinkHost string, sinkPort int) string {
	return SenderManifests() + fmt.Sprintf(`---
apiVersion: postgate.io/v1alpha1
kind: RelayRoute
metadata: {name: bench}
spec:
  senderDomainRef: {name: bench}
  target: {host: %s, port: %d, tlsPolicy: None}
`, sinkHost, sinkPort)
}

// SenderManifests are the standalone relay's configuration without a
// route: loopback clients may send as bench.example.com, and the relay
// delivers to each recipient domain's MX.
func SenderManifests() string {
	return `apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: bench}
spec: {domain: bench.example.com}
---
apiVersion: postgate.io/v1alpha1
kind: TrustedNetwork
metadata: {name: loopback}
spec: {cidrs: [127.0.0.0/8]}
`
}
