package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/postgate/postgate/internal/relay"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/testenv"
)

// buildPostgate builds the binary once per test run.
var buildPostgate = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "postgate-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "postgate")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, out)
	}
	return bin, nil
})

var (
	listening      = regexp.MustCompile(`msg="SMTP listening" address=(\S+)`)
	adminListening = regexp.MustCompile(`msg="HTTP listening" address=(\S+) admin=true`)
)

// relayProcess is a running relay: a `postgate relay` process (cmd set),
// or the relay package in this process.
type relayProcess struct {
	cmd       *exec.Cmd
	addr      string
	adminAddr string // the queue admin API
	log       *testenv.LogBuffer
}

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

// startRelay starts a `postgate relay` process with args (see relayArgs),
// for the tests of the process itself: signals, exit status, kill -9.
// Other tests run the relay in process (startRelayInProcess).
func startRelay(t *testing.T, args ...string) *relayProcess {
	t.Helper()
	bin, err := buildPostgate()
	if err != nil {
		t.Fatal(err)
	}
	p := &relayProcess{log: &testenv.LogBuffer{}}
	p.cmd = exec.Command(bin, append([]string{"relay"}, relayArgs(t, args)...)...)
	p.cmd.Stderr = p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.cmd.Process.Kill(); _ = p.cmd.Wait() })
	p.waitListening(t)
	return p
}

// startRelayInProcess runs the relay package in this process with the
// configuration the flags args give `postgate relay` (see relayArgs), until
// the test ends, for the tests of the commands that talk to a relay.
func startRelayInProcess(t *testing.T, args ...string) *relayProcess {
	t.Helper()
	var cfg relay.Config
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	var usage strings.Builder
	fs.SetOutput(&usage)
	cfg.BindFlags(fs)
	if err := fs.Parse(relayArgs(t, args)); err != nil {
		t.Fatalf("%v\n%s", err, usage.String())
	}
	p := &relayProcess{log: &testenv.LogBuffer{}}
	cfg.Logger = slog.New(slog.NewTextHandler(p.log, nil))
	r, err := relay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = r.Run(context.Background()) }() // its error is Shutdown's
	t.Cleanup(func() {
		if err := r.Shutdown(context.Background()); err != nil {
			t.Errorf("relay: %v\n%s", err, p.log)
		}
	})
	p.waitListening(t)
	return p
}

// waitListening waits for the SMTP and admin listeners' addresses in the
// log.
func (p *relayProcess) waitListening(t *testing.T) {
	t.Helper()
	p.addr = p.log.WaitMatch(t, listening)[1]
	p.adminAddr = p.log.WaitMatch(t, adminListening)[1]
}

func (p *relayProcess) logs() string { return p.log.String() }

// sendOne sends one message to bob@dest.test from 127.0.0.1 and returns
// the final reply.
func sendOne(addr, from, subject string) (string, error) {
	return testenv.SubmitMail(addr, "127.0.0.1", from, "bob@dest.test", subject)
}

var queuedID = regexp.MustCompile(`^250 2\.0\.0 OK: queued as (\S+)$`)

// TestRelayKill9 kills the relay process with SIGKILL at random moments
// while clients send, restarts it on the same spool, and checks that every
// message any client saw a 250 for is in the queue afterwards.
func TestRelayKill9(t *testing.T) {
	spool := t.TempDir()
	manifests := filepath.Join("..", "..", "config", "samples")
	var acked sync.Map // queue id -> subject
	var total atomic.Int64
	rounds := 5
	if s := os.Getenv("POSTGATE_KILL_ROUNDS"); s != "" {
		_, _ = fmt.Sscanf(s, "%d", &rounds)
	}
	for round := range rounds {
		p := startRelay(t, "--manifests", manifests, "--spool-dir", spool)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		var roundAcked atomic.Int64
		var changes testenv.Changes
		for c := range 4 {
			wg.Go(func() {
				for i := 0; ctx.Err() == nil; i++ {
					subject := fmt.Sprintf("r%d-c%d-m%d", round, c, i)
					line, err := sendOne(p.addr, "alice@example.com", subject)
					if m := queuedID.FindStringSubmatch(line); err == nil && m != nil {
						acked.Store(m[1], subject)
						total.Add(1)
						roundAcked.Add(1)
						changes.Changed()
					}
				}
			})
		}
		// A random moment, counted in acknowledged messages rather than
		// time, so that a slow machine still kills mid-stream.
		kill := int64(1 + rand.IntN(40))
		changes.Wait(t, func() string {
			if n := roundAcked.Load(); n < kill {
				return fmt.Sprintf("round %d: %d messages acknowledged, waiting for %d", round, n, kill)
			}
			return ""
		})
		if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = p.cmd.Wait()
		cancel()
		wg.Wait()
	}
	if total.Load() == 0 {
		t.Fatal("no message was acknowledged: the test proves nothing")
	}

	lost, queued := assertQueued(t, spool, &acked)
	t.Logf("%d rounds of kill -9: %d messages acknowledged, %d lost, %d in the queue", rounds, total.Load(), lost, queued)
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
