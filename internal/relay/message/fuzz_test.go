package message

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"net/mail"
	"strings"
	"testing"

	msgauth "github.com/emersion/go-msgauth/dkim"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/routing"
)

// FuzzPrepare feeds arbitrary messages to Prepare: it never panics, never
// changes the client's bytes, prepends well-formed lines within
// MaxPrepended, adds Date and Message-ID exactly when net/mail (where it
// can read the header) sees none, and signs what go-msgauth verifies.
func FuzzPrepare(f *testing.F) {
	for _, c := range signCases {
		f.Add([]byte(c.msg), true)
		f.Add([]byte(c.msg), false)
	}
	for _, s := range []string{dated, "", "\r\n", " x\r\n", "Date: x", "a\r\n\r\n", "DKIM-Signature: v=1; d=example.com; s=s2\r\nFrom: a\r\n\r\nb",
		"From: a\r\n\tb\r\n c\r\n\r\n\r\n", "Message-ID:\r\n\r\n", "Subject: x\r\nDate\r\n\r\n"} {
		f.Add([]byte(s), true)
		f.Add([]byte(s), false)
	}
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	txt := record(f, key)
	f.Fuzz(func(t *testing.T, data []byte, signed bool) {
		p := baseParams(t)
		if signed {
			p.DKIM = &routing.DKIM{Selector: "s2", Algorithm: v1alpha1.DKIMAlgorithmEd25519, Signer: key}
			p.SenderDomain = "example.com"
			p.MaxMemory = 512 // exercise the staging file too
		}
		out, err := Prepare(context.Background(), bytes.NewReader(data), p)
		if err != nil {
			switch {
			case errors.Is(err, ErrMalformed) && len(data) > 0 && (data[0] == ' ' || data[0] == '\t'):
			case errors.Is(err, ErrHeaderTooLarge) && len(data) > MaxHeaderBytes:
			default:
				t.Fatalf("Prepare: %v", err)
			}
			return
		}
		got, err := io.ReadAll(out)
		if err != nil {
			t.Fatal(err)
		}
		if err := out.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[out.Prepended:], data) {
			t.Fatal("the client's bytes changed")
		}
		prefix := string(got[:out.Prepended])
		if out.Prepended > MaxPrepended || !strings.HasSuffix(prefix, "\r\n") {
			t.Fatalf("prefix %q", prefix)
		}
		for _, line := range strings.Split(strings.TrimSuffix(prefix, "\r\n"), "\r\n") {
			if line == "" || len(line) > 998 || strings.ContainsAny(line, "\r\n\x00") {
				t.Fatalf("prepended line %q", line)
			}
		}
		addedDate := strings.Contains(prefix, "\r\nDate: ")
		addedID := strings.Contains(prefix, "\r\nMessage-ID: ")
		if m, err := mail.ReadMessage(bytes.NewReader(data)); err == nil && bytes.Contains(data, []byte("\r\n\r\n")) && crlfClean(data) {
			if _, ok := m.Header["Date"]; ok == addedDate {
				t.Errorf("net/mail sees Date %v, Prepare added one %v", ok, addedDate)
			}
			if _, ok := m.Header["Message-Id"]; ok == addedID {
				t.Errorf("net/mail sees Message-ID %v, Prepare added one %v", ok, addedID)
			}
		}
		if !signed || !crlfClean(data) || !(bytes.HasPrefix(data, []byte("\r\n")) || bytes.Contains(data, []byte("\r\n\r\n"))) {
			return
		}
		verifs, err := msgauth.VerifyWithOptions(bytes.NewReader(got), &msgauth.VerifyOptions{
			LookupTXT: func(string) ([]string, error) { return []string{txt}, nil },
		})
		if err != nil {
			t.Fatalf("go-msgauth: %v", err)
		}
		for _, v := range verifs {
			if v.Domain == "example.com" && v.Err == nil {
				return
			}
		}
		t.Fatalf("no valid signature: %v", verifs)
	})
}

// crlfClean reports what the SMTP server guarantees: CR and LF only as
// CRLF, no NUL.
func crlfClean(b []byte) bool {
	for i, c := range b {
		switch c {
		case 0:
			return false
		case '\r':
			if i+1 >= len(b) || b[i+1] != '\n' {
				return false
			}
		case '\n':
			if i == 0 || b[i-1] != '\r' {
				return false
			}
		}
	}
	return true
}
