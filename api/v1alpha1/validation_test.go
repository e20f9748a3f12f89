package v1alpha1_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/api/v1alpha1/schematest"
	"github.com/postgate/postgate/internal/testenv"
)

// The API server is shared by the tests of this package: starting one costs
// seconds, and every test uses its own namespace.
var apiServer *testenv.APIServer

func TestMain(m *testing.M) {
	s, stop, err := testenv.NewAPIServer()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	apiServer = s
	code := m.Run()
	stop()
	os.Exit(code)
}

func newClient(t *testing.T) client.Client {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(apiServer.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newNamespace(t *testing.T, c client.Client, name string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := c.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return name
}

// object builds an unstructured object of kind from a YAML spec, so that
// values the Go types cannot hold (200h as a string, unknown enum values,
// wrong JSON types) reach the API server as a user would send them.
func object(kind, spec string) func(ns, name string) *unstructured.Unstructured {
	return func(ns, name string) *unstructured.Unstructured {
		var s map[string]any
		if err := yaml.Unmarshal([]byte(spec), &s); err != nil {
			panic(fmt.Sprintf("bad test spec %q: %v", spec, err))
		}
		u := &unstructured.Unstructured{Object: map[string]any{"spec": s}}
		u.SetAPIVersion(v1alpha1.GroupVersion.String())
		u.SetKind(kind)
		u.SetNamespace(ns)
		u.SetName(name)
		return u
	}
}

// TestSchemaValidation creates each object of the schematest table against
// the real API server. A case with WantError must be rejected with a message
// containing every fragment of it (the field path first); a case without
// must be accepted.
func TestSchemaValidation(t *testing.T) {
	c := newClient(t)
	ns := newNamespace(t, c, "validation")
	for i, tt := range schematest.Cases() {
		t.Run(tt.Desc, func(t *testing.T) {
			obj := object(tt.Object.Kind, tt.Object.Spec)(ns, fmt.Sprintf("case-%d", i))
			err := c.Create(context.Background(), obj)
			if len(tt.WantError) == 0 {
				if err != nil {
					t.Fatalf("want accepted, got %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want rejected with %q, got accepted", tt.WantError)
			}
			for _, want := range tt.WantError {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not contain %q:\n%v", want, err)
				}
			}
			for _, bad := range tt.ForbidError {
				if strings.Contains(err.Error(), bad) {
					t.Errorf("error contains %q:\n%v", bad, err)
				}
			}
		})
	}
}

// TestDefaults checks the defaults the schema fills in, which the compiler
// and the relay rely on.
func TestDefaults(t *testing.T) {
	c := newClient(t)
	ns := newNamespace(t, c, "defaults")
	ctx := context.Background()

	rr := &v1alpha1.RelayRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "route"},
		Spec: v1alpha1.RelayRouteSpec{
			SenderDomainRef: v1alpha1.LocalObjectReference{Name: "sd"},
			Target:          v1alpha1.RelayTarget{Host: "smarthost.relay.test"},
		},
	}
	if err := c.Create(ctx, rr); err != nil {
		t.Fatal(err)
	}
	if got := rr.Spec.Target; got.Port != 25 || got.TLSPolicy != v1alpha1.TLSPolicyOpportunistic || got.TLSMode != v1alpha1.TLSModeSTARTTLS {
		t.Errorf("route target defaults: got port %d, policy %q, mode %q; want 25, Opportunistic, STARTTLS", got.Port, got.TLSPolicy, got.TLSMode)
	}

	sd := &v1alpha1.SenderDomain{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "sd"},
		Spec: v1alpha1.SenderDomainSpec{
			Domain:   "example.com",
			Signing:  &v1alpha1.DKIMSigning{Selector: "s1", Generate: &v1alpha1.DKIMKeyGeneration{}},
			Delivery: &v1alpha1.DeliveryPolicy{},
		},
	}
	if err := c.Create(ctx, sd); err != nil {
		t.Fatal(err)
	}
	if sd.Spec.Signing.Algorithm != v1alpha1.DKIMAlgorithmRSA2048 {
		t.Errorf("signing algorithm default: got %q, want RSA2048", sd.Spec.Signing.Algorithm)
	}
	if d := sd.Spec.Delivery; d.MaxQueueLifetime == nil || d.MaxQueueLifetime.Duration.String() != "48h0m0s" || d.TLSPolicy != v1alpha1.TLSPolicyOpportunistic {
		t.Errorf("delivery defaults: got %+v, want 48h and Opportunistic", d)
	}

	tn := &v1alpha1.TrustedNetwork{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "tn"},
		Spec: v1alpha1.TrustedNetworkSpec{
			CIDRs:          []v1alpha1.CIDR{"10.0.0.0/8"},
			Authentication: &v1alpha1.SMTPAuthentication{SecretRefs: []v1alpha1.LocalObjectReference{{Name: "app"}}},
		},
	}
	if err := c.Create(ctx, tn); err != nil {
		t.Fatal(err)
	}
	if tn.Spec.Authentication.Mode != v1alpha1.SMTPAuthRequired {
		t.Errorf("auth mode default: got %q, want Required", tn.Spec.Authentication.Mode)
	}
}

