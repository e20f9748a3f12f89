package relay_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay"
	"github.com/postgate/postgate/internal/testenv"
)

// TestRelayStandalone is the README's run command on the samples: loopback
// clients may send as the sample domains, others are refused, and a change
// to the files applies without a restart.
func TestRelayStandalone(t *testing.T) {
	dir := t.TempDir()
	samples, _ := filepath.Glob(filepath.Join(testenv.Samples(t), "*.yaml"))
	for _, f := range samples {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p := startRelayInProcess(t, nil, "--manifests", dir, "--spool-dir", t.TempDir())
	if line, err := sendOne(p.addr, "alice@example.com", "hello"); err != nil || !queuedID.MatchString(line) {
		t.Fatalf("sample sender: %q %v", line, err)
	}
	if line, _ := sendOne(p.addr, "alice@new.test", "hello"); !strings.HasPrefix(line, "554 5.7.1 Relay access denied") {
		t.Fatalf("unknown domain: %q", line)
	}
	if !strings.Contains(p.logs(), `msg="Publish this DKIM record" object="SenderDomain default/example-com" name=postgate1._domainkey.example.com`) {
		t.Errorf("the DKIM record to publish is not logged:\n%s", p.logs())
	}

	newDomain := "apiVersion: postgate.io/v1alpha1\nkind: SenderDomain\nmetadata: {name: new}\nspec: {domain: new.test}\n"
	if err := os.WriteFile(filepath.Join(dir, "new.yaml"), []byte(newDomain), 0o600); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, func() string {
		if line, _ := sendOne(p.addr, "alice@new.test", "hello"); !queuedID.MatchString(line) {
			return fmt.Sprintf("new.test still refused after the file changed: %q\n%s", line, p.logs())
		}
		return ""
	})
}

// TestRelayEndToEnd runs the standalone relay in this process against a
// loopback DNS server and two SMTP sinks: a message from a signing domain
// reaches the recipient's MX with a DKIM signature that python3-dkim (an
// independent implementation) verifies; a message from a routed domain
// reaches the smart host, unsigned, from the domain's source IP 127.0.0.2,
// even though the recipient's MX is up.
func TestRelayEndToEnd(t *testing.T) {
	dns, mx, smarthost := mailWorld(t, testenv.SMTPSinkOptions{
		AllowedClients: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}})
	keyPEM, txt := ed25519Key()
	manifests := fmt.Sprintf(`apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: example}
spec:
  domain: example.com
  signing: {selector: s1, algorithm: Ed25519, keySecretRef: {name: dkim}}
---
apiVersion: v1
kind: Secret
metadata: {name: dkim}
stringData:
  private.key: |
%s---
apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: billing}
spec: {domain: billing.example.com, sourceIP: 127.0.0.2}
---
apiVersion: postgate.io/v1alpha1
kind: RelayRoute
metadata: {name: billing}
spec:
  senderDomainRef: {name: billing}
  target: {host: smarthost.relay.test, port: %d, tlsPolicy: None}
---
apiVersion: postgate.io/v1alpha1
kind: TrustedNetwork
metadata: {name: lo}
spec: {cidrs: [127.0.0.0/8]}
`, indent(string(keyPEM), "    "), smarthost.Port())
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "relay.yaml"), []byte(manifests), 0o600); err != nil {
		t.Fatal(err)
	}

	f := standaloneConfig(t, dir, dns.Addr(), mx.Port())
	f.MetricsAddr, f.Pprof = "127.0.0.1:0", true
	p := runRelayInProcess(t, f)
	addr, logs := p.addr, p.log

	for _, from := range []string{"alice@example.com", "invoices@billing.example.com"} {
		if line, err := sendOne(addr, from, "to "+from); err != nil || !queuedID.MatchString(line) {
			t.Fatalf("submitting as %s: %q %v", from, line, err)
		}
	}
	wait, stop := context.WithTimeout(context.Background(), testenv.WaitTimeout)
	defer stop()
	mxMsgs, err := mx.WaitMessages(wait, 1)
	if err != nil {
		t.Fatalf("no message at the MX sink: %v\n%s", err, logs)
	}
	shMsgs, err := smarthost.WaitMessages(wait, 1)
	if err != nil {
		t.Fatalf("no message at the smart host: %v\n%s", err, logs)
	}

	signed := mxMsgs[0]
	if signed.From != "alice@example.com" || strings.Join(signed.Rcpts, ",") != "bob@dest.test" {
		t.Errorf("MX sink envelope: %q -> %q", signed.From, signed.Rcpts)
	}
	testenv.VerifyDKIMWithPython(t, signed.Data, "s1._domainkey.example.com.", txt)

	routed := shMsgs[0]
	if routed.Client.Addr() != netip.MustParseAddr("127.0.0.2") {
		t.Errorf("smart host saw the relay from %v, want the source IP 127.0.0.2", routed.Client)
	}
	if bytes.Contains(routed.Data, []byte("DKIM-Signature:")) {
		t.Error("a routed domain's mail was signed")
	}
	if n := len(mx.Messages()); n != 1 {
		t.Errorf("the MX sink got %d messages: the routed one must go to the smart host only", n)
	}

	// The delivery counters moved: one attempt by MX, one by the route.
	m := regexp.MustCompile(`msg="HTTP listening" address=(\S+)`).FindStringSubmatch(logs.String())
	if m == nil {
		t.Fatalf("no metrics listener in the logs:\n%s", logs)
	}
	if body := scrape(t, "http://"+m[1]+"/debug/pprof/"); !bytes.Contains(body, []byte("profile")) {
		t.Errorf("--pprof: no profile index at /debug/pprof/:\n%s", body)
	}
	for _, want := range []string{
		`postgate_relay_delivery_attempts_total{destination="mx",status="sent"} 1`,
		`postgate_relay_delivery_attempts_total{destination="route",status="sent"} 1`,
		`postgate_relay_smtp_sessions_total 2`,
		`postgate_relay_smtp_messages_accepted_total 2`,
		`postgate_relay_queue_enqueued_total 2`,
		`postgate_relay_queue_messages 0`,
		`postgate_relay_table_version 1`,
		`postgate_relay_table_loaded 1`,
	} {
		testenv.Eventually(t, func() string {
			if body := scrape(t, "http://"+m[1]+"/metrics"); !bytes.Contains(body, []byte(want)) {
				return fmt.Sprintf("metrics: no %s in\n%s", want, body)
			}
			return ""
		})
	}
}

