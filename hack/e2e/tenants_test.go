package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/testenv"
)

// The two-tenant scenario's addresses: each client address is in its own
// tenant's TrustedNetwork only, and the outsider is in none.
const (
	clientA   = "127.0.0.10"  // team-a's network: 127.0.0.0/25
	clientB   = "127.0.0.200" // team-b's network: 127.0.0.128/25
	outsider  = "127.0.1.1"
	sourceIPB = "127.0.0.2" // team-b's SenderDomain sourceIP
)

// fixtures are the loopback servers the relay delivers to.
type fixtures struct {
	dns          *testenv.DNSServer
	mx           *testenv.SMTPSink // every recipient's MX (--mx-port)
	smarthost    *testenv.SMTPSink // the route's first target
	smarthost2   *testenv.SMTPSink // the route's target after the change
	relaySMTP    string            // the relay's SMTP listener
	relayPodName string
}

func startFixtures(t *testing.T) *fixtures {
	t.Helper()
	f := &fixtures{
		dns: testenv.StartDNSServer(t, testenv.DNSOptions{}),
		mx:  testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: "127.0.0.3:0"}),
		smarthost: testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: "127.0.0.4:0",
			AllowedClients: []netip.Prefix{netip.MustParsePrefix(sourceIPB + "/32")}}),
		smarthost2: testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: "127.0.0.5:0",
			AllowedClients: []netip.Prefix{netip.MustParsePrefix(sourceIPB + "/32")}}),
	}
	if err := f.dns.Add("dest.test. 60 IN MX 10 mx.dest.test.", "mx.dest.test. 60 IN A 127.0.0.3",
		"smarthost.relay.test. 60 IN A 127.0.0.4", "smarthost2.relay.test. 60 IN A 127.0.0.5"); err != nil {
		t.Fatal(err)
	}
	return f
}

func routeManifest(host string, port int) string {
	return fmt.Sprintf(`apiVersion: postgate.io/v1alpha1
kind: RelayRoute
metadata: {name: b-route, namespace: team-b}
spec:
  senderDomainRef: {name: b-domain}
  target: {host: %s, port: %d, tlsPolicy: None}
`, host, port)
}

// twoTenants applies the two-tenant scenario with kubectl, sends mail
// through the relay process and checks where it went, changes the route's
// target and shows the delivery status on the RelayRoute.
func twoTenants(t *testing.T, f *fixtures) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	txt := "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey))
	scenario := fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-b}
---
apiVersion: v1
kind: Secret
metadata: {name: a-dkim, namespace: team-a}
stringData:
  private.key: |
%s---
apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: a-domain, namespace: team-a}
spec:
  domain: a.example.org
  signing: {selector: s1, algorithm: Ed25519, keySecretRef: {name: a-dkim}}
