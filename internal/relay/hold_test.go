package relay_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postgate/postgate/internal/testenv"
)

// TestBrokenReferencesFailClosed runs the standalone relay in this process:
// while a route's credentials Secret is missing, the mail of its domain is
// accepted and held (no connection to the MX, none to the smart host);
// once the Secret is in the manifests every message reaches the smart host,
// authenticated, and none the MX. While a signing domain's key is missing
// its mail is refused with 451 4.3.0, never sent unsigned.
func TestBrokenReferencesFailClosed(t *testing.T) {
	dns, mx, smarthost := mailWorld(t, testenv.SMTPSinkOptions{
		TLS: testenv.NewCA(t).Issue(t, "smarthost.relay.test").ServerConfig(), Users: map[string]string{"relay": "s3cret"}, RequireAuth: true})
	keyPEM, _ := ed25519Key()
	base := fmt.Sprintf(`apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: billing}
spec: {domain: billing.example.com}
---
apiVersion: postgate.io/v1alpha1
kind: RelayRoute
metadata: {name: billing}
spec:
  senderDomainRef: {name: billing}
  target: {host: smarthost.relay.test, port: %d, tlsPolicy: Required, credentialsSecretRef: {name: creds}}
---
apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: example}
spec:
  domain: example.com
  signing: {selector: s1, algorithm: Ed25519, keySecretRef: {name: dkim}}
---
apiVersion: postgate.io/v1alpha1
kind: TrustedNetwork
metadata: {name: lo}
spec: {cidrs: [127.0.0.0/8]}
`, smarthost.Port())
	secrets := fmt.Sprintf(`---
apiVersion: v1
kind: Secret
metadata: {name: creds}
type: kubernetes.io/basic-auth
stringData: {username: relay, password: s3cret}
---
apiVersion: v1
kind: Secret
metadata: {name: dkim}
stringData:
  private.key: |
%s`, indent(string(keyPEM), "    "))
	dir := t.TempDir()
	file := filepath.Join(dir, "relay.yaml")
	if err := os.WriteFile(file, []byte(base), 0o600); err != nil {
		t.Fatal(err)
	}

	p := runRelayInProcess(t, standaloneConfig(t, dir, dns.Addr(), mx.Port()))
	addr, logs := p.addr, p.log

	const n = 5
	for i := range n {
		if line, err := sendOne(addr, "invoices@billing.example.com", fmt.Sprint("invoice ", i)); err != nil || !queuedID.MatchString(line) {
			t.Fatalf("submitting to a held route: %q %v", line, err)
		}
	}
	line, _ := sendOne(addr, "alice@example.com", "signed?")
	if !strings.HasPrefix(line, `451 4.3.0 Not accepted for now: the DKIM key of example.com is unavailable: Secret "dkim" (DKIM key) not found`) {
		t.Errorf("a signing domain without its key: %q, want 451 4.3.0 naming the reason", line)
	}
	testenv.Eventually(t, func() string {
		if got := strings.Count(logs.String(), "held: RelayRoute default/billing cannot take effect"); got < n {
			return fmt.Sprintf("%d of %d messages held:\n%s", got, n, logs)
		}
		return ""
	})
	if c, s := mx.Stats().Connections, smarthost.Stats().Connections; c != 0 || s != 0 {
		t.Fatalf("while held: %d connections to the MX, %d to the smart host, want none", c, s)
	}

	if err := os.WriteFile(file, []byte(base+secrets), 0o600); err != nil {
		t.Fatal(err)
	}
	wait, stop := context.WithTimeout(context.Background(), testenv.WaitTimeout)
	defer stop()
	msgs, err := smarthost.WaitMessages(wait, n)
	if err != nil {
		t.Fatalf("the smart host got %d of %d messages: %v\n%s", len(msgs), n, err, logs)
	}
	for _, m := range msgs {
		if m.AuthUser != "relay" || m.TLS == nil {
			t.Errorf("message at the smart host without AUTH or TLS: %+v", m)
		}
	}
	testenv.Eventually(t, func() string {
		if line, _ = sendOne(addr, "alice@example.com", "signed"); !queuedID.MatchString(line) {
			return "a signing domain with its key back: " + line
		}
		return ""
	})
	signed, err := mx.WaitMessages(wait, 1)
	if err != nil || !strings.HasPrefix(string(signed[0].Data), "DKIM-Signature:") {
		t.Fatalf("the MX got %d messages (%v), want the signed one", len(signed), err)
	}
	if got := len(smarthost.Messages()); got != n {
		t.Errorf("the smart host got %d messages, want each of %d once", got, n)
	}
	if got := len(mx.Messages()); got != 1 {
		t.Errorf("the MX got %d messages, want only the signed one", got)
	}
}
