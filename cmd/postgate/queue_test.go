package main

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postgate/postgate/internal/testenv"
)

// queueCmd runs `postgate queue` against the relay's admin API.
func queueCmd(t *testing.T, p *relayProcess, args ...string) (string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	args = append([]string{"queue", args[0], "--admin-address", p.adminAddr}, args[1:]...)
	code := run(args, &stdout, &stderr)
	if code != 0 {
		t.Logf("postgate %q: exit %d: %s", args, code, stderr.String())
	}
	return stdout.String(), code
}

// TestQueueTools runs `postgate queue` against a running relay whose mail
// stays queued (the recipients' DNS answers SERVFAIL): list, show, hold,
// release, flush and delete.
func TestQueueTools(t *testing.T) {
	p := startRelayInProcess(t, "--manifests", filepath.Join("..", "..", "config", "samples"), "--spool-dir", t.TempDir())
	var ids []string
	for _, subject := range []string{"one", "two"} {
		line, err := sendOne(p.addr, "alice@example.com", subject)
		m := queuedID.FindStringSubmatch(line)
		if err != nil || m == nil {
			t.Fatalf("send: %q %v", line, err)
		}
		ids = append(ids, m[1])
	}

	out, code := queueCmd(t, p, "list")
	if code != 0 || !strings.Contains(out, ids[0]) || !strings.Contains(out, ids[1]) || !strings.Contains(out, "<alice@example.com>") {
		t.Fatalf("list: exit %d:\n%s", code, out)
	}
	if out, _ := queueCmd(t, p, "list", "--domain", "elsewhere.test"); strings.Contains(out, ids[0]) {
		t.Fatalf("list --domain elsewhere.test shows mail to dest.test:\n%s", out)
	}
	if out, _ := queueCmd(t, p, "list", "--sender", "alice", "--domain", "dest.test", "--limit", "1"); !strings.Contains(out, ids[0]) ||
		strings.Contains(out, ids[1]) || !strings.Contains(out, "more: --after "+ids[0]) {
		t.Fatalf("list --limit 1:\n%s", out)
	}
	if out, code := queueCmd(t, p, "show", ids[0]); code != 0 || !strings.Contains(out, "<bob@dest.test>") || !strings.Contains(out, "pending") {
		t.Fatalf("show: exit %d:\n%s", code, out)
	}

	if out, code := queueCmd(t, p, "hold", ids[0]); code != 0 || !strings.Contains(out, "held") {
		t.Fatalf("hold: exit %d: %s", code, out)
	}
	if out, _ := queueCmd(t, p, "show", ids[0]); !strings.Contains(out, "Held:     true") {
		t.Fatalf("show after hold:\n%s", out)
	}
	if out, code := queueCmd(t, p, "flush"); code != 0 || !strings.Contains(out, "flushed") {
		t.Fatalf("flush: exit %d: %s", code, out)
	}
	if out, code := queueCmd(t, p, "release", ids[0]); code != 0 || !strings.Contains(out, "released") {
		t.Fatalf("release: exit %d: %s", code, out)
	}
	if out, code := queueCmd(t, p, "flush", ids[0]); code != 0 || !strings.Contains(out, "flushed") {
		t.Fatalf("flush id: exit %d: %s", code, out)
	}

	if out, code := queueCmd(t, p, "delete", ids[0]); code != 0 || !strings.Contains(out, "deleted") {
		t.Fatalf("delete: exit %d: %s", code, out)
	}
	if _, code := queueCmd(t, p, "delete", ids[0]); code != 1 {
		t.Fatalf("second delete: exit %d, want 1", code)
	}
	if out, _ := queueCmd(t, p, "list"); strings.Contains(out, ids[0]) || !strings.Contains(out, ids[1]) {
		t.Fatalf("list after delete:\n%s", out)
	}
	if out, code := queueCmd(t, p, "delete", "--bounce", ids[1]); code != 0 || !strings.Contains(out, "deleted") {
		t.Fatalf("delete --bounce: exit %d: %s", code, out)
	}
	// The bounce to alice@example.com is queued from <>, and may be tried
	// (and fail: example.com has no MX here) before we look.
	testenv.Eventually(t, func() string {
		out, _ := queueCmd(t, p, "list")
		if strings.Contains(out, ids[1]) {
			t.Fatalf("list after delete --bounce:\n%s", out)
		}
		if strings.Contains(out, "<>") || strings.Contains(p.logs(), "to=alice@example.com") {
			return ""
		}
		return fmt.Sprintf("no bounce to alice@example.com after delete --bounce:\n%s\n%s", out, p.logs())
	})
	if _, code := queueCmd(t, p, "show"); code != 2 {
		t.Fatalf("show without an ID: exit %d, want 2", code)
	}
	// TLS reports: nothing was delivered by MX, so nothing was counted.
	if out, code := queueCmd(t, p, "tls-reports", "--day", "yesterday"); code != 0 || !strings.Contains(out, "no TLS sessions counted") {
		t.Errorf("tls-reports: exit %d:\n%s", code, out)
	}
	if _, code := queueCmd(t, p, "tls-reports", "--send"); code != 2 {
		t.Errorf("tls-reports --send without --day: exit %d, want 2", code)
	}
	if _, code := queueCmd(t, p, "tls-reports", "--send", "--day", "today"); code != 1 {
		t.Errorf("tls-reports --send of a day without sessions: exit %d, want 1", code)
	}
}

// TestRelayDrainCommand runs `postgate relay drain` against a standalone
// relay with mail queued: there is no peer to hand it to, so the command
// reports the message left and why, and exits 1; the relay takes no more
// mail. (The hand-off itself is internal/relay's TestRelayScaleDownHandsOff.)
func TestRelayDrainCommand(t *testing.T) {
	p := startRelayInProcess(t, "--manifests", filepath.Join("..", "..", "config", "samples"), "--spool-dir", t.TempDir(), "--hostname", "relay.test")
	if line, err := sendOne(p.addr, "alice@example.com", "stays"); err != nil || !queuedID.MatchString(line) {
		t.Fatalf("send: %q %v", line, err)
	}
	var stdout, stderr bytes.Buffer
	code := run([]string{"relay", "drain", "--admin-address", p.adminAddr}, &stdout, &stderr)
	if code != 1 || !strings.Contains(stdout.String(), "handed off 0, remaining 1\n") ||
		!strings.Contains(stdout.String(), "error: the hand-off needs cluster mode") {
		t.Fatalf("postgate relay drain: exit %d, want 1:\n%s%s", code, stdout.String(), stderr.String())
	}
	if line, _ := sendOne(p.addr, "alice@example.com", "late"); !strings.HasPrefix(line, "421 4.3.2 relay.test") {
		t.Errorf("a drained relay greeted %q, want 421 4.3.2", line)
	}
}
