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
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postgate/postgate/internal/testenv"
	"github.com/postgate/postgate/webhook"
)

// webhookReceiver is a loopback HTTP endpoint that checks each request's
// signature and records the notifications. Its mode says how it answers:
// 503 (down behind its load balancer), hang (never answers until released),
// or 200.
type webhookReceiver struct {
	t    *testing.T
	key  []byte
	mode atomic.Value // "down", "hang", "ok"
	hang chan struct{}

	refused atomic.Int64 // requests answered "down"
	changes testenv.Changes

	mu       sync.Mutex
	requests int
	events   map[string]int // "email TYPE responseCode" -> count
	ids      map[string]int // mail.id "TYPE" -> count, to see duplicates
}

type webhookBody struct {
	Meta struct {
		JobID, Version string
	} `json:"meta"`
	Notifications []struct {
		Meta struct {
			Mail struct {
				ID, Email, From, MimeFrom string
			} `json:"mail"`
			Event struct {
				Type, Phase, State, SubType, Ts string
			} `json:"event"`
		} `json:"meta"`
		Content struct {
			Mime struct {
				MessageID string `json:"messageId"`
				Size      string `json:"size"`
			} `json:"mime"`
			SMTP struct {
				ResponseCode, Reason, Relay, DSN string
			} `json:"smtp"`
		} `json:"content"`
	} `json:"notifications"`
}

