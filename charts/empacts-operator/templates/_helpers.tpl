{{/* Chart name, truncated to 63 characters (a DNS label). */}}
{{- define "empacts-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name: fullnameOverride, else <release>-<name> (just <release> when it already contains the name).
Truncated to 63 characters; some derived names add a suffix, so those truncate first.
*/}}
{{- define "empacts-operator.fullname" -}}
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

{{/* <chart>-<version> for the helm.sh/chart label. */}}
{{- define "empacts-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator's pods (never change them: a Deployment's selector is immutable). */}}
{{- define "empacts-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "empacts-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels of every object of the chart. */}}
{{- define "empacts-operator.labels" -}}
helm.sh/chart: {{ include "empacts-operator.chart" . }}
{{ include "empacts-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: empacts
{{- end }}

{{/* Name of the operator's ServiceAccount. */}}
{{- define "empacts-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "empacts-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the metrics Service (also the Prometheus `job` label a ServiceMonitor gives the scrape). */}}
{{- define "empacts-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "empacts-operator.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* The namespaces the operator watches, comma-separated ("" = all): watchNamespaces plus the
older single watchNamespace. */}}
{{- define "empacts-operator.watchNamespaces" -}}
{{- $list := concat (.Values.watchNamespaces | default list) (compact (list .Values.watchNamespace)) | uniq }}
{{- join "," $list }}
{{- end }}

{{/* The operator image reference. */}}
{{- define "empacts-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Fail on value combinations the schema cannot express. */}}
{{- define "empacts-operator.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicas > 1 requires leaderElection.enabled=true: without leader election every replica would reconcile" }}
{{- end }}
{{- if ge (add (int .Values.shutdownTimeoutSeconds) 5) (int .Values.terminationGracePeriodSeconds) }}
{{- fail "shutdownTimeoutSeconds plus 5 s for releasing the Lease must stay under terminationGracePeriodSeconds: lower shutdownTimeoutSeconds or raise terminationGracePeriodSeconds" }}
{{- end }}
{{- $le := .Values.leaderElection }}
{{- if and $le.enabled $le.graceSeconds (ge (int $le.graceSeconds) (int $le.leaseDurationSeconds)) }}
{{- fail "leaderElection.graceSeconds must be below leaderElection.leaseDurationSeconds" }}
{{- end }}
{{- end }}
