{{/*
Short name of the chart, used in labels.
*/}}
{{- define "tally.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Prefix of every resource name: fullnameOverride, else the release name, with "-<name>" appended
unless the release name already contains it. Kept short enough for the longest suffix we append.
*/}}
{{- define "tally.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "tally.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Labels on every object of the release.
*/}}
{{- define "tally.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "tally.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tally
{{- end -}}

{{/*
Selector labels of the manager pods. Immutable once installed: never add to them.
*/}}
{{- define "tally.managerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "tally.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: manager
{{- end -}}

{{/*
Name of the manager's ServiceAccount.
*/}}
{{- define "tally.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (printf "%s-manager" (include "tally.fullname" .)) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/*
The manager's image reference: repository, then @digest when set, else :tag (default appVersion).
*/}}
{{- define "tally.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/*
Whether the ServiceMonitor is rendered: asked for, metrics on, and the API present in the cluster.
*/}}
{{- define "tally.serviceMonitorEnabled" -}}
{{- if and .Values.metrics.enabled .Values.metrics.serviceMonitor.enabled (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") -}}
true
{{- end -}}
{{- end -}}

{{/*
The Secrets of the release namespace the manager reads (a YAML list): with watchNamespace set it
may read these and no other Secret there. Add a Secret here when the manager gets a flag naming one.
*/}}
{{- define "tally.managerSecretNames" -}}
- {{ required "database.secretName is required" .Values.database.secretName | quote }}
{{- with .Values.nats.credsSecret }}
- {{ . | quote }}
{{- end }}
{{- with .Values.nats.accountSigningKeySecret }}
- {{ . | quote }}
{{- end }}
{{- end -}}
