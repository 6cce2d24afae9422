# SPDX-License-Identifier: Apache-2.0
"""Configuration: Trustee's ``kbs-config.toml`` shape plus our additions.

A Trustee user's configuration file starts this server: every section we implement takes
the reference's keys (v0.21, and the older forms listed in ``docs/configuration.md``).
Our additions sit beside the Trustee key they extend and are documented there. Unknown
keys are an error that names the key. ``KBS_``-prefixed environment variables override
the file (``__`` separates nesting levels, e.g. ``KBS_DATABASE__URL``).

Anything that weakens security is named ``insecure_*``, defaults to off, is logged as a
warning at start-up, and (for our own ``insecure_*`` settings) is refused when
``environment = "production"``.
"""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path
from typing import Any, Final, Literal, Self

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from attestation.tdx.collateral import ALIBABA_CLOUD_PCCS_URL
from attestation.tdx.pool import MAX_VERIFY_PROCESSES
from kbs import __version__
from kbs.scopes import PathPattern
from storage_backends.aliyun_kms.settings import (
    AliyunKmsConfigError,
    AliyunKmsSettings,
    CredentialType,
    NamingMode,
    ReadGateway,
    SignatureAlgorithm,
)
from storage_backends.base import SEGMENT_PATTERN as _SEGMENT

_logger = logging.getLogger(__name__)

__all__ = [
    "AdminSettings",
    "AttestationServiceSettings",
    "AttestationTokenSettings",
    "AuditSettings",
    "ConfigError",
    "DatabaseSettings",
    "DcapVerifierSettings",
    "HttpServerSettings",
    "KbsSettings",
    "RateLimitSettings",
    "ResourceBackendSettings",
    "ResourceGrantSettings",
    "ResourceMountSettings",
    "ResourcePluginSettings",
    "development_settings",
    "load_settings",
]

#: The environment variable naming the configuration file (as in the reference).
CONFIG_FILE_ENV: Final = "KBS_CONFIG_FILE"

#: Trustee's default session lifetime, in minutes.
DEFAULT_SESSION_MINUTES: Final = 5


class ConfigError(Exception):
    """The configuration is invalid; the message names every offending key."""


