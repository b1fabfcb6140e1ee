{{/*
The components: values key -> service name (as in config.json grpc.services) and Python module. graph-ingest
(Exchange Online through Microsoft Graph) is optional: only with components.graphIngest.enabled. Call with the root.
*/}}
{{- define "tccal.components" -}}
ewsIngest:
  name: ews-ingest
  module: ews_ingest
syncEngine:
  name: sync-engine
  module: sync_engine
tcsGateway:
  name: tcs-gateway
  module: tcs_gateway
licensing:
  name: licensing
  module: licensing
{{- if .Values.components.graphIngest.enabled }}
graphIngest:
  name: graph-ingest
  module: graph_ingest
{{- end }}
{{- end }}

{{- define "tccal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, at most 40 characters so that "<fullname>-<component>-bridge" stays a valid
Service name (63).
*/}}
{{- define "tccal.fullname" -}}
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

{{- define "tccal.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tccal.labels" -}}
helm.sh/chart: {{ include "tccal.chart" . }}
{{ include "tccal.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trueconf-calendar-connector
{{- end }}

{{- define "tccal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tccal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component; call with (dict "root" $ "component" "ews-ingest"). */}}
{{- define "tccal.componentLabels" -}}
{{ include "tccal.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tccal.componentSelectorLabels" -}}
{{ include "tccal.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Resource name of one component; call with (dict "root" $ "component" "ews-ingest"). */}}
{{- define "tccal.componentFullname" -}}
{{- printf "%s-%s" (include "tccal.fullname" .root) .component }}
{{- end }}

{{- define "tccal.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tccal.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tccal.machineKeySecretName" -}}
{{- if .Values.machineKey.existingSecret }}
{{- .Values.machineKey.existingSecret }}
{{- else }}
{{- printf "%s-machine-key" (include "tccal.fullname" .) }}
{{- end }}
{{- end }}

{{- define "tccal.natsAuthSecretName" -}}
{{- if .Values.nats.auth.existingSecret }}
{{- .Values.nats.auth.existingSecret }}
{{- else }}
{{- printf "%s-nats-auth" (include "tccal.fullname" .) }}
{{- end }}
{{- end }}

{{/*
nats-server's `authorization` block: one user per identity with its permissions (files/nats-permissions.json,
generated from tccal.nats_auth by tools/nats_auth_files.py); call with (dict "permissions" $p "passwords" $pw).
toJson writes ">" as \u003e, which nats-server's configuration parser does not read: put back.
*/}}
{{- define "tccal.natsAuthorization" -}}
authorization {
  users = [
{{- range $identity, $permissions := .permissions }}
    {user: {{ $identity | toJson }}, password: {{ index $.passwords $identity | toJson }}, permissions: {{ $permissions | toJson | replace "\\u003e" ">" }}}
{{- end }}
  ]
}
{{- end }}

{{- define "tccal.credentialsSecretName" -}}
{{- if .Values.credentials.existingSecret }}
{{- .Values.credentials.existingSecret }}
{{- else }}
{{- printf "%s-credentials" (include "tccal.fullname" .) }}
{{- end }}
{{- end }}

{{/* Whether pods read a credentials Secret at all. */}}
{{- define "tccal.hasCredentials" -}}
{{- if or .Values.credentials.existingSecret .Values.credentials.values }}true{{ end }}
{{- end }}

{{/* Image of one component; call with (dict "root" $ "component" "ews-ingest" "values" $componentValues). */}}
{{- define "tccal.image" -}}
{{- $image := .root.Values.image }}
{{- $own := .values.image | default dict }}
{{- $repository := $own.repository | default (printf "%s/%s" $image.repositoryPrefix .component) }}
{{- if $image.registry }}
{{- $repository = printf "%s/%s" $image.registry $repository }}
{{- end }}
{{- $tag := $own.tag | default $image.tag | default .root.Chart.AppVersion }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{/* gRPC address other services use: "<service>.<namespace>.svc:<grpcPort>". */}}
{{- define "tccal.grpcAddress" -}}
{{- printf "%s.%s.svc:%d" (include "tccal.componentFullname" (dict "root" .root "component" .component)) .root.Release.Namespace (int .values.grpcPort) }}
{{- end }}

{{/*
config.json: .Values.config with the keys the chart owns set from their own values (wsPort from bridge.port,
dbConnectionConfig from postgresql, nats from nats, grpc.services from components, grpc.tls from grpcTls). Secrets never appear
here: they come from the credentials Secret as TC_CALENDAR__* environment overrides.
*/}}
{{- define "tccal.config" -}}
{{- $root := . }}
{{- $cfg := deepCopy .Values.config }}
{{- range $key := list "wsPort" "dbConnectionConfig" "nats" "grpc" }}
{{- if hasKey $cfg $key }}
{{- fail (printf "config.%s is set by the chart (see values.yaml: bridge, postgresql, nats, components); remove it from config" $key) }}
{{- end }}
{{- end }}
{{- include "tccal.assertNoSecrets" $cfg }}
{{- include "tccal.assertNotificationPorts" . }}
{{- $_ := set $cfg "wsPort" (int .Values.bridge.port) }}
{{- $pg := .Values.postgresql }}
{{- $db := dict "host" $pg.host "port" (int $pg.port) "user" $pg.user "database" $pg.database "poolMin" (int $pg.poolMin) "poolMax" (int $pg.poolMax) }}
{{- with $pg.tls }}
{{- if .sslMode }}
{{- $_ := set $db "sslMode" .sslMode }}
{{- end }}
{{- if .existingSecret }}
{{- $_ := set $db "sslRootCert" "/var/run/secrets/tc-calendar-db-tls/ca.crt" }}
{{- if .clientCertificate }}
{{- $_ := set $db "sslCert" "/var/run/secrets/tc-calendar-db-tls/tls.crt" }}
{{- $_ := set $db "sslKey" "/var/run/secrets/tc-calendar-db-tls/tls.key" }}
{{- end }}
{{- end }}
{{- end }}
{{- $_ := set $cfg "dbConnectionConfig" $db }}
{{- /* user, passwordFile and TLS files are per pod: environment overrides (deployment.yaml) */}}
{{- $nats := dict "url" .Values.nats.url "replicas" (int .Values.nats.replicas) "maxDeliver" (int .Values.nats.maxDeliver) "streamMaxBytes" (int64 .Values.nats.streamMaxBytes) "deadLetterMaxBytes" (int64 .Values.nats.deadLetterMaxBytes) "streamAlertPercent" (int .Values.nats.streamAlertPercent) }}
{{- $_ := set $cfg "nats" $nats }}
{{- $services := dict }}
{{- range $key, $component := include "tccal.components" $root | fromYaml }}
{{- $values := index $root.Values.components $key }}
{{- $_ := set $services $component.name (dict "host" $root.Values.bindAddress "grpcPort" (int $values.grpcPort) "httpPort" (int $values.httpPort) "address" (include "tccal.grpcAddress" (dict "root" $root "component" $component.name "values" $values))) }}
{{- end }}
{{- $grpc := dict "services" $services }}
{{- if .Values.grpcTls.enabled }}
{{- $dir := "/var/run/secrets/tc-calendar-grpc" }}
{{- $tls := dict "certFile" (printf "%s/tls.crt" $dir) "keyFile" (printf "%s/tls.key" $dir) "caFile" (printf "%s/ca.crt" $dir) "requireClientCert" .Values.grpcTls.requireClientCert }}
{{- if .Values.grpcTls.serverName }}
{{- $_ := set $tls "serverName" .Values.grpcTls.serverName }}
{{- end }}
{{- $_ := set $grpc "tls" $tls }}
{{- end }}
{{- $_ := set $cfg "grpc" $grpc }}
{{- $cfg | toPrettyJson }}
{{- end }}

{{/* Fail when a secret key is written into config (it belongs in credentials.values). */}}
{{- define "tccal.assertNoSecrets" -}}
{{- $secretKeys := list "password" "secret" "clientSecret" "adminToken" "token" }}
{{- range $i, $provider := .calendarProviders | default list }}
{{- if hasKey $provider "clientSecret" }}
{{- fail (printf "config.calendarProviders[%d].clientSecret: secrets go in credentials.values (calendarProviders.%d.clientSecret), encrypted with tc-calendar hash-pass" $i $i) }}
{{- end }}
{{- range $j, $credential := $provider.credentials | default list }}
{{- if hasKey $credential "password" }}
{{- fail (printf "config.calendarProviders[%d].credentials[%d].password: secrets go in credentials.values (calendarProviders.%d.credentials.%d.password), encrypted with tc-calendar hash-pass" $i $j $i $j) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $i, $server := (.tcs | default dict).servers | default list }}
{{- range $key := list "secret" "clientSecret" }}
{{- if hasKey $server $key }}
{{- fail (printf "config.tcs.servers[%d].%s: secrets go in credentials.values (tcs.servers.%d.%s), encrypted with tc-calendar hash-pass" $i $key $i $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Port of a URL: explicit, else 443 for https/wss, 80 for http/ws. */}}
{{- define "tccal.urlPort" -}}
{{- $url := urlParse . }}
{{- $hostport := splitList ":" $url.host }}
{{- if gt (len $hostport) 1 }}
{{- last $hostport }}
{{- else if has $url.scheme (list "https" "wss" "grpcs") }}
{{- 443 }}
{{- else }}
{{- 80 }}
{{- end }}
{{- end }}

{{/*
Egress rule allowing `ports` (list of ints) to `peers` (NetworkPolicy peers; empty: any address).
Call with (dict "ports" (list 5432) "peers" $list).
*/}}
{{- define "tccal.egressRule" -}}
- ports:
  {{- range $port := .ports | uniq }}
    - protocol: TCP
      port: {{ $port }}
  {{- end }}
  {{- with .peers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* Fail when a graph entry's receiver would listen where the chart's graphNotifications port does not lead. */}}
{{- define "tccal.assertNotificationPorts" -}}
{{- if .Values.graphNotifications.enabled }}
{{- $want := int .Values.graphNotifications.port }}
{{- range $i, $provider := .Values.config.calendarProviders | default list }}
{{- if and (eq ($provider.type | default "ews") "graph") $provider.notificationUrl }}
{{- $port := int ((($provider.notificationListen | default dict).port) | default 8066) }}
{{- if ne $port $want }}
{{- fail (printf "config.calendarProviders[%d].notificationListen.port is %d but graphNotifications.port is %d: they must be equal" $i $port $want) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
