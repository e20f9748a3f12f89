package relay_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/testenv"
	"github.com/postgate/postgate/webhook"
)

// metaReceiver is a loopback webhook that verifies each request and keeps
// its body.
type metaReceiver struct {
	t       *testing.T
	key     []byte
	changes testenv.Changes
	mu      sync.Mutex
	bodies  []webhook.Body
}

func (r *metaReceiver) ServeHTTP(rw http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(io.LimitReader(req.Body, 4<<20))
	if err != nil {
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	if err := webhook.Verify(r.key, req.Header.Get(webhook.HeaderTimestamp), req.Header.Get(webhook.HeaderSignature), body, time.Now(), webhook.MaxSignatureAge); err != nil {
		r.t.Errorf("webhook request with a bad signature: %v", err)
		http.Error(rw, err.Error(), http.StatusUnauthorized)
		return
	}
	var b webhook.Body
	if err := json.Unmarshal(body, &b); err != nil {
		r.t.Errorf("webhook body %s: %v", body, err)
	}
	r.mu.Lock()
	r.bodies = append(r.bodies, b)
	r.mu.Unlock()
	r.changes.Changed()
	rw.WriteHeader(http.StatusOK)
}

// waitJob waits for the notification of job and returns its request.
func (r *metaReceiver) waitJob(t *testing.T, job string, logs func() string) webhook.Body {
	t.Helper()
	var got webhook.Body
	r.changes.Wait(t, func() string {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, b := range r.bodies {
			if b.Meta.JobID == job {
				got = b
				return ""
			}
		}
		return "the webhook has no notification of " + job + "\n" + logs()
	})
	return got
}

// submitTagged sends one message with an X-Postgate-Tag field and returns
// its queue ID.
func submitTagged(t *testing.T, addr, tag string) string {
	t.Helper()
	c, err := testenv.DialSMTPLine(addr, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if _, err := c.Reply(); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"EHLO test.test", "MAIL FROM:<app@example.com>", "RCPT TO:<ok@dest.test>", "DATA"} {
		if line, err := c.Cmd(cmd); err != nil || (line[0] != '2' && line[0] != '3') {
			t.Fatalf("%s: %q %v", cmd, line, err)
		}
	}
	line, err := c.Cmd("From: <app@example.com>\r\nTo: <ok@dest.test>\r\nX-Postgate-Tag: " + tag + "\r\nSubject: tagged\r\n\r\nbody\r\n.")
	m := queuedID.FindStringSubmatch(line)
	if err != nil || m == nil {
		t.Fatalf("DATA: %q %v", line, err)
	}
	return m[1]
}

// TestRelayWebhookMetaAndRestarts runs the relay in process with a
// SenderDomain whose annotations name an account and a customer number: a
// message tagged with X-Postgate-Tag reaches the MX without the field, and
// its notification carries the tag, the account, the customer number and
// the namespace as tenant. Then the sequence that used to lose a
// notification: the journal drained, two graceful restarts (as on SIGTERM)
// on the same spool (the first deletes the drained segment), and a new
// message, whose notification must arrive.
func TestRelayWebhookMetaAndRestarts(t *testing.T) {
	dns := testenv.StartDNSServer(t, testenv.DNSOptions{})
	mx := testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: "127.0.0.3:0"})
	if err := dns.Add("dest.test. 60 IN MX 10 mx.dest.test.", "mx.dest.test. 60 IN A 127.0.0.3"); err != nil {
		t.Fatal(err)
	}
	key := []byte("0123456789abcdef0123456789abcdef")
	recv := &metaReceiver{t: t, key: key}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: recv, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	dir := t.TempDir()
	manifests := fmt.Sprintf(`apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata:
  name: example
  namespace: billing
  annotations: {postgate.io/account: m4a_billing, postgate.io/customer-no: "99999"}
spec:
  domain: example.com
  delivery:
    webhook: {url: "http://%s/hook", hmacSecretRef: {name: hook}}
---
apiVersion: v1
kind: Secret
metadata: {name: hook, namespace: billing}
data: {key: %s}
---
apiVersion: postgate.io/v1alpha1
kind: TrustedNetwork
metadata: {name: lo, namespace: billing}
spec: {cidrs: [127.0.0.0/8]}
`, ln.Addr(), base64.StdEncoding.EncodeToString(key))
	if err := os.WriteFile(filepath.Join(dir, "relay.yaml"), []byte(manifests), 0o600); err != nil {
		t.Fatal(err)
	}
	spool := t.TempDir()
	run := func() *testRelay {
		return startRelayInProcess(t, nil, "--manifests", dir, "--spool-dir", spool, "--dns-server", dns.Addr(),
			"--mx-port", strconv.Itoa(mx.Port()), "--webhook-allow-cidrs", "127.0.0.0/8")
	}

	p := run()
	tag := "a813f47bca9ded6b0305885e235c073e886168b8b63eb5e99d02d00bcc7a6371"
	job := submitTagged(t, p.addr, tag)
	b := recv.waitJob(t, job, p.logs)
	if b.Meta.Tenant != "billing" || b.Meta.Account != "m4a_billing" || b.Meta.CustomerNo != "99999" ||
		len(b.Notifications) != 1 || b.Notifications[0].Meta.Tag != tag || b.Notifications[0].Meta.Event.Type != webhook.TypeDelivered {
		t.Errorf("notification: %+v", b)
	}
	ctx, cancel := context.WithTimeout(t.Context(), testenv.WaitTimeout)
	msgs, err := mx.WaitMessages(ctx, 1)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if data := string(msgs[0].Data); strings.Contains(strings.ToLower(data), "x-postgate-tag") || !strings.Contains(data, "Subject: tagged") {
		t.Errorf("the MX got:\n%s", data)
	}

	// Drained (the relay wrote down the receiver's 2xx: a shutdown while
	// the answer is on its way would leave the notification to be sent
	// again): stop, start (the drained segment goes), stop, start.
	queueDir := filepath.Join(spool, "notify", "example.com")
	testenv.Eventually(t, func() string {
		if _, err := os.Stat(filepath.Join(queueDir, "cursor")); err != nil {
			return fmt.Sprintf("the relay has not acknowledged the notification in its journal: %v\n%s", err, p.logs())
		}
		return ""
	})
	p.stop(t)
	p = run()
	segs := filepath.Join(queueDir, "*.seg")
	testenv.Eventually(t, func() string {
		if names, _ := filepath.Glob(segs); len(names) > 0 {
			return fmt.Sprintf("drained segments %v still there", names)
		}
		return ""
	})
	p.stop(t)
	p = run()
	job2 := submitTagged(t, p.addr, "second")
	if b := recv.waitJob(t, job2, p.logs); b.Notifications[0].Meta.Tag != "second" {
		t.Errorf("after two restarts: %+v", b)
	}
	p.stop(t)
}
