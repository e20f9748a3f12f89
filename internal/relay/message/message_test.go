package message

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"strings"
	"testing"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/routing"
	"github.com/postgate/postgate/internal/testenv"
)

const dated = "Date: Fri, 13 Mar 2026 10:00:00 +0000\r\nMessage-ID: <m1@client.example.com>\r\nFrom: a@example.com\r\n\r\nbody\r\n"

func TestReceived(t *testing.T) {
	tls13 := &tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256}
	const date = "Sat, 14 Mar 2026 15:09:26 +0100"
	tests := []struct {
		name   string
		mutate func(*Params)
		want   string
	}{
		{"plain", func(*Params) {},
			"Received: from client.example.com ([192.0.2.10])\r\n\tby relay.example.com (postgate) with ESMTP\r\n\tfor <rcpt@example.net>; " + date + "\r\n"},
		{"STARTTLS is ESMTPS with the version and cipher", func(p *Params) { p.TLS = tls13 },
			"Received: from client.example.com ([192.0.2.10])\r\n\t(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256)\r\n\tby relay.example.com (postgate) with ESMTPS\r\n\tfor <rcpt@example.net>; " + date + "\r\n"},
		{"TLS 1.2", func(p *Params) {
			p.TLS = &tls.ConnectionState{Version: tls.VersionTLS12, CipherSuite: tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384}
		}, "Received: from client.example.com ([192.0.2.10])\r\n\t(using TLSv1.2 with cipher TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384)\r\n\tby relay.example.com (postgate) with ESMTPS\r\n\tfor <rcpt@example.net>; " + date + "\r\n"},
		{"AUTH over TLS is ESMTPSA, the identity not shown", func(p *Params) { p.TLS, p.Identity = tls13, "team-a/mailer" },
			"Received: from client.example.com ([192.0.2.10])\r\n\t(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256)\r\n\tby relay.example.com (postgate) with ESMTPSA\r\n\tfor <rcpt@example.net>; " + date + "\r\n"},
		{"AUTH alone is ESMTPA", func(p *Params) { p.Identity = "team-a/mailer" },
			"Received: from client.example.com ([192.0.2.10])\r\n\tby relay.example.com (postgate) with ESMTPA\r\n\tfor <rcpt@example.net>; " + date + "\r\n"},
		{"two recipients: no for clause", func(p *Params) { p.Recipients = []string{"a@example.net", "b@example.net"} },
			"Received: from client.example.com ([192.0.2.10])\r\n\tby relay.example.com (postgate) with ESMTP;\r\n\t" + date + "\r\n"},
		{"queue id", func(p *Params) { p.ID = "01jabcdefghjkmnpqrstvwxyz0" },
			"Received: from client.example.com ([192.0.2.10])\r\n\tby relay.example.com (postgate) with ESMTP id 01jabcdefghjkmnpqrstvwxyz0\r\n\tfor <rcpt@example.net>; " + date + "\r\n"},
		{"reverse name", func(p *Params) { p.ClientName = "mail.example.org" },
			"Received: from client.example.com (mail.example.org [192.0.2.10])\r\n\tby relay.example.com (postgate) with ESMTP\r\n\tfor <rcpt@example.net>; " + date + "\r\n"},
		{"IPv6 literal", func(p *Params) { p.Client = netip.MustParseAddrPort("[2001:db8::25]:40000") },
			"Received: from client.example.com ([IPv6:2001:db8::25])\r\n\tby relay.example.com (postgate) with ESMTP\r\n\tfor <rcpt@example.net>; " + date + "\r\n"},
		{"IPv4-mapped IPv6 is IPv4", func(p *Params) { p.Client = netip.MustParseAddrPort("[::ffff:192.0.2.7]:25") },
			"Received: from client.example.com ([192.0.2.7])\r\n\tby relay.example.com (postgate) with ESMTP\r\n\tfor <rcpt@example.net>; " + date + "\r\n"},
		{"no client address", func(p *Params) { p.Client = netip.AddrPort{} },
			"Received: from client.example.com\r\n\tby relay.example.com (postgate) with ESMTP\r\n\tfor <rcpt@example.net>; " + date + "\r\n"},
		{"HELO cannot inject", func(p *Params) { p.Helo = "x\r\nX-Injected: yes (a);b" },
			"Received: from x??X-Injected:?yes??a??b ([192.0.2.10])\r\n\tby relay.example.com (postgate) with ESMTP\r\n\tfor <rcpt@example.net>; " + date + "\r\n"},
		{"HELO address literal kept", func(p *Params) { p.Helo = "[192.0.2.10]" },
			"Received: from [192.0.2.10] ([192.0.2.10])\r\n\tby relay.example.com (postgate) with ESMTP\r\n\tfor <rcpt@example.net>; " + date + "\r\n"},
		{"no HELO", func(p *Params) { p.Helo = "" },
			"Received: from unknown ([192.0.2.10])\r\n\tby relay.example.com (postgate) with ESMTP\r\n\tfor <rcpt@example.net>; " + date + "\r\n"},
		{"SMTPUTF8 recipient left out", func(p *Params) { p.Recipients = []string{"ñandú@example.net"} },
			"Received: from client.example.com ([192.0.2.10])\r\n\tby relay.example.com (postgate) with ESMTP;\r\n\t" + date + "\r\n"},
		{"recipient with a bracket left out", func(p *Params) { p.Recipients = []string{"a>b@example.net"} },
			"Received: from client.example.com ([192.0.2.10])\r\n\tby relay.example.com (postgate) with ESMTP;\r\n\t" + date + "\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := baseParams(t)
			tt.mutate(&p)
			out, got := prepare(t, []byte(dated), p)
			if want := tt.want + dated; string(got) != want {
				t.Errorf("got\n%q\nwant\n%q", got, want)
			}
			if out.Prepended != len(tt.want) || out.Signed {
				t.Errorf("Prepended %d Signed %v, want %d false", out.Prepended, out.Signed, len(tt.want))
			}
			for _, line := range strings.Split(string(got), "\r\n") {
				if len(line) > 78 && !strings.Contains(line, "X-Injected") {
					t.Errorf("line over 78 characters: %q", line)
				}
			}
		})
	}
}