class _Section(BaseModel):
    """Base of every configuration section: unknown keys are errors.

    Validation errors never quote the input: sections hold passwords and keys.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, hide_input_in_errors=True
    )


# --------------------------------------------------------------------------- database


class DatabaseSettings(_Section):
    """``[database]`` (our addition): where sessions, policies and keys live.

    Several server processes pointing at one database serve one guest's requests
    interchangeably. Default: SQLite at ``<data_dir>/kbs.db``.
    """

    url: SecretStr | None = None
    #: Run schema migrations when the server starts (safe with concurrent starts).
    migrate_on_start: bool = True
    #: Connection pool size per process (PostgreSQL).
    pool_size: int = Field(default=10, ge=1, le=200)
    #: Seconds to wait for a connection (opening one, or a free one from the pool)
    #: before answering 503. PostgreSQL counts whole seconds, at least 2.
    timeout_s: float = Field(default=5.0, gt=0, le=120)
    #: PostgreSQL: seconds a statement (lock waits included) may run before the server
    #: cancels it (503). Generous: the periodic sweep deletes many expired rows at once.
    statement_timeout_s: float = Field(default=30.0, gt=0, le=3600)


# --------------------------------------------------------------------------- http


class HttpServerSettings(_Section):
    """``[http_server]`` (Trustee keys, plus ``path_prefix``)."""

    sockets: list[str] = Field(default_factory=lambda: ["127.0.0.1:8080"])
    insecure_http: bool = False
    private_key: Path | None = None
    certificate: Path | None = None
    #: Request body limit in MiB (Trustee's default 2).
    payload_request_size: int = Field(default=2, ge=1, le=1024)
    #: Ours: request line + headers limit in KiB (large Bearer tokens); above it 431.
    request_header_size: int = Field(default=128, ge=8, le=16 * 1024)
    #: Ours: seconds a client has, from connecting or starting a request, to send the
    #: complete request line and headers; then 408 and the connection is closed.
    request_header_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    #: Ours: proxies (addresses or CIDR networks) whose ``X-Forwarded-For`` names the
    #: client for rate limits, logs and audit (kbs/ratelimit.py). Empty: trust none.
    trusted_proxies: list[str] = Field(default_factory=list)
    worker_count: int | None = Field(default=None, ge=1, le=256)
    tls_profile: Literal["old", "intermediate", "modern", "custom"] = "intermediate"
    tls_min_version: Literal["1.2", "1.3"] | None = None
    tls_max_version: Literal["1.2", "1.3"] | None = None
    tls_ciphers: str | None = None
    tls_groups: str | None = None
    #: Ours: also serve every route under this prefix (``/trustee`` makes
    #: ``/trustee/kbs/v0/auth`` and ``/kbs/v0/auth`` one endpoint); see kbs/prefix.py.
    path_prefix: str | None = None

    @field_validator("path_prefix")
    @classmethod
    def _check_path_prefix(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from kbs.prefix import normalise_path_prefix  # noqa: PLC0415 - keep settings light

        return normalise_path_prefix(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _check_trusted_proxies(cls, value: list[str]) -> list[str]:
        import ipaddress  # noqa: PLC0415 - only this validator needs it

        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ValueError(f"trusted proxy {entry!r} is not an address or CIDR") from exc
        return value

    @field_validator("sockets")
    @classmethod
    def _check_sockets(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one socket address is required")
        for sock in value:
            host, sep, port = sock.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:  # noqa: PLR2004
                raise ValueError(f"socket {sock!r} is not host:port")
        return value

    def tls_files(self) -> tuple[Path, Path] | None:
        """Return ``(private_key, certificate)`` for HTTPS, or ``None`` for plain HTTP.

        Raises:
            ConfigError: HTTPS is required but a file is not configured.
        """
        if self.insecure_http:
            return None
        if self.private_key is None or self.certificate is None:
            raise ConfigError(
                "http_server: HTTPS needs private_key and certificate (or insecure_http = "
                "true, e.g. behind a TLS-terminating load balancer)"
            )
        return self.private_key, self.certificate


# --------------------------------------------------------------------------- tokens


class AttestationTokenSettings(_Section):
    """``[attestation_token]``: which attestation tokens resource requests accept.

    Tokens signed by this server's own token signer are always accepted.
    """

    trusted_certs_paths: list[Path] = Field(default_factory=list)
    trusted_jwk_sets: list[str] = Field(default_factory=list)
    extra_teekey_paths: list[str] = Field(default_factory=list)
    insecure_header_jwk: bool = Field(
        default=False, validation_alias=AliasChoices("insecure_header_jwk", "insecure_key")
    )

    @field_validator("extra_teekey_paths")
    @classmethod
    def _check_pointers(cls, value: list[str]) -> list[str]:
        for pointer in value:
            if pointer and not pointer.startswith("/"):
                raise ValueError(f"{pointer!r} is not a JSON pointer (must start with '/')")
        return value


class SignerSettings(_Section):
    """``[attestation_service.attestation_token_broker.signer]``: EC P-256 signing key.

    The same shape serves ``simple_signer`` (ours), where ``key_path`` is an RSA key.
    """

    key_path: Path
    cert_path: Path | None = None
    cert_url: str | None = None


class TokenBrokerSettings(_Section):
    """``[attestation_service.attestation_token_broker]``.

    ``type`` is Trustee's broker choice. The KBS flow always issues EAR tokens; ``type``
    picks the profile the attestation-service API (``/attestation``) issues by default:
    ``Ear`` or ``Simple`` (the legacy RS384 token TNG <= v2.3 accepts).
    """

    type: Literal["Ear", "ear", "Simple", "simple"] = "Ear"
    duration_min: int = Field(default=5, ge=1, le=24 * 60)
    issuer_name: str = "CoCo-Attestation-Service"
    developer_name: str = "https://confidentialcontainers.org"
    build_name: str = f"confidential-kbs {__version__}"
    profile_name: str = "tag:github.com,2024:confidential-containers/Trustee"
    verbose_token: bool = True
    signer: SignerSettings | None = None
    #: Legacy key (policies now live in the database); accepted and ignored.
    policy_dir: str | None = None
    #: Ours: the RSA key (and certificate chain) of Simple tokens; generated once and
    #: stored in the database when absent.
    simple_signer: SignerSettings | None = None
    #: Ours: how ``jwk.x5c`` certificates are encoded in token headers: ``base64url``
    #: (no padding; what TNG and Trustee <= v0.20 use) or ``base64`` (RFC 7517, Trustee
    #: v0.21+). The JWK Set endpoint always publishes standard base64.
    x5c_encoding: Literal["base64url", "base64"] = "base64url"

    @property
    def default_profile(self) -> Literal["ear", "simple"]:
        """The token profile ``/attestation`` issues when the request does not pick one."""
        return "simple" if self.type.lower() == "simple" else "ear"


class RvpsSettings(_Section):
    """``[attestation_service.rvps_config]``: only the built-in RVPS exists here."""

    type: Literal["BuiltIn", "builtin"] = "BuiltIn"
    #: Accepted for compatibility; reference values live in the database.
    storage_type: str | None = None
    extractors: dict[str, Any] | None = None


class DcapVerifierSettings(_Section):
    """``[attestation_service.verifier_config.dcap_verifier]``: the TDX (DCAP) verifier.

    Trustee's keys: ``collateral_service`` (one PCCS/PCS URL) and ``tcb_update_type``.
    Ours: an ordered ``collateral_services`` failover list (Trustee's single URL, if
    given, is tried first), platform-flag switches, HTTP timeouts, the collateral
    refresh cadence, a switch to disable the verifier, and ``insecure_root_ca_path``
    (a private trust anchor, for tests only). See docs/tdx.md.
    """

    #: Trustee key: a PCCS or Intel PCS base URL, tried before ``collateral_services``.
    collateral_service: str | None = None
    #: Trustee key: which TCB evaluation data set to request (Trustee's default ``early``).
    tcb_update_type: Literal["early", "standard"] = "early"
    #: Ours: register the ``tdx`` verifier (``false``: TDX evidence is refused).
    enabled: bool = True
    #: Ours: PCCS/PCS base URLs, tried in order after ``collateral_service``.
    collateral_services: list[str] = Field(default_factory=lambda: [ALIBABA_CLOUD_PCCS_URL])
    #: Ours: accept platforms whose PCK certificate says so (cloud hosts all do).
    allow_dynamic_platform: bool = True
    allow_cached_keys: bool = True
    allow_smt: bool = True
    #: Ours: seconds to establish a connection to a PCCS, and for each whole request.
    connect_timeout_s: float = Field(default=3.0, gt=0, le=60)
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    #: Ours: seconds between background passes that refresh collateral that is due.
    refresh_interval_s: float = Field(default=300.0, gt=0, le=24 * 3600)
    #: Ours: refresh collateral at least this often, hours (new CRLs, TCB recoveries).
    max_collateral_age_h: float = Field(default=12.0, gt=0, le=24 * 30)
    #: Ours: least seconds between two PCCS attempts for one platform after a failure.
    retry_interval_s: float = Field(default=60.0, ge=0, le=3600)
    #: Ours, insecure: trust this root CA (DER or PEM) instead of Intel's SGX Root CA.
    insecure_root_ca_path: Path | None = None
    #: Ours: worker processes per server process that run DCAP verification, so it never
    #: holds the event loop (dcap-qvl holds the GIL); 0 runs it inline. See docs/tdx.md.
    verify_processes: int = Field(default=1, ge=0, le=MAX_VERIFY_PROCESSES)

    @field_validator("collateral_service", mode="after")
    @classmethod
    def _check_service(cls, value: str | None) -> str | None:
        if value is not None:
            _check_pccs_url(value)
        return value

    @field_validator("collateral_services", mode="after")
    @classmethod
    def _check_services(cls, value: list[str]) -> list[str]:
        for url in value:
            _check_pccs_url(url)
        return value

    @model_validator(mode="after")
    def _some_service(self) -> DcapVerifierSettings:
        if self.enabled and not self.pccs_urls:
            raise ValueError("give collateral_service or at least one collateral_services url")
        return self

    @property
    def pccs_urls(self) -> tuple[str, ...]:
        """Every PCCS base URL in failover order, without duplicates."""
        urls = [self.collateral_service] if self.collateral_service else []
        urls += self.collateral_services
        return tuple(dict.fromkeys(urls))


def _check_pccs_url(url: str) -> None:
    scheme = url.partition("://")[0].lower()
    if scheme == "file":
        raise ValueError(
            "file:// collateral (Intel's PCS client tool output) is not supported; "
            "give a PCCS or PCS https:// url"
        )
    if scheme not in ("http", "https") or not url.partition("://")[2]:
        raise ValueError(f"pccs url must be http(s)://host/...: {url!r}")


class VerifierConfigSettings(_Section):
    """``[attestation_service.verifier_config]``."""

    dcap_verifier: DcapVerifierSettings = Field(default_factory=DcapVerifierSettings)


class AttestationServiceSettings(_Section):
    """``[attestation_service]``: the built-in attestation service.

    ``timeout`` is the RCAR session lifetime in minutes, as in the reference.
    """

    type: Literal["coco_as_builtin", "CoCoASBuiltIn"] = "coco_as_builtin"
    timeout: int = Field(default=DEFAULT_SESSION_MINUTES, ge=1, le=24 * 60)
    #: Ours: live sessions awaiting attestation (all replicas); above it /auth answers 429.
    max_unattested_sessions: int = Field(default=100_000, ge=1, le=100_000_000)
    attestation_token_broker: TokenBrokerSettings = Field(default_factory=TokenBrokerSettings)
    rvps_config: RvpsSettings = Field(default_factory=RvpsSettings)
    verifier_config: VerifierConfigSettings = Field(default_factory=VerifierConfigSettings)
    #: Accepted for compatibility (AS storage is the database).
    storage_type: str | None = None
    #: Legacy keys, accepted and ignored.
    work_dir: str | None = None
    policy_engine: str | None = None
    #: Ours: register the software-only ``sample``/``sampledevice`` verifiers.
    insecure_allow_sample_evidence: bool = False

    @field_validator("type", mode="before")
    @classmethod
    def _only_builtin(cls, value: Any) -> Any:
        if value in ("coco_as_grpc", "CoCoASGrpc", "intel_ta", "IntelTA"):
            raise ValueError(
                f"attestation service type {value!r} is not supported; "
                "this server has the attestation service built in (coco_as_builtin)"
            )
        return value


# --------------------------------------------------------------------------- rate limit


class RateLimitSettings(_Section):
    """``[rate_limit]`` (ours): per-client limits on the unauthenticated, costly endpoints.

    ``/kbs/v0/auth`` and the attestation-service ``/attestation`` and ``/challenge`` draw
    from one token bucket per client address and server process: ``burst`` requests at
    once, refilled at ``requests_per_second``. Above it the answer is 429. Behind a load
    balancer, list its addresses in ``[http_server] trusted_proxies`` so each client is
    known by the ``X-Forwarded-For`` address the balancer appends; otherwise every client
    shares the balancer's bucket.
    """

    enabled: bool = True
    requests_per_second: float = Field(default=20.0, gt=0, le=1_000_000)
    burst: int = Field(default=60, ge=1, le=1_000_000)
    #: Client addresses remembered per process; the least recently seen is forgotten.
    max_clients: int = Field(default=10_000, ge=1, le=10_000_000)


# --------------------------------------------------------------------------- admin


class IdentityProviderSettings(_Section):
    """One ``identity_providers`` entry of ``[admin.authentication.bearer_jwt]``.

    Trustee's keys: ``issuer``, ``audience``, ``public_key_uri``, ``jwk_set_uri``. Ours:
    ``openid_configuration_uri`` (OIDC discovery; its ``issuer`` must equal ``issuer``
    when that is set) and ``role_claim`` (overrides the section's ``role_claim``).
    """

    issuer: str | None = None
    audience: str | None = None
    public_key_uri: str | None = None
    jwk_set_uri: str | None = None
    #: Ours: an OpenID Connect discovery document; its ``jwks_uri`` is followed.
    openid_configuration_uri: str | None = None
    #: Ours: where this provider puts roles (a claim name or a JSON pointer).
    role_claim: str | None = None

    @model_validator(mode="after")
    def _needs_key(self) -> IdentityProviderSettings:
        if not (self.public_key_uri or self.jwk_set_uri or self.openid_configuration_uri):
            raise ValueError(
                "an identity provider needs public_key_uri, jwk_set_uri and/or "
                "openid_configuration_uri"
            )
        return self


class BearerJwtSettings(_Section):
    """``[admin.authentication.bearer_jwt]`` (the list is Trustee's; the rest is ours)."""

    identity_providers: list[IdentityProviderSettings] = Field(min_length=1)
    #: Ours: the claim holding the admin's role(s): a claim name (``role``, ``roles``,
    #: ``groups``) or a JSON pointer (``/realm_access/roles``); a string or a list of strings.
    role_claim: str = "role"
    #: Ours: leeway on ``exp``/``nbf``, seconds (Trustee: 60).
    clock_skew_s: int = Field(default=60, ge=0, le=3600)
    #: Ours: JWKS and discovery documents are fetched again this often, seconds.
    jwks_refresh_s: float = Field(default=300.0, ge=1.0, le=86400.0)
    #: Ours: a token with an unknown ``kid`` triggers a fetch at most this often, seconds.
    jwks_min_refresh_interval_s: float = Field(default=10.0, ge=0.0, le=3600.0)
    #: Ours: timeout of one JWKS or discovery fetch, seconds.
    fetch_timeout_s: float = Field(default=5.0, gt=0.0, le=60.0)

    @field_validator("role_claim")
    @classmethod
    def _claim_name(cls, value: str) -> str:
        if not value or len(value) > 256:  # noqa: PLR2004
            raise ValueError("role_claim must be a claim name or a JSON pointer")
        return value


class AdminAuthenticationSettings(_Section):
    """``[admin.authentication]``."""

    bearer_jwt: BearerJwtSettings


class RegexAclEntry(_Section):
    """One ``acls`` entry: a role and the request paths it may call."""

    role: str
    allowed_endpoints: str

    @field_validator("allowed_endpoints")
    @classmethod
    def _anchored(cls, value: str) -> str:
        if not value.startswith("^/kbs") or not value.endswith("$"):
            raise ValueError("allowed_endpoints must start with '^/kbs' and end with '$'")
        return value


class RegexAclSettings(_Section):
    """``[admin.authorization.regex_acl]``."""

    acls: list[RegexAclEntry] = Field(default_factory=list)


class ResourceGrantSettings(_Section):
    """Ours: one ``[[admin.authorization.grants]]`` entry (see kbs/scopes.py).

    ``actions`` of ``read``, ``write``, ``delete``, ``policy``, ``audit`` on the resource
    path patterns in ``resources`` (``cai/*``, ``default/aliyun/*``; ``*`` = everything,
    which the global policies and the whole audit trail need).
    """

    role: str = Field(min_length=1, max_length=255)
    actions: list[Literal["read", "write", "delete", "policy", "audit"]] = Field(min_length=1)
    resources: list[str] = Field(default_factory=lambda: ["*"], min_length=1)

    @field_validator("resources")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for text in value:
            PathPattern.parse(text)
        return value


class AdminAuthorizationSettings(_Section):
    """``[admin.authorization]``: Trustee's ``regex_acl``, and our ``grants``.

    Without grants, the ACL alone decides (Trustee). With grants, an admin also needs a
    grant for the action on the resource; when grants are set and no ACL entry is, the
    grants alone decide.
    """

    regex_acl: RegexAclSettings = Field(default_factory=RegexAclSettings)
    #: Ours: role -> actions on resource path patterns.
    grants: list[ResourceGrantSettings] = Field(default_factory=list)


class LegacyPersona(_Section):
    """v0.16-v0.20 ``[[admin.personas]]``: an Ed25519 public key per admin."""

    id: str
    public_key_path: Path


class LegacyRole(_Section):
    """v0.16-v0.20 ``[[admin.roles]]``: endpoints a persona id may call."""

    id: str
    allowed_endpoints: str


class AdminSettings(_Section):
    """``[admin]``: how admin requests are authenticated and authorised.

    Without an ``[admin]`` section every admin request is denied (the reference allows
    all; see docs/compatibility.md).
    """

    authorization_mode: (
        Literal["InsecureAllowAll", "DenyAll", "AuthenticatedAuthorization"] | None
    ) = None
    authentication: AdminAuthenticationSettings | None = None
    authorization: AdminAuthorizationSettings | None = None
    # v0.16-v0.20 shape
    type: Literal["Simple", "InsecureAllowAll", "DenyAll"] | None = None
    personas: list[LegacyPersona] = Field(default_factory=list)
    roles: list[LegacyRole] = Field(default_factory=list)
    # <= v0.15 shape
    auth_public_key: Path | None = None
    insecure_api: bool | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> AdminSettings:
        shapes = [
            self.authorization_mode is not None,
            self.type is not None,
            self.auth_public_key is not None or self.insecure_api is not None,
        ]
        if sum(shapes) > 1:
            raise ValueError(
                "use one admin configuration form: authorization_mode (v0.21), "
                "type (v0.16-v0.20) or auth_public_key/insecure_api (<= v0.15)"
            )
        if self.authorization_mode == "AuthenticatedAuthorization" and self.authentication is None:
            raise ValueError("AuthenticatedAuthorization needs [admin.authentication.bearer_jwt]")
        if self.type == "Simple" and not self.personas:
            raise ValueError("admin type Simple needs at least one persona")
        return self


# --------------------------------------------------------------------------- storage


class LocalFsKvSettings(_Section):
    """``[storage_backend.backends.local_fs]``."""

    dir_path: Path = Path("/opt/confidential-containers/storage/local_fs")


class PostgresKvSettings(_Section):
    """``[storage_backend.backends.postgres]``."""

    host: str = "localhost"
    port: int = 5432
    db: str = "postgres"
    username: str = "postgres"
    password: SecretStr | None = None


class KvBackendsSettings(_Section):
    """``[storage_backend.backends]``."""

    local_fs: LocalFsKvSettings = Field(default_factory=LocalFsKvSettings)
    postgres: PostgresKvSettings | None = None
    local_json: dict[str, Any] | None = None
    redis: dict[str, Any] | None = None


_KV_TYPES: Final = {
    "memory": "Memory",
    "localfs": "LocalFs",
    "local_fs": "LocalFs",
    "postgres": "Postgres",
    "localjson": "LocalJson",
    "local_json": "LocalJson",
    "redis": "Redis",
}


class StorageBackendSettings(_Section):
    """``[storage_backend]``: Trustee's unified key-value store (v0.20+).

    We keep sessions, policies and reference values in ``[database]``; this section
    decides where ``kvstorage`` resources live: ``LocalFs`` (files, Trustee's flat
    layout), ``Postgres`` (the database given here) or ``Memory``.
    """

    storage_type: Literal["Memory", "LocalFs", "Postgres"] = "Memory"
    backends: KvBackendsSettings = Field(default_factory=KvBackendsSettings)

    @field_validator("storage_type", mode="before")
    @classmethod
    def _normalise(cls, value: Any) -> Any:
        if isinstance(value, str):
            canonical = _KV_TYPES.get(value.lower(), value)
            if canonical in ("LocalJson", "Redis"):
                raise ValueError(
                    f"storage_type {value!r} is not supported; use LocalFs or Postgres "
                    "(sessions always live in [database])"
                )
            return canonical
        return value


#: The ``openanolis/trustee`` fork (the image Alibaba's Helm chart runs) reads these
#: environment variables *over* the file's keys: ``KBS_RESOURCE_STORAGE_ALIYUN_<KEY>``.
ALIYUN_ENV_PREFIX: Final = "KBS_RESOURCE_STORAGE_ALIYUN_"
_ALIYUN_ENV_OVERRIDES: Final = (
    "client_key",
    "kms_instance_id",
    "password",
    "cert_pem",
    "access_key_id",
    "access_key_secret",
    "region_id",
    "endpoint",
    "insecure_skip_tls_verify",
)
#: ... and these only when the file (and the override) leave the key unset; the fork's
#: Helm chart 1.7.x fills them from a Kubernetes Secret.
_ALIYUN_ENV_FALLBACKS: Final = {
    "access_key_id": "ALIYUN_KMS_ACCESS_KEY_ID",
    "access_key_secret": "ALIYUN_KMS_ACCESS_KEY_SECRET",
    "region_id": "ALIYUN_KMS_REGION_ID",
}
#: Keys handed to :class:`AliyunKmsSettings` under the same name when set.
_ALIYUN_PASSTHROUGH: Final = (
    "kms_instance_id",
    "client_key_path",
    "password_path",
    "cert_pem_path",
    "instance_endpoint",
    "region_id",
    "shared_endpoint",
    "shared_network",
    "shared_ca_path",
    "signature_algorithm",
    "credential_type",
    "access_key_id",
    "role_arn",
    "role_session_name",
    "oidc_provider_arn",
    "oidc_token_file_path",
    "ecs_role_name",
    "sts_endpoint",
    "read_gateway",
    "encryption_key_id",
    "recovery_window_days",
    "force_delete",
    "decode_binary_secrets",
    "naming",
    "name_template",
    "tag_repository",
    "tag_type",
    "connect_timeout",
    "read_timeout",
    "max_attempts",
    "backoff_initial",
    "backoff_max",
    "retry_deadline",
    "cache_ttl",
    "cache_max_stale",
    "stale_refresh_interval",
    "negative_cache_ttl",
    "cache_max_entries",
    "list_page_size",
    "max_list_pages",
    "max_resource_bytes",
    "insecure_skip_tls_verify",
    "insecure_shared_gateway_http",
)
_ALIYUN_SECRETS: Final = ("client_key", "password", "access_key_secret", "security_token")
_ALIYUN_KEYS: Final = frozenset((*_ALIYUN_PASSTHROUGH, *_ALIYUN_SECRETS, "cert_pem", "endpoint"))
_ALIYUN_INSECURE: Final = ("insecure_skip_tls_verify", "insecure_shared_gateway_http")


def _is_aliyun(data: Any) -> bool:
    """Whether raw entry ``data`` selects the Aliyun backend (before normalisation)."""
    if not isinstance(data, dict):
        return False
    kind = data.get("storage_backend_type", data.get("type"))
    return isinstance(kind, str) and kind.lower() == "aliyun"


def _bare_endpoint(value: str) -> str:
    """``host[:port]`` from the fork's ``endpoint``, which may carry ``https://``."""
    if value.startswith("http://"):
        raise ValueError("endpoint: the kms gateways are reached over https; give host[:port]")
    return value.removeprefix("https://").rstrip("/")


_RESOURCE_BACKEND_TYPES: Final = {
    "kvstorage": "kvstorage",
    "localfs": "LocalFs",
    "local_fs": "LocalFs",
    "aliyun": "Aliyun",
}


class ResourceBackendSettings(_Section):
    """The keys that choose and configure one resource backend.

    Shared by the ``[[plugins]] name = "resource"`` entry (Trustee's keys) and by each of
    its ``[[plugins.mounts]]`` (ours). ``storage_backend_type`` (``type`` before v0.20):
    ``kvstorage`` (the ``[storage_backend]`` store), ``LocalFs`` (real directories under
    ``dir_path``) or ``Aliyun`` (Alibaba Cloud KMS, keys below and in
    ``docs/backends/aliyun-kms.md``).

    Aliyun keys, in three groups. Trustee's: ``client_key``, ``password``, ``cert_pem``
    (contents, not paths) and ``kms_instance_id``. The ``openanolis/trustee`` fork's:
    ``access_key_id``, ``access_key_secret``, ``region_id``, ``endpoint`` (the instance
    gateway's when a client key is configured, else the shared gateway's) and
    ``insecure_skip_tls_verify``, plus its ``KBS_RESOURCE_STORAGE_ALIYUN_*`` environment
    overrides. Ours: every other field of
    :class:`~storage_backends.aliyun_kms.AliyunKmsSettings`, under the same name. Empty
    strings count as unset (Helm charts render absent values as ``""``).
    """

    storage_backend_type: Literal["kvstorage", "LocalFs", "Aliyun"] = Field(
        default="kvstorage", validation_alias=AliasChoices("storage_backend_type", "type")
    )
    dir_path: Path = Path("/opt/confidential-containers/kbs/repository")

    # ---- Aliyun KMS, Trustee's keys (contents, not paths) --------------------------------
    client_key: SecretStr | None = None
    kms_instance_id: str | None = None
    password: SecretStr | None = None
    cert_pem: str | None = None
    # ---- Aliyun KMS, the openanolis/trustee fork's keys ----------------------------------
    access_key_id: str | None = None
    access_key_secret: SecretStr | None = None
    region_id: str | None = None
    endpoint: str | None = None
    insecure_skip_tls_verify: bool | None = None
    # ---- Aliyun KMS, ours (AliyunKmsSettings; None = its default) ------------------------
    client_key_path: Path | None = None
    password_path: Path | None = None
    cert_pem_path: Path | None = None
    instance_endpoint: str | None = None
    shared_endpoint: str | None = None
    shared_network: Literal["public", "vpc"] | None = None
    shared_ca_path: Path | None = None
    signature_algorithm: SignatureAlgorithm | None = None
    credential_type: CredentialType | None = None
    security_token: SecretStr | None = None
    role_arn: str | None = None
    role_session_name: str | None = None
    oidc_provider_arn: str | None = None
    oidc_token_file_path: Path | None = None
    ecs_role_name: str | None = None
    sts_endpoint: str | None = None
    read_gateway: ReadGateway | None = None
    encryption_key_id: str | None = None
    recovery_window_days: int | None = None
    force_delete: bool | None = None
    decode_binary_secrets: bool | None = None
    naming: NamingMode | None = None
    name_template: str | None = None
    tag_repository: str | None = None
    tag_type: str | None = None
    connect_timeout: float | None = None
    read_timeout: float | None = None
    max_attempts: int | None = None
    backoff_initial: float | None = None
    backoff_max: float | None = None
    retry_deadline: float | None = None
    cache_ttl: float | None = None
    cache_max_stale: float | None = None
    stale_refresh_interval: float | None = None
    negative_cache_ttl: float | None = None
    cache_max_entries: int | None = None
    list_page_size: int | None = None
    max_list_pages: int | None = None
    max_resource_bytes: int | None = None
    insecure_shared_gateway_http: bool | None = None

    @field_validator("storage_backend_type", mode="before")
    @classmethod
    def _normalise(cls, value: Any) -> Any:
        if isinstance(value, str):
            canonical = _RESOURCE_BACKEND_TYPES.get(value.lower())
            if canonical is None:
                raise ValueError(f"resource storage backend {value!r} is not supported")
            return canonical
        return value

    @model_validator(mode="before")
    @classmethod
    def _aliyun_environment(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = {
            key: (None if key in _ALIYUN_KEYS and value == "" else value)
            for key, value in data.items()
        }
        if not _is_aliyun(data):
            return data
        # The fork's overrides win over the file; its ALIYUN_KMS_* variables only fill gaps.
        for key in _ALIYUN_ENV_OVERRIDES:
            value = os.environ.get(ALIYUN_ENV_PREFIX + key.upper())
            if value:
                data[key] = value
        for key, variable in _ALIYUN_ENV_FALLBACKS.items():
            value = os.environ.get(variable)
            if value and data.get(key) is None:
                data[key] = value
        return data

    @model_validator(mode="after")
    def _check_aliyun(self) -> Self:
        if self.storage_backend_type == "Aliyun":
            self.aliyun_kms_settings()  # shape and range checks, no I/O
            return self
        stray = sorted(k for k in _ALIYUN_KEYS if getattr(self, k) not in (None, False))
        if stray:
            raise ValueError(
                f'{", ".join(stray)}: Aliyun KMS keys need storage_backend_type = "Aliyun"'
            )
        return self

    def _aliyun_mount_defaults(self) -> dict[str, Any]:
        """Settings implied by where the backend is mounted (see the mount entry)."""
        return {}

    def aliyun_kms_settings(self) -> AliyunKmsSettings:
        """The Aliyun KMS backend settings these keys describe.

        Raises:
            AliyunKmsConfigError: the keys are incomplete, conflicting or out of range
                (a ``ValueError``; the message names keys, never values).
        """
        values: dict[str, Any] = {
            name: getattr(self, name)
            for name in _ALIYUN_PASSTHROUGH
            if getattr(self, name) is not None
        }
        for name in _ALIYUN_SECRETS:
            secret = getattr(self, name)
            if secret is not None:
                values[name] = secret.get_secret_value()
        instance = bool(self.kms_instance_id) and (
            self.client_key is not None or self.client_key_path is not None
        )
        if self.cert_pem is not None:
            if not instance:
                raise AliyunKmsConfigError(
                    "cert_pem is the kms instance CA and needs the instance gateway "
                    "(kms_instance_id, client_key, password); for a private shared "
                    "gateway's CA use shared_ca_path"
                )
            values["cert_pem"] = self.cert_pem
        if self.endpoint is not None:
            # The fork's one endpoint is the instance gateway's in client-key mode, else
            # the shared gateway's.
            target = "instance_endpoint" if instance else "shared_endpoint"
            if getattr(self, target) is not None:
                raise AliyunKmsConfigError(
                    f"set endpoint (the openanolis/trustee key) or {target}, not both"
                )
            values[target] = _bare_endpoint(self.endpoint)
        values.update(self._aliyun_mount_defaults())
        return AliyunKmsSettings(**values)

    def aliyun_insecure_settings(self) -> list[str]:
        """Names of the Aliyun security-weakening switches that are on."""
        if self.storage_backend_type != "Aliyun":
            return []
        return [name for name in _ALIYUN_INSECURE if getattr(self, name)]


class ResourceMountSettings(ResourceBackendSettings):
    """``[[plugins.mounts]]`` (ours): one more backend, for one ``<repository>/<type>``.

    ``path = "default/aliyun"`` sends ``default/aliyun/<tag>`` to this backend; ``*``
    matches any repository or type (``"*/aliyun"``, ``"default/*"``). Mounts are tried
    in order before the plugin's own backend, which takes everything else. An Aliyun
    mount in ``tag`` naming mode writes and lists under its own path.
    """

    path: str
    storage_backend_type: Literal["kvstorage", "LocalFs", "Aliyun"] = Field(
        validation_alias=AliasChoices("storage_backend_type", "type")
    )

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        parts = value.split("/")
        if len(parts) != 2 or not all(  # noqa: PLR2004 - <repository>/<type>
            part == "*" or _SEGMENT.fullmatch(part) for part in parts
        ):
            raise ValueError(f"mount path {value!r} must be <repository>/<type> ('*' matches any)")
        if parts == ["*", "*"]:
            raise ValueError("mount path */* is the plugin's own backend; mount something narrower")
        return value

    @property
    def repository(self) -> str | None:
        """The repository this mount takes, ``None`` for any."""
        part = self.path.split("/")[0]
        return None if part == "*" else part

    @property
    def resource_type(self) -> str | None:
        """The resource type this mount takes, ``None`` for any."""
        part = self.path.split("/")[1]
        return None if part == "*" else part

    def _aliyun_mount_defaults(self) -> dict[str, Any]:
        # In tag naming mode, writes and list() live under (tag_repository, tag_type);
        # default them to the mount path and refuse values the mount never routes here.
        implied: dict[str, Any] = {}
        for key, part in (("tag_repository", self.repository), ("tag_type", self.resource_type)):
            given = getattr(self, key)
            if part is None:
                continue
            if given is None:
                implied[key] = part
            elif given != part:
                raise AliyunKmsConfigError(
                    f"{key} must match the mount path {self.path} (or be left out)"
                )
        return implied


class ResourcePluginSettings(ResourceBackendSettings):
    """``[[plugins]] name = "resource"``: where resources come from.

    The entry's own backend keys (``storage_backend_type`` and the rest, see
    :class:`ResourceBackendSettings`) choose the default backend; ``mounts`` (ours) put
    other backends in front of it for chosen ``<repository>/<type>`` paths.
    """

    name: Literal["resource"]
    #: Ours: other backends for chosen paths, tried in order before the default.
    mounts: list[ResourceMountSettings] = Field(default_factory=list)

    @field_validator("mounts")
    @classmethod
    def _unique_mounts(cls, value: list[ResourceMountSettings]) -> list[ResourceMountSettings]:
        paths = [mount.path for mount in value]
        duplicated = sorted({path for path in paths if paths.count(path) > 1})
        if duplicated:
            raise ValueError(f"mount path {', '.join(duplicated)} is given more than once")
        return value


class AuditSettings(_Section):
    """``[audit]`` (ours): the hash-chained audit trail (kbs/audit.py).

    Every attestation, release and admin change is recorded. When the record of a
    release or an admin change cannot be written, the operation is refused (503), as
    Vault does; ``insecure_release_without_audit`` releases anyway (logged as an error).
    """

    insecure_release_without_audit: bool = False


class PolicyEngineSettings(_Section):
    """Legacy (<= v0.18) ``[policy_engine]``: a resource policy file installed at start-up."""

    policy_path: Path | None = None


# --------------------------------------------------------------------------- root


class KbsSettings(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_prefix="KBS_",
        env_nested_delimiter="__",
        populate_by_name=True,
        # Errors must not quote the input (it holds passwords and keys): the chained
        # ValidationError of a ConfigError ends up in tracebacks.
        hide_input_in_errors=True,
    )

    #: ``production`` refuses our ``insecure_*`` settings; ``development`` allows them.
    environment: Literal["production", "development"] = "production"
    #: Where default locations (SQLite file, resources, generated keys) live.
    data_dir: Path = Path("data")
    #: Trustee key; sessions always live in ``[database]`` here.
    session_storage_type: str | None = None
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    http_server: HttpServerSettings = Field(default_factory=HttpServerSettings)
    attestation_token: AttestationTokenSettings = Field(default_factory=AttestationTokenSettings)
    attestation_service: AttestationServiceSettings = Field(
        default_factory=AttestationServiceSettings
    )
    admin: AdminSettings | None = None
    storage_backend: StorageBackendSettings | None = None
    plugins: list[ResourcePluginSettings] = Field(default_factory=list)
    policy_engine: PolicyEngineSettings | None = None
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    #: Ours: previous values kept per resource for rollback (file, database and memory
    #: backends; KMS keeps its own versions). 0 keeps none.
    keep_resource_versions: int = Field(default=5, ge=0, le=100)
    #: Ours: the audit trail.
    audit: AuditSettings = Field(default_factory=AuditSettings)

    @field_validator("plugins", mode="before")
    @classmethod
    def _known_plugins(cls, value: Any) -> Any:
        if isinstance(value, list):
            for entry in value:
                name = entry.get("name") if isinstance(entry, dict) else None
                if name != "resource":
                    raise ValueError(f"plugin {name!r} is not supported (only 'resource')")
        return value

    @model_validator(mode="after")
    def _production_refuses_insecure(self) -> KbsSettings:
        if (
            self.environment == "production"
            and self.attestation_service.insecure_allow_sample_evidence
        ):
            raise ValueError(
                "attestation_service.insecure_allow_sample_evidence is refused when "
                'environment = "production"'
            )
        dcap = self.attestation_service.verifier_config.dcap_verifier
        if self.environment == "production" and dcap.insecure_root_ca_path is not None:
            raise ValueError(
                "attestation_service.verifier_config.dcap_verifier.insecure_root_ca_path is "
                'refused when environment = "production"'
            )
        if self.environment == "production" and self.audit.insecure_release_without_audit:
            raise ValueError(
                'audit.insecure_release_without_audit is refused when environment = "production"'
            )
        if len([p for p in self.plugins if p.name == "resource"]) > 1:
            raise ValueError("only one resource plugin may be configured")
        if self.environment == "production":
            for where, names in self._aliyun_insecure():
                raise ValueError(
                    f'{where}: {", ".join(names)} is refused when environment = "production"'
                )
        return self

    def _aliyun_insecure(self) -> list[tuple[str, list[str]]]:
        """``(where, switches)`` for each Aliyun backend with an insecure switch on."""
        plugin = self.resource_plugin
        if plugin is None:
            return []
        entries: list[tuple[str, ResourceBackendSettings]] = [("plugins.resource", plugin)]
        entries += [(f"plugins.resource.mounts[{m.path}]", m) for m in plugin.mounts]
        found = []
        for where, entry in entries:
            names = entry.aliyun_insecure_settings()
            if names:
                found.append((where, names))
        return found

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment variables override the file (passed as init values)."""
        del settings_cls, dotenv_settings, file_secret_settings
        return (env_settings, init_settings)

    # ------------------------------------------------------------------ derived

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL of the database, before driver selection."""
        if self.database.url is not None:
            return self.database.url.get_secret_value()
        backend = self.storage_backend
        if backend is not None and backend.storage_type == "Postgres":
            pg = backend.backends.postgres or PostgresKvSettings()
            password = pg.password.get_secret_value() if pg.password else ""
            auth = f"{pg.username}:{password}" if password else pg.username
            return f"postgresql://{auth}@{pg.host}:{pg.port}/{pg.db}"
        return f"sqlite:///{(self.data_dir / 'kbs.db').as_posix()}"

    @property
    def resource_plugin(self) -> ResourcePluginSettings | None:
        """The resource plugin section, if configured."""
        return next((p for p in self.plugins if p.name == "resource"), None)

    def insecure_settings(self) -> list[str]:
        """Names of the security-weakening settings that are on (logged at start-up)."""
        found = []
        if self.http_server.insecure_http:
            found.append("http_server.insecure_http")
        if self.attestation_token.insecure_header_jwk:
            found.append("attestation_token.insecure_header_jwk")
        if self.attestation_service.insecure_allow_sample_evidence:
            found.append("attestation_service.insecure_allow_sample_evidence")
        if self.attestation_service.verifier_config.dcap_verifier.insecure_root_ca_path:
            found.append(
                "attestation_service.verifier_config.dcap_verifier.insecure_root_ca_path: "
                "tdx quotes are checked against a private root ca, not intel's"
            )
        if self.audit.insecure_release_without_audit:
            found.append("audit.insecure_release_without_audit")
        admin = self.admin
        if admin is not None and (
            admin.authorization_mode == "InsecureAllowAll"
            or admin.type == "InsecureAllowAll"
            or admin.insecure_api
        ):
            found.append("admin: every admin request is allowed")
        found += [f"{where}.{name}" for where, names in self._aliyun_insecure() for name in names]
        return found


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key")
        else:
            lines.append(f"{loc}: {err['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(
    path: Path | None = None, *, overrides: dict[str, Any] | None = None
) -> KbsSettings:
    """Load settings from a TOML file (or ``$KBS_CONFIG_FILE``) plus the environment.

    Args:
        path: the TOML file; ``None`` reads ``$KBS_CONFIG_FILE`` if set, else defaults.
        overrides: values applied on top of the file (used by ``--dev``).

    Raises:
        ConfigError: the file is unreadable, not TOML, or fails validation.
    """
    if path is None and os.environ.get(CONFIG_FILE_ENV):
        path = Path(os.environ[CONFIG_FILE_ENV])
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from exc
    if overrides:
        data = _deep_merge(data, overrides)
    try:
        return KbsSettings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from exc


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def development_settings(data_dir: Path = Path("data")) -> dict[str, Any]:
    """The embedded development profile, as overrides for :func:`load_settings`.

    SQLite and resource files under ``data_dir``, plain HTTP on 127.0.0.1:8080, the
    sample TEE allowed, and admin requests authenticated with a key pair generated under
    ``data_dir/admin`` (see ``kbs serve --dev``).
    """
    return {
        "environment": "development",
        "data_dir": str(data_dir),
        "http_server": {"sockets": ["127.0.0.1:8080"], "insecure_http": True},
        "attestation_service": {"insecure_allow_sample_evidence": True},
        "plugins": [
            {
                "name": "resource",
                "type": "LocalFs",
                "dir_path": str(data_dir / "repository"),
            }
        ],
    }
