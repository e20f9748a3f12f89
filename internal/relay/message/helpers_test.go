package message

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/routing"
)

var testNow = time.Date(2026, 3, 14, 15, 9, 26, 0, time.FixedZone("", 3600))

// rsaKey is generated once per test binary: 2048-bit generation is slow.
var rsaKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

func ed25519Key(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// testKey is a signing configuration with its DNS TXT record.
type testKey struct {
	name   string
	dkim   *routing.DKIM
	record string
}

func testKeys(t testing.TB) []testKey {
	return []testKey{
		{"rsa", &routing.DKIM{Selector: "s1", Algorithm: v1alpha1.DKIMAlgorithmRSA2048, Signer: rsaKey()}, record(t, rsaKey())},
		{"ed25519", &routing.DKIM{Selector: "s2", Algorithm: v1alpha1.DKIMAlgorithmEd25519, Signer: ed25519Key(t)}, ""},
	}
}

// record returns the TXT record value in the format internal/routing's
// dkimRecordValue publishes.
func record(t testing.TB, s crypto.Signer) string {
	t.Helper()
	switch pub := s.Public().(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)
	}
	t.Fatalf("key type %T", s.Public())
	return ""
}

func (k *testKey) txt(t testing.TB) string {
	if k.record == "" {
		k.record = record(t, k.dkim.Signer)
	}
	return k.record
}

func baseParams(t testing.TB) Params {
	return Params{
		Hostname:   "relay.example.com",
		Helo:       "client.example.com",
		Client:     netip.MustParseAddrPort("192.0.2.10:40000"),
		Recipients: []string{"rcpt@example.net"},
		Now:        testNow,
		StageDir:   t.TempDir(),
	}
}

// prepare runs Prepare over msg and returns the whole result.
func prepare(t testing.TB, msg []byte, p Params) (*Prepared, []byte) {
	t.Helper()
	out, err := Prepare(context.Background(), bytes.NewReader(msg), p)
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	b, err := io.ReadAll(out)
	if err != nil {
		t.Fatalf("reading the prepared message: %v", err)
	}
	if err := out.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return out, b
}

// goVerify checks the first DKIM-Signature with go-msgauth.
func goVerify(t testing.TB, msg []byte, domain, selector, txt string) error {
	t.Helper()
	verifs, err := msgauth.VerifyWithOptions(bytes.NewReader(msg), &msgauth.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			if name != selector+"._domainkey."+domain {
				return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
			}
			return []string{txt}, nil
		},
	})
	if err != nil {
		return err
	}
	if len(verifs) == 0 || verifs[0].Domain != domain {
		t.Fatalf("the first signature is not of %s", domain)
	}
	return verifs[0].Err
}

// pyCase is one message for python3-dkim.
type pyCase struct {
	Msg    []byte `json:"msg"`    // base64 in JSON
	Record string `json:"record"` // the TXT record
	Idx    int    `json:"idx"`    // which DKIM-Signature to verify, from the top
}

// pyVerifyScript runs Debian's python3-dkim, an implementation independent
// of go-msgauth, over every case (one process for all) with a dnsfunc that
// answers the TXT record: no DNS.
const pyVerifyScript = `
import base64, json, sys
import dkim
out = []
for c in json.load(sys.stdin):
    rec = c["record"].encode()
    try:
        msg, dnsfunc = base64.b64decode(c["msg"]), lambda name, timeout=5: rec
        if c["idx"] == 0:
            ok = dkim.verify(msg, dnsfunc=dnsfunc)
        else:
            ok = dkim.DKIM(msg).verify(idx=c["idx"], dnsfunc=dnsfunc)
        out.append("ok" if ok else "fail")
    except Exception as e:
        out.append("error: %r" % e)
json.dump(out, sys.stdout)
`

// pyVerify returns python3-dkim's verdict on each case: "ok", "fail" or
// "error: ...". It fails the test when /usr/bin/python3 cannot import dkim
// (make deps installs python3-dkim): an independent check that silently
// skips checks nothing.
func pyVerify(t testing.TB, cases []pyCase) []string {
	t.Helper()
	in, err := json.Marshal(cases)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/usr/bin/python3", "-c", pyVerifyScript)
	cmd.Stdin = bytes.NewReader(in)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3-dkim (Debian package python3-dkim under /usr/bin/python3; make deps installs it): %v\n%s", err, stderr.String())
	}
	var res []string
	if err := json.Unmarshal(out, &res); err != nil || len(res) != len(cases) {
		t.Fatalf("python3-dkim output %q: %v", out, err)
	}
	return res
}
