package relay_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay"
	"github.com/postgate/postgate/internal/testenv"
)

var listening = regexp.MustCompile(`msg="SMTP listening" address=(\S+)`)

// standalone is a relay on the sample manifests, all on loopback.
func standalone(t *testing.T, logs *testenv.LogBuffer) relay.Config {
	return relay.Config{
		SMTPAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", SpoolDir: t.TempDir(), Hostname: "relay.test",
		Manifests:       []string{testenv.Samples(t)},
		MaxMessageBytes: 1 << 20, MaxRecipients: 10, MaxConnections: 10, MaxConnectionsPerClient: 10,
		DNSServer: testenv.StartDNSServer(t, testenv.DNSOptions{}).Addr(), MXPort: 25, ShutdownGrace: 5 * time.Second,
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	}
}

// TestRunShutdown assembles a standalone relay in process: it takes mail
// once listening, Shutdown stops it in order (drain, then close) and Run
// returns nil; a relay runs once.
func TestRunShutdown(t *testing.T) {
	logs := &testenv.LogBuffer{}
	r, err := relay.New(standalone(t, logs))
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- r.Run(context.Background()) }()
	addr := logs.WaitMatch(t, listening)[1]
	line, err := testenv.SubmitMail(addr, "127.0.0.1", "alice@example.com", "bob@dest.test", "hello")
	if err != nil || !strings.HasPrefix(line, "250 ") {
		t.Fatalf("submit: %q %v", line, err)
	}
	bounded, cancel := context.WithTimeout(context.Background(), testenv.WaitTimeout)
	defer cancel()
	if err := r.Shutdown(bounded); err != nil {
		t.Fatalf("Shutdown: %v\n%s", err, logs)
	}
	if err := <-ran; err != nil { // returned: Shutdown waited for it
		t.Fatalf("Run: %v", err)
	}
	out := logs.String()
	drain, shut := strings.Index(out, `msg="Shutting down`), strings.Index(out, `msg="Shut down"`)
	if drain < 0 || shut < drain {
		t.Errorf("no drain before the end in the log:\n%s", out)
	}
	if err := r.Run(context.Background()); err == nil {
		t.Error("a second Run succeeded")
	}
}

// TestRunEndsWithContext: the end of Run's context shuts the relay down
// the same way, and Shutdown afterwards reports Run's result.
func TestRunEndsWithContext(t *testing.T) {
	logs := &testenv.LogBuffer{}
	r, err := relay.New(standalone(t, logs))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- r.Run(ctx) }()
	logs.WaitMatch(t, listening)
	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatalf("Run: %v\n%s", err, logs)
		}
	case <-time.After(testenv.WaitTimeout):
		t.Fatalf("Run did not return when its context ended:\n%s", logs)
	}
	if err := r.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown after Run returned: %v", err)
	}
	logs.WaitFor(t, `msg="Shut down"`, 1)
}

// TestNewRefusesContradictions: New refuses what the flags refuse, naming
// the flags.
func TestNewRefusesContradictions(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  relay.Config
		want string
	}{
		{"no mode", relay.Config{}, "give --manifests"},
		{"both modes", relay.Config{Manifests: []string{"x"}, Namespace: "ns"}, "exclude each other"},
		{"cluster without the API server", relay.Config{Namespace: "ns"}, "API server"},
		{"half a key pair", relay.Config{Manifests: []string{"x"}, TLSCertFile: "c"}, "go together"},
		{"implicit TLS without a key", relay.Config{Manifests: []string{"x"}, SMTPSAddr: ":465"}, "--smtps-bind-address"},
		{"admin API off loopback", relay.Config{Manifests: []string{"x"}, AdminAddr: ":8025"}, "not a loopback address"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := relay.New(c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("New: %v, want an error with %q", err, c.want)
			}
		})
	}
	if _, err := relay.New(relay.Config{Manifests: []string{"x"}, AdminAddr: ":8025", AdminAllowNonLoopback: true}); err != nil {
		t.Errorf("admin API off loopback, allowed: %v", err)
	}
}

// TestSpoolSegmentMaxBody: the relay's queue takes --spool-segment-max-body:
// by default a small message goes to a segment file, with a negative
// value to a file of its own, and no segment file is ever made (the
// message itself may be gone by then: delivered or bounced).
func TestSpoolSegmentMaxBody(t *testing.T) {
	for _, tc := range []struct {
		maxBody  int64
		segments bool
	}{{0, true}, {-1, false}} {
		t.Run(fmt.Sprint(tc.maxBody), func(t *testing.T) {
			logs := &testenv.LogBuffer{}
			cfg := standalone(t, logs)
			cfg.SpoolSegmentMaxBody = tc.maxBody
			r, err := relay.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ran := make(chan error, 1)
			go func() { ran <- r.Run(context.Background()) }()
			addr := logs.WaitMatch(t, listening)[1]
			line, err := testenv.SubmitMail(addr, "127.0.0.1", "alice@example.com", "bob@dest.test", "hello")
			if err != nil || !strings.HasPrefix(line, "250 ") {
				t.Fatalf("submit: %q %v", line, err)
			}
			bounded, cancel := context.WithTimeout(context.Background(), testenv.WaitTimeout)
			defer cancel()
			if err := r.Shutdown(bounded); err != nil {
				t.Fatalf("Shutdown: %v\n%s", err, logs)
			}
			if err := <-ran; err != nil {
				t.Fatalf("Run: %v", err)
			}
			names, err := filepath.Glob(filepath.Join(cfg.SpoolDir, "queue", "*.seg"))
			if err != nil || (len(names) > 0) != tc.segments {
				t.Errorf("segment files %q (%v), want some: %t", names, err, tc.segments)
			}
		})
	}
}
