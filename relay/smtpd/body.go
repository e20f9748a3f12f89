package smtpd

import (
	"errors"
	"fmt"
	"io"
)

// bodyError is a violation of RFC 5321 section 2.3.8 (CR and LF only as
// CRLF) or of the line-length limit, found in the message bytes.
type bodyError struct {
	what   string
	offset int64
	// longLine is set for a line over the limit, as opposed to a bare CR,
	// bare LF or NUL.
	longLine bool
}

func (e *bodyError) Error() string { return fmt.Sprintf("%s at byte %d", e.what, e.offset) }

var errBody = errors.New("message bytes refused")

func (e *bodyError) Unwrap() error { return errBody }

// bodyChecker passes message bytes through and fails on the first bare CR,
// bare LF or NUL, and on a line longer than maxLine octets (CRLF excluded).
// Bare line ends are how SMTP smuggling makes one relay see the end of data
// where the next sees a new command ("\n.\r\n"); NUL breaks C parsers
// downstream. go-smtp passes all of them through, for DATA and BDAT alike,
// so the check lives here, on the bytes the spool stores.
type bodyChecker struct {
	r       io.Reader
	maxLine int
	prev    byte
	line    int
	offset  int64
	err     error
}

func newBodyChecker(r io.Reader, maxLine int) *bodyChecker {
	return &bodyChecker{r: r, maxLine: maxLine, prev: '\n'}
}

func (c *bodyChecker) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.r.Read(p)
	for i := range n {
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
			if c.line > c.maxLine && what == "" {
				what, long = fmt.Sprintf("line longer than %d octets", c.maxLine), true
			}
		}
		if what != "" {
			c.err = &bodyError{what: what, offset: c.offset + int64(i), longLine: long}
			return i, c.err
		}
		c.prev = b
	}
	c.offset += int64(n)
	if err == io.EOF && c.prev == '\r' {
		c.err = &bodyError{what: "bare CR", offset: c.offset - 1}
		return n, c.err
	}
	return n, err
}
