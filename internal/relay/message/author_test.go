package message

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/postgate/postgate/internal/routing"
)

// TestAuthor: what Prepare tells Signing of the From field. Mailbox decides
// who a message from the null sender is from; Domain, the one domain a
// signature can align with (RFC 7489 section 3.1.1), is set only when every
// mailbox of the one From field has it (section 6.6.1: a verifier checks
// each From domain).
func TestAuthor(t *testing.T) {
	tests := []struct {
		name, msg string
		want      Author
	}{
		{"plain address", "From: news@b.test\r\n\r\n", Author{"news@b.test", "b.test"}},
		{"display name, folded", "Subject: x\r\nfrom: \"News\"\r\n <news@B.Test>\r\n\r\n", Author{"news@B.Test", "B.Test"}},
		{"a list of one domain", "From: a@b.test, c@B.test\r\nSender: a@b.test\r\n\r\n", Author{"", "b.test"}},
		{"a list of two domains", "From: a@b.test, c@a.test\r\n\r\n", Author{}},
		{"two From fields", "From: a@b.test\r\nFrom: a@b.test\r\n\r\n", Author{}},
		{"unparsable", "From: not an address\r\n\r\n", Author{}},
		{"a list with one unparsable mailbox", "From: a@b.test, <x\r\n\r\n", Author{}},
		{"no From field", "Subject: x\r\n\r\nFrom: a@b.test\r\n", Author{}},
		{"look-alikes", "Resent-From: a@b.test\r\nX-From: a@b.test\r\n\r\n", Author{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := baseParams(t)
			var got *Author
			p.Signing = func(a Author) (string, *routing.DKIM, error) {
				got = &a
				return "", nil, nil
			}
			if out, _ := prepare(t, []byte(tt.msg), p); out.Signed || out.SignedBy != "" {
				t.Errorf("signed by %q without a key", out.SignedBy)
			}
			if got == nil || *got != tt.want {
				t.Errorf("Signing called with %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestSigningChooses: the domain and key Signing returns sign the message,
// in place of the Params' own; its error is Prepare's.
func TestSigningChooses(t *testing.T) {
	keys := testKeys(t)
	const msg = "From: news@b.test\r\nSubject: x\r\n\r\nbody\r\n"
	p := baseParams(t)
	p.SenderDomain, p.DKIM = "a.test", keys[0].dkim
	p.Signing = func(a Author) (string, *routing.DKIM, error) { return a.Domain, keys[1].dkim, nil }
	out, got := prepare(t, []byte(msg), p)
	if !out.Signed || out.SignedBy != "b.test" {
		t.Fatalf("Signed %v by %q, want b.test", out.Signed, out.SignedBy)
	}
	if err := goVerify(t, got, "b.test", keys[1].dkim.Selector, keys[1].txt(t)); err != nil {
		t.Errorf("go-msgauth: %v\n%s", err, got)
	}

	refused := errors.New("refused")
	p.Signing = func(Author) (string, *routing.DKIM, error) { return "", nil, refused }
	if _, err := Prepare(context.Background(), bytes.NewReader([]byte(msg)), p); !errors.Is(err, refused) {
		t.Errorf("Prepare: %v, want the error of Signing", err)
	}
}