func TestAddedFields(t *testing.T) {
	tests := []struct {
		name          string
		msg           string
		wantMessageID bool // Prepare adds one
		wantDate      bool
		clientID      string // Prepared.MessageID when the client's
	}{
		{"both present", dated, false, false, "<m1@client.example.com>"},
		{"both missing", "From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n", true, true, ""},
		{"names are case-insensitive", "date: x\r\nmessage-id: <a@b>\r\n\r\n", false, false, "<a@b>"},
		{"upper case", "DATE: x\r\nMESSAGE-ID: <a@b>\r\n\r\n", false, false, "<a@b>"},
		{"obsolete space before the colon", "Date : x\r\nMessage-ID\t: <a@b>\r\n\r\n", false, false, "<a@b>"},
		{"folded values", "Date:\r\n Fri, 13 Mar 2026\r\n\t10:00:00 +0000\r\nMessage-ID:\r\n <folded@b>\r\n\r\nbody\r\n", false, false, "<folded@b>"},
		{"only Date", "Date: x\r\n\r\n", true, false, ""},
		{"only Message-ID", "Message-ID: <a@b>\r\n\r\n", false, true, "<a@b>"},
		{"look-alikes do not count", "X-Date: x\r\nResent-Date: y\r\nResent-Message-ID: <r@b>\r\nDated: z\r\n\r\n", true, true, ""},
		{"a continuation is not a field", "Subject: x\r\n Date: y\r\n\tMessage-ID: <a@b>\r\n\r\n", true, true, ""},
		{"a line without a colon is not a field", "Date\r\nMessage-ID <a@b>\r\n\r\n", true, true, ""},
		{"fields in the body do not count", "Subject: x\r\n\r\nDate: y\r\nMessage-ID: <a@b>\r\n", true, true, ""},
		{"no separator: all header", "Subject: x\r\nDate: y\r\nMessage-ID: <a@b>\r\n", false, false, "<a@b>"},
		{"no separator, no final line end", "Subject: x\r\nDate: y", true, false, ""},
		{"no header at all", "\r\nbody only\r\n", true, true, ""},
		{"empty message", "", true, true, ""},
		{"LF line ends", "Date: x\nMessage-ID: <a@b>\n\nbody\n", false, false, "<a@b>"},
		{"non-ASCII Message-ID not reported", "Message-ID: <ñ@b>\r\nDate: x\r\n\r\n", false, false, ""},
		{"second Message-ID ignored for the report", "Message-ID: <one@b>\r\nMessage-ID: <two@b>\r\nDate: x\r\n\r\n", false, false, "<one@b>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, got := prepare(t, []byte(tt.msg), baseParams(t))
			if !bytes.HasSuffix(got, []byte(tt.msg)) || len(got)-len(tt.msg) != out.Prepended {
				t.Fatalf("the client's message is not intact at the end: %q", got)
			}
			prefix := string(got[:out.Prepended])
			if !strings.HasPrefix(prefix, "Received: ") {
				t.Fatalf("no Received field first: %q", prefix)
			}
			_, added, _ := strings.Cut(prefix, "\r\n\tfor <rcpt@example.net>; Sat, 14 Mar 2026 15:09:26 +0100\r\n")
			var want string
			if tt.wantMessageID {
				if !strings.HasPrefix(added, "Message-ID: <") || !strings.HasSuffix(out.MessageID, "@relay.example.com>") {
					t.Fatalf("no Message-ID added: %q (reported %q)", added, out.MessageID)
				}
				want = "Message-ID: " + out.MessageID + "\r\n"
				if len(out.MessageID) != len("<>@relay.example.com")+26 {
					t.Errorf("Message-ID %q: want 26 random characters", out.MessageID)
				}
			} else if out.MessageID != tt.clientID {
				t.Errorf("MessageID %q, want the client's %q", out.MessageID, tt.clientID)
			}
			if tt.wantDate {
				want += "Date: Sat, 14 Mar 2026 15:09:26 +0100\r\n"
			}
			if added != want {
				t.Errorf("added fields %q, want %q", added, want)
			}
		})
	}
}

