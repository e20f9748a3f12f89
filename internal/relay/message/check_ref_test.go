package message

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// refChecker is Checker as it was before its fast path: one byte at a
// time, the reference FuzzCheckerMatchesReference holds it to.
type refChecker struct {
	r       io.Reader
	maxLine int
	prev    byte
	line    int
	offset  int64
	err     error
}

func (c *refChecker) Read(p []byte) (int, error) {
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

// FuzzCheckerMatchesReference: the checker passes the same bytes and fails
// with the same error (what, offset, long line) as the byte-at-a-time
// reference, whatever the limit and the read sizes.
func FuzzCheckerMatchesReference(f *testing.F) {
	for _, s := range []string{"a\r\nb\r\n", "a\nb", "a\rb\r\n", "nul\x00\r\n", "\r\n.\r\n", strings.Repeat("x", 40) + "\r\n", "\r", "abc\r", strings.Repeat("y", 31) + "\r\n" + strings.Repeat("z", 33)} {
		f.Add([]byte(s), uint8(32), uint8(1))
		f.Add([]byte(s), uint8(0), uint8(2))
	}
	f.Fuzz(func(t *testing.T, body []byte, maxLine, chunk uint8) {
		read := func(r io.Reader) ([]byte, error) {
			switch chunk % 3 {
			case 1:
				r = iotest.OneByteReader(r)
			case 2:
				r = iotest.HalfReader(r)
			}
			return io.ReadAll(r)
		}
		got, err := read(NewChecker(bytes.NewReader(body), int(maxLine)))
		want, wantErr := read(&refChecker{r: bytes.NewReader(body), maxLine: int(maxLine), prev: '\n'})
		if !bytes.Equal(got, want) {
			t.Fatalf("%q (max %d): passed %q, reference %q", body, maxLine, got, want)
		}
		var ge, we *UnsafeBytesError
		errors.As(err, &ge)
		errors.As(wantErr, &we)
		if (ge == nil) != (we == nil) || (ge != nil && *ge != *we) || (ge == nil && !errors.Is(err, wantErr)) {
			t.Fatalf("%q (max %d): error %v, reference %v", body, maxLine, err, wantErr)
		}
	})
}

// BenchmarkChecker reads 100 KB of 78-byte lines through the checker and
// through the byte-at-a-time reference.
func BenchmarkChecker(b *testing.B) {
	body := []byte(strings.Repeat(strings.Repeat("0123456789", 7)+"abcdef\r\n", 100<<10/78))
	for _, bc := range []struct {
		name string
		new  func(io.Reader) io.Reader
	}{
		{"checker", func(r io.Reader) io.Reader { return NewChecker(r, 998) }},
		{"reference", func(r io.Reader) io.Reader { return &refChecker{r: r, maxLine: 998, prev: '\n'} }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if _, err := io.Copy(io.Discard, bc.new(bytes.NewReader(body))); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