// sampleObjects decodes every document of config/samples.
func sampleObjects(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(apiServer.Root, "config", "samples", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no samples in config/samples: %v", err)
	}
	var objs []*unstructured.Unstructured
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(string(b)), 4096)
		for {
			u := &unstructured.Unstructured{}
			if err := dec.Decode(&u.Object); err != nil {
				if err.Error() == "EOF" {
					break
				}
				t.Fatalf("%s: %v", f, err)
			}
			if len(u.Object) > 0 {
				objs = append(objs, u)
			}
		}
	}
	return objs
}

// TestSamplesAccepted creates every sample through the API, and checks that
// each of the three kinds has one.
func TestSamplesAccepted(t *testing.T) {
	c := newClient(t)
	ns := newNamespace(t, c, "samples")
	kinds := map[string]int{}
	for _, obj := range sampleObjects(t) {
		obj.SetNamespace(ns)
		if err := c.Create(context.Background(), obj); err != nil {
			t.Errorf("%s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
		kinds[obj.GetKind()]++
	}
	for _, kind := range []string{"SenderDomain", "RelayRoute", "TrustedNetwork"} {
		if kinds[kind] == 0 {
			t.Errorf("config/samples has no %s", kind)
		}
	}
}

// TestSamplesKubectlApply applies config/samples with the real kubectl, as
// the README tells users to, and reads every object back.
func TestSamplesKubectlApply(t *testing.T) {
	c := newClient(t)
	ns := newNamespace(t, c, "kubectl")
	cmd := exec.Command(filepath.Join(apiServer.BinDir, "kubectl"), "--kubeconfig", apiServer.Kubeconfig,
		"apply", "--namespace", ns, "-f", filepath.Join(apiServer.Root, "config", "samples"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl apply -f config/samples: %v\n%s", err, out)
	}
	for _, obj := range sampleObjects(t) {
		got := &unstructured.Unstructured{}
		got.SetGroupVersionKind(obj.GroupVersionKind())
		if err := c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: obj.GetName()}, got); err != nil {
			t.Errorf("%s %s not found after kubectl apply: %v", obj.GetKind(), obj.GetName(), err)
		}
	}
	// The category and the short names work through discovery.
	out, err = exec.Command(filepath.Join(apiServer.BinDir, "kubectl"), "--kubeconfig", apiServer.Kubeconfig,
		"get", "postgate", "--namespace", ns, "-o", "name").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl get postgate: %v\n%s", err, out)
	}
	for _, want := range []string{"senderdomain.postgate.io/example-com", "relayroute.postgate.io/billing-via-smarthost", "trustednetwork.postgate.io/loopback"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("kubectl get postgate: %q missing from\n%s", want, out)
		}
	}
}
