// Package e2e is the end-to-end suite (docs/design.md contract 8): postgate
// installed as users install it, checked by a real kube-apiserver and etcd.
// It needs bin/kubectl, bin/kube-apiserver, bin/etcd (`make envtest`),
// bin/helm (`make helm`) and bin/promtool (`make promtool`); `make test`
// builds them first. A missing binary fails the suite: a test that
// silently does not run proves nothing.
package e2e

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/postgate/postgate/internal/testenv"
)

// namespace is where the install goes, as in config/default.
const namespace = "postgate-system"

var api *testenv.APIServer

func TestMain(m *testing.M) {
	s, stop, err := testenv.NewAPIServer()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	api = s
	code := m.Run()
	stop()
	os.Exit(code)
}

// run runs a binary from bin/ with stdin and returns its stdout; it fails
// the test with stderr when the command fails.
func run(t *testing.T, stdin []byte, name string, args ...string) []byte {
	t.Helper()
	out, stderr, err := tryRun(stdin, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr)
	}
	return out
}

func tryRun(stdin []byte, name string, args ...string) (stdout, stderr []byte, err error) {
	return tryRunOn(api, stdin, name, args...)
}

// runOn is run against the API server s rather than the suite's.
func runOn(t *testing.T, s *testenv.APIServer, stdin []byte, name string, args ...string) []byte {
	t.Helper()
	out, stderr, err := tryRunOn(s, stdin, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr)
	}
	return out
}

// tryRunOn runs a binary from bin/ with kubectl and helm pointed at the
// API server s.
func tryRunOn(s *testenv.APIServer, stdin []byte, name string, args ...string) (stdout, stderr []byte, err error) {
	path := filepath.Join(s.BinDir, name)
	if _, err := os.Stat(path); err != nil {
		return nil, nil, fmt.Errorf("%s is missing from bin/: run `make envtest helm`: %w", name, err)
	}
	if name == "kubectl" {
		args = append([]string{"--kubeconfig", s.Kubeconfig}, args...)
	}
	cmd := exec.Command(path, args...) //nolint:gosec // a binary from bin/ with the test's arguments
	cmd.Dir = s.Root
	helmHome := filepath.Join(os.TempDir(), "postgate-e2e-helm")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+s.Kubeconfig, "HELM_CACHE_HOME="+helmHome+"/cache",
		"HELM_CONFIG_HOME="+helmHome+"/config", "HELM_DATA_HOME="+helmHome+"/data")
	var out, errOut bytes.Buffer
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.Bytes(), errOut.Bytes(), err
}

// createNamespace makes the install namespace exist: a server-side dry run
// of namespaced objects needs it.
func createNamespace(t *testing.T) {
	t.Helper()
	run(t, []byte("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: "+namespace+"\n"), "kubectl", "apply", "--server-side", "-f", "-")
}

// dryRun has the API server validate and admit every object, without
// storing them.
func dryRun(t *testing.T, manifests []byte) {
	t.Helper()
	out := run(t, manifests, "kubectl", "apply", "--server-side", "--force-conflicts", "--field-manager=postgate-e2e", "--dry-run=server", "-f", "-")
	t.Logf("server-side dry run:\n%s", out)
}

// objects lists "Kind namespace/name" of each object in a YAML stream.
func objects(t *testing.T, manifests []byte) []string {
	t.Helper()
	return slices.Sorted(maps.Keys(parse(t, manifests)))
}

// parse maps "Kind namespace/name" to each object of a YAML stream.
func parse(t *testing.T, manifests []byte) map[string]map[string]any {
	t.Helper()
	objs := map[string]map[string]any{}
	for doc := range strings.SplitSeq(string(manifests), "\n---") {
		var o map[string]any
		// The split took the newline that ends the last line.
		if err := yaml.Unmarshal([]byte(doc+"\n"), &o); err != nil {
			t.Fatalf("parsing a rendered object: %v\n%s", err, doc)
		}
		if o == nil {
			continue
		}
		meta, _ := o["metadata"].(map[string]any)
		ns, _ := meta["namespace"].(string)
		name, _ := meta["name"].(string)
		objs[fmt.Sprintf("%v %s/%s", o["kind"], ns, name)] = o
	}
	return objs
}

