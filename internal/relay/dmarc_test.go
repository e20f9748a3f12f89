package relay_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/mail"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/postgate/postgate/internal/testenv"
)

// TestDMARCAlignedSigning sends, as app@a.test, one message whose From
// field is news@b.test (a.test and b.test: SenderDomains of namespace
// default, both with generated Ed25519 keys) and one whose From field is
// news@c.test (a signing SenderDomain of namespace other, which the client
// may send as too). At the recipient's MX, python3-dkim and go-msgauth
// verify each signature against the TXT records the loopback DNS server
// serves: the first is signed by b.test, aligned with its From field for
// DMARC (RFC 7489 section 3.1.1); the second by a.test, as before, not
// aligned, since a namespace's key never signs another's mail. Both keep
// the envelope sender app@a.test.
func TestDMARCAlignedSigning(t *testing.T) {
	dns, mx, _ := mailWorld(t, testenv.SMTPSinkOptions{})
	var manifests strings.Builder
	for _, d := range []struct{ ns, name string }{{"default", "a"}, {"default", "b"}, {"other", "c"}} {
		fmt.Fprintf(&manifests, `apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {namespace: %s, name: %s}
spec:
  domain: %s.test
  signing: {selector: s1, algorithm: Ed25519, generate: {}}
---
`, d.ns, d.name, d.name)
	}
	for _, ns := range []string{"default", "other"} {
		fmt.Fprintf(&manifests, "apiVersion: postgate.io/v1alpha1\nkind: TrustedNetwork\nmetadata: {namespace: %s, name: lo}\nspec: {cidrs: [127.0.0.0/8]}\n---\n", ns)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "relay.yaml"), []byte(manifests.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	p := runRelayInProcess(t, standaloneConfig(t, dir, dns.Addr(), mx.Port()))
	// The DKIM records the relay asks to publish, published.
	for _, d := range []string{"a", "b", "c"} {
		m := p.log.WaitMatch(t, regexp.MustCompile(`msg="Publish this DKIM record" object="SenderDomain \S+/`+d+`" name=(\S+) type=TXT value="([^"]+)"`))
		if err := dns.Add(fmt.Sprintf("%s. TXT %q", m[1], m[2])); err != nil {
			t.Fatal(err)
		}
	}

	for _, from := range []string{"news@b.test", "news@c.test"} {
		if line, err := submitFrom(p.addr, "app@a.test", from); err != nil || !queuedID.MatchString(line) {
			t.Fatalf("From %s: %q %v\n%s", from, line, err, p.logs())
		}
	}
	wait, stop := context.WithTimeout(context.Background(), testenv.WaitTimeout)
	defer stop()
	msgs, err := mx.WaitMessages(wait, 2)
	if err != nil {
		t.Fatalf("%v\n%s", err, p.logs())
	}
	want := map[string]string{"news@b.test": "b.test", "news@c.test": "a.test"}
	for _, m := range msgs {
		if m.From != "app@a.test" {
			t.Errorf("envelope sender %q at the MX, want app@a.test", m.From)
		}
		from := fromDomain(t, m.Data)
		py := testenv.VerifyDKIMWithPythonDNS(t, m.Data, dns.Addr())
		goD := verifyWithDNS(t, m.Data, dns.Addr())
		wantD := want["news@"+from]
		if py != wantD || goD != wantD {
			t.Errorf("From %s: signed by d=%q (python3-dkim), d=%q (go-msgauth), want %q", from, py, goD, wantD)
		}
		// Strict alignment (adkim=s): d= is the From field's domain.
		if aligned := strings.EqualFold(py, from); aligned != (from == "b.test") {
			t.Errorf("From %s, d=%s: aligned %v, want %v", from, py, aligned, from == "b.test")
		}
	}
}

// submitFrom sends one message as sender to bob@dest.test whose From field
// is from, and returns the reply to its end.
func submitFrom(addr, sender, from string) (string, error) {
	c, err := testenv.DialSMTPLine(addr, "127.0.0.1")
	if err != nil {
		return "", err
	}
	defer func() { _ = c.Close() }()
	if line, err := c.Reply(); err != nil || line[0] != '2' {
		return line, err
	}
	for _, cmd := range []string{"EHLO client.test", "MAIL FROM:<" + sender + ">", "RCPT TO:<bob@dest.test>", "DATA"} {
		if line, err := c.Cmd(cmd); err != nil || (line[0] != '2' && line[0] != '3') {
			return line, err
		}
	}
	return c.Cmd("From: News <" + from + ">\r\nSender: <" + sender + ">\r\nTo: <bob@dest.test>\r\nSubject: aligned?\r\n\r\nbody\r\n.")
}

// fromDomain is the domain of the From field's one address.
func fromDomain(t *testing.T, msg []byte) string {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	from, err := m.Header.AddressList("From")
	if err != nil || len(from) != 1 {
		t.Fatalf("From field %q: %v", m.Header.Get("From"), err)
	}
	_, domain, _ := strings.Cut(from[0].Address, "@")
	return domain
}

// verifyWithDNS verifies msg's first DKIM-Signature with go-msgauth, the
// key looked up at the DNS server at dnsAddr, and returns its d=.
func verifyWithDNS(t *testing.T, msg []byte, dnsAddr string) string {
	t.Helper()
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, dnsAddr)
	}}
	verifs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) { return r.LookupTXT(context.Background(), name) },
	})
	if err != nil || len(verifs) == 0 || verifs[0].Err != nil {
		t.Errorf("go-msgauth: %v %+v\n%s", err, verifs, msg)
		return ""
	}
	return verifs[0].Domain
}
