package message

import (
	"bytes"
	"context"
	"crypto"
	"io"
	"os"
	"strings"
	"testing"

	msgauth "github.com/emersion/go-msgauth/dkim"
)

// signCases are messages the relay accepts, for both verifiers. noSep marks
// the ones without a header/body separator: go-msgauth's verifier cannot
// read them (it wants the empty line), python3-dkim can.
var signCases = []struct {
	name  string
	msg   string
	noSep bool
}{
	{"complete", "From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: hello\r\nDate: Fri, 13 Mar 2026 10:00:00 +0000\r\nMessage-ID: <m1@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nHello Bob.\r\n", false},
	{"no Date, no Message-ID", "From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hello\r\n\r\nHello.\r\n", false},
	{"folded headers and odd spacing", "From: alice@example.com\r\nTo: bob@example.net,\r\n\tcarol@example.net,\r\n  dave@example.net\r\nSubject:   a   long\r\n   subject\t \r\nCc: e@example.net\r\nreply-to: alice@example.com\r\n\r\n  spaced   body \t\r\n\r\n\r\n", false},
	{"8bit body and UTF-8 header", "From: alice@example.com\r\nSubject: Grüße\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße, ça va? \xe2\x82\xac \xff\xfe raw 8bit\r\n", false},
	{"empty body", "From: alice@example.com\r\nSubject: nothing\r\n\r\n", false},
	{"no body, no separator", "From: alice@example.com\r\nSubject: nothing\r\n", true},
	{"no separator, no final line end", "From: alice@example.com\r\nSubject: nothing", true},
	{"no header", "\r\nbody without a header\r\n", false},
	{"empty message", "", true},
	{"list headers and duplicates", "From: a@example.com\r\nFrom: b@example.com\r\nTo: x@example.net\r\nTo: y@example.net\r\nList-Unsubscribe: <https://example.com/u>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nReferences: <a@b>\r\nIn-Reply-To: <a@b>\r\n\r\nbody\r\n", false},
	{"body without a final line end", "From: a@example.com\r\n\r\nlast line", false},
	{"long lines", "From: a@example.com\r\nX-Long: " + strings.Repeat("h", 1990) + "\r\n\r\n" + strings.Repeat("b", 2000) + "\r\n", false},
}

func TestSignVerifies(t *testing.T) {
	var py []pyCase
	var names []string
	for _, k := range testKeys(t) {
		for _, c := range signCases {
			p := baseParams(t)
			p.DKIM, p.SenderDomain = k.dkim, "example.com"
			out, got := prepare(t, []byte(c.msg), p)
			if !out.Signed {
				t.Fatalf("%s/%s: not signed", k.name, c.name)
			}
			if !bytes.HasSuffix(got, []byte(c.msg)) || len(got)-len(c.msg) != out.Prepended {
				t.Fatalf("%s/%s: the client's message is not intact at the end", k.name, c.name)
			}
			checkSignatureField(t, got, k.dkim.Selector, c.msg)
			if !c.noSep {
				if err := goVerify(t, got, "example.com", k.dkim.Selector, k.txt(t)); err != nil {
					t.Errorf("%s/%s: go-msgauth: %v\n%s", k.name, c.name, err, got)
				}
			}
			py = append(py, pyCase{Msg: got, Record: k.txt(t)})
			names = append(names, k.name+"/"+c.name)
		}
	}
	for i, res := range pyVerify(t, py) {
		if res != "ok" {
			t.Errorf("%s: python3-dkim: %s\n%q", names[i], res, py[i].Msg)
		}
	}
}

// checkSignatureField checks where the signature is and what it covers.
func checkSignatureField(t *testing.T, got []byte, selector, msg string) {
	t.Helper()
	if !bytes.HasPrefix(got, []byte("DKIM-Signature: ")) {
		t.Fatalf("the DKIM-Signature is not on top:\n%s", got)
	}
	sig, _, _ := strings.Cut(string(got), "\r\nReceived: ")
	tags := map[string]string{}
	for _, tag := range strings.Split(strings.TrimPrefix(sig, "DKIM-Signature:"), ";") {
		k, v, _ := strings.Cut(tag, "=")
		tags[strings.TrimSpace(k)] = strings.Join(strings.Fields(v), "")
	}
	if tags["c"] != "relaxed/relaxed" || tags["d"] != "example.com" || tags["s"] != selector || tags["v"] != "1" {
		t.Errorf("tags %v", tags)
	}
	h := strings.Split(strings.ToLower(tags["h"]), ":")
	count := func(name string) (n int) {
		for _, f := range h {
			if f == name {
				n++
			}
		}
		return n
	}
	fromsInMsg := strings.Count(strings.ToLower("\n"+msg), "\nfrom:")
	if count("from") != fromsInMsg+1 {
		t.Errorf("h=%s: want From %d times (oversigned)", tags["h"], fromsInMsg+1)
	}
	if count("received") != 0 || count("dkim-signature") != 0 {
		t.Errorf("h=%s signs a trace field", tags["h"])
	}
	// The added Message-ID and Date are signed, like the client's.
	if count("message-id") != 1 || count("date") != 1 {
		t.Errorf("h=%s: want Message-ID and Date once each", tags["h"])
	}
}