func TestMessageIDsAreUnique(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		out, _ := prepare(t, []byte("\r\n"), baseParams(t))
		if seen[out.MessageID] {
			t.Fatalf("Message-ID %s twice", out.MessageID)
		}
		seen[out.MessageID] = true
	}
}

// TestUnsignedStreams checks that an unsigned message is not staged:
// Prepare reads the header block and no more.
func TestUnsignedStreams(t *testing.T) {
	body := bytes.Repeat([]byte(strings.Repeat("x", 998)+"\r\n"), 3<<10) // 3 MiB
	msg := append([]byte("Subject: big\r\n\r\n"), body...)
	in := &countingReader{r: bytes.NewReader(msg)}
	out, err := Prepare(context.Background(), in, baseParams(t))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = out.Close() }()
	if in.n > 64<<10 {
		t.Errorf("Prepare read %d bytes of an unsigned message before returning; want the header only", in.n)
	}
	got, err := io.ReadAll(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[out.Prepended:], msg) {
		t.Error("the client's message changed")
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// failingReader returns its message, then err.
type failingReader struct {
	r   io.Reader
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

type bodyError struct{ offset int }

func (e *bodyError) Error() string { return fmt.Sprintf("bare LF at byte %d", e.offset) }

// TestReadErrorsWrapped: the SMTP server maps its reader's errors (its own
// types, io.ErrUnexpectedEOF, smtp.ErrDataTooLarge) to replies, so they
// must come through wrapped, from Prepare or from Prepared.Read.
func TestReadErrorsWrapped(t *testing.T) {
	key := testKeys(t)[1]
	tests := []struct {
		name   string
		msg    string
		signed bool
		inRead bool // the error comes from Prepared.Read, not Prepare
	}{
		{"in the header", "Subject: x\r\n", false, false},
		{"in the body, unsigned", "Subject: x\r\n\r\nbody", false, true},
		{"in the body, signed", "Subject: x\r\n\r\nbody", true, false},
	}
	for _, tt := range tests {
		for _, want := range []error{&bodyError{17}, io.ErrUnexpectedEOF} {
			t.Run(tt.name+"/"+want.Error(), func(t *testing.T) {
				p := baseParams(t)
				if tt.signed {
					checkNoLeak(t)
					p.DKIM, p.SenderDomain = key.dkim, "example.com"
				}
				out, err := Prepare(context.Background(), &failingReader{strings.NewReader(tt.msg), want}, p)
				if tt.inRead {
					if err != nil {
						t.Fatalf("Prepare: %v", err)
					}
					defer func() { _ = out.Close() }()
					_, err = io.ReadAll(out)
				} else if err == nil {
					_ = out.Close()
					t.Fatal("Prepare succeeded")
				}
				var be *bodyError
				if !errors.Is(err, want) || (errors.As(want, &be) && !errors.As(err, &be)) {
					t.Errorf("error %v does not wrap %v", err, want)
				}
			})
		}
	}
}

func TestHeaderLimits(t *testing.T) {
	field := "X-Filler: " + strings.Repeat("y", 988) + "\r\n" // 1000 bytes
	fill := func(n int) string { return strings.Repeat(field, n/len(field)) }
	tests := []struct {
		name string
		msg  string
		want error
	}{
		{"header at the limit", fill(MaxHeaderBytes-4) + "Z: " + strings.Repeat("z", (MaxHeaderBytes-4)%1000-3) + "\r\n\r\nbody", nil},
		{"header one byte over the limit", fill(MaxHeaderBytes-4) + "Z: " + strings.Repeat("z", (MaxHeaderBytes-4)%1000-2) + "\r\n\r\nbody", ErrHeaderTooLarge},
		{"header over the limit", fill(MaxHeaderBytes+1000) + "X: y\r\n\r\nbody", ErrHeaderTooLarge},
		{"no separator, over the limit", fill(MaxHeaderBytes + 1000), ErrHeaderTooLarge},
		{"one long line over the limit", "X: " + strings.Repeat("y", MaxHeaderBytes), ErrHeaderTooLarge},
		{"a body over the limit is fine", "Subject: x\r\n\r\n" + fill(2*MaxHeaderBytes), nil},
		{"leading space", " Subject: x\r\n\r\n", ErrMalformed},
		{"leading tab", "\tx\r\n\r\n", ErrMalformed},
		{"a space after an empty line is body", "\r\n body\r\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := Prepare(context.Background(), strings.NewReader(tt.msg), baseParams(t))
			if !errors.Is(err, tt.want) {
				t.Fatalf("error %v, want %v", err, tt.want)
			}
			if err == nil {
				got, _ := io.ReadAll(out)
				if !strings.HasSuffix(string(got), tt.msg) {
					t.Error("the client's message changed")
				}
				_ = out.Close()
			}
		})
	}
}

func TestParamsRefused(t *testing.T) {
	small, err := rsa.GenerateKey(rand.Reader, 1024) //nolint:gosec // a key too small on purpose
	if err != nil {
		t.Fatal(err)
	}
	keys := testKeys(t)
	tests := []struct {
		name   string
		mutate func(*Params)
	}{
		{"no hostname", func(p *Params) { p.Hostname = "" }},
		{"hostname with a space", func(p *Params) { p.Hostname = "relay example" }},
		{"DKIM without a sender domain", func(p *Params) { p.DKIM = keys[0].dkim }},
		{"DKIM without a staging directory", func(p *Params) { p.DKIM, p.SenderDomain, p.StageDir = keys[0].dkim, "example.com", "" }},
		{"DKIM without a key", func(p *Params) {
			p.DKIM, p.SenderDomain = &routing.DKIM{Selector: "s", Algorithm: v1alpha1.DKIMAlgorithmEd25519}, "example.com"
		}},
		{"an RSA key declared Ed25519", func(p *Params) {
			p.DKIM, p.SenderDomain = &routing.DKIM{Selector: "s", Algorithm: v1alpha1.DKIMAlgorithmEd25519, Signer: rsaKey()}, "example.com"
		}},
		{"an Ed25519 key declared RSA", func(p *Params) {
			p.DKIM, p.SenderDomain = &routing.DKIM{Selector: "s", Algorithm: v1alpha1.DKIMAlgorithmRSA2048, Signer: ed25519Key(t)}, "example.com"
		}},
		{"an RSA key of 1024 bits", func(p *Params) {
			p.DKIM, p.SenderDomain = &routing.DKIM{Selector: "s", Algorithm: v1alpha1.DKIMAlgorithmRSA2048, Signer: small}, "example.com"
		}},
		{"no selector", func(p *Params) {
			p.DKIM, p.SenderDomain = &routing.DKIM{Algorithm: v1alpha1.DKIMAlgorithmEd25519, Signer: ed25519Key(t)}, "example.com"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := baseParams(t)
			tt.mutate(&p)
			in := &countingReader{r: strings.NewReader(dated)}
			out, err := Prepare(context.Background(), in, p)
			if err == nil {
				_ = out.Close()
				t.Fatal("Prepare succeeded")
			}
			t.Log(err)
		})
	}
}

func TestCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p := baseParams(t)
	_, err := Prepare(ctx, strings.NewReader(dated), p)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
}