// withoutLabels drops the labels and annotations of every metadata in an
// object: the chart adds Helm's, and a checksum of the policy.
func withoutLabels(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, e := range v {
			if m, ok := e.(map[string]any); ok && k == "metadata" {
				m = maps.Clone(m)
				delete(m, "labels")
				delete(m, "annotations")
				e = m
			}
			out[k] = withoutLabels(e)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = withoutLabels(e)
		}
		return out
	}
	return v
}

func helmTemplate(t *testing.T, args ...string) []byte {
	t.Helper()
	return run(t, nil, "helm", append([]string{"template", "postgate", "charts/postgate", "--namespace", namespace, "--include-crds"}, args...)...)
}

func kustomize(t *testing.T) []byte {
	t.Helper()
	return run(t, nil, "kubectl", "kustomize", "config/default")
}

func TestKustomizeInstallPassesTheAPIServer(t *testing.T) {
	createNamespace(t)
	dryRun(t, kustomize(t))
}

func TestChartDefaultsPassTheAPIServer(t *testing.T) {
	run(t, nil, "helm", "lint", "--strict", "charts/postgate")
	createNamespace(t)
	dryRun(t, helmTemplate(t))

}

// The chart with its defaults and `kubectl apply -k config/default` install
// the same objects, with the same specs: only labels and annotations differ.
func TestChartDefaultsMatchKustomize(t *testing.T) {
	// helm test's pod is not installed.
	chart := parse(t, helmTemplate(t, "--skip-tests"))
	kust := parse(t, kustomize(t))
	delete(kust, "Namespace /"+namespace) // helm install --create-namespace makes it
	if c, k := slices.Sorted(maps.Keys(chart)), slices.Sorted(maps.Keys(kust)); !slices.Equal(c, k) {
		t.Fatalf("the chart and config/default differ:\nchart:\n  %s\nkustomize:\n  %s",
			strings.Join(c, "\n  "), strings.Join(k, "\n  "))
	}
	for id, c := range chart {
		cy, err := yaml.Marshal(withoutLabels(c))
		if err != nil {
			t.Fatal(err)
		}
		ky, err := yaml.Marshal(withoutLabels(kust[id]))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(cy, ky) {
			t.Errorf("%s: the chart renders\n%s\nconfig/default has\n%s", id, cy, ky)
		}
	}
}

