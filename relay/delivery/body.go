package delivery

import (
	"errors"
	"fmt"
	"io"
)

// errUnsafe marks message bytes that must not reach the wire.
var errUnsafe = errors.New("message bytes unsafe for SMTP")

// wireCheck passes the stored message through and fails at the first NUL,
// bare CR or bare LF (RFC 5321 section 2.3.8). The SMTP server refuses
// such messages when it takes them, so this never fires for a message it
// queued; it guards the next hop against a damaged or imported spool file:
// a bare LF is how SMTP smuggling makes the next hop see an end of data
// ("\n.\r\n") that we did not send. go-smtp's DATA writer does the
// dot-stuffing and turns nothing else.
type wireCheck struct {
	r    io.Reader
	prev byte
	off  int64
}

func (c *wireCheck) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	for i := range n {
		b := p[i]
		var what string
		switch {
		case b == 0:
			what = "NUL byte"
		case b == '\n' && c.prev != '\r':
			what = "bare LF"
		case c.prev == '\r' && b != '\n':
			what = "bare CR"
		}
		if what != "" {
			return 0, fmt.Errorf("%s at byte %d: %w", what, c.off+int64(i), errUnsafe)
		}
		c.prev = b
	}
	c.off += int64(n)
	if errors.Is(err, io.EOF) && c.prev == '\r' {
		return 0, fmt.Errorf("bare CR at byte %d: %w", c.off-1, errUnsafe)
	}
	return n, err
}
