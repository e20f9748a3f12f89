package e2e

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/postgate/postgate/internal/operator"
	"github.com/postgate/postgate/internal/relay"
	"github.com/postgate/postgate/internal/relay/delivery"
)

// allValues sets every value of the chart (charts/postgate/ci, which
// chart-testing lints too).
const allValues = "charts/postgate/ci/all-values.yaml"

// allValuesNamespace is the install namespace of the tests with
// allValues: a StatefulSet that another test created elsewhere would refuse
// these volume claim templates (they are immutable).
const allValuesNamespace = "postgate-all"

// field walks an object along keys (string) and list indexes (int) and
// returns the value there, or nil.
func field(obj any, path ...any) any {
	for _, p := range path {
		switch p := p.(type) {
		case string:
			m, _ := obj.(map[string]any)
			obj = m[p]
		case int:
			l, _ := obj.([]any)
			if p >= len(l) {
				return nil
			}
			obj = l[p]
		}
	}
	return obj
}

// fromYAML parses a YAML literal the way parse reads rendered objects, so
// that the two compare with reflect.DeepEqual.
func fromYAML(t *testing.T, s string) any {
	t.Helper()
	var v any
	if err := yaml.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("%v\n%s", err, s)
	}
	return v
}

// expandEnv replaces the $(VAR) references of container arguments, as the
// kubelet does.
func expandEnv(args []string, env map[string]string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		for k, v := range env {
			a = strings.ReplaceAll(a, "$("+k+")", v)
		}
		out[i] = a
	}
	return out
}

