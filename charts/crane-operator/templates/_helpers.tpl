{{/*
Expand the name of the chart.
*/}}
{{- define "crane-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "crane-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "crane-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "crane-operator.labels" -}}
helm.sh/chart: {{ include "crane-operator.chart" . }}
{{ include "crane-operator.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- include "crane-operator.commonLabels" . }}
{{- end }}

{{/*
commonLabels, each on a line of its own (a leading newline each), refused where they would
repeat one of the chart's own labels (a duplicate key, which the API server refuses).
*/}}
{{- define "crane-operator.commonLabels" -}}
{{- range $key, $value := .Values.commonLabels }}
{{- if or (hasPrefix "app.kubernetes.io/" $key) (eq $key "helm.sh/chart") }}
{{- fail (printf "commonLabels.%s: the chart sets the app.kubernetes.io/ labels and helm.sh/chart itself" $key) }}
{{- end }}
{{ $key }}: {{ $value | quote }}
{{- end }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "crane-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "crane-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "crane-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "crane-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image: repository@digest when image.digest is set (the tag is then ignored),
else repository:tag, the tag defaulting to the chart's appVersion.
*/}}
{{- define "crane-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The helm test pod's image: the operator's (digest included), unless test.image names a
repository or a tag.
*/}}
{{- define "crane-operator.testImage" -}}
{{- if or .Values.test.image.repository .Values.test.image.tag }}
{{- $tag := .Values.test.image.tag | default .Values.image.tag | default .Chart.AppVersion }}
{{- printf "%s:%s" (.Values.test.image.repository | default .Values.image.repository) $tag }}
{{- else }}
{{- include "crane-operator.image" . }}
{{- end }}
{{- end }}

{{/*
Name of the metrics Service (also the target of the helm test pod).
*/}}
{{- define "crane-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "crane-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The leader-election Lease: leaderElection.leaseName, else "<fullname>-leader" (one per
release; "crane-operator-leader" for the release "crane-operator").
*/}}
{{- define "crane-operator.leaseName" -}}
{{- .Values.leaderElection.leaseName | default (printf "%s-leader" (include "crane-operator.fullname" .)) }}
{{- end }}

{{/*
crane-operator.monitoring: "true" when the Prometheus Operator object of (dict "root" $
"values" "serviceMonitor" "kind" "ServiceMonitor") is to be rendered, by its enabled and
renderMode; fails the render for failIfMissing where the kind is not served.
*/}}
{{- define "crane-operator.monitoring" -}}
{{- $values := index .root.Values .values }}
{{- if $values.enabled }}
{{- $served := .root.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" .kind) }}
{{- if or $served (eq $values.renderMode "alwaysRender") }}true
{{- else if eq $values.renderMode "failIfMissing" }}
{{- fail (printf "%s.enabled: this cluster does not serve monitoring.coreos.com/v1 %s (install the Prometheus Operator's CRDs first; helm template needs --api-versions monitoring.coreos.com/v1/%s), and %s.renderMode is failIfMissing" .values .kind .kind .values) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The rules the operator needs in every namespace it watches: exactly the verbs it uses.
Shared by the ClusterRole (all namespaces) and the Role (watchNamespace).
*/}}
{{- define "crane-operator.rules" -}}
- apiGroups: ["crane.dev"]
  resources: ["cranereplicasets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["crane.dev"]
  resources: ["cranereplicasets/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "create", "delete", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
