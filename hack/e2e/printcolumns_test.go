package e2e

import (
	"regexp"
	"strings"
	"testing"
)

// printColumnsObjects are one object of each kind, each with a Ready
// condition whose reason tells a different story.
const printColumnsObjects = `
apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: example-com}
spec: {domain: example.com}
---
apiVersion: postgate.io/v1alpha1
kind: RelayRoute
metadata: {name: via-smarthost}
spec:
  senderDomainRef: {name: example-com}
  target:
    host: smarthost.example.net
    port: 587
    tlsPolicy: Verify
    credentialsSecretRef: {name: smarthost-credentials}
---
apiVersion: postgate.io/v1alpha1
kind: TrustedNetwork
metadata: {name: office}
spec:
  cidrs: [192.0.2.0/24]
`

func readyStatus(kind, name, reason, message string) string {
	return `apiVersion: postgate.io/v1alpha1
kind: ` + kind + `
metadata: {name: ` + name + `}
status:
  conditions:
    - {type: Ready, status: "False", reason: ` + reason + `, message: "` + message + `", lastTransitionTime: "2026-01-01T00:00:00Z"}
`
}

// `kubectl get sd,rr,tn -o wide` shows the Ready condition's reason and
// message (printer columns of priority 1, which the API server renders),
// so NoRelays, Conflicted and SecretNotFound are told apart without
// -o yaml; the narrow listing stays as it was.
func TestPrinterColumnsShowReadyReason(t *testing.T) {
	const ns = "postgate-printcolumns"
	run(t, []byte("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: "+ns+"\n"), "kubectl", "apply", "--server-side", "-f", "-")
	run(t, []byte(printColumnsObjects), "kubectl", "apply", "--server-side", "-n", ns, "-f", "-")
	for _, s := range []string{
		readyStatus("SenderDomain", "example-com", "Conflicted", "team-b/example-com claims example.com since earlier"),
		readyStatus("RelayRoute", "via-smarthost", "SecretNotFound", "Secret smarthost-credentials not found"),
		readyStatus("TrustedNetwork", "office", "NoRelays", "no relay has loaded the table"),
	} {
		run(t, []byte(s), "kubectl", "apply", "--server-side", "--subresource=status", "--field-manager=postgate-e2e", "-n", ns, "-f", "-")
	}

	wide := string(run(t, nil, "kubectl", "get", "sd,rr,tn", "-n", ns, "-o", "wide"))
	t.Logf("kubectl get sd,rr,tn -o wide:\n%s", wide)
	for _, want := range []string{
		`(?m)^senderdomain\.postgate\.io/example-com\s+False\s+example\.com\s+Conflicted\s+team-b/example-com claims example\.com since earlier\s+\S+$`,
		`(?m)^relayroute\.postgate\.io/via-smarthost\s+False\s+example-com\s+smarthost\.example\.net\s+587\s+SecretNotFound\s+Secret smarthost-credentials not found\s+\S+$`,
		`(?m)^trustednetwork\.postgate\.io/office\s+False\s+\["192\.0\.2\.0/24"\]\s+(<none>)?\s*NoRelays\s+no relay has loaded the table\s+\S+$`,
	} {
		if !regexp.MustCompile(want).MatchString(wide) {
			t.Errorf("kubectl get -o wide: no line matching %s", want)
		}
	}
	if n := strings.Count(wide, "REASON"); n != 3 {
		t.Errorf("kubectl get -o wide: want a REASON column for each of the 3 kinds, got %d", n)
	}
	narrow := string(run(t, nil, "kubectl", "get", "sd,rr,tn", "-n", ns))
	if strings.Contains(narrow, "REASON") || strings.Contains(narrow, "MESSAGE") || strings.Contains(narrow, "Conflicted") {
		t.Errorf("kubectl get without -o wide shows the reason:\n%s", narrow)
	}
}
