package e2e

import (
	"bytes"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/postgate/postgate/internal/relay"
	"github.com/postgate/postgate/internal/relay/delivery"
)

// relayFlags parses the relay container's arguments of a rendered
// StatefulSet with the relay's own flag set, as the binary would.
func relayFlags(t *testing.T, sts map[string]any) relay.Config {
	t.Helper()
	args := expandEnv(containerArgs(t, sts), map[string]string{"POD_NAMESPACE": namespace, "POD_NAME": "postgate-relay-0"})
	var rc relay.Config
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	rc.BindFlags(fs)
	if err := fs.Parse(args[1:]); err != nil {
		t.Fatalf("postgate relay refuses the chart's arguments %q: %v", args, err)
	}
	return rc
}

// relayOf renders the chart with args and returns the relay StatefulSet
// and all objects.
func relayOf(t *testing.T, args ...string) (map[string]any, map[string]map[string]any) {
	t.Helper()
	objs := parse(t, helmTemplate(t, args...))
	sts, ok := objs["StatefulSet "+namespace+"/postgate-relay"]
	if !ok {
		t.Fatal("no relay StatefulSet rendered")
	}
	return sts, objs
}

// relay.dnssecResolver runs unbound as a native sidecar of the relay: an
// init container with restartPolicy Always whose startup probe (a query
// with drill) gates the relay's start, restricted like the relay, with
// its configuration in a ConfigMap: loopback only, validating against the
// root trust anchors, recursing itself, no remote control. The relay is
// pointed at it with --dns-dnssec, which it accepts since the server is
// on loopback, and the API server admits the pod.
func TestChartDNSSECResolverSidecar(t *testing.T) {
	run(t, nil, "helm", "lint", "--strict", "charts/postgate", "--set", "relay.dnssecResolver.enabled=true")

	// Off by default: no sidecar, no resolver flags, no ConfigMap.
	sts, objs := relayOf(t)
	if ic := field(sts, "spec", "template", "spec", "initContainers"); ic != nil {
		t.Errorf("defaults: initContainers rendered: %v", ic)
	}
	if rc := relayFlags(t, sts); rc.DNSServer != "" || rc.Outbound.DNSSEC {
		t.Errorf("defaults: --dns-server %q, --dns-dnssec %v; want neither", rc.DNSServer, rc.Outbound.DNSSEC)
	}
	if _, ok := objs["ConfigMap "+namespace+"/postgate-relay-dnssec-resolver"]; ok {
		t.Error("defaults: the resolver's ConfigMap is rendered")
	}

	rendered := helmTemplate(t, "--set", "relay.dnssecResolver.enabled=true")
	objs = parse(t, rendered)
	sts = objs["StatefulSet "+namespace+"/postgate-relay"]
	pod := field(sts, "spec", "template", "spec")
	initContainers, _ := field(pod, "initContainers").([]any)
	sidecar := field(pod, "initContainers", 0)
	check := `{exec: {command: [/usr/bin/drill, -Q, -p, "5353", "@127.0.0.1", ., SOA]}}`
	for _, tc := range []struct {
		what string
		got  any
		want string
	}{
		{"one init container", float64(len(initContainers)), "1"},
		{"name", field(sidecar, "name"), "dnssec-resolver"},
		{"image (pinned)", field(sidecar, "image"), "ghcr.io/klutchell/unbound:v1.26.1"},
		{"a native sidecar", field(sidecar, "restartPolicy"), "Always"},
		{"command", field(sidecar, "command"), "[/usr/sbin/unbound, -d, -c, /etc/postgate/unbound/unbound.conf]"},
		{"startupProbe", field(sidecar, "startupProbe"), strings.TrimSuffix(check, "}") + ", periodSeconds: 2, timeoutSeconds: 10, failureThreshold: 30}"},
		{"livenessProbe", field(sidecar, "livenessProbe"), strings.TrimSuffix(check, "}") + ", periodSeconds: 30, timeoutSeconds: 10}"},
		{"no readinessProbe", field(sidecar, "readinessProbe"), "null"},
		{"securityContext", field(sidecar, "securityContext"), "{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, runAsNonRoot: true, capabilities: {drop: [ALL]}}"},
		{"no ports (loopback only)", field(sidecar, "ports"), "null"},
		{"volumeMounts", field(sidecar, "volumeMounts"), "[{name: dnssec-resolver, mountPath: /etc/postgate/unbound, readOnly: true}]"},
		{"volume", field(pod, "volumes"), "[{name: dnssec-resolver, configMap: {name: postgate-relay-dnssec-resolver}}]"},
	} {
		if want := fromYAML(t, tc.want); !reflect.DeepEqual(tc.got, want) {
			got, _ := yaml.Marshal(tc.got)
			w, _ := yaml.Marshal(want)
			t.Errorf("relay.dnssecResolver.enabled: the sidecar's %s: rendered\n%s\nwant\n%s", tc.what, got, w)
		}
	}
	if field(sts, "spec", "template", "metadata", "annotations", "checksum/dnssec-resolver") == nil {
		t.Error("no checksum/dnssec-resolver annotation: a changed unbound.conf would not restart the pods")
	}

	rc := relayFlags(t, sts)
	if rc.DNSServer != "127.0.0.1:5353" || !rc.Outbound.DNSSEC || !rc.Outbound.DANE {
		t.Errorf("the relay's --dns-server %q, --dns-dnssec %v, --dane %v; want 127.0.0.1:5353, true, true", rc.DNSServer, rc.Outbound.DNSSEC, rc.Outbound.DANE)
	}
	if _, err := delivery.NewResolver(delivery.ResolverOptions{Server: rc.DNSServer, TrustAD: rc.Outbound.DNSSEC}); err != nil {
		t.Errorf("the relay refuses the chart's resolver: %v", err)
	}

	conf, _ := field(objs["ConfigMap "+namespace+"/postgate-relay-dnssec-resolver"], "data", "unbound.conf").(string)
	lines := map[string]bool{}
	for l := range strings.Lines(conf) {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			lines[l] = true
		}
	}
	for _, want := range []string{
		"interface: 127.0.0.1@5353",
		"access-control: 127.0.0.0/8 allow",
		`module-config: "validator iterator"`,
		`trust-anchor: ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D"`,
		`trust-anchor: ". IN DS 38696 8 2 683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16"`,
		"harden-dnssec-stripped: yes",
		"qname-minimisation: yes",
		"remote-control:",
		"control-enable: no",
		`pidfile: ""`,
		"use-syslog: no",
	} {
		if !lines[want] {
			t.Errorf("unbound.conf lacks %q:\n%s", want, conf)
		}
	}
	for l := range lines {
		// Only loopback is listened on, and nothing is forwarded: a
		// forwarder between the root and the validation is not needed,
		// and an interface off loopback would let others use it.
		if (strings.HasPrefix(l, "interface:") && !strings.HasPrefix(l, "interface: 127.0.0.1@")) || strings.HasPrefix(l, "forward-") {
			t.Errorf("unbound.conf: %q", l)
		}
	}

	// Another port reaches both the sidecar and the relay.
	sts, _ = relayOf(t, "--set", "relay.dnssecResolver.enabled=true", "--set", "relay.dnssecResolver.port=8053")
	if rc := relayFlags(t, sts); rc.DNSServer != "127.0.0.1:8053" {
		t.Errorf("relay.dnssecResolver.port=8053: --dns-server %q", rc.DNSServer)
	}
	if cmd := field(sts, "spec", "template", "spec", "initContainers", 0, "startupProbe", "exec", "command", 3); cmd != "8053" {
		t.Errorf("relay.dnssecResolver.port=8053: the probe asks port %v", cmd)
	}

	// --dns-server in extraArgs would point the relay, which trusts the
	// AD bit, elsewhere: refused, naming both.
	for _, arg := range []string{"--dns-server=10.96.0.10:53", "--dns-server", "-dns-server=10.96.0.10:53"} {
		_, stderr, err := tryRun(nil, "helm", "template", "postgate", "charts/postgate", "--set", "relay.dnssecResolver.enabled=true", "--set", "relay.extraArgs[0]="+arg)
		if err == nil || !bytes.Contains(stderr, []byte("relay.extraArgs: --dns-server")) || !bytes.Contains(stderr, []byte("relay.dnssecResolver.enabled")) {
			t.Errorf("extraArgs %s with the sidecar: want a refusal, got %v:\n%s", arg, err, stderr)
		}
	}
	// Without the sidecar --dns-server stays the operator's to set.
	run(t, nil, "helm", "template", "postgate", "charts/postgate", "--set", "relay.extraArgs[0]=--dns-server=10.96.0.10:53")

	// unbound recurses from the root servers: the relay's NetworkPolicy
	// must leave egress (UDP and TCP port 53 anywhere) open.
	_, objs = relayOf(t, "--set", "relay.dnssecResolver.enabled=true", "--set", "networkPolicy.enabled=true")
	if got := field(objs["NetworkPolicy "+namespace+"/postgate-relay"], "spec", "policyTypes"); !reflect.DeepEqual(got, fromYAML(t, "[Ingress]")) {
		t.Errorf("with the resolver sidecar the relay's NetworkPolicy has policyTypes %v: egress to port 53 must stay open", got)
	}

	createNamespace(t)
	dryRun(t, rendered)
}

