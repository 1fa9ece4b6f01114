{{/* Chart name, 63 characters at most. */}}
{{- define "cloudkeys.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name of the objects: "<release>-cloudkeys", or just the release name when it already
contains the chart name; 63 characters at most (a DNS label).
*/}}
{{- define "cloudkeys.fullname" -}}
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

{{/* Labels that select the operator Pods; never change them (Deployment selectors are immutable). */}}
{{- define "cloudkeys.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cloudkeys.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on every object of the release. */}}
{{- define "cloudkeys.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "cloudkeys.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: cloudkeys
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "cloudkeys.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cloudkeys.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The container image, tagged with the appVersion unless image.tag says otherwise. */}}
{{- define "cloudkeys.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if hasPrefix "@" $tag -}}
{{- printf "%s%s" .Values.image.repository $tag -}}
{{- else if hasPrefix "sha256:" $tag -}}
{{- printf "%s@%s" .Values.image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Where ClusterKeyIssuers' credentials Secrets are: the value, else the release namespace. */}}
{{- define "cloudkeys.clusterResourceNamespace" -}}
{{- default .Release.Namespace .Values.clusterResourceNamespace -}}
{{- end -}}

{{/* The namespace of the leader-election Lease: the value, else the release namespace. */}}
{{- define "cloudkeys.leaderElectionNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace -}}
{{- end -}}

{{/* The Lease the operator elects its leader with (fixed in the operator). */}}
{{- define "cloudkeys.leaseName" -}}
cloudkeys-leader
{{- end -}}

{{/* Combinations of values the schema cannot rule out. */}}
{{- define "cloudkeys.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) -}}
{{- fail (printf "replicas: %d needs leaderElection.enabled=true: without leader election every replica reconciles the same AccessKeys and issues keys twice. Set leaderElection.enabled=true or replicas=1." (int .Values.replicas)) -}}
{{- end -}}
{{- end -}}

{{/*
Labels of the uninstall hook's objects and Pod: a name of their own, so that neither the operator's
Deployment, its Service nor its NetworkPolicy selects the hook's Pod.
*/}}
{{- define "cloudkeys.uninstallLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ printf "%s-uninstall" (include "cloudkeys.name" . | trunc 53 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: uninstall-hook
app.kubernetes.io/part-of: cloudkeys
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
