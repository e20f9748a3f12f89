package dkim

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"io"
	"math/big"
	"slices"
	"strings"
	"testing"

	msgauth "github.com/emersion/go-msgauth/dkim"
)

func TestSignedFields(t *testing.T) {
	tests := []struct {
		name    string
		present []string
		want    string
	}{
		{"nothing: From alone, oversigned", nil, "From"},
		{"one of each", []string{"From", "To", "Subject", "Date", "Message-ID", "Received", "X-Mailer"},
			"From:From:Subject:Date:Message-ID:To"},
		{"case-insensitive, canonical case out", []string{"from", "SUBJECT", "message-id", "mime-version", "content-type"},
			"From:From:Subject:Message-ID:MIME-Version:Content-Type"},
		{"repeats signed per instance", []string{"To", "To", "From", "From"}, "From:From:From:To:To"},
		{"repeats bounded", []string{"To", "To", "To", "To", "To", "To", "From"}, "From:From:To:To:To:To"},
		{"From bounded, then oversigned", []string{"From", "From", "From", "From", "From", "From"}, "From:From:From:From:From"},
		{"trace fields never", []string{"Received", "DKIM-Signature", "Return-Path", "ARC-Seal", "From"}, "From:From"},
		{"the whole list", signedFields,
			"From:From:Reply-To:Subject:Date:Message-ID:To:Cc:In-Reply-To:References:MIME-Version:Content-Type:Content-Transfer-Encoding:List-Unsubscribe:List-Unsubscribe-Post:TLS-Report-Domain:TLS-Report-Submitter"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := strings.Join(SignedFields(tt.present), ":"); got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}

func TestKeyAlgorithm(t *testing.T) {
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsa512 := publicOnly{&rsa.PublicKey{N: new(big.Int).Lsh(big.NewInt(1), 511), E: 65537}}
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tests := []struct {
		signer crypto.Signer
		want   string // "" for an error
	}{
		{rsa2048, "rsa-sha256"},
		{ed, "ed25519-sha256"},
		{rsa512, ""},
		{ec, ""},
		{nil, ""},
	}
	for _, tt := range tests {
		got, err := Key{Domain: "example.com", Selector: "s", Signer: tt.signer}.Algorithm()
		if got != tt.want || (err == nil) != (tt.want != "") {
			t.Errorf("%T: got %q, %v; want %q", tt.signer, got, err, tt.want)
		}
		if _, err := NewSigner(Key{Domain: "example.com", Selector: "s", Signer: tt.signer}, []string{"From"}); (err == nil) != (tt.want != "") {
			t.Errorf("%T: NewSigner: %v", tt.signer, err)
		}
	}
	for _, k := range []Key{{Selector: "s", Signer: ed}, {Domain: "example.com", Signer: ed}} {
		if _, err := NewSigner(k, []string{"From"}); err == nil {
			t.Errorf("NewSigner(%+v) succeeded", k)
		}
	}
	if _, err := NewSigner(Key{Domain: "example.com", Selector: "s", Signer: ed}, []string{"Subject"}); err == nil {
		t.Error("NewSigner without From in h= succeeded")
	}
}

// TestSignerVerifies signs messages written in pieces of every size, with
// and without a header/body separator, and verifies with go-msgauth.
func TestSignerVerifies(t *testing.T) {
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	txt := "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(ed.Public().(ed25519.PublicKey))
	msgs := []string{
		"From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n",
		"From: a@example.com\r\nSubject: x\r\n\r\n",
		"\r\nbody\r\n",
		"From: a@example.com\r\nSubject: x\r\n",
		"From: a@example.com\r\nSubject: x",
		"",
		"From: a@example.com\nSubject: x\n\nLF body\n",
	}
	for _, msg := range msgs {
		for _, chunk := range []int{1, 2, 3, 7, 1 << 20} {
			s, err := NewSigner(Key{Domain: "example.com", Selector: "sel", Signer: ed}, []string{"From", "From", "Subject"})
			if err != nil {
				t.Fatal(err)
			}
			for b := []byte(msg); len(b) > 0; {
				n := min(chunk, len(b))
				if _, err := s.Write(b[:n]); err != nil {
					t.Fatal(err)
				}
				b = b[n:]
			}
			if err := s.Close(); err != nil {
				t.Fatalf("%q: Close: %v", msg, err)
			}
			sig := s.Signature()
			if !strings.HasPrefix(sig, FieldName+": ") || !strings.HasSuffix(sig, "\r\n") {
				t.Fatalf("signature field %q", sig)
			}
			// go-msgauth folds at tags (its first line is 83 characters
			// with bh=); RFC 5322 section 2.1.1's hard limit is 998.
			for _, line := range strings.Split(sig, "\r\n") {
				if len(line) > 998 {
					t.Errorf("signature line over 998 characters: %q", line)
				}
			}
			signed := sig + msg
			if !strings.Contains(signed, "\n\r\n") && !strings.Contains(signed, "\n\n") {
				// go-msgauth's verifier wants the separator that a
				// message of header fields only does not have; add it
				// for the check only (it changes no hash).
				if !strings.HasSuffix(signed, "\n") {
					signed += "\r\n"
				}
				signed += "\r\n"
			}
			verifs, err := msgauth.VerifyWithOptions(strings.NewReader(signed), &msgauth.VerifyOptions{
				LookupTXT: func(string) ([]string, error) { return []string{txt}, nil },
			})
			if err != nil || len(verifs) != 1 || verifs[0].Err != nil {
				t.Errorf("%q in chunks of %d: %v %v", msg, chunk, err, verifs)
			}
			if !slices.Equal(verifs[0].HeaderKeys, []string{"From", "From", "Subject"}) {
				t.Errorf("h= %v", verifs[0].HeaderKeys)
			}
		}
	}
}

func TestSeparator(t *testing.T) {
	tests := []struct {
		in    string
		found bool
	}{
		{"", false},
		{"\r\n", true},
		{"\n", true},
		{"A: b\r\n\r\n", true},
		{"A: b\n\n", true},
		{"A: b\r\n", false},
		{"A: b\r\n \r\n", false}, // a continuation line of spaces is not empty
		{"A: b\r\r\n", false},
		{"A: b\r\n\rx\r\n", false},
		{"A: b", false},
	}
	for _, tt := range tests {
		for split := range len(tt.in) + 1 {
			var s separator
			s.scan([]byte(tt.in[:split]))
			s.scan([]byte(tt.in[split:]))
			if s.found != tt.found {
				t.Errorf("%q split at %d: found %v, want %v", tt.in, split, s.found, tt.found)
			}
		}
	}
}

// publicOnly is a signer that cannot sign, for key checks: Go refuses to
// generate RSA keys under 1024 bits.
type publicOnly struct{ pub crypto.PublicKey }

func (p publicOnly) Public() crypto.PublicKey { return p.pub }

func (publicOnly) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	panic("not a key")
}
