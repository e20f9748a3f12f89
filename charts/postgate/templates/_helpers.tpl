{{/*
Object names are fixed (postgate-operator, postgate-relay, ...), not derived
from the release name: the RBAC bindings, the relay Leases
(postgate-relay-<pod>) and the published table (postgate-table) are named by
the code, and the CRDs make postgate one install per cluster.
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
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The Secret holding the relay's key pair, or "" when TLS is off. */}}
{{- define "postgate.tlsSecret" -}}
{{- if .Values.relay.tls.secretName -}}
{{ .Values.relay.tls.secretName }}
{{- else if .Values.certificate.enabled -}}
postgate-relay-tls
{{- end -}}
{{- end }}

{{- define "postgate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "postgate.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
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
