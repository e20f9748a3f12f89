package testenv

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// LogBuffer collects a process's or a logger's output while a test reads
// it: safe for concurrent Write and String. WaitFor blocks until a line
// shows up, woken by each write.
type LogBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changes Changes
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	defer l.changes.Changed()
	return l.b.Write(p)
}

func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Count returns how often substr occurs in the output so far.
func (l *LogBuffer) Count(substr string) int {
	return strings.Count(l.String(), substr)
}

// WaitFor waits until substr occurs n times or more in the output, and
// fails the test with the output when WaitTimeout passes first.
func (l *LogBuffer) WaitFor(tb testing.TB, substr string, n int) {
	tb.Helper()
	l.changes.Wait(tb, func() string {
		if out := l.String(); strings.Count(out, substr) < n {
			return fmt.Sprintf("%q not %d times in the log:\n%s", substr, n, out)
		}
		return ""
	})
}

// WaitMatch waits until re matches the output and returns the match and
// its submatches; it fails the test with the output when WaitTimeout
// passes first.
func (l *LogBuffer) WaitMatch(tb testing.TB, re *regexp.Regexp) []string {
	tb.Helper()
	var m []string
	l.changes.Wait(tb, func() string {
		out := l.String()
		if m = re.FindStringSubmatch(out); m == nil {
			return fmt.Sprintf("no match of %s in the log:\n%s", re, out)
		}
		return ""
	})
	return m
}

// SMTPLineConn is a client connection that a test steps through one
// command line at a time, bounded by a 10 s deadline.
type SMTPLineConn struct {
	conn net.Conn
	r    *bufio.Reader
}

// DialSMTPLine connects to addr from the local address client (any when
// empty); read the greeting with Reply.
func DialSMTPLine(addr, client string) (*SMTPLineConn, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	if client != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(client)}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	return &SMTPLineConn{conn: conn, r: bufio.NewReader(conn)}, nil
}

// Reply reads one (possibly multi-line) reply and returns its last line.
func (c *SMTPLineConn) Reply() (string, error) {
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return "", err
		}
		if len(line) >= 4 && line[3] == ' ' {
			return strings.TrimSpace(line), nil
		}
	}
}

// Cmd sends line with CRLF and returns the reply.
func (c *SMTPLineConn) Cmd(line string) (string, error) {
	if _, err := io.WriteString(c.conn, line+"\r\n"); err != nil {
		return "", err
	}
	return c.Reply()
}

// Close closes the connection.
func (c *SMTPLineConn) Close() error { return c.conn.Close() }

// SubmitMail sends one small message over SMTP to addr, from the local
// address client (any when empty), as a submitting application would, and
// returns the first refusal or the reply to the message (with its queue
// id). Bounded by a 10 s deadline.
func SubmitMail(addr, client, from, to, subject string) (string, error) {
	c, err := DialSMTPLine(addr, client)
	if err != nil {
		return "", err
	}
	defer func() { _ = c.Close() }()
	line, err := c.Reply()
	if err != nil || line[0] != '2' {
		return line, err
	}
	for _, cmd := range []string{"EHLO test.test", "MAIL FROM:<" + from + ">", "RCPT TO:<" + to + ">", "DATA"} {
		line, err := c.Cmd(cmd)
		if err != nil {
			return "", err
		}
		if line[0] != '2' && line[0] != '3' {
			return line, nil
		}
	}
	return c.Cmd(fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n\r\nbody\r\n.", from, to, subject))
}

// VerifyDKIMWithPython checks msg's DKIM signature with Debian's
// python3-dkim under /usr/bin/python3, an implementation independent of
// ours, answering the key lookup of name (with its trailing dot) with txt:
// no DNS is queried. It fails the test when the signature does not verify
// or python3-dkim is missing (`make deps` installs it).
func VerifyDKIMWithPython(tb testing.TB, msg []byte, name, txt string) {
	tb.Helper()
	const script = `import sys, dkim
name, txt = sys.argv[2].encode(), sys.argv[3].encode()
def dnsfunc(q, timeout=5):
    return txt if q == name else None
ok = dkim.verify(open(sys.argv[1], 'rb').read(), dnsfunc=dnsfunc)
print('verified' if ok else 'FAILED')
sys.exit(0 if ok else 1)
`
	runPythonDKIM(tb, msg, script, name, txt)
}

// VerifyDKIMWithPythonDNS checks the first (topmost) DKIM-Signature of msg
// with python3-dkim, as VerifyDKIMWithPython does, but looks the key up in
// DNS: the TXT record at <s=>._domainkey.<d=> that the DNS server at
// dnsAddr (a DNSServer's Addr) serves, queried with dnspython (a
// dependency of Debian's python3-dkim). It returns the signature's d=
// domain; it fails the test when the signature does not verify.
func VerifyDKIMWithPythonDNS(tb testing.TB, msg []byte, dnsAddr string) string {
	tb.Helper()
	host, port, err := net.SplitHostPort(dnsAddr)
	if err != nil {
		tb.Fatal(err)
	}
	const script = `import sys, dkim, dns.resolver
r = dns.resolver.Resolver(configure=False)
r.nameservers, r.port = [sys.argv[2]], int(sys.argv[3])
def dnsfunc(q, timeout=5):
    try:
        answer = r.resolve(q.decode(), 'TXT', lifetime=timeout)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    return b''.join(answer[0].strings)
d = dkim.DKIM(open(sys.argv[1], 'rb').read())
ok = d.verify(dnsfunc=dnsfunc)
print('verified d=%s' % d.domain.decode() if ok else 'FAILED')
sys.exit(0 if ok else 1)
`
	out := runPythonDKIM(tb, msg, script, host, port)
	_, domain, _ := strings.Cut(out, "verified d=")
	return strings.TrimSpace(domain)
}

// runPythonDKIM runs a python3-dkim script on msg (its file is the first
// argument, args follow) and returns its output, failing the test unless
// it exits with 0 and prints "verified".
func runPythonDKIM(tb testing.TB, msg []byte, script string, args ...string) string {
	tb.Helper()
	file := filepath.Join(tb.TempDir(), "msg.eml")
	if err := os.WriteFile(file, msg, 0o600); err != nil {
		tb.Fatal(err)
	}
	out, err := exec.Command("/usr/bin/python3", append([]string{"-c", script, file}, args...)...).CombinedOutput() //nolint:gosec // a fixed script; the arguments are data
	if err != nil || !strings.Contains(string(out), "verified") {
		tb.Errorf("python3-dkim (Debian's python3-dkim under /usr/bin/python3; make deps installs it) does not verify the signature: %v\n%s\nmessage:\n%s", err, out, msg)
	}
	return string(out)
}