// relay.outboundTLS reaches the relay's flags only where it differs from
// the relay's defaults, and caBundle mounts one file for --tls-ca-file from
// a Secret, a ConfigMap or inline PEM (a ConfigMap of the chart's).
func TestChartOutboundTLSValues(t *testing.T) {
	sts, _ := relayOf(t)
	for _, a := range containerArgs(t, sts) {
		for _, f := range []string{"--dane", "--mta-sts", "--tls-rpt", "--tls-ca-file", "--dns-"} {
			if strings.HasPrefix(a, f) {
				t.Errorf("defaults: the relay gets %s, which is its own default", a)
			}
		}
	}
	def := relayFlags(t, sts).Outbound
	if !def.DANE || !def.MTASTS || !def.TLSRPT || def.DNSSEC || def.CAFile != "" {
		t.Errorf("defaults: the relay runs with %+v", def)
	}

	for _, tc := range []struct {
		set  []string
		want func(relay.OutboundTLS) bool
	}{
		{[]string{"relay.outboundTLS.dane=false"}, func(o relay.OutboundTLS) bool { return !o.DANE && o.MTASTS && o.TLSRPT }},
		{[]string{"relay.outboundTLS.mtaSts=false"}, func(o relay.OutboundTLS) bool { return o.DANE && !o.MTASTS && o.TLSRPT }},
		{[]string{"relay.outboundTLS.tlsRpt.enabled=false"}, func(o relay.OutboundTLS) bool { return o.DANE && o.MTASTS && !o.TLSRPT }},
		{
			[]string{"relay.outboundTLS.tlsRpt.organization=Example Mail: Outbound", "relay.outboundTLS.tlsRpt.contact=mailto:tlsrpt@example.com",
				"relay.outboundTLS.tlsRpt.submitter=smtp.example.com", "relay.outboundTLS.tlsRpt.from=reports@example.com"},
			func(o relay.OutboundTLS) bool {
				return o.TLSRPT && o.TLSRPTOrg == "Example Mail: Outbound" && o.TLSRPTContact == "mailto:tlsrpt@example.com" &&
					o.TLSRPTSubmitter == "smtp.example.com" && o.TLSRPTFrom == "reports@example.com"
			},
		},
	} {
		var args []string
		for _, s := range tc.set {
			args = append(args, "--set", s)
		}
		sts, _ := relayOf(t, args...)
		if o := relayFlags(t, sts).Outbound; !tc.want(o) {
			t.Errorf("%v: the relay runs with %+v", tc.set, o)
		}
	}

	// caBundle: each source becomes the one file --tls-ca-file reads.
	pem := "-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n"
	values := filepath.Join(t.TempDir(), "ca.yaml")
	b, err := yaml.Marshal(map[string]any{"relay": map[string]any{"outboundTLS": map[string]any{"caBundle": map[string]any{"pem": pem}}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(values, b, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args   []string
		volume string
	}{
		{[]string{"-f", values}, "{name: ca-bundle, configMap: {name: postgate-relay-ca-bundle, items: [{key: ca.crt, path: ca.crt}]}}"},
		{[]string{"--set", "relay.outboundTLS.caBundle.secretName=private-ca"}, "{name: ca-bundle, secret: {secretName: private-ca, items: [{key: ca.crt, path: ca.crt}]}}"},
		{
			[]string{"--set", "relay.outboundTLS.caBundle.configMapName=private-ca", "--set", "relay.outboundTLS.caBundle.key=roots.pem"},
			"{name: ca-bundle, configMap: {name: private-ca, items: [{key: roots.pem, path: ca.crt}]}}",
		},
	} {
		sts, objs := relayOf(t, tc.args...)
		pod := field(sts, "spec", "template", "spec")
		if got, want := field(pod, "volumes", 0), fromYAML(t, tc.volume); !reflect.DeepEqual(got, want) {
			t.Errorf("%v: volume %v, want %v", tc.args, got, want)
		}
		if got := field(pod, "containers", 0, "volumeMounts", 1); !reflect.DeepEqual(got, fromYAML(t, "{name: ca-bundle, mountPath: /etc/postgate/ca-bundle, readOnly: true}")) {
			t.Errorf("%v: mount %v", tc.args, got)
		}
		if o := relayFlags(t, sts).Outbound; o.CAFile != "/etc/postgate/ca-bundle/ca.crt" {
			t.Errorf("%v: --tls-ca-file %q", tc.args, o.CAFile)
		}
		cm, inline := objs["ConfigMap "+namespace+"/postgate-relay-ca-bundle"]
		if inline != (tc.args[0] == "-f") {
			t.Errorf("%v: ConfigMap postgate-relay-ca-bundle rendered: %v", tc.args, inline)
		}
		if inline {
			if got := field(cm, "data", "ca.crt"); got != pem {
				t.Errorf("inline caBundle: ca.crt is %q, want %q", got, pem)
			}
			if field(sts, "spec", "template", "metadata", "annotations", "checksum/ca-bundle") == nil {
				t.Error("inline caBundle: no checksum/ca-bundle annotation")
			}
			createNamespace(t)
			dryRun(t, helmTemplate(t, tc.args...))
		}
	}
	for _, tc := range []struct {
		set  []string
		want string
	}{
		{[]string{"relay.outboundTLS.caBundle.secretName=a", "relay.outboundTLS.caBundle.configMapName=b"}, "set one of pem, secretName and configMapName, not secretName and configMapName"},
		{[]string{"relay.outboundTLS.caBundle.key=ca.pem"}, "relay.outboundTLS.caBundle.key"},
	} {
		args := []string{"template", "postgate", "charts/postgate"}
		for _, s := range tc.set {
			args = append(args, "--set", s)
		}
		_, stderr, err := tryRun(nil, "helm", args...)
		if err == nil || !bytes.Contains(stderr, []byte(tc.want)) {
			t.Errorf("%v: want a refusal with %q, got %v:\n%s", tc.set, tc.want, err, stderr)
		}
	}
}
