{{/*
The chart name, or nameOverride.
*/}}
{{- define "quiver.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: fullnameOverride, or <release>-<chart name> (just the
release name when it already contains the chart name). Kept to 40 characters so that
"<prefix>-searcher-headless" and the pod names derived from it stay valid DNS labels.
*/}}
{{- define "quiver.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "quiver.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every resource. Call with (dict "context" $ "component" "searcher"); an empty
component (resources all components share) leaves the component label out.
*/}}
{{- define "quiver.labels" -}}
helm.sh/chart: {{ include "quiver.chart" .context }}
{{ include "quiver.selectorLabels" . }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
app.kubernetes.io/part-of: quiver
{{- with .context.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels of one component. Call with (dict "context" $ "component" "searcher").
*/}}
{{- define "quiver.selectorLabels" -}}
app.kubernetes.io/name: {{ include "quiver.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/*
Resource names.
*/}}
{{- define "quiver.searcher.fullname" -}}
{{- printf "%s-searcher" (include "quiver.fullname" .) }}
{{- end }}

{{- define "quiver.searcher.headlessName" -}}
{{- printf "%s-searcher-headless" (include "quiver.fullname" .) }}
{{- end }}

{{- define "quiver.merger.fullname" -}}
{{- printf "%s-merger" (include "quiver.fullname" .) }}
{{- end }}

{{- define "quiver.etcd.fullname" -}}
{{- printf "%s-etcd" (include "quiver.fullname" .) }}
{{- end }}

{{- define "quiver.etcd.headlessName" -}}
{{- printf "%s-etcd-headless" (include "quiver.fullname" .) }}
{{- end }}

{{/*
The ServiceAccount the pods run as.
*/}}
{{- define "quiver.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "quiver.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Quiver image.
*/}}
{{- define "quiver.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The DNS name of etcd member <index> of the chart's own etcd.
Call with (list $ index).
*/}}
{{- define "quiver.etcd.memberHost" -}}
{{- $context := index . 0 }}
{{- printf "%s-%d.%s.%s.svc.%s" (include "quiver.etcd.fullname" $context) (index . 1 | int) (include "quiver.etcd.headlessName" $context) $context.Release.Namespace $context.Values.clusterDomain }}
{{- end }}

{{/*
The etcd endpoints Quiver connects to, comma-separated: every member of the chart's own
etcd, or externalEtcd.endpoints.
*/}}
{{- define "quiver.etcdEndpoints" -}}
{{- if .Values.etcd.enabled }}
{{- $endpoints := list }}
{{- range $member := until (int .Values.etcd.replicaCount) }}
{{- $endpoints = append $endpoints (printf "http://%s:%d" (include "quiver.etcd.memberHost" (list $ $member)) (int $.Values.etcd.clientPort)) }}
{{- end }}
{{- join "," $endpoints }}
{{- else }}
{{- join "," .Values.externalEtcd.endpoints }}
{{- end }}
{{- end }}

{{/*
etcd's --initial-cluster: name=peer URL of every member.
*/}}
{{- define "quiver.etcd.initialCluster" -}}
{{- $members := list }}
{{- range $member := until (int .Values.etcd.replicaCount) }}
{{- $members = append $members (printf "%s-%d=http://%s:%d" (include "quiver.etcd.fullname" $) $member (include "quiver.etcd.memberHost" (list $ $member)) (int $.Values.etcd.peerPort)) }}
{{- end }}
{{- join "," $members }}
{{- end }}

{{/*
Environment variables Searchers and Mergers share. Each Quiver flag has an environment
variable; quiverctl reads the QUIVER_ETCD_* ones too, so `kubectl exec ... -- quiverctl status`
needs no arguments in any Quiver pod.
*/}}
{{- define "quiver.commonEnv" -}}
- name: QUIVER_ETCD_ENDPOINTS
  value: {{ include "quiver.etcdEndpoints" . | quote }}
- name: QUIVER_ETCD_PREFIX
  value: {{ .Values.etcdPrefix | quote }}
- name: QUIVER_ETCD_TIMEOUT_MS
  value: {{ .Values.etcdTimeoutMs | int64 | quote }}
{{- if .Values.logging.json }}
- name: QUIVER_LOG_JSON
  value: "true"
{{- end }}
{{- with .Values.logging.filter }}
- name: RUST_LOG
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
Pod annotations for Prometheus scraping of /metrics on the gRPC port. Call with
(dict "context" $ "port" port).
*/}}
{{- define "quiver.metricsAnnotations" -}}
{{- if .context.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | int | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/*
Pod anti-affinity from a preset (soft, hard, none) for one component. Call with
(dict "context" $ "component" "searcher" "preset" "soft").
*/}}
{{- define "quiver.podAntiAffinity" -}}
{{- if eq .preset "soft" }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "quiver.selectorLabels" . | nindent 12 }}
{{- else if eq .preset "hard" }}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "quiver.selectorLabels" . | nindent 10 }}
{{- end }}
{{- end }}