// TestMaxPrepended holds the bound the queue's size limit relies on, with
// every prepended field as long as it gets.
func TestMaxPrepended(t *testing.T) {
	var hdr strings.Builder
	for range 10 {
		for _, f := range []string{"From", "Reply-To", "Subject", "To", "Cc", "In-Reply-To", "References", "MIME-Version",
			"Content-Type", "Content-Transfer-Encoding", "List-Unsubscribe", "List-Unsubscribe-Post"} {
			hdr.WriteString(f + ": x\r\n")
		}
	}
	msg := hdr.String() + "\r\nbody\r\n"
	long := strings.Repeat("a", 300)
	for _, k := range testKeys(t) {
		p := baseParams(t)
		p.Helo, p.ClientName, p.ID = long, long, long
		p.Client = netip.MustParseAddrPort("[2001:db8:1234:5678:9abc:def0:1234:5678]:65535")
		p.TLS = &tls.ConnectionState{Version: tls.VersionTLS12, CipherSuite: tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}
		p.Identity = long
		p.Recipients = []string{strings.Repeat("r", 64) + "@" + strings.Repeat("d", 191)}
		p.Hostname = strings.Repeat("h", 255)
		p.DKIM, p.SenderDomain = k.dkim, strings.Repeat("s", 253)
		out, got := prepare(t, []byte(msg), p)
		t.Logf("%s: %d bytes prepended", k.name, out.Prepended)
		for _, line := range strings.Split(string(got[:out.Prepended]), "\r\n") {
			if len(line) > 998 {
				t.Errorf("%s: prepended line of %d octets, over 998", k.name, len(line))
			}
		}
		if out.Prepended > MaxPrepended {
			t.Errorf("%s: %d bytes prepended, more than MaxPrepended %d", k.name, out.Prepended, MaxPrepended)
		}
	}
}