// TestSignStaging signs a 3 MiB message: it goes through the staging file,
// which never has a name in the staging directory.
func TestSignStaging(t *testing.T) {
	line := strings.Repeat("0123456789abcdef", 62) + "\r\n" // 994 bytes
	msg := "From: alice@example.com\r\nSubject: big\r\n\r\n" + strings.Repeat(line, 3<<20/len(line))
	var py []pyCase
	for _, k := range testKeys(t) {
		for _, mem := range []int64{0, 64 << 10, 1} {
			p := baseParams(t)
			p.DKIM, p.SenderDomain, p.MaxMemory = k.dkim, "example.com", mem
			out, err := Prepare(context.Background(), strings.NewReader(msg), p)
			if err != nil {
				t.Fatal(err)
			}
			if left, _ := os.ReadDir(p.StageDir); len(left) != 0 {
				t.Errorf("staging directory holds %d entries while the message is open; want the file unlinked", len(left))
			}
			if out.stage.f == nil {
				t.Errorf("MaxMemory %d: a 3 MiB message was not staged to a file", mem)
			}
			got, err := io.ReadAll(out)
			if err != nil {
				t.Fatal(err)
			}
			if err := out.Close(); err != nil {
				t.Fatal(err)
			}
			if err := out.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			if !strings.HasSuffix(string(got), msg) {
				t.Fatal("the client's message changed")
			}
			if err := goVerify(t, got, "example.com", k.dkim.Selector, k.txt(t)); err != nil {
				t.Errorf("%s: go-msgauth: %v", k.name, err)
			}
			if mem == 0 {
				py = append(py, pyCase{Msg: got, Record: k.txt(t)})
			}
		}
	}
	for i, res := range pyVerify(t, py) {
		if res != "ok" {
			t.Errorf("case %d: python3-dkim: %s", i, res)
		}
	}
}

// TestSignSmallStaysInMemory: below MaxMemory nothing touches the disk.
func TestSignSmallStaysInMemory(t *testing.T) {
	p := baseParams(t)
	p.DKIM, p.SenderDomain = testKeys(t)[1].dkim, "example.com"
	out, err := Prepare(context.Background(), strings.NewReader(signCases[0].msg), p)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = out.Close() }()
	if out.stage.f != nil {
		t.Error("a small message went to the staging file")
	}
}

// TestUpstreamSignatureStaysValid: a message signed before it reached the
// relay keeps a valid signature next to the relay's.
func TestUpstreamSignatureStaysValid(t *testing.T) {
	upstream := ed25519Key(t)
	var signed bytes.Buffer
	for _, c := range []msgauth.Canonicalization{msgauth.CanonicalizationSimple, msgauth.CanonicalizationRelaxed} {
		signed.Reset()
		err := msgauth.Sign(&signed, strings.NewReader(signCases[2].msg), &msgauth.SignOptions{
			Domain: "upstream.example", Selector: "up", Signer: upstream, Hash: crypto.SHA256,
			HeaderCanonicalization: c, BodyCanonicalization: c,
		})
		if err != nil {
			t.Fatal(err)
		}
		var py []pyCase
		for _, k := range testKeys(t) {
			p := baseParams(t)
			p.DKIM, p.SenderDomain = k.dkim, "example.com"
			_, got := prepare(t, signed.Bytes(), p)
			if err := goVerify(t, got, "example.com", k.dkim.Selector, k.txt(t)); err != nil {
				t.Errorf("%s: go-msgauth, ours: %v", c, err)
			}
			verifs, err := msgauth.VerifyWithOptions(bytes.NewReader(got), &msgauth.VerifyOptions{
				LookupTXT: func(name string) ([]string, error) {
					if strings.HasPrefix(name, "up.") {
						return []string{record(t, upstream)}, nil
					}
					return []string{k.txt(t)}, nil
				},
			})
			if err != nil || len(verifs) != 2 {
				t.Fatalf("%s: go-msgauth: %v, %d signatures", c, err, len(verifs))
			}
			for _, v := range verifs {
				if v.Err != nil {
					t.Errorf("%s: go-msgauth, %s: %v", c, v.Domain, v.Err)
				}
			}
			py = append(py, pyCase{Msg: got, Record: k.txt(t)}, pyCase{Msg: got, Record: record(t, upstream), Idx: 1})
		}
		for i, res := range pyVerify(t, py) {
			if res != "ok" {
				t.Errorf("%s, case %d: python3-dkim: %s", c, i, res)
			}
		}
	}
}

// TestTamperFails makes sure the verifiers would notice: the same checks
// on a changed body or a changed signed field fail.
func TestTamperFails(t *testing.T) {
	var py []pyCase
	for _, k := range testKeys(t) {
		p := baseParams(t)
		p.DKIM, p.SenderDomain = k.dkim, "example.com"
		_, got := prepare(t, []byte(signCases[1].msg), p)
		for _, tamper := range [][2]string{{"Hello.", "HellO."}, {"Subject: hello", "Subject: hellO"}, {"\r\nDate: Sat", "\r\nDate: Sun"}} {
			bad := []byte(strings.Replace(string(got), tamper[0], tamper[1], 1))
			if bytes.Equal(bad, got) {
				t.Fatalf("tamper %q did not apply", tamper[0])
			}
			if err := goVerify(t, bad, "example.com", k.dkim.Selector, k.txt(t)); err == nil {
				t.Errorf("%s: go-msgauth accepts a message with %q changed", k.name, tamper[0])
			}
			py = append(py, pyCase{Msg: bad, Record: k.txt(t)})
		}
		// Adding a second From breaks the signature (From is oversigned).
		bad := append(bytes.Clone(got), []byte{}...)
		bad = []byte(strings.Replace(string(bad), "\r\nFrom: ", "\r\nFrom: mallory@example.org\r\nFrom: ", 1))
		if err := goVerify(t, bad, "example.com", k.dkim.Selector, k.txt(t)); err == nil {
			t.Errorf("%s: go-msgauth accepts a message with a From added", k.name)
		}
		py = append(py, pyCase{Msg: bad, Record: k.txt(t)})
	}
	for i, res := range pyVerify(t, py) {
		if res == "ok" {
			t.Errorf("case %d: python3-dkim accepts a tampered message", i)
		}
	}
}
