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
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
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

{{/* The operator image reference: [registry/]repository, then @digest when set, else :tag (default appVersion). */}}
{{- define "empacts-operator.image" -}}
{{- $repo := .Values.image.repository }}
{{- with .Values.image.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}{{ end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Prometheus `job` label of the operator's scrape: a ServiceMonitor names it after the Service,
a PodMonitor <namespace>/<PodMonitor name>. */}}
{{- define "empacts-operator.job" -}}
{{- if .Values.prometheusRule.job }}
{{- .Values.prometheusRule.job }}
{{- else if .Values.podMonitor.enabled }}
{{- printf "%s/%s" .Release.Namespace (include "empacts-operator.fullname" .) }}
{{- else }}
{{- include "empacts-operator.metricsServiceName" . }}
{{- end }}
{{- end }}

{{/* One scrape endpoint of a ServiceMonitor or PodMonitor; `.` is the serviceMonitor or podMonitor values.
honorLabels: the per-app metrics carry a `namespace` label (the app's), which must not be renamed
exported_namespace by the target's own `namespace` label. */}}
{{- define "empacts-operator.scrapeEndpoint" -}}
port: metrics
path: /metrics
honorLabels: true
interval: {{ .interval }}
{{- with .scrapeTimeout }}
scrapeTimeout: {{ . }}
{{- end }}
{{- with .scheme }}
scheme: {{ . }}
{{- end }}
{{- with .tlsConfig }}
tlsConfig:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .relabelings }}
relabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Fail on value combinations the schema cannot express. */}}
{{/* Operator replicas: one per shard when sharded, else `replicas`. */}}
{{- define "empacts-operator.replicas" -}}
{{- if gt (int .Values.sharding.replicas) 1 }}{{ .Values.sharding.replicas }}{{ else }}{{ .Values.replicas }}{{ end }}
{{- end }}

{{/* The Leases the operator writes: the leader Lease unsharded, else one per shard, named with
the shard count (replicas of another count never write them). */}}
{{- define "empacts-operator.leaseNames" -}}
{{- $n := int .Values.sharding.replicas }}
{{- $names := list }}
{{- if gt $n 1 }}
{{- range $i := until $n }}
{{- $names = append $names (printf "%s-shard-%d-of-%d" $.Values.leaderElection.leaseName $i $n) }}
{{- end }}
{{- else }}
{{- $names = list .Values.leaderElection.leaseName }}
{{- end }}
{{- toJson $names }}
{{- end }}

{{- define "empacts-operator.validate" -}}
{{- if and (gt (int .Values.sharding.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail "sharding.replicas > 1 requires leaderElection.enabled=true: shards are owned through Leases" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled .Values.podMonitor.enabled }}
{{- fail "serviceMonitor.enabled and podMonitor.enabled are alternatives: enable one (both would scrape every replica twice)" }}
{{- end }}
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

{{/* Pod securityContext: Pod Security Standards "restricted", with podSecurityContext merged over it. */}}
{{- define "empacts-operator.podSecurityContext" -}}
{{- $defaults := dict "runAsNonRoot" true "runAsUser" 65532 "runAsGroup" 65532 "fsGroup" 65532 "seccompProfile" (dict "type" "RuntimeDefault") }}
{{- toYaml (mustMergeOverwrite $defaults (deepCopy .Values.podSecurityContext)) }}
{{- end }}

{{/* Container securityContext: "restricted" plus a read-only root filesystem, with securityContext merged over it. */}}
{{- define "empacts-operator.securityContext" -}}
{{- $defaults := dict "runAsNonRoot" true "runAsUser" 65532 "runAsGroup" 65532 "readOnlyRootFilesystem" true "allowPrivilegeEscalation" false "privileged" false "capabilities" (dict "drop" (list "ALL")) "seccompProfile" (dict "type" "RuntimeDefault") }}
{{- toYaml (mustMergeOverwrite $defaults (deepCopy .Values.securityContext)) }}
{{- end }}

{{/* Probes: /healthz and /readyz on the metrics port, with livenessProbe / readinessProbe merged over them. */}}
{{- define "empacts-operator.livenessProbe" -}}
{{- $defaults := dict "httpGet" (dict "path" "/healthz" "port" "metrics") "initialDelaySeconds" 5 "periodSeconds" 10 "timeoutSeconds" 2 "failureThreshold" 3 }}
{{- toYaml (mustMergeOverwrite $defaults (deepCopy .Values.livenessProbe)) }}
{{- end }}
{{- define "empacts-operator.readinessProbe" -}}
{{- $defaults := dict "httpGet" (dict "path" "/readyz" "port" "metrics") "periodSeconds" 5 "timeoutSeconds" 2 "failureThreshold" 3 }}
{{- toYaml (mustMergeOverwrite $defaults (deepCopy .Values.readinessProbe)) }}
{{- end }}
