{{/* Names and labels shared by every template. */}}

{{- define "metatide.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name, or release-chart when they differ. */}}
{{- define "metatide.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "metatide.selectorLabels" -}}
app.kubernetes.io/name: {{ include "metatide.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "metatide.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "metatide.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: metatide
{{- end }}

{{- define "metatide.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "metatide.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "metatide.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Namespaces that get a Job ServiceAccount: the release's and every watched one. */}}
{{- define "metatide.jobNamespaces" -}}
{{- $namespaces := list .Release.Namespace }}
{{- range .Values.watchNamespaces }}
{{- $namespaces = append $namespaces . }}
{{- end }}
{{- $namespaces | uniq | toJson }}
{{- end }}

{{/*
What the operator needs in a namespace it watches, and nothing more:
- incrementalextractions: list and watch them (its cache), get one after a write conflict,
  patch (kopf removes the finalizer an older operator added);
- their status subresource: the operator's status patch;
- events: post its events on resources; list a stuck Job's Warning events (FailedCreate);
- jobs: the plan, column-batch (Indexed) and finalize Jobs it creates, watches (label
  selected), reads and deletes;
- configmaps: the spec each run's Jobs read (created per run, read back on a resumed step;
  deleted with the resource by the garbage collector);
- pods: list a Job's pods for its termination message, or why it cannot run.
*/}}
{{- define "metatide.namespacedRules" -}}
- apiGroups: [metatide.dev]
  resources: [incrementalextractions]
  verbs: [get, list, watch, patch]
- apiGroups: [metatide.dev]
  resources: [incrementalextractions/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, get, list, watch, delete]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, get]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
{{- end }}

{{/*
Cluster-scoped reads kopf itself makes: it lists and watches CRDs to notice the resource it
serves appearing or changing. No peering (kopf.dev) rules: the operator runs standalone (one
replica, Recreate strategy).
*/}}
{{- define "metatide.crdRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- end }}