// The RBAC rules the chart renders are the generated ones, unchanged.
func TestChartRBACIsTheGeneratedRBAC(t *testing.T) {
	type role struct {
		Kind     string `json:"kind"`
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Rules []map[string]any `json:"rules"`
	}
	rules := func(manifests []byte) map[string]string {
		m := map[string]string{}
		for doc := range strings.SplitSeq(string(manifests), "\n---") {
			var r role
			if err := yaml.Unmarshal([]byte(doc), &r); err != nil {
				t.Fatal(err)
			}
			if r.Kind == "Role" || r.Kind == "ClusterRole" {
				b, err := yaml.Marshal(r.Rules)
				if err != nil {
					t.Fatal(err)
				}
				m[r.Kind+"/"+r.Metadata.Name] = string(b)
			}
		}
		return m
	}
	chart := rules(helmTemplate(t))
	var generated []byte
	for _, c := range []string{"operator", "relay"} {
		b, err := os.ReadFile(filepath.Join(api.Root, "config", "rbac", c, "role.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		generated = append(append(generated, b...), '\n')
	}
	want := rules(generated)
	if len(want) != 4 {
		t.Fatalf("want a Role and a ClusterRole for each of operator and relay in config/rbac, got %d", len(want))
	}
	for name, w := range want {
		if chart[name] != w {
			t.Errorf("%s: the chart's rules differ from config/rbac:\nchart:\n%s\ngenerated:\n%s", name, chart[name], w)
		}
	}
}

// optionalValues turns on every optional object and most values.
const optionalValues = `
networkPolicy:
  enabled: true
  smtpFrom:
    - ipBlock: {cidr: 10.0.0.0/8}
serviceMonitor:
  enabled: true
  labels: {release: prometheus}
prometheusRule:
  enabled: true
grafanaDashboard:
  enabled: true
certificate:
  enabled: true
  dnsNames: [smtp.example.com]
  issuerRef: {name: letsencrypt, kind: ClusterIssuer}
policy:
  domainClaims:
    - namespaces: ["team-*"]
      suffixes: [example.com]
  networks:
    minPrefixIPv4WithoutAuth: 16
    namespacePrefixIPv4WithoutAuth: 12
operator:
  resources:
    requests: {cpu: 0.1, memory: 64Mi}
    limits: {cpu: 1, memory: 256Mi, ephemeral-storage: 1e9}
  tolerations:
    - {key: dedicated, operator: Equal, value: mail, effect: NoSchedule}
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
          - matchExpressions: [{key: kubernetes.io/os, operator: In, values: [linux]}]
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector: {matchLabels: {app.kubernetes.io/name: postgate}}
relay:
  replicas: 3
  persistence: {enabled: false}
  smtps: {enabled: true}
  proxyProtocolCIDRs: [10.0.0.0/8, "fd00::/8"]
  maxRecipients: 50
  hostNetwork: true
  service:
    type: LoadBalancer
    externalTrafficPolicy: Local
    loadBalancerSourceRanges: [192.0.2.0/24]
`

// Minimal CRDs for the optional objects' kinds, so that the API server can
// admit them: the real ones belong to prometheus-operator and cert-manager.
const optionalCRDs = `
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  names: {kind: ServiceMonitor, plural: servicemonitors, singular: servicemonitor, listKind: ServiceMonitorList}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: prometheusrules.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  names: {kind: PrometheusRule, plural: prometheusrules, singular: prometheusrule, listKind: PrometheusRuleList}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      # The fields of prometheus-operator's v1 API that a rule group and a
      # rule have, so that a misspelled or mistyped field is refused (strict
      # field validation) rather than dropped.
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [groups]
              properties:
                groups:
                  type: array
                  items:
                    type: object
                    required: [name, rules]
                    properties:
                      name: {type: string, minLength: 1}
                      interval: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                      limit: {type: integer}
                      partial_response_strategy: {type: string}
                      rules:
                        type: array
                        items:
                          type: object
                          required: [expr]
                          properties:
                            alert: {type: string}
                            record: {type: string}
                            expr: {x-kubernetes-int-or-string: true}
                            for: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                            keep_firing_for: {type: string, minLength: 1}
                            labels: {type: object, additionalProperties: {type: string}}
                            annotations: {type: object, additionalProperties: {type: string}}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: certificates.cert-manager.io
spec:
  group: cert-manager.io
  names: {kind: Certificate, plural: certificates, singular: certificate, listKind: CertificateList}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
`

func TestChartOptionalObjectsPassTheAPIServer(t *testing.T) {
	values := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(values, []byte(optionalValues), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, nil, "helm", "lint", "--strict", "charts/postgate", "-f", values)
	rendered := helmTemplate(t, "-f", values)
	ids := objects(t, rendered)
	for _, want := range []string{
		"NetworkPolicy " + namespace + "/postgate-relay",
		"NetworkPolicy " + namespace + "/postgate-operator",
		"ServiceMonitor " + namespace + "/postgate-relay",
		"ServiceMonitor " + namespace + "/postgate-operator",
		"Certificate " + namespace + "/postgate-relay",
		"PrometheusRule " + namespace + "/postgate",
		"ConfigMap " + namespace + "/postgate-dashboard",
	} {
		if !slices.Contains(ids, want) {
			t.Errorf("rendered with the optional values, no %s in:\n  %s", want, strings.Join(ids, "\n  "))
		}
	}
	for _, want := range []string{
		"--proxy-protocol-cidrs=10.0.0.0/8,fd00::/8",
		"--tls-cert-file=/etc/postgate/tls/tls.crt",
		"--smtps-bind-address=:4465",
		"--max-recipients=50",
		"secretName: postgate-relay-tls",
		"externalTrafficPolicy: Local",
		"emptyDir: {}",
		"minPrefixIPv4WithoutAuth: 16",
		"hostNetwork: true",
		"dnsPolicy: ClusterFirstWithHostNet",
		"topologyKey: kubernetes.io/hostname",
	} {
		if !bytes.Contains(rendered, []byte(want)) {
			t.Errorf("rendered with the optional values, no %q", want)
		}
	}
	if bytes.Contains(rendered, []byte("volumeClaimTemplates")) {
		t.Error("relay.persistence.enabled=false still renders volumeClaimTemplates")
	}
	run(t, []byte(optionalCRDs), "kubectl", "apply", "--server-side", "-f", "-")
	run(t, nil, "kubectl", "wait", "--for=condition=Established", "--timeout=60s",
		"crd/servicemonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com", "crd/certificates.cert-manager.io")
	createNamespace(t)
	dryRun(t, rendered)
}

// values.schema.json makes a wrong value fail at `helm template` (and so at
// `helm install`), naming the value.
func TestChartSchemaRejectsWrongValues(t *testing.T) {
	for _, tc := range []struct {
		set, want string
	}{
		{"operator.replicas=two", "replicas"},
		{"relay.replicas=0", "replicas"},
		{"relay.service.type=Ingress", "type"},
		{"relay.service.externalTrafficPolicy=Remote", "externalTrafficPolicy"},
		{"relay.persistence.size=lots", "size"},
		{"relay.proxyProtocolCIDRs[0]=anywhere", "proxyProtocolCIDRs"},
		// What passed the schema before and then crash-looped the relay or
		// failed at the API server.
		{"relay.proxyProtocolCIDRs[0]=10.0.0.0/40", "proxyProtocolCIDRs"},
		{"relay.proxyProtocolCIDRs[0]=300.1.1.1/8", "proxyProtocolCIDRs"},
		{"relay.webhookAllowCIDRs[0]=2001:db8::/129", "webhookAllowCIDRs"},
		{"relay.resources.requests.cpu=lots", "cpu"},
		{"operator.resources.limits.memory=1GB", "memory"},
		{"operator.affinity.podAntiAffinity=yes", "podAntiAffinity"},
		{"relay.affinity.nodeAfinity.x=y", "nodeAfinity"},
		{"relay.tolerations[0].operator=Maybe", "operator"},
		{"networkPolicy.smtpFrom[0].ipBlock.cidr=10.0.0.0/33", "cidr"},
		{"policy.domainClaim[0].suffixes[0]=example.com", "domainClaim"},
		{"relay.replica=3", "replica"},
		// Object names are fixed (values.yaml, README: Install).
		{"nameOverride=mail", "nameOverride"},
		{"fullnameOverride=mail", "fullnameOverride"},
		{"image.digest=latest", "digest"},
		{"relay.updateStrategy.type=Recreate", "updateStrategy"},
		{"operator.updateStrategy.type=OnDelete", "updateStrategy"},
		{"relay.service.nodePorts.smtp=70000", "nodePorts"},
		{"relay.service.nodePorts.submission=30587", "submission"},
		{"operator.extraEnv[0].value=x", "extraEnv"},
		{"relay.extraVolumeMounts[0].name=x", "mountPath"},
		{"relay.topologySpreadConstraints[0].maxSkew=1", "topologyKey"},
		{"relay.livenessProbe.httpGet.path=/x", "httpGet"},
		{"operator.podDisruptionBudget.maxUnavailable=half", "maxUnavailable"},
		{"relay.revisionHistoryLimit=-1", "revisionHistoryLimit"},
		{"relay.serviceAccount.name=mail", "serviceAccount"},
		{"relay.podSecurityContext.runAsUser=-1", "runAsUser"},
		{"relay.securityContext.capabilities.drop=ALL", "drop"},
		{"operator.podSecurityContext.runAsUsr=1000", "runAsUsr"},
		// relay.outboundTLS and relay.dnssecResolver: unknown keys and
		// values the relay or the pod would refuse later.
		{"relay.outboundTLS.dnae=false", "dnae"},
		{"relay.outboundTLS.dane=maybe", "dane"},
		{"relay.outboundTLS.tlsRpt.from=nobody", "from"},
		{"relay.outboundTLS.tlsRpt.submitter=not a domain", "submitter"},
		{"relay.outboundTLS.caBundle.pemFile=/ca.crt", "pemFile"},
		{"relay.outboundTLS.caBundle.secretName=Private_CA", "secretName"},
		{"relay.dnssecResolver.enable=true", "enable"},
		{"relay.dnssecResolver.port=70000", "port"},
		{"relay.dnssecResolver.image.digest=latest", "digest"},
		{"relay.dnssecResolver.image.tag=", "tag"},
		{"relay.dnssecResolver.trustAnchors[0]=example.com", "trustAnchors"},
		{"relay.dnssecResolver.readinessProbe.periodSeconds=5", "readinessProbe"},
		{"relay.dnssecResolver.securityContext.capabilities.drop=ALL", "drop"},
	} {
		t.Run(tc.set, func(t *testing.T) {
			_, stderr, err := tryRun(nil, "helm", "template", "postgate", "charts/postgate", "--namespace", namespace, "--set", tc.set)
			if err == nil {
				t.Fatalf("helm template --set %s succeeded; want a schema error", tc.set)
			}
			if !bytes.Contains(stderr, []byte("schema")) || !bytes.Contains(stderr, []byte(tc.want)) {
				t.Errorf("helm template --set %s: want a schema error naming %q, got:\n%s", tc.set, tc.want, stderr)
			}
		})
	}
	t.Run("implicit TLS without a key pair", func(t *testing.T) {
		_, stderr, err := tryRun(nil, "helm", "template", "postgate", "charts/postgate", "--set", "relay.smtps.enabled=true")
		if err == nil || !bytes.Contains(stderr, []byte("relay.tls.secretName")) {
			t.Errorf("want relay.smtps.enabled refused without a key pair, got %v:\n%s", err, stderr)
		}
	})
	t.Run("podLabels over the chart's own", func(t *testing.T) {
		_, stderr, err := tryRun(nil, "helm", "template", "postgate", "charts/postgate", "--set", `relay.podLabels.app\.kubernetes\.io/component=mail`)
		if err == nil || !bytes.Contains(stderr, []byte("relay.podLabels: app.kubernetes.io/component is a label of the chart's own")) {
			t.Errorf("want the selector label refused in podLabels, got %v:\n%s", err, stderr)
		}
	})
	t.Run("certificate without issuer", func(t *testing.T) {
		_, stderr, err := tryRun(nil, "helm", "template", "postgate", "charts/postgate", "--set", "certificate.enabled=true", "--set", "certificate.dnsNames[0]=smtp.example.com")
		if err == nil || !bytes.Contains(stderr, []byte("certificate.issuerRef.name")) {
			t.Errorf("want certificate.issuerRef.name required, got %v:\n%s", err, stderr)
		}
	})
}

// relay.persistence.storageClass "-" asks for storageClassName "" (no
// StorageClass: a pre-provisioned volume), as in most charts; a name is
// written as a string, and empty leaves the cluster's default.
func TestChartStorageClass(t *testing.T) {
	for _, tc := range []struct {
		set, want string
	}{
		{"relay.persistence.storageClass=-", `storageClassName: ""`},
		{"relay.persistence.storageClass=fast-ssd", `storageClassName: "fast-ssd"`},
		{"relay.persistence.storageClass=", ""},
	} {
		t.Run(tc.set, func(t *testing.T) {
			// A namespace of its own: another test may have created the
			// StatefulSet, whose volume claim templates are immutable.
			const ns = "postgate-storage"
			rendered := run(t, nil, "helm", "template", "postgate", "charts/postgate", "--namespace", ns, "--set", tc.set)
			got := regexp.MustCompile(`(?m)^\s*storageClassName:.*$`).FindAllString(string(rendered), -1)
			switch {
			case tc.want == "" && len(got) > 0:
				t.Errorf("want no storageClassName, got %q", got)
			case tc.want != "" && (len(got) != 1 || strings.TrimSpace(got[0]) != tc.want):
				t.Errorf("want %q, got %q", tc.want, got)
			}
			if tc.want == `storageClassName: ""` {
				run(t, []byte("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: "+ns+"\n"), "kubectl", "apply", "--server-side", "-f", "-")
				dryRun(t, rendered)
			}
		})
	}
}
