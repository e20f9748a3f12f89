package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/postgate/postgate/internal/testenv"
)

// TestDockerfile checks what can be checked without a Docker engine: the
// build stage copies every directory the binary's packages live in (a
// package added under a new top-level directory would otherwise break the
// image build only), builds ./cmd/postgate statically, and the final image
// is distroless and runs as the nonroot user.
func TestDockerfile(t *testing.T) {
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	var copied []string
	for line := range strings.Lines(df) {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "COPY" && !strings.HasPrefix(f[1], "--from") {
			copied = append(copied, f[1:len(f)-1]...)
		}
	}
	cmd := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "./cmd/postgate")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	const module = "github.com/postgate/postgate/"
	for _, pkg := range strings.Fields(string(out)) {
		rel, ok := strings.CutPrefix(pkg, module)
		if !ok {
			continue
		}
		covered := false
		for _, c := range copied {
			if strings.HasPrefix(rel+"/", strings.TrimSuffix(c, "/")+"/") {
				covered = true
			}
		}
		if !covered {
			t.Errorf("package %s is not copied into the build stage (COPY lines: %v)", rel, copied)
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "go build", "./cmd/postgate", "FROM gcr.io/distroless/static", ":nonroot", "USER 65532:65532", "COPY go.mod go.sum"} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}
