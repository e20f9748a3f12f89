package message

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// FuzzChecker: the checker passes exactly the messages whose every line
// ends with CRLF, with no lone CR or LF, no NUL and no line over the limit,
// whatever the read sizes; and what it passes is the input unchanged.
func FuzzChecker(f *testing.F) {
	for _, s := range []string{"a\r\nb\r\n", "a\nb", "a\rb\r\n", "nul\x00\r\n", "\r\n.\r\n", strings.Repeat("x", 40) + "\r\n", "\r"} {
		f.Add([]byte(s), uint8(1))
	}
	f.Fuzz(func(t *testing.T, body []byte, chunk uint8) {
		const maxLine = 32
		var r io.Reader = bytes.NewReader(body)
		if chunk%2 == 1 {
			r = iotest.OneByteReader(r)
		} else {
			r = iotest.HalfReader(r)
		}
		got, err := io.ReadAll(NewChecker(r, maxLine))
		want := wellFormed(body, maxLine)
		var be *UnsafeBytesError
		switch {
		case want && err != nil:
			t.Fatalf("refused a well-formed body %q: %v", body, err)
		case !want && !errors.As(err, &be):
			t.Fatalf("passed a malformed body %q (err %v)", body, err)
		case want && !bytes.Equal(got, body):
			t.Fatalf("changed the body: %q -> %q", body, got)
		}
	})
}

// wellFormed is the specification the checker is held to, written the
// simple way: split on CRLF and look at what remains.
func wellFormed(b []byte, maxLine int) bool {
	lines := bytes.Split(b, []byte("\r\n"))
	for _, l := range lines {
		if bytes.ContainsAny(l, "\r\n\x00") || len(l) > maxLine {
			return false
		}
	}
	return true
}
