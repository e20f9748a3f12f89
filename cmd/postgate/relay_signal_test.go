package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/testenv"
)

// terminate sends SIGTERM and waits (bounded) for the relay to exit.
func (p *relayProcess) terminate(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- p.cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("relay exited with %v:\n%s", err, p.logs())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("relay did not exit after SIGTERM:\n%s", p.logs())
	}
}

// TestRelaySIGTERMWithSlowMX sends SIGTERM while a delivery attempt waits
// on an MX that takes longer than --shutdown-grace to answer the message.
// The attempt is aborted unrecorded, as designed: that is a normal end, so
// the relay says so below ERROR and exits 0.
func TestRelaySIGTERMWithSlowMX(t *testing.T) {
	dns := testenv.StartDNSServer(t, testenv.DNSOptions{})
	mx := testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: "127.0.0.3:0"})
	mx.SetFault(testenv.StageData, testenv.Fault{Delay: time.Hour})
	if err := dns.Add("dest.test. 60 IN MX 10 mx.dest.test.", "mx.dest.test. 60 IN A 127.0.0.3"); err != nil {
		t.Fatal(err)
	}
	p := startRelay(t, "--manifests", filepath.Join("..", "..", "config", "samples"), "--spool-dir", t.TempDir(),
		"--dns-server", dns.Addr(), "--mx-port", fmt.Sprint(mx.Port()), "--shutdown-grace", "1s")
	if line, err := sendOne(p.addr, "alice@example.com", "slow"); err != nil || !queuedID.MatchString(line) {
		t.Fatalf("submit: %q %v", line, err)
	}
	// The MX has the whole message and holds its reply.
	testenv.Eventually(t, func() string {
		for _, c := range mx.Conns() {
			for _, l := range c.Transcript {
				if strings.HasPrefix(l, "C: <") {
					return ""
				}
			}
		}
		return "the MX has not received the message yet"
	})
	p.terminate(t)
	if strings.Contains(p.logs(), "level=ERROR") {
		t.Errorf("a designed shutdown logged at ERROR:\n%s", p.logs())
	}
}