func (w *webhookReceiver) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	switch w.mode.Load() {
	case "down":
		http.Error(rw, "down", http.StatusServiceUnavailable)
		w.refused.Add(1)
		w.changes.Changed()
		return
	case "hang":
		select {
		case <-w.hang:
		case <-r.Context().Done():
			return
		}
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	if err != nil {
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	if err := webhook.Verify(w.key, r.Header.Get(webhook.HeaderTimestamp), r.Header.Get(webhook.HeaderSignature), body, time.Now(), webhook.MaxSignatureAge); err != nil {
		w.t.Errorf("webhook request with a bad signature: %v", err)
		http.Error(rw, err.Error(), http.StatusUnauthorized)
		return
	}
	var b webhookBody
	if err := json.Unmarshal(body, &b); err != nil || b.Meta.Version != "1" || b.Meta.JobID == "" {
		w.t.Errorf("webhook body %s: %v", body, err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.requests++
	for _, n := range b.Notifications {
		m, e, s := n.Meta.Mail, n.Meta.Event, n.Content.SMTP
		if m.From != "app@example.com" || m.MimeFrom != "app@example.com" || e.Phase != "DELIVER" || e.Ts == "" ||
			n.Content.Mime.MessageID == "" || n.Content.Mime.Size == "" || s.DSN == "" {
			w.t.Errorf("notification lacks fields: %+v", n)
		}
		w.events[m.Email+" "+e.Type+" "+s.ResponseCode]++
		w.ids[m.ID+" "+e.Type]++
	}
	rw.WriteHeader(http.StatusOK)
}

func (w *webhookReceiver) seen(event string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.events[event]
}

// TestRelayWebhooks runs the relay in process with a SenderDomain that names a
// webhook: while the receiver answers 503 and then hangs, mail is still
// delivered; once it answers, it gets one signed notification per outcome
// (DELIVERED 250, DEFERRED 451, BOUNCED 550), duplicates only of the same
// notification (at least once).
func TestRelayWebhooks(t *testing.T) {
	dns := testenv.StartDNSServer(t, testenv.DNSOptions{})
	mx := testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: "127.0.0.3:0"})
	if err := dns.Add("dest.test. 60 IN MX 10 mx.dest.test.", "mx.dest.test. 60 IN A 127.0.0.3"); err != nil {
		t.Fatal(err)
	}
	mx.SetRcptFault("bad@dest.test", testenv.Fault{Code: 550, Enhanced: smtp.EnhancedCode{5, 1, 1}, Text: "no such user"})
	mx.SetRcptFault("slow@dest.test", testenv.Fault{Code: 451, Enhanced: smtp.EnhancedCode{4, 3, 0}, Text: "try later"})

	key := []byte("0123456789abcdef0123456789abcdef")
	recv := &webhookReceiver{t: t, key: key, hang: make(chan struct{}), events: map[string]int{}, ids: map[string]int{}}
	recv.mode.Store("down")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: recv, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	var release sync.Once
	t.Cleanup(func() { release.Do(func() { close(recv.hang) }); _ = srv.Close() })

	dir := t.TempDir()
	manifests := fmt.Sprintf(`apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: example}
spec:
  domain: example.com
  delivery:
    webhook: {url: "http://%s/hook", hmacSecretRef: {name: hook}}
---
apiVersion: v1
kind: Secret
metadata: {name: hook}
data: {key: %s}
---
apiVersion: postgate.io/v1alpha1
kind: TrustedNetwork
metadata: {name: lo}
spec: {cidrs: [127.0.0.0/8]}
`, ln.Addr(), base64.StdEncoding.EncodeToString(key))
	if err := os.WriteFile(filepath.Join(dir, "relay.yaml"), []byte(manifests), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startRelayInProcess(t, nil, "--manifests", dir, "--spool-dir", t.TempDir(), "--dns-server", dns.Addr(),
		"--mx-port", strconv.Itoa(mx.Port()), "--webhook-allow-cidrs", "127.0.0.0/8")

	submit := func(to string) {
		t.Helper()
		line, err := testenv.SubmitMail(p.addr, "127.0.0.1", "app@example.com", to, "to "+to)
		if err != nil || !queuedID.MatchString(line) {
			t.Fatalf("submitting to %s: %q %v", to, line, err)
		}
	}
	// Down: the outcomes wait in the relay's journal.
	for _, to := range []string{"ok@dest.test", "bad@dest.test", "slow@dest.test"} {
		submit(to)
	}
	waitMX := func(n int) ([]testenv.Message, error) {
		ctx, cancel := context.WithTimeout(t.Context(), testenv.WaitTimeout)
		defer cancel()
		return mx.WaitMessages(ctx, n)
	}
	if _, err := waitMX(1); err != nil {
		t.Fatal(err)
	}
	// Down for a while: several tries fail.
	recv.changes.Wait(t, func() string {
		if n := recv.refused.Load(); n < 3 {
			return fmt.Sprintf("the webhook refused %d tries, want 3", n)
		}
		return ""
	})

	// Hanging: delivery goes on regardless.
	recv.mode.Store("hang")
	const more = 10
	for i := range more {
		submit(fmt.Sprintf("more%d@dest.test", i))
	}
	if msgs, err := waitMX(1 + more); err != nil {
		t.Fatalf("the MX sink has %d messages while the webhook hangs, want %d: %v", len(msgs), 1+more, err)
	}

	// Up: every outcome arrives, signed.
	recv.mode.Store("ok")
	release.Do(func() { close(recv.hang) })
	want := []string{"ok@dest.test DELIVERED 250", "bad@dest.test BOUNCED 550", "slow@dest.test DEFERRED 451"}
	for i := range more {
		want = append(want, fmt.Sprintf("more%d@dest.test DELIVERED 250", i))
	}
	// Retries back off while the webhook is down: a longer bound.
	testenv.EventuallyWithin(t, 90*time.Second, func() string {
		for _, e := range want {
			if recv.seen(e) == 0 {
				return "the webhook has not received " + e + "\n" + p.logs()
			}
		}
		return ""
	})
	recv.mu.Lock()
	defer recv.mu.Unlock()
	for id, n := range recv.ids {
		if n > 1 {
			t.Logf("notification %s delivered %d times (at least once)", id, n)
		}
	}
	t.Logf("%d requests, %d distinct notifications", recv.requests, len(recv.ids))
}
