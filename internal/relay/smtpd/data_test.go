package smtpd

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// refDATA is how the body of DATA was read before protoConn read it itself,
// byte by byte: protoConn's bare CR after a leading dot passed on as a
// space (and flagged), then go-smtp's DATA reader (go-smtp data.go). It
// returns the body, how many input bytes it took (the end-of-data line
// included), whether the end was found, and whether the fault was seen.
func refDATA(in []byte) (body []byte, used int, ended, fault bool) {
	const (
		beginLine = iota
		dot
		dotCR
		cr
		data
	)
	state := beginLine
	for i := 0; i < len(in); i++ {
		c := in[i]
		if state == dot && c == '\r' && i+1 < len(in) && in[i+1] != '\n' {
			fault, c = true, ' '
		}
		switch state {
		case beginLine:
			switch c {
			case '.':
				state = dot
				continue
			case '\r':
				state = cr
			default:
				state = data
			}
		case dot:
			if c == '\r' {
				state = dotCR
				continue
			}
			state = data
		case dotCR:
			// Only LF follows here (see above), or the input ended.
			return body, i + 1, true, fault
		case cr:
			if c == '\n' {
				state = beginLine
			} else {
				state = data
			}
		case data:
			if c == '\r' {
				state = cr
			}
		}
		body = append(body, c)
	}
	return body, len(in), false, fault
}

// pieces hands out its input at most n bytes per Read, as a slow client's
// segments arrive.
type pieces struct {
	r io.Reader
	n int
}

func (p *pieces) Read(b []byte) (int, error) { return p.r.Read(b[:min(len(b), p.n)]) }

// decodeDATA reads in's DATA body through protoConn as the session does,
// with reads of size read and the input arriving seg bytes at a time.
func decodeDATA(in []byte, seg, read int) (body, rest []byte, err error, fault bool) {
	c := &protoConn{r: bufio.NewReaderSize(&pieces{r: bytes.NewReader(in), n: seg}, 4096), scratch: make([]byte, 4096)}
	c.mode, c.dot = modeData, dotBeginLine
	c.dataStarted.Store(true)
	r := c.body(1 << 30)
	buf := make([]byte, read)
	for {
		n, rerr := r.Read(buf)
		body = append(body, buf[:n]...)
		if rerr != nil {
			err = rerr
			break
		}
	}
	rest, _ = io.ReadAll(c.r)
	return body, rest, err, c.takeDataFault() != nil
}

// FuzzDATABody: protoConn's buffer-at-a-time DATA reader gives the body,
// ends it at the same byte and flags the same bodies as the byte-by-byte
// readers it replaced, however the bytes arrive and are asked for.
func FuzzDATABody(f *testing.F) {
	for _, s := range []string{
		"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n",
		"..leading\r\n.\r\n",
		"first\r\n.\rSECOND\r\n.\r\n",
		"first\r\n.\r\r\n.\r\n",
		".\rSubject: x\r\n.\r\n",
		"a\r\r\n.\r\nb\r\n.\r\n",
		"bare\n.\nlf\r\n.\r\n",
		"no end",
		".\r",
		"\r\n.\r\n",
	} {
		f.Add([]byte(s), uint8(1), uint8(1))
		f.Add([]byte(s), uint8(3), uint8(200))
	}
	f.Fuzz(func(t *testing.T, in []byte, seg, read uint8) {
		want, used, ended, wantFault := refDATA(in)
		body, rest, err, fault := decodeDATA(in, int(seg%16)+1, int(read)+1)
		switch {
		case ended && !errors.Is(err, io.EOF):
			t.Fatalf("%q: error %v, want the end of the body", in, err)
		case !ended && !errors.Is(err, io.ErrUnexpectedEOF):
			t.Fatalf("%q: error %v, want io.ErrUnexpectedEOF", in, err)
		case !bytes.Equal(body, want):
			t.Fatalf("%q: body %q, want %q", in, body, want)
		case ended && !bytes.Equal(rest, in[used:]):
			t.Fatalf("%q: left %q after the body, want %q", in, rest, in[used:])
		case fault != wantFault:
			t.Fatalf("%q: fault %v, want %v", in, fault, wantFault)
		}
	})
}

// The DATA body reader stops at the server's message size, as go-smtp's
// reader does: that many bytes, then smtp.ErrDataTooLarge.
func TestDATABodyLimit(t *testing.T) {
	c := &protoConn{r: bufio.NewReader(strings.NewReader("0123456789\r\n.\r\n")), scratch: make([]byte, 4096)}
	c.mode, c.dot = modeData, dotBeginLine
	c.dataStarted.Store(true)
	got, err := io.ReadAll(c.body(5))
	if string(got) != "01234" || err == nil || !strings.Contains(err.Error(), "Maximum message size") {
		t.Fatalf("%q, %v", got, err)
	}
	if c.body(5) != nil {
		t.Error("a second reader of the same body")
	}
}
