package smtpd

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/routing"
)

// alignedInput is the test table with two signing domains in namespace app,
// example.com and news.test, and other.test of namespace other signing
// too; keyless names domains whose key Secret is left out.
func alignedInput(keyless ...string) routing.Input {
	in := testInput()
	in.SenderDomains = append(in.SenderDomains, v1alpha1.SenderDomain{
		ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "news", Generation: 1},
		Spec:       v1alpha1.SenderDomainSpec{Domain: "news.test"},
	})
	skip := map[string]bool{}
	for _, d := range keyless {
		skip[d] = true
	}
	for i := range in.SenderDomains {
		sd := &in.SenderDomains[i]
		secret := "dkim-" + sd.Name
		sd.Spec.Signing = &v1alpha1.DKIMSigning{Selector: "s1", Algorithm: v1alpha1.DKIMAlgorithmEd25519,
			KeySecretRef: &v1alpha1.SecretKeyReference{Name: secret}}
		if skip[string(sd.Spec.Domain)] {
			continue
		}
		_, key, _ := ed25519.GenerateKey(rand.Reader)
		der, _ := x509.MarshalPKCS8PrivateKey(key)
		in.Secrets = append(in.Secrets, corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: sd.Namespace, Name: secret},
			Data:       map[string][]byte{"private.key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})},
		})
	}
	return in
}

// signedBy verifies the first signature of body with go-msgauth against
// the records the compiler publishes, and returns its d=.
func signedBy(t *testing.T, body []byte, r *routing.Result) string {
	t.Helper()
	records := map[string]string{}
	for _, v := range r.Verdicts {
		if v.DKIM != nil {
			records[v.DKIM.Name] = v.DKIM.Value
		}
	}
	verifs, err := dkim.VerifyWithOptions(bytes.NewReader(body), &dkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			if rec, ok := records[name]; ok {
				return []string{rec}, nil
			}
			return nil, fmt.Errorf("unexpected lookup %s", name)
		},
	})
	if err != nil || len(verifs) != 1 || verifs[0].Err != nil {
		t.Fatalf("DKIM verification: %v %+v\n%s", err, verifs, body)
	}
	return verifs[0].Domain
}

// TestAlignedSigning: a message from alice@example.com whose From field is
// in news.test, another signing domain of namespace app, is signed by
// news.test, so that it aligns for DMARC (RFC 7489 section 3.1.1); with a
// From field in another namespace's domain, or in several domains, by
// example.com as before. The envelope stays the sender's.
func TestAlignedSigning(t *testing.T) {
	r := routing.Compile(alignedInput(), nil)
	ts := &tables{}
	ts.p.Store(r.Table)
	addr, spool, _ := testServer(t, Config{Tables: ts, StageDir: t.TempDir()})
	c := dialFrom(t, "127.0.0.10", addr)
	c.hello()
	tests := []struct{ desc, from, want string }{
		{"another signing domain of the namespace", "News <news@news.test>", "news.test"},
		{"the sender's own domain", "alice@example.com", "example.com"},
		{"another namespace's domain", "x@other.test", "example.com"},
		{"a list of two domains", "news@news.test, alice@example.com", "example.com"},
		{"a list of one domain", "news@news.test, desk@NEWS.test", "news.test"},
	}
	for i, tt := range tests {
		c.startData()
		c.expect("From: "+tt.from+"\r\nSender: alice@example.com\r\nTo: bob@dest.test\r\nSubject: "+tt.desc+"\r\n\r\nhello\r\n.\r\n", 250, "queued")
		m := spool.all()[i]
		if got := signedBy(t, m.body, r); got != tt.want {
			t.Errorf("%s: signed by %s, want %s", tt.desc, got, tt.want)
		}
		if m.env.From != "alice@example.com" {
			t.Errorf("%s: envelope sender %q, want alice@example.com", tt.desc, m.env.From)
		}
	}
}

// TestAlignedSigningKeyUnavailable: which domain signs is decided by what
// the table declares, never by whether a key is there right now. A From
// domain that signs but whose key is unavailable gets its 451 4.3.0, as its
// own mail would (a fallback to the sender's signature would quietly stop
// aligning, docs/design.md contract 5); the sender's key being unavailable
// does not concern a message the From domain signs.
func TestAlignedSigningKeyUnavailable(t *testing.T) {
	ts := newTables(t, alignedInput("news.test"))
	addr, spool, _ := testServer(t, Config{Tables: ts, StageDir: t.TempDir()})
	c := dialFrom(t, "127.0.0.10", addr)
	c.hello()
	c.startData()
	c.expect("From: news@news.test\r\nSubject: x\r\n\r\nhello\r\n.\r\n", 451, "4.3.0 Not accepted for now: the DKIM key of news.test is unavailable")
	c.startData()
	c.expect("From: alice@example.com\r\nSubject: x\r\n\r\nhello\r\n.\r\n", 250, "queued")

	r := routing.Compile(alignedInput("example.com"), nil)
	ts.p.Store(r.Table)
	c.startData()
	c.expect("From: alice@example.com\r\nSubject: x\r\n\r\nhello\r\n.\r\n", 451, "4.3.0 Not accepted for now: the DKIM key of example.com is unavailable")
	c.startData()
	c.expect("From: news@news.test\r\nSubject: x\r\n\r\nhello\r\n.\r\n", 250, "queued")
	q := spool.all()
	if len(q) != 2 {
		t.Fatalf("%d messages queued, want 2", len(q))
	}
	if got := signedBy(t, q[1].body, r); got != "news.test" {
		t.Errorf("signed by %s, want news.test", got)
	}
}
