package standalone

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/shaping"
	"github.com/postgate/postgate/internal/testenv"
)

// appliedShaper records the policies applied to it.
type appliedShaper chan *shaping.Policy

func (a appliedShaper) SetPolicy(p *shaping.Policy) { a <- p }

func shapingFile(maxConnections string) string {
	return "default: {maxConnections: " + maxConnections + ", suspension: {initial: 1m, max: 1h, resetAfter: 1h}}\n"
}

// TestShapingPolicyReload: the policy file is applied at start, a change is
// applied without a restart, a change that does not parse is logged and
// the last good policy stays, and a start on a bad file fails.
func TestShapingPolicyReload(t *testing.T) {
	dir := t.TempDir()
	manifests := filepath.Join(dir, "relay.yaml")
	policy := filepath.Join(dir, "shaping.yaml")
	for file, data := range map[string]string{manifests: domainA, policy: shapingFile("3")} {
		if err := os.WriteFile(file, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	applied := make(appliedShaper, 4)
	logs := &testenv.LogBuffer{}
	src, err := New([]string{manifests}, Options{KeysDir: t.TempDir(), Interval: 20 * time.Millisecond,
		ShapingPolicy: policy, Shaper: applied, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	wantApplied := func(maxConnections int) {
		t.Helper()
		select {
		case p := <-applied:
			if got := *p.Default.MaxConnections; got != maxConnections {
				t.Fatalf("applied maxConnections %d, want %d", got, maxConnections)
			}
		case <-time.After(testenv.WaitTimeout):
			t.Fatalf("no policy with maxConnections %d applied", maxConnections)
		}
	}
	wantApplied(3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = src.Run(ctx) }()

	writeAtomic(t, policy, shapingFile("5"))
	wantApplied(5)
	writeAtomic(t, policy, shapingFile("0"))
	logs.WaitFor(t, "Shaping policy not reloaded; the policy in force stays", 1)
	logs.WaitFor(t, "default.maxConnections: 0 is not in 1..1000000", 1)
	if got := *src.ShapingPolicy().Default.MaxConnections; got != 5 {
		t.Errorf("after a bad change: maxConnections %d in force, want 5", got)
	}
	writeAtomic(t, policy, shapingFile("7"))
	wantApplied(7)
	if len(applied) != 0 {
		t.Errorf("%d more policies applied", len(applied))
	}

	writeAtomic(t, policy, shapingFile("0"))
	if _, err := New([]string{manifests}, Options{KeysDir: t.TempDir(), ShapingPolicy: policy}); err == nil {
		t.Error("started on an invalid shaping policy")
	}
}
