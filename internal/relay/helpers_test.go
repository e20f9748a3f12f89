package relay_test

import (
	"context"
	"flag"
	"log/slog"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/postgate/postgate/internal/relay"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/testenv"
)

var (
	adminListening = regexp.MustCompile(`msg="HTTP listening" address=(\S+) admin=true`)
	queuedID       = regexp.MustCompile(`^250 2\.0\.0 OK: queued as (\S+)$`)
)

// testRelay is a relay running in this test's process.
type testRelay struct {
	*relay.Relay
	addr      string // SMTP
	adminAddr string // the queue admin API, when it listens
	log       *testenv.LogBuffer
}

func (p *testRelay) logs() string { return p.log.String() }

// relayArgs are the command line of a test relay: args after a loopback
// SMTP and admin listener and a loopback DNS server that answers SERVFAIL
// for dest.test, the recipients' domain in these tests: mail stays queued
// (a temporary failure) and no query leaves the machine.
func relayArgs(t *testing.T, args []string) []string {
	dns := testenv.StartDNSServer(t, testenv.DNSOptions{})
	dns.SetFault("dest.test", 0, testenv.DNSServFail)
	base := []string{"--smtp-bind-address", "127.0.0.1:0", "--dns-server", dns.Addr(), "--admin-bind-address", "127.0.0.1:0"}
	return append(base, args...)
}

// startRelayInProcess runs the relay package in this process with the
// configuration the flags args give `postgate relay` (see relayArgs) and,
// in cluster mode, the API server kube, until the test ends.
func startRelayInProcess(t *testing.T, kube *rest.Config, args ...string) *testRelay {
	t.Helper()
	var cfg relay.Config
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	var usage strings.Builder
	fs.SetOutput(&usage)
	cfg.BindFlags(fs)
	if err := fs.Parse(relayArgs(t, args)); err != nil {
		t.Fatalf("%v\n%s", err, usage.String())
	}
	cfg.Kube = kube
	p := runRelayInProcess(t, cfg)
	p.adminAddr = p.log.WaitMatch(t, adminListening)[1]
	return p
}

// runRelayInProcess runs the relay package in this process until the test
// ends, once it listens for SMTP.
func runRelayInProcess(t *testing.T, cfg relay.Config) *testRelay {
	t.Helper()
	p := &testRelay{log: &testenv.LogBuffer{}}
	cfg.Logger = slog.New(slog.NewTextHandler(p.log, nil))
	var err error
	if p.Relay, err = relay.New(cfg); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.Run(context.Background()) }() // its error is Shutdown's
	t.Cleanup(func() {
		if err := p.Shutdown(context.Background()); err != nil {
			t.Errorf("relay: %v\n%s", err, p.log)
		}
	})
	p.addr = p.log.WaitMatch(t, listening)[1]
	return p
}

// stop shuts the relay down as SIGTERM does and waits (bounded) for it to
// end without an error.
func (p *testRelay) stop(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatalf("relay stopped with %v:\n%s", err, p.logs())
	}
}

// sendOne sends one message to bob@dest.test from 127.0.0.1 and returns
// the final reply.
func sendOne(addr, from, subject string) (string, error) {
	return testenv.SubmitMail(addr, "127.0.0.1", from, "bob@dest.test", subject)
}

// assertQueued opens the queue of the spool (its relay stopped) and fails
// the test for each acknowledged queue ID (the keys of acked) missing
// there.
func assertQueued(t *testing.T, spool string, acked *sync.Map) (lost, queued int) {
	t.Helper()
	dir, err := queue.OpenDir(filepath.Join(spool, "queue"))
	if err != nil {
		t.Fatal(err)
	}
	q, err := queue.Open(context.Background(), dir, queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = q.Close() }()
	acked.Range(func(k, _ any) bool {
		if _, err := q.Get(context.Background(), queue.ID(k.(string))); err != nil {
			lost++
			t.Errorf("message %s got 250 and is not in the queue: %v", k, err)
		}
		return true
	})
	return lost, q.Stats().Messages
}