---
apiVersion: postgate.io/v1alpha1
kind: TrustedNetwork
metadata: {name: a-net, namespace: team-a}
spec: {cidrs: [127.0.0.0/25]}
---
apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: b-domain, namespace: team-b}
spec: {domain: b.example.org, sourceIP: %s}
---
apiVersion: postgate.io/v1alpha1
kind: TrustedNetwork
metadata: {name: b-net, namespace: team-b}
spec: {cidrs: [127.0.0.128/25]}
---
%s`, indent(string(keyPEM), "    "), sourceIPB, routeManifest("smarthost.relay.test", f.smarthost.Port()))
	file := filepath.Join(t.TempDir(), "tenants.yaml")
	if err := os.WriteFile(file, []byte(scenario), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, nil, "kubectl", "apply", "-f", file)
	start := time.Now()
	for _, ns := range []string{"team-a", "team-b"} {
		for _, cond := range []string{"Programmed", "Ready"} {
			run(t, nil, "kubectl", "wait", "-n", ns, "--for=condition="+cond, "--timeout=90s",
				"senderdomains,relayroutes,trustednetworks", "--all")
		}
	}
	t.Logf("two tenants programmed and ready in %s", time.Since(start).Round(time.Millisecond))

	// The samples' loopback network (127.0.0.0/8) would admit everyone:
	// poll until the relay refuses the outsider, i.e. has the table
	// without them.
	testenv.Eventually(t, func() string {
		if line, err := send(f.relaySMTP, outsider, "x@a.example.org", "outsider"); err != nil || !strings.HasPrefix(line, "554 5.7.1") {
			return fmt.Sprintf("a client outside every TrustedNetwork got %q %v, want 554 5.7.1", line, err)
		}
		return ""
	})
	// Tenant a cannot send as tenant b's domain.
	if line, err := send(f.relaySMTP, clientA, "invoices@b.example.org", "spoof"); err != nil || !strings.HasPrefix(line, "554 5.7.1") {
		t.Errorf("team-a sending as team-b's domain got %q %v, want 554 5.7.1", line, err)
	}

	mustQueue(t, f.relaySMTP, clientA, "alice@a.example.org", "signed")
	mustQueue(t, f.relaySMTP, clientB, "invoices@b.example.org", "routed")
	mx := waitMessages(t, f.mx, 1)
	testenv.VerifyDKIMWithPython(t, mx[0].Data, "s1._domainkey.a.example.org.", txt)
	routed := waitMessages(t, f.smarthost, 1)
	if routed[0].Client.Addr() != netip.MustParseAddr(sourceIPB) {
		t.Errorf("the smart host saw the relay from %v, want the source IP %s", routed[0].Client, sourceIPB)
	}
	if bytes.Contains(routed[0].Data, []byte("DKIM-Signature:")) {
		t.Error("the routed domain's mail was signed")
	}
	if n := len(f.mx.Messages()); n != 1 {
		t.Errorf("the MX sink got %d messages, want only team-a's", n)
	}

	// The relay reports its delivery on the RelayRoute (contract 6).
	testenv.Eventually(t, func() string {
		out, _, err := tryRun(nil, "kubectl", "get", "-n", "team-b", "relayroute", "b-route",
			"-o", `jsonpath={.status.delivery.replicas[?(@.name=="`+f.relayPodName+`")].lastDelivered.responseCode}`)
		if err != nil || strings.TrimSpace(string(out)) != "250" {
			return fmt.Sprintf("no 250 in %s's delivery entry: %q %v", f.relayPodName, out, err)
		}
		return ""
	})
	t.Logf("RelayRoute team-b/b-route status.delivery:\n%s", run(t, nil, "kubectl", "get", "-n", "team-b",
		"relayroute", "b-route", "-o", "jsonpath={.status.delivery}"))

	// A new target with kubectl apply: the relay follows with no restart.
	applied := time.Now()
	run(t, []byte(routeManifest("smarthost2.relay.test", f.smarthost2.Port())), "kubectl", "apply", "-f", "-")
	testenv.Eventually(t, programmedAtGeneration("team-b", "relayroute", "b-route"))
	mustQueue(t, f.relaySMTP, clientB, "invoices@b.example.org", "after the change")
	moved := waitMessages(t, f.smarthost2, 1)
	t.Logf("route change: %s from kubectl apply to the first message at the new target",
		moved[0].Received.Sub(applied).Round(time.Millisecond))
	if moved[0].Client.Addr() != netip.MustParseAddr(sourceIPB) {
		t.Errorf("the new target saw the relay from %v, want %s", moved[0].Client, sourceIPB)
	}
	if n := len(f.smarthost.Messages()); n != 1 {
		t.Errorf("the old target got %d messages, want 1: the change must move the next message", n)
	}
}

// programmedAtGeneration is a poll condition: the object is Programmed=True
// for its current generation.
func programmedAtGeneration(ns, kind, name string) func() string {
	return func() string {
		out, _, err := tryRun(nil, "kubectl", "get", "-n", ns, kind, name, "-o", "json")
		if err != nil {
			return err.Error()
		}
		var obj struct {
			Metadata struct {
				Generation int64 `json:"generation"`
			} `json:"metadata"`
			Status struct {
				Conditions []struct {
					Type               string `json:"type"`
					Status             string `json:"status"`
					ObservedGeneration int64  `json:"observedGeneration"`
				} `json:"conditions"`
			} `json:"status"`
		}
		if err := json.Unmarshal(out, &obj); err != nil {
			return err.Error()
		}
		for _, c := range obj.Status.Conditions {
			if c.Type == "Programmed" && c.Status == "True" && c.ObservedGeneration == obj.Metadata.Generation {
				return ""
			}
		}
		return fmt.Sprintf("%s %s/%s not programmed at generation %d: %s", kind, ns, name, obj.Metadata.Generation, out)
	}
}

func waitMessages(t *testing.T, sink *testenv.SMTPSink, n int) []testenv.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testenv.WaitTimeout)
	defer cancel()
	msgs, err := sink.WaitMessages(ctx, n)
	if err != nil {
		t.Fatalf("%d messages at the sink %s: %v (got %d)", n, sink.Addr(), err, len(msgs))
	}
	return msgs
}

func mustQueue(t *testing.T, relay, client, from, subject string) {
	t.Helper()
	line, err := send(relay, client, from, subject)
	if err != nil || !strings.HasPrefix(line, "250 ") {
		t.Fatalf("submitting as %s from %s: %q %v", from, client, line, err)
	}
}

// send submits one message to bob@dest.test from the local address client.
func send(addr, client, from, subject string) (string, error) {
	return testenv.SubmitMail(addr, client, from, "bob@dest.test", subject)
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
