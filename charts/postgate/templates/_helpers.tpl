{{/*
Object names are fixed (postgate-operator, postgate-relay, ...), not derived
from the release name, and there is no nameOverride or fullnameOverride: the
code names the published table (postgate-table and its shards
postgate-table-*), the relay Leases (postgate-relay-<pod>), the hand-off key
(postgate-relay-handoff) and the leader election Lease, the relay's RBAC is
narrowed to the name postgate-table, and the CRDs make postgate one install
per cluster. A second, renamed release would share all of those.
*/}}

{{- define "postgate.labels" -}}
app.kubernetes.io/name: postgate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "postgate.selector.operator" -}}
app.kubernetes.io/name: postgate
app.kubernetes.io/component: operator
{{- end }}

{{- define "postgate.selector.relay" -}}
app.kubernetes.io/name: postgate
app.kubernetes.io/component: relay
{{- end }}

{{- define "postgate.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- end }}

{{/*
postgate.podLabels: the chart's labels and the component's podLabels, which
may not set the chart's own keys (two of them select the pods).
Argument: (list $ "operator"|"relay").
*/}}
{{- define "postgate.podLabels" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- $own := fromYaml (include "postgate.labels" $root) -}}
{{- $_ := set $own "app.kubernetes.io/component" $c -}}
{{ include "postgate.labels" $root }}
app.kubernetes.io/component: {{ $c }}
{{- with (index $root.Values $c).podLabels }}
{{- range $k, $v := . }}
{{- if hasKey $own $k }}
{{- fail (printf "%s.podLabels: %s is a label of the chart's own" $c $k) }}
{{- end }}
{{- end }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
postgate.probe: an HTTP probe of path on the port named probes, with the
timings of the component's values. Argument: (list path timings).
*/}}
{{- define "postgate.probe" -}}
httpGet:
  path: {{ index . 0 }}
  port: probes
{{- with index . 1 }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
postgate.podSpecExtras: scheduling fields shared by both components, after
affinity. A topology spread constraint without labelSelector selects the
component's own pods (without one it would count no pods at all).
Argument: (list $ "operator"|"relay").
*/}}
{{- define "postgate.podSpecExtras" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- $v := index $root.Values $c -}}
{{- with $v.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with $v.topologySpreadConstraints }}
{{- $all := list }}
{{- range . }}
{{- $tsc := deepCopy . }}
{{- if not $tsc.labelSelector }}
{{- $_ := set $tsc "labelSelector" (dict "matchLabels" (fromYaml (include (printf "postgate.selector.%s" $c) $root))) }}
{{- end }}
{{- $all = append $all $tsc }}
{{- end }}
topologySpreadConstraints:
  {{- toYaml $all | nindent 2 }}
{{- end }}
{{- end }}

{{/*
postgate.pdb: a PodDisruptionBudget's spec bounds: minAvailable or
maxUnavailable, 1 by default. Argument: (list $ "operator"|"relay").
*/}}
{{- define "postgate.pdb" -}}
{{- $c := index . 1 -}}
{{- $pdb := (index (index . 0).Values $c).podDisruptionBudget -}}
{{- if and (hasKey $pdb "minAvailable") (hasKey $pdb "maxUnavailable") -}}
{{- fail (printf "%s.podDisruptionBudget: set minAvailable or maxUnavailable, not both" $c) -}}
{{- else if hasKey $pdb "minAvailable" -}}
minAvailable: {{ $pdb.minAvailable | toJson }}
{{- else if hasKey $pdb "maxUnavailable" -}}
maxUnavailable: {{ $pdb.maxUnavailable | toJson }}
{{- else -}}
maxUnavailable: 1
{{- end }}
{{- end }}

{{/* The Secret holding the relay's key pair, or "" when TLS is off. */}}
{{- define "postgate.tlsSecret" -}}
{{- if .Values.relay.tls.secretName -}}
{{ .Values.relay.tls.secretName }}
{{- else if .Values.certificate.enabled -}}
postgate-relay-tls
{{- end -}}
{{- end }}