// Every value set: helm lint --strict passes, each value reaches the
// object it is for, the API server admits every object, and the
// components' own flag parsers take the arguments (extraArgs included).
func TestChartAllValuesPassTheAPIServer(t *testing.T) {
	run(t, nil, "helm", "lint", "--strict", "charts/postgate", "-f", allValues)
	rendered := run(t, nil, "helm", "template", "postgate", "charts/postgate", "--namespace", allValuesNamespace, "--include-crds", "-f", allValues)
	objs := parse(t, rendered)
	get := func(id string) map[string]any {
		t.Helper()
		o, ok := objs[strings.Replace(id, " ", " "+allValuesNamespace+"/", 1)]
		if !ok {
			t.Fatalf("no %s rendered", id)
		}
		return o
	}
	op, rl := get("Deployment postgate-operator"), get("StatefulSet postgate-relay")
	opPod, rlPod := field(op, "spec", "template", "spec"), field(rl, "spec", "template", "spec")
	svc := get("Service postgate-relay")
	for _, tc := range []struct {
		what string
		got  any
		want string
	}{
		{"image.digest (operator)", field(opPod, "containers", 0, "image"), "registry.example.com/postgate/postgate@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
		{"image.digest (relay)", field(rlPod, "containers", 0, "image"), "registry.example.com/postgate/postgate@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
		{"operator.extraEnv", field(opPod, "containers", 0, "env", 2), "{name: GOMAXPROCS, valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: '1'}}}"},
		{"operator.envFrom", field(opPod, "containers", 0, "envFrom"), "[{configMapRef: {name: postgate-operator-env, optional: true}}]"},
		{"operator.extraVolumes", field(opPod, "volumes"), "[{name: extra, configMap: {name: postgate-operator-extra, optional: true}}]"},
		{"operator.extraVolumeMounts", field(opPod, "containers", 0, "volumeMounts"), "[{name: extra, mountPath: /etc/postgate/extra, readOnly: true}]"},
		{"operator.livenessProbe", field(opPod, "containers", 0, "livenessProbe"), "{httpGet: {path: /healthz, port: probes}, initialDelaySeconds: 20, periodSeconds: 30, timeoutSeconds: 3, failureThreshold: 5}"},
		{"operator.readinessProbe", field(opPod, "containers", 0, "readinessProbe"), "{httpGet: {path: /readyz, port: probes}, initialDelaySeconds: 1, periodSeconds: 5, timeoutSeconds: 2, successThreshold: 1, failureThreshold: 2}"},
		{"operator.updateStrategy", field(op, "spec", "strategy"), "{type: RollingUpdate, rollingUpdate: {maxSurge: 0, maxUnavailable: 1}}"},
		{"operator.revisionHistoryLimit", field(op, "spec", "revisionHistoryLimit"), "3"},
		{"operator.priorityClassName", field(opPod, "priorityClassName"), "mail-critical"},
		{"operator.podLabels", field(op, "spec", "template", "metadata", "labels", "team"), "mail"},
		{"operator.topologySpreadConstraints (the component's pods by default)", field(opPod, "topologySpreadConstraints"), `[{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway,
			labelSelector: {matchLabels: {app.kubernetes.io/name: postgate, app.kubernetes.io/component: operator}}}]`},
		{"operator.podDisruptionBudget.minAvailable", field(get("PodDisruptionBudget postgate-operator"), "spec"), `{minAvailable: 1, selector: {matchLabels: {app.kubernetes.io/name: postgate, app.kubernetes.io/component: operator}}}`},
		{"operator.serviceAccount.annotations", field(get("ServiceAccount postgate-operator"), "metadata", "annotations"), "{iam.gke.io/gcp-service-account: postgate-operator@example.iam.gserviceaccount.com}"},
		{"operator.podSecurityContext", field(opPod, "securityContext"), "{runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001, supplementalGroups: [10002], seccompProfile: {type: RuntimeDefault}}"},
		{"operator.securityContext", field(opPod, "containers", 0, "securityContext"), `{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, runAsNonRoot: true,
			capabilities: {drop: [ALL]}, seccompProfile: {type: RuntimeDefault}}`},
		{"relay.podSecurityContext", field(rlPod, "securityContext"), "{runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001, fsGroup: 10001, fsGroupChangePolicy: OnRootMismatch, seccompProfile: {type: RuntimeDefault}}"},
		{"relay.securityContext", field(rlPod, "containers", 0, "securityContext"), "{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}"},
		{"relay.persistence", field(rl, "spec", "volumeClaimTemplates"), `[{metadata: {name: spool, labels: {app.kubernetes.io/name: postgate, app.kubernetes.io/component: relay},
			annotations: {backup.example.com/exclude: "true"}},
			spec: {accessModes: [ReadWriteOncePod], storageClassName: fast-ssd, resources: {requests: {storage: 5Gi}}}}]`},
		{"relay.persistentVolumeClaimRetentionPolicy", field(rl, "spec", "persistentVolumeClaimRetentionPolicy"), "{whenDeleted: Retain, whenScaled: Delete}"},
		{"relay.extraEnv", field(rlPod, "containers", 0, "env", 3), "{name: GOMEMLIMIT, value: 900MiB}"},
		{"relay.envFrom", field(rlPod, "containers", 0, "envFrom"), "[{prefix: POSTGATE_, secretRef: {name: postgate-relay-env, optional: true}}]"},
		{"relay.extraVolumes", field(rlPod, "volumes", 3), "{name: ca, secret: {secretName: postgate-relay-ca, optional: true}}"},
		{"relay.extraVolumeMounts", field(rlPod, "containers", 0, "volumeMounts", 3), "{name: ca, mountPath: /etc/postgate/ca, readOnly: true}"},
		{"relay.outboundTLS.caBundle", field(rlPod, "volumes", 1), "{name: ca-bundle, secret: {secretName: private-ca, items: [{key: ca.pem, path: ca.crt}]}}"},
		{"relay.outboundTLS.caBundle (mount)", field(rlPod, "containers", 0, "volumeMounts", 2), "{name: ca-bundle, mountPath: /etc/postgate/ca-bundle, readOnly: true}"},
		{"relay.dnssecResolver (the config)", field(rlPod, "volumes", 2), "{name: dnssec-resolver, configMap: {name: postgate-relay-dnssec-resolver}}"},
		{"relay.dnssecResolver.image", field(rlPod, "initContainers", 0, "image"), "registry.example.com/mirror/unbound@sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"},
		{"relay.dnssecResolver.image.pullPolicy", field(rlPod, "initContainers", 0, "imagePullPolicy"), "Always"},
		{"relay.dnssecResolver.resources", field(rlPod, "initContainers", 0, "resources"), "{requests: {cpu: 20m, memory: 64Mi}, limits: {cpu: 500m, memory: 256Mi}}"},
		{"relay.dnssecResolver.securityContext", field(rlPod, "initContainers", 0, "securityContext"), `{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, runAsNonRoot: true,
			capabilities: {drop: [ALL]}, seccompProfile: {type: RuntimeDefault}}`},
		{"relay.dnssecResolver.startupProbe", field(rlPod, "initContainers", 0, "startupProbe"), `{exec: {command: [/usr/bin/drill, -Q, -p, "8053", "@127.0.0.1", ., SOA]},
			periodSeconds: 1, timeoutSeconds: 5, failureThreshold: 60}`},
		{"relay.dnssecResolver.livenessProbe", field(rlPod, "initContainers", 0, "livenessProbe"), `{exec: {command: [/usr/bin/drill, -Q, -p, "8053", "@127.0.0.1", ., SOA]},
			periodSeconds: 10, timeoutSeconds: 5, failureThreshold: 6}`},
		{"relay.livenessProbe", field(rlPod, "containers", 0, "livenessProbe"), "{httpGet: {path: /healthz, port: probes}, initialDelaySeconds: 30, periodSeconds: 10, failureThreshold: 6}"},
		{"relay.readinessProbe", field(rlPod, "containers", 0, "readinessProbe"), "{httpGet: {path: /readyz, port: probes}, initialDelaySeconds: 2, periodSeconds: 2, timeoutSeconds: 1}"},
		{"relay.updateStrategy", field(rl, "spec", "updateStrategy"), "{type: RollingUpdate, rollingUpdate: {partition: 0, maxUnavailable: 1}}"},
		{"relay.revisionHistoryLimit", field(rl, "spec", "revisionHistoryLimit"), "5"},
		{"relay.priorityClassName", field(rlPod, "priorityClassName"), "mail-critical"},
		{"relay.podLabels", field(rl, "spec", "template", "metadata", "labels", "team"), "mail"},
		{"relay.topologySpreadConstraints[1] (its own labelSelector)", field(rlPod, "topologySpreadConstraints", 1, "labelSelector"), "{matchLabels: {app.kubernetes.io/component: relay}}"},
		{"relay.topologySpreadConstraints[0]", field(rlPod, "topologySpreadConstraints", 0), `{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule,
			minDomains: 2, nodeAffinityPolicy: Honor, nodeTaintsPolicy: Honor, matchLabelKeys: [controller-revision-hash],
			labelSelector: {matchLabels: {app.kubernetes.io/name: postgate, app.kubernetes.io/component: relay}}}`},
		{"relay.podDisruptionBudget.maxUnavailable", field(get("PodDisruptionBudget postgate-relay"), "spec", "maxUnavailable"), "34%"},
		{"relay.serviceAccount.annotations", field(get("ServiceAccount postgate-relay"), "metadata", "annotations"), `{eks.amazonaws.com/role-arn: "arn:aws:iam::111122223333:role/postgate-relay"}`},
		{"relay.service.loadBalancerIP", field(svc, "spec", "loadBalancerIP"), "192.0.2.25"},
		{"relay.service.loadBalancerClass", field(svc, "spec", "loadBalancerClass"), "example.com/mail-lb"},
		{"relay.service.nodePorts", field(svc, "spec", "ports"), `[{name: smtp, port: 25, targetPort: smtp, protocol: TCP, nodePort: 30025},
			{name: smtps, port: 465, targetPort: smtps, protocol: TCP, nodePort: 30465}]`},
	} {
		if want := fromYAML(t, tc.want); !reflect.DeepEqual(tc.got, want) {
			got, _ := yaml.Marshal(tc.got)
			w, _ := yaml.Marshal(want)
			t.Errorf("%s: rendered\n%s\nwant\n%s", tc.what, got, w)
		}
	}

	// The arguments, extraArgs last, as the components' own flag sets
	// read them: the last of a repeated flag wins.
	env := map[string]string{"POD_NAMESPACE": allValuesNamespace, "POD_NAME": "postgate-relay-0"}
	relayArgs := expandEnv(containerArgs(t, rl), env)
	var rc relay.Config
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	rc.BindFlags(fs)
	if relayArgs[0] != "relay" {
		t.Fatalf("relay arguments: %q", relayArgs)
	}
	if err := fs.Parse(relayArgs[1:]); err != nil {
		t.Fatalf("postgate relay refuses the chart's arguments %q: %v", relayArgs, err)
	}
	if got := fmt.Sprint(rc.Outbound.MTASTSPort, " ", rc.MinDataRate, " ", rc.Pprof); got != "8443 1024 true" {
		t.Errorf("relay.extraArgs: --mta-sts-port, --min-data-rate, --pprof parsed as %q", got)
	}
	wantOutbound := relay.OutboundTLS{
		DANE: false, DNSSEC: true, MTASTS: false, MTASTSPort: 8443, CAFile: "/etc/postgate/ca-bundle/ca.crt",
		TLSRPT: false, TLSRPTOrg: "Example Mail: Outbound", TLSRPTContact: "mailto:tls-reports@example.com",
		TLSRPTFrom: "tlsrpt@example.com", TLSRPTSubmitter: "smtp.example.com",
	}
	if rc.Outbound != wantOutbound || rc.DNSServer != "127.0.0.1:8053" {
		t.Errorf("relay.outboundTLS, relay.dnssecResolver: parsed as --dns-server %q, %+v; want 127.0.0.1:8053, %+v", rc.DNSServer, rc.Outbound, wantOutbound)
	}
	// The relay starts with these: it trusts the AD bit only from loopback.
	if _, err := delivery.NewResolver(delivery.ResolverOptions{Server: rc.DNSServer, TrustAD: rc.Outbound.DNSSEC}); err != nil {
		t.Errorf("the relay refuses the chart's resolver: %v", err)
	}
	if rc.InFlowDelay != 500*time.Millisecond {
		t.Errorf("relay.inFlowDelay: --in-flow-delay parsed as %s, want 500ms", rc.InFlowDelay)
	}
	opArgs := expandEnv(containerArgs(t, op), env)
	var oo operator.Options
	ofs := flag.NewFlagSet("operator", flag.ContinueOnError)
	ofs.SetOutput(io.Discard)
	oo.BindFlags(ofs)
	if err := ofs.Parse(opArgs[1:]); err != nil {
		t.Fatalf("postgate operator refuses the chart's arguments %q: %v", opArgs, err)
	}
	if oo.Namespace != allValuesNamespace {
		t.Errorf("operator.extraArgs: --operator-namespace parsed as %q", oo.Namespace)
	}

	run(t, []byte(optionalCRDs), "kubectl", "apply", "--server-side", "-f", "-")
	run(t, nil, "kubectl", "wait", "--for=condition=Established", "--timeout=60s",
		"crd/servicemonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com", "crd/certificates.cert-manager.io")
	run(t, []byte("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: "+allValuesNamespace+"\n"), "kubectl", "apply", "--server-side", "-f", "-")
	// grafanaDashboard.namespace: the Grafana sidecar's.
	run(t, []byte("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: monitoring\n"), "kubectl", "apply", "--server-side", "-f", "-")
	dryRun(t, rendered)

	// The NOTES warn that a retention policy of Delete can lose mail. A
	// client dry run changes nothing; --take-ownership, because another test
	// may have installed the cluster-wide objects under its release.
	notes := run(t, nil, "helm", "install", "postgate", "charts/postgate", "--namespace", allValuesNamespace,
		"--dry-run=client", "--take-ownership", "--skip-crds", "-f", allValues)
	if !bytes.Contains(notes, []byte("WARNING: relay.persistentVolumeClaimRetentionPolicy deletes spool claims")) {
		t.Errorf("helm install with whenScaled: Delete: the NOTES do not warn:\n%s", notes)
	}
}

// A PodDisruptionBudget takes minAvailable or maxUnavailable, not both.
func TestChartPodDisruptionBudgetBounds(t *testing.T) {
	for _, tc := range []struct {
		set  []string
		want string
	}{
		{nil, "maxUnavailable: 1"},
		// 0 is a bound (no voluntary eviction), not "unset".
		{[]string{"--set", "relay.podDisruptionBudget.maxUnavailable=0"}, "maxUnavailable: 0"},
		{[]string{"--set-string", "relay.podDisruptionBudget.minAvailable=50%"}, "minAvailable: 50%"},
	} {
		rendered := run(t, nil, "helm", append([]string{"template", "postgate", "charts/postgate", "--namespace", namespace}, tc.set...)...)
		spec, _ := yaml.Marshal(field(parse(t, rendered)["PodDisruptionBudget "+namespace+"/postgate-relay"], "spec"))
		if !bytes.Contains(spec, []byte(tc.want+"\n")) || bytes.Count(spec, []byte("vailable:")) != 1 {
			t.Errorf("%v: want %s in the relay's PodDisruptionBudget, and no other bound; got\n%s", tc.set, tc.want, spec)
		}
	}
	_, stderr, err := tryRun(nil, "helm", "template", "postgate", "charts/postgate",
		"--set", "operator.podDisruptionBudget.minAvailable=1", "--set", "operator.podDisruptionBudget.maxUnavailable=1")
	if err == nil || !bytes.Contains(stderr, []byte("operator.podDisruptionBudget: set minAvailable or maxUnavailable, not both")) {
		t.Errorf("want both bounds refused, got %v:\n%s", err, stderr)
	}
}

// The file's values are a superset of values.yaml's: a value added to the
// chart without being set here fails.
func TestChartAllValuesSetsEveryValue(t *testing.T) {
	read := func(name string) map[string]any {
		b, err := os.ReadFile(filepath.Join(api.Root, name))
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := yaml.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	all := read(allValues)
	var walk func(prefix string, defaults map[string]any)
	walk = func(prefix string, defaults map[string]any) {
		for k, v := range defaults {
			path := strings.TrimPrefix(prefix+"."+k, ".")
			var keys []any
			for k := range strings.SplitSeq(path, ".") {
				keys = append(keys, k)
			}
			got := field(all, keys...)
			if got == nil {
				t.Errorf("%s: %s is not set", allValues, path)
				continue
			}
			if sub, ok := v.(map[string]any); ok && len(sub) > 0 {
				walk(path, sub)
			}
		}
	}
	walk("", read("charts/postgate/values.yaml"))
}