// mailWorld starts the loopback DNS server, the MX sink of dest.test
// (mx.dest.test, 127.0.0.3) and a smart host sink with opts
// (smarthost.relay.test, 127.0.0.4). The MX port is one flag for every MX
// host: the MX sink's.
func mailWorld(t *testing.T, opts testenv.SMTPSinkOptions) (dns *testenv.DNSServer, mx, smarthost *testenv.SMTPSink) {
	t.Helper()
	dns = testenv.StartDNSServer(t, testenv.DNSOptions{})
	mx = testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: "127.0.0.3:0"})
	opts.Addr = "127.0.0.4:0"
	smarthost = testenv.StartSMTPSink(t, opts)
	if err := dns.Add("dest.test. 60 IN MX 10 mx.dest.test.", "mx.dest.test. 60 IN A 127.0.0.3",
		"smarthost.relay.test. 60 IN A 127.0.0.4"); err != nil {
		t.Fatal(err)
	}
	return dns, mx, smarthost
}

// ed25519Key returns a new DKIM key as PKCS #8 PEM, and its TXT record.
func ed25519Key() (keyPEM []byte, txt string) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		"v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey))
}

// standaloneConfig is a standalone relay on manifests in dir, delivering
// with the DNS server at dnsAddr to MX hosts at mxPort.
func standaloneConfig(t *testing.T, dir, dnsAddr string, mxPort int) relay.Config {
	return relay.Config{
		SMTPAddr: "127.0.0.1:0", SpoolDir: t.TempDir(), Hostname: "relay.test", Manifests: []string{dir},
		MaxMessageBytes: 25 << 20, MaxRecipients: 100, MaxConnections: 100, MaxConnectionsPerClient: 10,
		DNSServer: dnsAddr, MXPort: mxPort, ShutdownGrace: 5 * time.Second, Shaping: true,
	}
}

func scrape(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url) //nolint:gosec,noctx // a loopback test server
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

func indent(s, prefix string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(s, "\n") {
		if line != "" {
			b.WriteString(prefix + line)
		}
	}
	return b.String()
}