{{/*
postgate.rbac renders the Role and ClusterRole that controller-gen generated
into config/rbac/<component>/role.yaml (copied to files/rbac/ by
`make manifests`), with the rules unchanged: only the labels and the Role's
namespace differ.
*/}}
{{- define "postgate.rbac" -}}
{{- $root := index . 0 -}}
{{- $file := index . 1 -}}
{{- range $doc := splitList "\n---\n" ($root.Files.Get $file) }}
{{- $o := fromYaml $doc }}
{{- if $o.kind }}
---
apiVersion: {{ $o.apiVersion }}
kind: {{ $o.kind }}
metadata:
  name: {{ $o.metadata.name }}
  {{- if eq $o.kind "Role" }}
  namespace: {{ $root.Release.Namespace }}
  {{- end }}
  labels:
    {{- include "postgate.labels" $root | nindent 4 }}
rules:
  {{- toYaml $o.rules | nindent 2 }}
{{- end }}
{{- end }}
{{- end }}

{{/*
postgate.caBundleVolume: the volume source of relay.outboundTLS.caBundle,
with its one key as ca.crt (--tls-ca-file), or "" when none is set.
*/}}
{{- define "postgate.caBundleVolume" -}}
{{- $b := .Values.relay.outboundTLS.caBundle | default dict -}}
{{- $set := list -}}
{{- range list "pem" "secretName" "configMapName" -}}
{{- if index $b . }}{{ $set = append $set . }}{{ end -}}
{{- end -}}
{{- if gt (len $set) 1 -}}
{{- fail (printf "relay.outboundTLS.caBundle: set one of pem, secretName and configMapName, not %s" (join " and " $set)) -}}
{{- end -}}
{{- $key := $b.key | default "ca.crt" -}}
{{- if $b.pem -}}
configMap:
  name: postgate-relay-ca-bundle
  items:
    - {key: ca.crt, path: ca.crt}
{{- else if $b.secretName -}}
secret:
  secretName: {{ $b.secretName }}
  items:
    - {key: {{ $key | quote }}, path: ca.crt}
{{- else if $b.configMapName -}}
configMap:
  name: {{ $b.configMapName }}
  items:
    - {key: {{ $key | quote }}, path: ca.crt}
{{- else if $b.key -}}
{{- fail "relay.outboundTLS.caBundle.key names a key of secretName or configMapName: set one of them" -}}
{{- end -}}
{{- end }}

{{/* The image of the validating resolver sidecar. */}}
{{- define "postgate.resolverImage" -}}
{{- with .Values.relay.dnssecResolver.image -}}
{{- if .digest -}}
{{ .repository }}@{{ .digest }}
{{- else -}}
{{ .repository }}:{{ .tag }}
{{- end }}
{{- end }}
{{- end }}

{{/*
postgate.unboundConf: unbound.conf of the validating resolver beside the
relay (relay.dnssecResolver). The relay trusts the AD bit of its answers
(--dns-dnssec, RFC 4035 section 3.2.3), which holds only because unbound
listens on loopback alone, recurses from the root itself (no forwarder
between the authoritative servers and the validation) and validates against
the root trust anchors.
*/}}
{{- define "postgate.unboundConf" -}}
{{- $r := .Values.relay.dnssecResolver -}}
server:
  # Loopback only: the relay pod's (or, with hostNetwork, the node's).
  interface: 127.0.0.1@{{ $r.port }}
  access-control: 127.0.0.0/8 allow
  do-daemonize: no
  # The pod's user already; no chroot, no pidfile, logs on stderr: the
  # root filesystem is read-only and nothing is written.
  username: ""
  chroot: ""
  directory: "/etc/postgate/unbound"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 1
  # Validation failures in the log, with the reason: a DANE deferral for
  # a bogus TLSA record is explained there.
  val-log-level: 2
  module-config: "validator iterator"
  {{- range $r.trustAnchors }}
  trust-anchor: {{ . | quote }}
  {{- end }}
  # Bogus or stripped signatures fail (SERVFAIL) rather than pass as
  # insecure; names are revealed to each server only as far as it needs
  # (RFC 9156).
  harden-dnssec-stripped: yes
  harden-glue: yes
  harden-below-nxdomain: yes
  qname-minimisation: yes
  hide-identity: yes
  hide-version: yes
# No remote control: nothing else in the pod may change the resolver.
remote-control:
  control-enable: no
{{- with $r.extraConfig }}
{{ . }}
{{- end }}
{{- end }}
