package relay_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/postgate/postgate/internal/testenv"
)

// TestShapingEndToEnd: with --shaping the relay delivers as before, a
// throttle reply of the shipped default rule suspends the recipient's
// site, and the next message for it waits without a connection.
func TestShapingEndToEnd(t *testing.T) {
	dns, mx, _ := mailWorld(t, testenv.SMTPSinkOptions{})
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "relay.yaml"), []byte(`apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: example}
spec: {domain: example.com}
---
apiVersion: postgate.io/v1alpha1
kind: TrustedNetwork
metadata: {name: lo}
spec: {cidrs: [127.0.0.0/8]}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := standaloneConfig(t, dir, dns.Addr(), mx.Port())
	cfg.Shaping = true
	p := runRelayInProcess(t, cfg)
	p.log.WaitMatch(t, regexp.MustCompile(`Traffic shaping on`))

	wait, stop := context.WithTimeout(context.Background(), testenv.WaitTimeout)
	defer stop()
	if line, err := sendOne(p.addr, "alice@example.com", "first"); err != nil || !queuedID.MatchString(line) {
		t.Fatalf("%q %v", line, err)
	}
	if _, err := mx.WaitMessages(wait, 1); err != nil {
		t.Fatalf("%v\n%s", err, p.logs())
	}

	// The shipped default rule's throttle reply (KumoMTA's automation).
	mx.SetFault(testenv.StageMail, testenv.Fault{Code: 421, Enhanced: smtp.EnhancedCode{4, 7, 0}, Text: "has been temporarily rate limited due to IP reputation"})
	if line, err := sendOne(p.addr, "alice@example.com", "second"); err != nil || !queuedID.MatchString(line) {
		t.Fatalf("%q %v", line, err)
	}
	p.log.WaitMatch(t, regexp.MustCompile(`temporarily rate limited`))
	testenv.Eventually(t, func() string {
		if st := mx.Stats(); st.Closed < st.Connections {
			return "the throttled session still open"
		}
		return ""
	})
	conns := mx.Stats().Connections
	if line, err := sendOne(p.addr, "alice@example.com", "third"); err != nil || !queuedID.MatchString(line) {
		t.Fatalf("%q %v", line, err)
	}
	p.log.WaitMatch(t, regexp.MustCompile(`reply="451 4\.7\.0 site dest\.test suspended until `))
	if got := mx.Stats().Connections; got != conns {
		t.Errorf("%d connections to a suspended site, want none\n%s", got-conns, p.logs())
	}
}
