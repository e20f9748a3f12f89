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
	"github.com/postgate/postgate/relay/testenv"
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

func senderDomain(spec string) func(ns, name string) *unstructured.Unstructured {
	return object("SenderDomain", spec)
}

func relayRoute(spec string) func(ns, name string) *unstructured.Unstructured {
	return object("RelayRoute", spec)
}

func trustedNetwork(spec string) func(ns, name string) *unstructured.Unstructured {
	return object("TrustedNetwork", spec)
}

const routeTarget = "senderDomainRef: {name: sd}\n"

// TestSchemaValidation creates each object against the real API server. A
// case with wantError must be rejected with a message containing every
// fragment of it (the field path first); a case without must be accepted.
func TestSchemaValidation(t *testing.T) {
	longLabel := strings.Repeat("a", 64)
	maxDomain := "a" + strings.Repeat("abcdefghi.", 24) + "example.test"
	longDomain := "a" + maxDomain
	if len(maxDomain) != 253 {
		t.Fatalf("fixture: maxDomain has %d characters, want 253", len(maxDomain))
	}
	var elevenAddresses, sixtyFiveCIDRs, seventeenRefs strings.Builder
	for i := range 11 {
		fmt.Fprintf(&elevenAddresses, "- user%d@example.com\n", i)
	}
	for i := range 65 {
		fmt.Fprintf(&sixtyFiveCIDRs, "- 10.%d.0.0/16\n", i)
	}
	for i := range 17 {
		fmt.Fprintf(&seventeenRefs, "  - name: user%d\n", i)
	}

	tests := []struct {
		desc      string
		object    func(ns, name string) *unstructured.Unstructured
		wantError []string
	}{
		// SenderDomain: domain.
		{"minimal sender domain", senderDomain("domain: example.com"), nil},
		{"IDNA domain", senderDomain("domain: xn--bcher-kva.example"), nil},
		{"domain of 253 characters", senderDomain("domain: " + maxDomain), nil},
		{"missing domain", senderDomain("sourceIP: 192.0.2.1"), []string{"spec.domain", "Required value"}},
		{"uppercase domain", senderDomain("domain: Example.com"), []string{"spec.domain", "lowercase fully-qualified domain name"}},
		{"underscore label", senderDomain("domain: my_app.example.com"), []string{"spec.domain", "lowercase fully-qualified domain name"}},
		{"single-label domain", senderDomain("domain: localhost"), []string{"spec.domain", "at least two labels"}},
		{"IPv4 literal as domain", senderDomain("domain: 192.0.2.1"), []string{"spec.domain", "no IP address"}},
		{"bracketed address literal", senderDomain("domain: '[192.0.2.1]'"), []string{"spec.domain", "no IP address"}},
		{"trailing dot", senderDomain("domain: example.com."), []string{"spec.domain", "no trailing dot"}},
		{"label starting with hyphen", senderDomain("domain: -mail.example.com"), []string{"spec.domain", "RFC 1123 labels"}},
		{"label of 64 characters", senderDomain("domain: " + longLabel + ".example.com"), []string{"spec.domain", "RFC 1123 labels"}},
		{"domain over 253 characters", senderDomain("domain: " + longDomain), []string{"spec.domain", "253"}},

		// SenderDomain: signing.
		{"generated Ed25519 key", senderDomain("domain: example.com\nsigning: {selector: s1, algorithm: Ed25519, generate: {}}"), nil},
		{"key from a Secret", senderDomain("domain: example.com\nsigning: {selector: s1, keySecretRef: {name: dkim, key: private.key}}"), nil},
		{"selector with uppercase and underscore", senderDomain("domain: example.com\nsigning: {selector: Sel_1, generate: {}}"), []string{"spec.signing.selector", "must be a DNS label"}},
		{"selector of two labels", senderDomain("domain: example.com\nsigning: {selector: a.b, generate: {}}"), []string{"spec.signing.selector", "must be a DNS label"}},
		{"empty selector", senderDomain("domain: example.com\nsigning: {selector: '', generate: {}}"), []string{"spec.signing.selector"}},
		{"both key reference and generate", senderDomain("domain: example.com\nsigning: {selector: s1, keySecretRef: {name: dkim}, generate: {}}"), []string{"spec.signing", "exactly one of keySecretRef and generate"}},
		{"neither key reference nor generate", senderDomain("domain: example.com\nsigning: {selector: s1}"), []string{"spec.signing", "exactly one of keySecretRef and generate"}},
		{"RSA-1024 key", senderDomain("domain: example.com\nsigning: {selector: s1, algorithm: RSA1024, generate: {}}"), []string{"spec.signing.algorithm", `supported values: "RSA2048", "Ed25519"`}},
		{"Secret key with a slash", senderDomain("domain: example.com\nsigning: {selector: s1, keySecretRef: {name: dkim, key: a/b}}"), []string{"spec.signing.keySecretRef.key", "must be a Secret data key"}},
		{"generated Secret name with underscore", senderDomain("domain: example.com\nsigning: {selector: s1, generate: {secretName: dkim_key}}"), []string{"spec.signing.generate.secretName", "must be a valid Secret name"}},

		// SenderDomain: sourceIP.
		{"IPv6 source address", senderDomain("domain: example.com\nsourceIP: 2001:db8::10"), nil},
		{"IPv6 source address with a prefix length", senderDomain("domain: example.com\nsourceIP: 2001:db8::10/64"), []string{"spec.sourceIP", "without a prefix length"}},
		{"IPv4 source address with a prefix length", senderDomain("domain: example.com\nsourceIP: 192.0.2.10/32"), []string{"spec.sourceIP", "without a prefix length"}},
		{"source address out of range", senderDomain("domain: example.com\nsourceIP: 192.0.2.300"), []string{"spec.sourceIP", "single IPv4 or IPv6 address"}},
		{"host name as source address", senderDomain("domain: example.com\nsourceIP: relay.example.com"), []string{"spec.sourceIP", "single IPv4 or IPv6 address"}},

		// SenderDomain: delivery.
		{"lifetime 120h", senderDomain("domain: example.com\ndelivery: {maxQueueLifetime: 120h}"), nil},
		{"lifetime 1m", senderDomain("domain: example.com\ndelivery: {maxQueueLifetime: 1m}"), nil},
		{"lifetime 200h", senderDomain("domain: example.com\ndelivery: {maxQueueLifetime: 200h}"), []string{"spec.delivery.maxQueueLifetime", "from 1m to 120h"}},
		{"lifetime 30s", senderDomain("domain: example.com\ndelivery: {maxQueueLifetime: 30s}"), []string{"spec.delivery.maxQueueLifetime", "from 1m to 120h"}},
		{"lifetime in days", senderDomain("domain: example.com\ndelivery: {maxQueueLifetime: 2d}"), []string{"spec.delivery.maxQueueLifetime"}},
		{"unknown MX TLS policy", senderDomain("domain: example.com\ndelivery: {tlsPolicy: Strict}"), []string{"spec.delivery.tlsPolicy", "Unsupported value"}},
		{"https webhook", senderDomain("domain: example.com\ndelivery: {webhook: {url: 'https://hooks.example.com/postgate', hmacSecretRef: {name: hook}}}"), nil},
		{"http webhook on loopback", senderDomain("domain: example.com\ndelivery: {webhook: {url: 'http://127.0.0.1:8080/hook', hmacSecretRef: {name: hook}}}"), nil},
		{"http webhook on IPv6 loopback", senderDomain("domain: example.com\ndelivery: {webhook: {url: 'http://[::1]:8080/hook', hmacSecretRef: {name: hook}}}"), nil},
		{"http webhook elsewhere", senderDomain("domain: example.com\ndelivery: {webhook: {url: 'http://hooks.example.com/postgate', hmacSecretRef: {name: hook}}}"), []string{"spec.delivery.webhook.url", "must use https"}},
		{"relative webhook URL", senderDomain("domain: example.com\ndelivery: {webhook: {url: '/postgate/hook', hmacSecretRef: {name: hook}}}"), []string{"spec.delivery.webhook.url", "absolute URL"}},
		{"webhook without HMAC Secret", senderDomain("domain: example.com\ndelivery: {webhook: {url: 'https://hooks.example.com/'}}"), []string{"spec.delivery.webhook.hmacSecretRef", "Required value"}},

		// RelayRoute.
		{"minimal route", relayRoute(routeTarget + "target: {host: smarthost.relay.test}"), nil},
		{"implicit TLS on 465", relayRoute(routeTarget + "target: {host: smarthost.relay.test, port: 465, tlsMode: Implicit, tlsPolicy: Verify, caBundleSecretRef: {name: ca}, credentialsSecretRef: {name: creds}}"), nil},
		{"missing sender domain reference", relayRoute("target: {host: smarthost.relay.test}"), []string{"spec.senderDomainRef", "Required value"}},
		{"missing target", relayRoute(routeTarget), []string{"spec.target", "Required value"}},
		{"IPv4 address as target", relayRoute(routeTarget + "target: {host: 192.0.2.25}"), []string{"spec.target.host", "no IP address"}},
		{"IPv6 address as target", relayRoute(routeTarget + "target: {host: '2001:db8::25'}"), []string{"spec.target.host", "no IP address"}},
		{"single-label target", relayRoute(routeTarget + "target: {host: smarthost}"), []string{"spec.target.host", "at least two labels"}},
		{"port 0", relayRoute(routeTarget + "target: {host: smarthost.relay.test, port: 0}"), []string{"spec.target.port", "should be greater than or equal to 1"}},
		{"port 65536", relayRoute(routeTarget + "target: {host: smarthost.relay.test, port: 65536}"), []string{"spec.target.port", "should be less than or equal to 65535"}},
		{"unknown TLS policy", relayRoute(routeTarget + "target: {host: smarthost.relay.test, tlsPolicy: Strict}"), []string{"spec.target.tlsPolicy", `supported values: "None", "Opportunistic", "Required", "Verify"`}},
		{"unknown TLS mode", relayRoute(routeTarget + "target: {host: smarthost.relay.test, tlsMode: SSL}"), []string{"spec.target.tlsMode", `supported values: "STARTTLS", "Implicit"`}},
		{"credentials without required TLS", relayRoute(routeTarget + "target: {host: smarthost.relay.test, credentialsSecretRef: {name: creds}}"), []string{"spec.target", "credentials are never sent without TLS"}},
		{"CA bundle without Verify", relayRoute(routeTarget + "target: {host: smarthost.relay.test, tlsPolicy: Required, caBundleSecretRef: {name: ca}}"), []string{"spec.target", "caBundleSecretRef is used only with tlsPolicy Verify"}},
		{"implicit TLS without TLS", relayRoute(routeTarget + "target: {host: smarthost.relay.test, tlsMode: Implicit, tlsPolicy: None}"), []string{"spec.target", "tlsMode Implicit cannot be combined with tlsPolicy None"}},
		{"ten sender addresses", relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses:\n" + strings.Join(strings.Split(elevenAddresses.String(), "\n")[:10], "\n")), nil},
		{"eleven sender addresses", relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses:\n" + elevenAddresses.String()), []string{"spec.senderAddresses", "must have at most 10 items"}},
		{"duplicate sender address", relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: [a@example.com, a@example.com]"), []string{"spec.senderAddresses[1]", "Duplicate value"}},
		{"sender address without @", relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: [billing.example.com]"), []string{"spec.senderAddresses[0]", "must be an email address"}},
		{"sender address with two @", relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: ['a@b@example.com']"), []string{"spec.senderAddresses[0]", "must be an email address"}},
		{"sender address with a space", relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: ['john doe@example.com']"), []string{"spec.senderAddresses[0]", "must be an email address"}},
		{"sender address with a double dot", relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: ['john..doe@example.com']"), []string{"spec.senderAddresses[0]", "must be an email address"}},
		{"sender address with an IP literal", relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: ['john@[192.0.2.1]']"), []string{"spec.senderAddresses[0]", "must be an email address"}},
		{"local part of 65 characters", relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: ['" + strings.Repeat("a", 65) + "@example.com']"), []string{"spec.senderAddresses[0]", "at most 64 characters"}},

		// TrustedNetwork.
		{"IPv4 and IPv6 networks", trustedNetwork("cidrs: [10.0.0.0/8, '2001:db8::/32', 192.0.2.7/32]"), nil},
		{"network with AUTH", trustedNetwork("cidrs: [10.0.0.0/8]\nauthentication: {secretRefs: [{name: app}]}"), nil},
		{"no networks", trustedNetwork("cidrs: []"), []string{"spec.cidrs", "should have at least 1 items"}},
		{"missing networks", trustedNetwork("authentication: {secretRefs: [{name: app}]}"), []string{"spec.cidrs", "Required value"}},
		{"prefix length 33", trustedNetwork("cidrs: [10.0.0.0/33]"), []string{"spec.cidrs[0]", "must be a network in CIDR notation"}},
		{"address without prefix length", trustedNetwork("cidrs: [10.0.0.1]"), []string{"spec.cidrs[0]", "must be a network in CIDR notation"}},
		{"host bits set", trustedNetwork("cidrs: [10.1.2.3/8]"), []string{"spec.cidrs[0]", "must be written as its network address"}},
		{"IPv6 host bits set", trustedNetwork("cidrs: ['2001:db8::1/32']"), []string{"spec.cidrs[0]", "must be written as its network address"}},
		{"duplicate network", trustedNetwork("cidrs: [10.0.0.0/8, 10.0.0.0/8]"), []string{"spec.cidrs[1]", "Duplicate value"}},
		{"65 networks", trustedNetwork("cidrs:\n" + sixtyFiveCIDRs.String()), []string{"spec.cidrs", "must have at most 64 items"}},
		{"AUTH without Secrets", trustedNetwork("cidrs: [10.0.0.0/8]\nauthentication: {secretRefs: []}"), []string{"spec.authentication.secretRefs", "should have at least 1 items"}},
		{"17 credential Secrets", trustedNetwork("cidrs: [10.0.0.0/8]\nauthentication:\n secretRefs:\n" + seventeenRefs.String()), []string{"spec.authentication.secretRefs", "must have at most 16 items"}},
		{"unknown AUTH mode", trustedNetwork("cidrs: [10.0.0.0/8]\nauthentication: {mode: Sometimes, secretRefs: [{name: app}]}"), []string{"spec.authentication.mode", `supported values: "Required", "Optional"`}},
	}

	c := newClient(t)
	ns := newNamespace(t, c, "validation")
	for i, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			obj := tt.object(ns, fmt.Sprintf("case-%d", i))
			err := c.Create(context.Background(), obj)
			if len(tt.wantError) == 0 {
				if err != nil {
					t.Fatalf("want accepted, got %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want rejected with %q, got accepted", tt.wantError)
			}
			for _, want := range tt.wantError {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not contain %q:\n%v", want, err)
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
