package message

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// ErrUnsafeBytes marks message bytes that break RFC 5321 section 2.3.8 (CR
// and LF only together, as CRLF; no NUL) or the line-length limit.
var ErrUnsafeBytes = errors.New("message bytes unsafe for SMTP")

// UnsafeBytesError says what was found where.
type UnsafeBytesError struct {
	// What is "bare LF", "bare CR", "NUL byte" or the line-length breach.
	What   string
	Offset int64
	// LongLine is set for a line over the limit.
	LongLine bool
}

func (e *UnsafeBytesError) Error() string { return fmt.Sprintf("%s at byte %d", e.What, e.Offset) }

func (e *UnsafeBytesError) Unwrap() error { return ErrUnsafeBytes }

// Checker passes message bytes through and fails at the first bare CR,
// bare LF or NUL, and at a line longer than its limit (CRLF excluded).
// Bare line ends are how SMTP smuggling makes one hop see the end of data
// where the next sees a new command ("\n.\r\n"); NUL breaks C parsers
// downstream. The SMTP server checks what it accepts (go-smtp passes all of
// these through, for DATA and BDAT alike); delivery checks again what it
// sends, against a damaged or imported spool file.
type Checker struct {
	r       io.Reader
	maxLine int
	prev    byte
	line    int
	offset  int64
	err     error
}

// NewChecker checks r; maxLine 0 means no line-length limit.
func NewChecker(r io.Reader, maxLine int) *Checker {
	return &Checker{r: r, maxLine: maxLine, prev: '\n'}
}

func (c *Checker) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.r.Read(p)
	for i := 0; i < n; i++ {
		if c.prev != '\r' {
			// A run of bytes that are none of NUL, CR and LF, after
			// anything but a CR, only lengthens the line: skip it with
			// the vectorized IndexByte rather than byte by byte (at
			// 100 KB messages the byte loop was the relay's hottest
			// code), up to the line-length limit; the byte that ends the
			// run is checked below.
			run := p[i:n]
			for _, special := range [...]byte{'\n', '\r', 0} {
				if j := bytes.IndexByte(run, special); j >= 0 {
					run = run[:j]
				}
			}
			if c.maxLine > 0 {
				run = run[:min(len(run), max(c.maxLine-c.line, 0))]
			}
			if k := len(run); k > 0 {
				c.line += k
				c.prev = run[k-1]
				if i += k; i == n {
					break
				}
			}
		}
		b := p[i]
		var what string
		long := false
		switch {
		case b == 0:
			what = "NUL byte"
		case b == '\n' && c.prev != '\r':
			what = "bare LF"
		case c.prev == '\r' && b != '\n':
			what = "bare CR"
		}
		if b == '\n' || b == '\r' {
			c.line = 0
		} else {
			c.line++
			if c.maxLine > 0 && c.line > c.maxLine && what == "" {
				what, long = fmt.Sprintf("line longer than %d octets", c.maxLine), true
			}
		}
		if what != "" {
			c.err = &UnsafeBytesError{What: what, Offset: c.offset + int64(i), LongLine: long}
			return i, c.err
		}
		c.prev = b
	}
	c.offset += int64(n)
	if errors.Is(err, io.EOF) && c.prev == '\r' {
		c.err = &UnsafeBytesError{What: "bare CR", Offset: c.offset - 1}
		return n, c.err
	}
	return n, err
}
