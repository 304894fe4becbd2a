{{/* Name of the chart, overridable. */}}
{{- define "flowplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the release's objects. */}}
{{- define "flowplane.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "flowplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flowplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "flowplane.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "flowplane.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flowplane
{{- end -}}

{{- define "flowplane.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "flowplane.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator image: repository:tag or repository@digest. */}}
{{- define "flowplane.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The workers' image: the operator's own unless overridden. */}}
{{- define "flowplane.workerImage" -}}
{{- if .Values.worker.image.repository -}}
{{- printf "%s:%s" .Values.worker.image.repository (default (default .Chart.AppVersion .Values.image.tag) .Values.worker.image.tag) -}}
{{- else -}}
{{- include "flowplane.image" . -}}
{{- end -}}
{{- end -}}

{{- define "flowplane.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) -}}true{{- end -}}
{{- end -}}

{{/* The namespaces the operator watches (comma-separated), empty in cluster-wide mode:
the listed ones, else the release namespace alone. */}}
{{- define "flowplane.watchNamespaces" -}}
{{- if .Values.clusterWide -}}
{{- if .Values.watchNamespaces -}}
{{- fail "clusterWide: true watches every namespace; leave watchNamespaces empty" -}}
{{- end -}}
{{- else -}}
{{- join "," (default (list .Release.Namespace) .Values.watchNamespaces) -}}
{{- end -}}
{{- end -}}
