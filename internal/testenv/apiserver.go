package testenv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// modulePath identifies the repository root when walking up from a test's
// working directory.
const modulePath = "module github.com/postgate/postgate\n"

// APIServer is a real kube-apiserver backed by a real etcd, both on
// 127.0.0.1, with the postgate CRDs installed.
type APIServer struct {
	// Config is an admin client configuration (system:masters).
	Config *rest.Config
	// Kubeconfig is the path of a kubeconfig file for Config, for bin/kubectl
	// and other processes.
	Kubeconfig string
	// Root is the repository root; BinDir holds kubectl, kube-apiserver and etcd.
	Root, BinDir string
}

// RepoRoot returns the repository root: the nearest parent directory of the
// working directory whose go.mod declares the postgate module.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod")) //nolint:gosec // walks up from the working directory by design
		if err == nil && strings.HasPrefix(string(b), modulePath) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod for github.com/postgate/postgate above the working directory")
		}
		dir = parent
	}
}

// StartAPIServer starts kube-apiserver and etcd from bin/ (built by
// `make envtest`) with the CRDs of config/crd/bases, and stops them when the
// test ends. It fails the test, never skips it, when a binary or the CRDs are
// missing: a test that silently does not run proves nothing.
func StartAPIServer(tb testing.TB) *APIServer {
	tb.Helper()
	s, stop, err := NewAPIServer()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(stop)
	return s
}

// StartAPIServerWithoutCRDs is StartAPIServer without the postgate CRDs,
// for tests of how they are installed and upgraded (hack/e2e, with helm).
func StartAPIServerWithoutCRDs(tb testing.TB) *APIServer {
	tb.Helper()
	s, stop, err := newAPIServer(false)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(stop)
	return s
}

// NewAPIServer is StartAPIServer for TestMain, where no testing.TB exists:
// the caller must call stop.
func NewAPIServer() (s *APIServer, stop func(), err error) {
	return newAPIServer(true)
}

func newAPIServer(withCRDs bool) (s *APIServer, stop func(), err error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, nil, err
	}
	bin := filepath.Join(root, "bin")
	for _, name := range []string{"kube-apiserver", "etcd", "kubectl"} {
		if _, err := os.Stat(filepath.Join(bin, name)); err != nil {
			return nil, nil, fmt.Errorf("%s is missing from %s: run `make envtest` first: %w", name, bin, err)
		}
	}
	env := &envtest.Environment{BinaryAssetsDirectory: bin}
	if withCRDs {
		env.CRDDirectoryPaths = []string{filepath.Join(root, "config", "crd", "bases")}
		env.ErrorIfCRDPathMissing = true
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, nil, fmt.Errorf("starting kube-apiserver and etcd: %w", err)
	}
	stop = func() { _ = env.Stop() }
	admin, err := env.AddUser(envtest.User{Name: "postgate-test-admin", Groups: []string{"system:masters"}}, cfg)
	if err != nil {
		stop()
		return nil, nil, fmt.Errorf("adding the admin user: %w", err)
	}
	kubeconfig, err := admin.KubeConfig()
	if err != nil {
		stop()
		return nil, nil, err
	}
	dir, err := os.MkdirTemp("", "postgate-envtest-")
	if err != nil {
		stop()
		return nil, nil, err
	}
	path := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(path, kubeconfig, 0o600); err != nil {
		stop()
		return nil, nil, err
	}
	prevStop := stop
	stop = func() { prevStop(); _ = os.RemoveAll(dir) }
	return &APIServer{Config: admin.Config(), Kubeconfig: path, Root: root, BinDir: bin}, stop, nil
}

// Samples returns the path of config/samples, the sample manifests, from
// the repository root, so a test finds them wherever its package lives.
func Samples(t testing.TB) string {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, "config", "samples")
}