{{/*
A native gRPC probe on the standard health service. Call with (dict "probe" values "port" port).
*/}}
{{- define "quiver.grpcProbe" -}}
grpc:
  port: {{ .port | int }}
  {{- with .probe.service }}
  service: {{ . | quote }}
  {{- end }}
initialDelaySeconds: {{ .probe.initialDelaySeconds | int }}
periodSeconds: {{ .probe.periodSeconds | int }}
timeoutSeconds: {{ .probe.timeoutSeconds | int }}
failureThreshold: {{ .probe.failureThreshold | int }}
{{- end }}

{{/*
An init container that waits until etcd answers /health with "true" on one of the endpoints,
so Searchers do not crash-loop while etcd starts (they exit when etcd cannot be reached at
start; Mergers retry, not ready meanwhile, but need not start before etcd either). Uses bash's /dev/tcp from the Quiver image: no extra image needed.
*/}}
{{- define "quiver.waitForEtcd" -}}
- name: wait-for-etcd
  image: {{ include "quiver.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - bash
    - -c
    - |
      IFS=, read -ra endpoints <<< "$QUIVER_ETCD_ENDPOINTS"
      while true; do
        for endpoint in "${endpoints[@]}"; do
          address="${endpoint#*://}"
          address="${address%%/*}"
          host="${address%:*}"
          port="${address##*:}"
          if answer=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1" && printf "GET /health HTTP/1.0\r\nHost: %s\r\n\r\n" "$0" >&3 && cat <&3' "$host" "$port" 2>/dev/null) \
              && [[ "$answer" == *'"health":"true"'* ]]; then
            echo "etcd is healthy at $endpoint"
            exit 0
          fi
        done
        echo "waiting for etcd at $QUIVER_ETCD_ENDPOINTS"
        sleep 2
      done
  env:
    - name: QUIVER_ETCD_ENDPOINTS
      value: {{ include "quiver.etcdEndpoints" . | quote }}
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
Checks of values that the schema cannot express; a failing one stops the install.
*/}}
{{- define "quiver.validate" -}}
{{- if and (not .Values.etcd.enabled) (empty .Values.externalEtcd.endpoints) }}
{{- fail "etcd.enabled is false: set externalEtcd.endpoints to the etcd cluster Quiver should use" }}
{{- end }}
{{- if not .Values.etcd.enabled }}
{{- range .Values.externalEtcd.endpoints }}
{{- if hasPrefix "https://" (lower .) }}
{{- fail (printf "externalEtcd.endpoints: %s uses https, but Quiver's etcd client has no TLS support; use a plain http:// endpoint" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- if le (mul (int .Values.searcher.terminationGracePeriodSeconds) 1000) (int .Values.searcher.drainGraceMs) }}
{{- fail (printf "searcher.terminationGracePeriodSeconds (%d s) must be longer than searcher.drainGraceMs (%d ms), or Kubernetes kills Searchers while they drain" (int .Values.searcher.terminationGracePeriodSeconds) (int .Values.searcher.drainGraceMs)) }}
{{- end }}
{{- if le (int .Values.merger.terminationGracePeriodSeconds) (int .Values.merger.preStopSleepSeconds) }}
{{- fail "merger.terminationGracePeriodSeconds must be longer than merger.preStopSleepSeconds" }}
{{- end }}
{{- with .Values.merger.autoscaling }}
{{- if .enabled }}
{{- if and (not .targetCPUUtilizationPercentage) (not .targetMemoryUtilizationPercentage) }}
{{- fail "merger.autoscaling.enabled: set targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- if gt (int .minReplicas) (int .maxReplicas) }}
{{- fail "merger.autoscaling.minReplicas must not be above maxReplicas" }}
{{- end }}
{{- $requests := default dict $.Values.merger.resources.requests }}
{{- if and .targetCPUUtilizationPercentage (not $requests.cpu) }}
{{- fail "merger.autoscaling.targetCPUUtilizationPercentage needs merger.resources.requests.cpu (utilization is measured against the request)" }}
{{- end }}
{{- if and .targetMemoryUtilizationPercentage (not $requests.memory) }}
{{- fail "merger.autoscaling.targetMemoryUtilizationPercentage needs merger.resources.requests.memory (utilization is measured against the request)" }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
