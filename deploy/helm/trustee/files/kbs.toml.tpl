# Rendered by the {{ .Chart.Name }} chart {{ .Chart.Version }} for release {{ .Release.Name }}.
# Generated from values: change the values, not this file. Keys: docs/configuration.md.
# This file may hold credentials (KMS client key and password): it lives in a Secret.
environment = "production"
data_dir = "/var/lib/trustee"

[database]
# The database URL is not here: KBS_DATABASE__URL comes from a Secret (PostgreSQL), or,
# without it, SQLite at /var/lib/trustee/kbs.db on the volume.
# Migrations run in the pod's init container (kbs migrate), once per pod start, under a
# database lock; the server itself does not migrate.
migrate_on_start = false
pool_size = {{ int .Values.database.poolSize }}
timeout_s = {{ .Values.database.timeoutSeconds }}
statement_timeout_s = {{ .Values.database.statementTimeoutSeconds }}

[http_server]
sockets = ["0.0.0.0:8080"]
{{- if .Values.kbs.tls.existingSecret }}
insecure_http = false
private_key = "/etc/trustee/tls/tls.key"
certificate = "/etc/trustee/tls/tls.crt"
{{- else }}
# TLS ends at the ALB.
insecure_http = true
{{- end }}
worker_count = {{ int .Values.kbs.workers }}
# The ALB forwards /{{ trimPrefix "/" (include "trustee.pathPrefix" .) }}/kbs/... with or without rewriting it; both are served.
path_prefix = {{ include "trustee.toml" (include "trustee.pathPrefix" .) }}
{{- with .Values.kbs.trustedProxies }}
# X-Forwarded-For names the client only on requests from these (the ALB).
trusted_proxies = [{{ range $i, $cidr := . }}{{ if $i }}, {{ end }}{{ include "trustee.toml" $cidr }}{{ end }}]
{{- end }}

[attestation_service]
timeout = {{ int .Values.kbs.sessionTimeoutMinutes }}
max_unattested_sessions = {{ int .Values.kbs.maxUnattestedSessions }}
{{- with (include "trustee.pccsUrl" .) }}

[attestation_service.verifier_config.dcap_verifier]
collateral_service = {{ include "trustee.toml" . }}
{{- end }}
{{- if .Values.kbs.tokenSigner.existingSecret }}

[attestation_service.attestation_token_broker.signer]
key_path = "/etc/trustee/signer/tls.key"
cert_path = "/etc/trustee/signer/tls.crt"
{{- end }}
{{- if include "trustee.adminKey" . }}

[admin]
authorization_mode = "AuthenticatedAuthorization"

[admin.authentication.bearer_jwt]
identity_providers = [{ public_key_uri = "/etc/trustee/admin/public.pub" }]

[admin.authorization.regex_acl]
acls = [{ role = {{ include "trustee.toml" .Values.kbs.admin.role }}, allowed_endpoints = "^/kbs/.+$" }]
{{- else }}
# No [admin] section: every admin request is denied (set kbs.admin.publicKey).
{{- end }}

[[plugins]]
name = "resource"
{{- $backend := include "trustee.resourceBackend" . }}
{{- if eq $backend "kms" }}
{{- $kms := .Values.kbs.aliyunKms }}
storage_backend_type = "Aliyun"
{{- with (include "trustee.kmsInstanceId" .) }}
kms_instance_id = {{ include "trustee.toml" . }}
{{- end }}
{{- if include "trustee.kmsInstanceGateway" . }}
client_key = {{ include "trustee.toml" $kms.clientKey }}
password = {{ include "trustee.toml" (include "trustee.kmsPassword" .) }}
cert_pem = {{ include "trustee.toml" $kms.certPem }}
{{- end }}
{{- with $kms.endpoint }}
instance_endpoint = {{ include "trustee.toml" . }}
{{- end }}
{{- if or (include "trustee.kmsAccessKey" .) $kms.rrsa.enabled }}
region_id = {{ include "trustee.toml" (include "trustee.kmsRegion" .) }}
shared_network = {{ include "trustee.toml" $kms.sharedNetwork }}
{{- if $kms.rrsa.enabled }}
# ACK RRSA: the pod identity webhook injects ALIBABA_CLOUD_ROLE_ARN,
# ALIBABA_CLOUD_OIDC_PROVIDER_ARN and ALIBABA_CLOUD_OIDC_TOKEN_FILE.
credential_type = "oidc_role_arn"
{{- with $kms.rrsa.roleArn }}
role_arn = {{ include "trustee.toml" . }}
{{- end }}
{{- with $kms.rrsa.oidcProviderArn }}
oidc_provider_arn = {{ include "trustee.toml" . }}
{{- end }}
{{- else }}
# AccessKey from a Secret, as ALIBABA_CLOUD_ACCESS_KEY_ID / _SECRET in the environment.
credential_type = "default"
{{- end }}
{{- end }}
{{- if $kms.insecureSkipTlsVerify }}
insecure_skip_tls_verify = true
{{- end }}
{{- else if eq $backend "database" }}
# Resources in the PostgreSQL database, shared by every replica.
storage_backend_type = "kvstorage"
{{- else }}
# Files: /var/lib/trustee/repository/<repository>/<type>/<tag> on the volume.
type = "LocalFs"
dir_path = "/var/lib/trustee/repository"
{{- end }}