// checkNoLeak fails when goroutines are left over (the DKIM signer runs
// one per message) once the test is done.
func checkNoLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		testenv.Eventually(t, func() string {
			if n := runtime.NumGoroutine(); n > before {
				return fmt.Sprintf("%d goroutines left, %d before", n, before)
			}
			return ""
		})
	})
}

func TestHeaderFrom(t *testing.T) {
	tests := []struct{ name, msg, want string }{
		{"plain address", "From: a@example.com\r\n\r\n", "a@example.com"},
		{"display name", "From: \"Alice A.\" <alice@example.com>\r\nSubject: x\r\n\r\n", "alice@example.com"},
		{"folded", "Subject: x\r\nfrom:\r\n Bob\r\n <bob@example.com>\r\n\r\n", "bob@example.com"},
		{"first of a list", "From: a@example.com, b@example.com\r\n\r\n", "a@example.com"},
		{"first field wins", "From: one@example.com\r\nFrom: two@example.com\r\n\r\n", "one@example.com"},
		{"unparsable kept when printable", "From: not an address\r\n\r\n", "not an address"},
		{"non-ASCII not reported", "From: \xff\xfe\r\n\r\n", ""},
		{"none", "Subject: x\r\n\r\nFrom: body@example.com\r\n", ""},
		{"look-alike", "X-From: a@example.com\r\nResent-From: b@example.com\r\n\r\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _ := prepare(t, []byte(tt.msg), baseParams(t))
			if out.HeaderFrom != tt.want {
				t.Errorf("HeaderFrom %q, want %q", out.HeaderFrom, tt.want)
			}
		})
	}
}
