package testenv

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// transcript records one SMTP connection as the sink's go-smtp server saw
// it, above TLS, from the server's Debug stream. The stream interleaves what
// the server read and wrote without saying which is which; a write is told
// apart because it follows a write on the raw connection (tapWrites) and is
// exactly one reply line (go-smtp flushes each reply line on its own).
//
// It also tracks which client line is the command being handled: every
// command gets exactly one final reply, so while a command is handled, the
// number of final replies written so far (the greeting included) is its
// index plus one. That recovers MAIL and RCPT lines exactly as sent, which
// go-smtp only hands the backend parsed (quotes and source routes removed).
type transcript struct {
	mu        sync.Mutex
	tapWrites int
	partial   []byte
	mode      transcriptMode
	bdatLeft  int
	dataBytes int
	commands  []string
	finals    int
	lines     []string
}

type transcriptMode int

const (
	modeCommand transcriptMode = iota
	modeData                   // after 354, until the lone "."
	modeBDAT                   // inside a BDAT chunk, bdatLeft bytes to go
	modeSASL                   // after 334, one SASL response line
)

// noteRawWrite is called for each successful write on the raw connection.
func (t *transcript) noteRawWrite() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.tapWrites++
}

// Write takes go-smtp's Debug stream for this connection.
func (t *transcript) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tapWrites > 0 && isReplyLine(p) {
		t.serverLine(string(p[:len(p)-2]))
	} else {
		t.clientBytes(p)
	}
	t.tapWrites = 0
	return len(p), nil
}

// note adds a line written outside go-smtp (the sink's own greeting path).
func (t *transcript) note(line string, fromClient bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if fromClient {
		t.lines = append(t.lines, "C: "+line)
		return
	}
	t.lines = append(t.lines, "S: "+line)
}

// isReplyLine reports whether p is one SMTP reply line: three digits, a
// space or hyphen, text, CRLF, and no other line break.
func isReplyLine(p []byte) bool {
	if len(p) < 6 || !bytes.HasSuffix(p, []byte("\r\n")) || bytes.IndexByte(p, '\n') != len(p)-1 {
		return false
	}
	for _, b := range p[:3] {
		if b < '0' || b > '9' {
			return false
		}
	}
	return p[3] == ' ' || p[3] == '-'
}

func (t *transcript) serverLine(line string) {
	t.lines = append(t.lines, "S: "+line)
	if line[3] == '-' {
		return
	}
	switch line[:3] {
	case "334":
		t.mode = modeSASL
	case "354":
		t.mode, t.dataBytes = modeData, 0
	default:
		t.finals++
	}
}

func (t *transcript) clientBytes(p []byte) {
	for len(p) > 0 {
		if t.mode == modeBDAT {
			n := min(len(p), t.bdatLeft)
			t.bdatLeft -= n
			t.dataBytes += n
			p = p[n:]
			if t.bdatLeft == 0 {
				t.lines = append(t.lines, fmt.Sprintf("C: <BDAT chunk, %d bytes>", t.dataBytes))
				t.mode = modeCommand
			}
			continue
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			t.partial = append(t.partial, p...)
			return
		}
		line := string(append(t.partial, p[:i]...))
		t.partial, p = t.partial[:0], p[i+1:]
		t.clientLine(strings.TrimSuffix(line, "\r"), i+1)
	}
}

func (t *transcript) clientLine(line string, n int) {
	switch t.mode {
	case modeData:
		if line != "." {
			t.dataBytes += n
			return
		}
		t.lines = append(t.lines, fmt.Sprintf("C: <message data, %d bytes>", t.dataBytes), "C: .")
		t.mode = modeCommand
		return
	case modeSASL:
		t.lines = append(t.lines, "C: "+line)
		t.mode = modeCommand
		return
	case modeCommand, modeBDAT:
	}
	t.commands = append(t.commands, line)
	t.lines = append(t.lines, "C: "+line)
	// The chunk follows a BDAT command at once, whatever the reply
	// (RFC 3030 section 2); go-smtp reads it even when it refuses the command.
	if verb, arg, _ := strings.Cut(line, " "); strings.EqualFold(verb, "BDAT") {
		size, _, _ := strings.Cut(strings.TrimSpace(arg), " ")
		if n, err := strconv.ParseUint(size, 10, 32); err == nil && n > 0 {
			t.mode, t.bdatLeft, t.dataBytes = modeBDAT, int(n), 0
		}
	}
}

// current returns the client command line being handled now.
func (t *transcript) current() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if i := t.finals - 1; i >= 0 && i < len(t.commands) {
		return t.commands[i]
	}
	return ""
}

// snapshot returns the transcript so far.
func (t *transcript) snapshot() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.lines...)
}
