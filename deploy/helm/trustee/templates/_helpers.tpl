{{/* Names and labels. */}}
{{- define "trustee.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "trustee.fullname" -}}
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

{{- define "trustee.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "trustee.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trustee.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: kbs
{{- end -}}

{{- define "trustee.labels" -}}
helm.sh/chart: {{ include "trustee.chart" . }}
{{ include "trustee.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trustee
{{- end -}}

{{- define "trustee.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "trustee.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "trustee.image" -}}
{{- $img := .Values.kbs.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* A TOML basic string: JSON string escapes (\" \\ \n \uXXXX …) are all valid TOML. */}}
{{- define "trustee.toml" -}}
{{- toJson (toString .) -}}
{{- end -}}

{{/* "true" when a PostgreSQL database is configured. */}}
{{- define "trustee.postgres" -}}
{{- if or .Values.database.existingSecret .Values.database.url -}}true{{- end -}}
{{- end -}}

{{/* Replica count: given, or 1 on SQLite and 2 on PostgreSQL. */}}
{{- define "trustee.replicas" -}}
{{- if kindIs "invalid" .Values.kbs.replicaCount -}}
{{- if include "trustee.postgres" . -}}2{{- else -}}1{{- end -}}
{{- else -}}
{{- int .Values.kbs.replicaCount -}}
{{- end -}}
{{- end -}}

{{/* The KMS instance id from either spelling. */}}
{{- define "trustee.kmsInstanceId" -}}
{{- $kms := .Values.kbs.aliyunKms -}}
{{- default $kms.kmsIntanceId $kms.kmsInstanceId -}}
{{- end -}}

{{/* The client key password without its trailing newline (and other trailing space). */}}
{{- define "trustee.kmsPassword" -}}
{{- regexReplaceAll "\\s+$" (toString .Values.kbs.aliyunKms.password) "" -}}
{{- end -}}

{{- define "trustee.kmsInstanceGateway" -}}
{{- $kms := .Values.kbs.aliyunKms -}}
{{- if or $kms.clientKey $kms.password $kms.certPem -}}true{{- end -}}
{{- end -}}

{{- define "trustee.kmsAccessKey" -}}
{{- $kms := .Values.kbs.aliyunKms -}}
{{- if or $kms.accessKeyExistingSecret $kms.accessKeyId $kms.accessKeySecret -}}true{{- end -}}
{{- end -}}

{{- define "trustee.kmsRegion" -}}
{{- default .Values.regionId .Values.kbs.aliyunKms.regionId -}}
{{- end -}}

{{/* Where resources are served from: kms, database or files. */}}
{{- define "trustee.resourceBackend" -}}
{{- if .Values.kbs.aliyunKms.enabled -}}kms
{{- else if include "trustee.postgres" . -}}database
{{- else -}}files
{{- end -}}
{{- end -}}

{{- define "trustee.pathPrefix" -}}
{{- default (printf "/%s" .Release.Name) .Values.ingress.pathPrefix | trimSuffix "/" -}}
{{- end -}}

{{- define "trustee.pccsUrl" -}}
{{- if .Values.kbs.pccsUrl -}}
{{- .Values.kbs.pccsUrl -}}
{{- else if .Values.regionId -}}
{{- printf "https://sgx-dcap-server-vpc.%s.aliyuncs.com/sgx/certification/v4/" .Values.regionId -}}
{{- end -}}
{{- end -}}

{{- define "trustee.adminKey" -}}
{{- if or .Values.kbs.admin.publicKey .Values.kbs.userKeysSecretName -}}true{{- end -}}
{{- end -}}

{{/*
Refuse combinations that cannot work, with a message that says why. Included by the
Deployment, so `helm install`/`helm template` stop before anything is created.
*/}}
{{- define "trustee.validate" -}}
{{- $replicas := int (include "trustee.replicas" .) -}}
{{- $pg := include "trustee.postgres" . -}}
{{- if and (not $pg) (gt $replicas 1) -}}
{{- fail (printf "kbs.replicaCount=%d needs PostgreSQL (database.existingSecret or database.url): without it sessions, policies and the token signing key live in a SQLite file on a ReadWriteOnce volume that only one pod can use, so a guest whose calls reach different pods would fail. Use one replica, or give a database." $replicas) -}}
{{- end -}}
{{- if and (not $pg) .Values.kbs.autoscaling.enabled -}}
{{- fail "kbs.autoscaling.enabled needs PostgreSQL (database.existingSecret or database.url): several replicas cannot share the SQLite volume." -}}
{{- end -}}
{{- if lt $replicas 1 -}}
{{- fail "kbs.replicaCount must be at least 1" -}}
{{- end -}}
{{- if and .Values.database.existingSecret .Values.database.url -}}
{{- fail "give database.existingSecret or database.url, not both" -}}
{{- end -}}
{{- if and .Values.database.url (not (regexMatch "^postgres(ql)?(\\+psycopg)?://" .Values.database.url)) -}}
{{- fail "database.url must be a PostgreSQL DSN (postgresql://user:password@host:5432/db); leave it empty for SQLite on the volume" -}}
{{- end -}}
{{- $kms := .Values.kbs.aliyunKms -}}
{{- if and $kms.kmsIntanceId $kms.kmsInstanceId (ne $kms.kmsIntanceId $kms.kmsInstanceId) -}}
{{- fail "kbs.aliyunKms.kmsIntanceId and kbs.aliyunKms.kmsInstanceId differ; give one" -}}
{{- end -}}
{{- if $kms.enabled -}}
{{- $instance := include "trustee.kmsInstanceGateway" . -}}
{{- $ak := include "trustee.kmsAccessKey" . -}}
{{- if and (not $instance) (not $ak) (not $kms.rrsa.enabled) -}}
{{- fail "kbs.aliyunKms.enabled needs credentials: clientKey, password and certPem (--set-file) for the KMS instance gateway, and/or an AccessKey (accessKeyExistingSecret) or RRSA (rrsa.enabled) for the shared gateway" -}}
{{- end -}}
{{- if $instance -}}
{{- if not (and $kms.clientKey $kms.password $kms.certPem) -}}
{{- fail "the KMS instance gateway needs all of kbs.aliyunKms.clientKey, password and certPem (the clientKey_….json, clientKey_…_Password.txt and PrivateKmsCA_kst-….pem files, with --set-file)" -}}
{{- end -}}
{{- if not (include "trustee.kmsInstanceId" .) -}}
{{- fail "the KMS instance gateway needs kbs.aliyunKms.kmsInstanceId (kst-…)" -}}
{{- end -}}
{{- end -}}
{{- if and $ak $kms.rrsa.enabled -}}
{{- fail "give an AccessKey or RRSA for kbs.aliyunKms, not both" -}}
{{- end -}}
{{- if and $kms.accessKeyExistingSecret (or $kms.accessKeyId $kms.accessKeySecret) -}}
{{- fail "give kbs.aliyunKms.accessKeyExistingSecret or accessKeyId/accessKeySecret, not both" -}}
{{- end -}}
{{- if and (not $kms.accessKeyExistingSecret) (or $kms.accessKeyId $kms.accessKeySecret) (not (and $kms.accessKeyId $kms.accessKeySecret)) -}}
{{- fail "kbs.aliyunKms.accessKeyId and accessKeySecret go together" -}}
{{- end -}}
{{- if and $kms.rrsa.enabled (not $kms.rrsa.roleName) -}}
{{- fail "kbs.aliyunKms.rrsa.enabled needs rrsa.roleName (the RAM role the service account assumes)" -}}
{{- end -}}
{{- if and (or $ak $kms.rrsa.enabled) (not (include "trustee.kmsRegion" .)) -}}
{{- fail "the KMS shared gateway (AccessKey or RRSA) needs regionId (or kbs.aliyunKms.regionId)" -}}
{{- end -}}
{{- end -}}
{{- range .Values.kbs.resourceRepository -}}
{{- if not .keys -}}
{{- fail (printf "kbs.resourceRepository entry %s/%s needs keys: the Secret's keys to serve (each is mounted as one file; a whole Secret volume is made of symlinks, which the file backend never follows)" .repoName .type) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.kbs.resourceRepository (ne (include "trustee.resourceBackend" .) "files") -}}
{{- fail "kbs.resourceRepository mounts Secrets into the file repository, which is used only without KMS and without PostgreSQL" -}}
{{- end -}}
{{- if and .Values.kbs.admin.publicKey .Values.kbs.userKeysSecretName -}}
{{- fail "give kbs.admin.publicKey or kbs.userKeysSecretName, not both" -}}
{{- end -}}
{{- end -}}

{{/* Environment and mounts shared by the migrate init container and the server. */}}
{{- define "trustee.env" -}}
- name: HOME
  value: /tmp
{{- if .Values.database.existingSecret }}
- name: KBS_DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.existingSecretKey }}
{{- else if .Values.database.url }}
- name: KBS_DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "trustee.fullname" . }}-database
      key: url
{{- end }}
{{- $kms := .Values.kbs.aliyunKms }}
{{- if and $kms.enabled (include "trustee.kmsAccessKey" .) }}
{{- $secret := default (printf "%s-aliyun-accesskey" (include "trustee.fullname" .)) $kms.accessKeyExistingSecret }}
- name: ALIBABA_CLOUD_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $kms.accessKeyIdSecretKey }}
- name: ALIBABA_CLOUD_ACCESS_KEY_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $kms.accessKeySecretSecretKey }}
{{- end }}
{{- with .Values.kbs.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- define "trustee.mounts" -}}
- name: config
  mountPath: /etc/trustee/config
  readOnly: true
- name: data
  mountPath: /var/lib/trustee
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Ingress annotations: the user's, plus the ALB health check through /readyz. */}}
{{- define "trustee.ingressAnnotations" -}}
{{- $annotations := dict -}}
{{- if .Values.ingress.albHealthCheck -}}
{{- $_ := set $annotations "alb.ingress.kubernetes.io/healthcheck-enabled" "true" -}}
{{- $_ := set $annotations "alb.ingress.kubernetes.io/healthcheck-path" "/readyz" -}}
{{- $_ := set $annotations "alb.ingress.kubernetes.io/healthcheck-method" "GET" -}}
{{- $_ := set $annotations "alb.ingress.kubernetes.io/healthcheck-httpcode" "http_2xx" -}}
{{- end -}}
{{- $merged := merge (deepCopy .Values.ingress.annotations) $annotations -}}
{{- if $merged -}}
{{- toYaml $merged -}}
{{- end -}}
{{- end -}}
