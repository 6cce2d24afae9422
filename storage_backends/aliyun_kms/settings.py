# SPDX-License-Identifier: Apache-2.0
"""Settings of the Aliyun KMS backend: a frozen dataclass the app's config is mapped onto.

The field names accept Trustee's resource-plugin keys as they are (``client_key``,
``password``, ``cert_pem`` as *contents*, ``kms_instance_id``) plus file-path variants
(``client_key_path``, ``password_path``, ``cert_pem_path``) and the shared-gateway keys of
the ``openanolis/trustee`` fork (``access_key_id``, ``access_key_secret``, ``region_id``,
``insecure_skip_tls_verify``). ``__post_init__`` checks shapes and ranges only; files are
read when the backend is built (:meth:`AliyunKmsSettings.read_instance_material`).

Secret-bearing fields are excluded from ``repr``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from storage_backends.aliyun_kms.naming import TagNaming, validate_template
from storage_backends.errors import InvalidResourcePathError, StorageError

_logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CACHE_MAX_STALE",
    "DEFAULT_CACHE_TTL",
    "KMS_MAX_SECRET_DATA_BYTES",
    "AliyunKmsConfigError",
    "AliyunKmsSettings",
    "CredentialType",
    "InstanceMaterial",
    "NamingMode",
    "ReadGateway",
]

NamingMode = Literal["tag", "template"]
ReadGateway = Literal["auto", "instance", "shared"]
CredentialType = Literal[
    "access_key", "sts", "ram_role_arn", "ecs_ram_role", "oidc_role_arn", "default"
]
SignatureAlgorithm = Literal["ACS3-HMAC-SHA256", "v2"]

#: KMS limit on ``SecretData`` (CreateSecret / PutSecretValue API reference).
KMS_MAX_SECRET_DATA_BYTES: Final = 30_720
#: Seconds a fetched value is served without asking KMS.
DEFAULT_CACHE_TTL: Final = 300.0
#: Seconds past the TTL a value may still be served while KMS throttles or is down.
DEFAULT_CACHE_MAX_STALE: Final = 3600.0
#: KMS accepts a recovery window of 7 to 30 days (DeleteSecret API reference).
_RECOVERY_WINDOW_RANGE: Final = range(7, 31)
#: ListSecrets accepts page sizes 1..100.
_PAGE_SIZE_RANGE: Final = range(1, 101)
#: Cap on the files we read (client key JSON, password, CA bundle).
MAX_MATERIAL_FILE_BYTES: Final = 256 * 1024


class AliyunKmsConfigError(StorageError, ValueError):
    """The Aliyun KMS backend is misconfigured; raised at construction, never per request."""


@dataclass(frozen=True, slots=True)
class InstanceMaterial:
    """Instance gateway credentials, read and ready to use."""

    client_key_json: str = field(repr=False)
    password: str = field(repr=False)
    ca_pem: str | None = field(repr=False)


def _read_text(path: Path, what: str) -> str:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_MATERIAL_FILE_BYTES + 1)
    except OSError as exc:
        raise AliyunKmsConfigError(
            f"cannot read aliyun kms {what} file {path}: {exc.strerror}"
        ) from None
    if len(raw) > MAX_MATERIAL_FILE_BYTES:
        raise AliyunKmsConfigError(f"aliyun kms {what} file {path} is too large")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AliyunKmsConfigError(f"aliyun kms {what} file {path} is not UTF-8 text") from None


def _one_of(value: str | None, path: Path | None, key: str) -> None:
    if value is not None and path is not None:
        raise AliyunKmsConfigError(f"set either {key} or {key}_path, not both")


@dataclass(frozen=True, slots=True, kw_only=True)
class AliyunKmsSettings:
    """Everything the Aliyun KMS backend needs; build it from the app's settings.

    Gateways: the instance gateway is used when ``kms_instance_id``, a client key and its
    password are set; the shared gateway when ``credential_type`` is set (or
    ``access_key_id``/``access_key_secret``, which imply ``access_key``/``sts``). Reads go
    to the instance gateway when it is configured (``read_gateway="auto"``); writes, deletes
    and listing always go to the shared gateway, which is the only one offering them.
    """

    # ---- dedicated KMS instance gateway (Trustee's keys) ---------------------------------
    #: KMS instance id ``kst-…``; also the ``DKMSInstanceId`` new secrets are created in.
    kms_instance_id: str | None = None
    #: Client key JSON *content* ``{"KeyId": "KAAP.…", "PrivateKeyData": "…"}``.
    client_key: str | None = field(default=None, repr=False)
    #: Path of ``clientKey_<KeyId>.json`` (instead of ``client_key``).
    client_key_path: Path | None = None
    #: Client key password *content* (a trailing newline is ignored).
    password: str | None = field(default=None, repr=False)
    #: Path of ``clientKey_<KeyId>_Password.txt`` (or a ``{"ClientKeyPassword": …}`` JSON file).
    password_path: Path | None = None
    #: Instance CA PEM *content* (``PrivateKmsCA_<kst>.pem``).
    cert_pem: str | None = field(default=None, repr=False)
    #: Path of the instance CA PEM (instead of ``cert_pem``).
    cert_pem_path: Path | None = None
    #: ``host[:port]`` override; default ``<kms_instance_id>.cryptoservice.kms.aliyuncs.com``.
    instance_endpoint: str | None = None

    # ---- shared KMS gateway (OpenAPI 2016-01-20) -----------------------------------------
    #: Region, e.g. ``cn-hangzhou``; the endpoint becomes ``kms[-vpc].<region>.aliyuncs.com``.
    region_id: str | None = None
    #: ``host[:port]`` override of the shared gateway (private clouds, tests).
    shared_endpoint: str | None = None
    #: ``vpc`` selects ``kms-vpc.<region>.aliyuncs.com`` (ignored with ``shared_endpoint``).
    shared_network: Literal["public", "vpc"] = "public"
    #: Extra CA file (PEM) for the shared gateway (private clouds); public CAs stay trusted.
    shared_ca_path: Path | None = None
    #: ``ACS3-HMAC-SHA256`` (default, header signature) or ``v2`` (HMAC-SHA1 RPC).
    signature_algorithm: SignatureAlgorithm = "ACS3-HMAC-SHA256"
    #: How the shared gateway authenticates (alibabacloud-credentials provider type).
    credential_type: CredentialType | None = None
    access_key_id: str | None = None
    access_key_secret: str | None = field(default=None, repr=False)
    security_token: str | None = field(default=None, repr=False)
    #: ``ram_role_arn`` / ``oidc_role_arn``: the role to assume.
    role_arn: str | None = None
    role_session_name: str = "confidential-kbs"
    #: ``oidc_role_arn`` (ACK RRSA): the OIDC provider ARN and the projected token file.
    #: Unset values fall back to ``ALIBABA_CLOUD_OIDC_PROVIDER_ARN`` / ``…_OIDC_TOKEN_FILE``.
    oidc_provider_arn: str | None = None
    oidc_token_file_path: Path | None = None
    #: ``ecs_ram_role``: the instance role name (asked from the metadata service if unset).
    ecs_role_name: str | None = None
    #: STS endpoint for ``ram_role_arn`` / ``oidc_role_arn`` (default ``sts.aliyuncs.com``).
    sts_endpoint: str | None = None

    # ---- routing and writes --------------------------------------------------------------
    read_gateway: ReadGateway = "auto"
    #: Key that encrypts secrets this backend creates (default: the KMS default key).
    encryption_key_id: str | None = None
    #: Days a deleted secret can be restored (``RecoveryWindowInDays``, 7..30).
    recovery_window_days: int = 30
    #: Delete without a recovery window (``ForceDeleteWithoutRecovery``) unless told otherwise.
    force_delete: bool = False
    #: Base64-decode ``binary`` secrets (the reference returns their text unchanged).
    decode_binary_secrets: bool = True

    # ---- naming --------------------------------------------------------------------------
    naming: NamingMode = "tag"
    #: ``template`` mode: the secret name pattern (see :mod:`.naming`).
    name_template: str = "{repository}/{type}/{tag}"
    #: ``tag`` mode: the mount that list() reports and writes are accepted for.
    tag_repository: str = "default"
    tag_type: str = "aliyun"

    # ---- failure behaviour ---------------------------------------------------------------
    #: Seconds to open a connection, and to wait for a response.
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    #: Attempts per KMS operation (1 = no retry); retried: throttling, 5xx, network errors.
    max_attempts: int = 4
    #: Exponential backoff with full jitter: ``uniform(0, min(max, initial * 2**n))`` seconds.
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    #: Seconds one operation may take across all attempts and backoff sleeps.
    retry_deadline: float = 20.0
    #: Seconds a value is served from memory without a KMS call.
    cache_ttl: float = DEFAULT_CACHE_TTL
    #: Seconds past ``cache_ttl`` the last good value is served while KMS fails transiently.
    cache_max_stale: float = DEFAULT_CACHE_MAX_STALE
    #: Seconds to wait before asking KMS again after a failed refresh (stale value served).
    stale_refresh_interval: float = 10.0
    #: Seconds a "no such secret" answer is remembered (0 disables the negative cache).
    negative_cache_ttl: float = 5.0
    #: Most secrets (and negative answers) kept in memory; least recently used go first.
    cache_max_entries: int = 1024
    #: ListSecrets page size (1..100) and the most pages one list() reads.
    list_page_size: int = 100
    max_list_pages: int = 100
    #: Cap on one resource, raw bytes (KMS stores at most 30,720 bytes of ``SecretData``).
    max_resource_bytes: int = KMS_MAX_SECRET_DATA_BYTES

    # ---- insecure switches (testing only; each logs a WARNING) ---------------------------
    #: Do not verify the gateways' TLS certificates.
    insecure_skip_tls_verify: bool = False
    #: Talk to the shared gateway over plain HTTP (secret values travel unencrypted).
    insecure_shared_gateway_http: bool = False

    def __post_init__(self) -> None:
        """Check shapes and ranges (no I/O).

        Raises:
            AliyunKmsConfigError: a value is out of range or a combination is incomplete.
        """
        self._check_instance()
        self._check_shared()
        if not (self.instance_configured or self.shared_configured):
            raise AliyunKmsConfigError(
                "aliyun kms backend needs the kms instance gateway (kms_instance_id, "
                "client_key, password, cert_pem) or shared gateway credentials "
                "(credential_type / access_key_id, region_id or shared_endpoint)"
            )
        if self.read_gateway == "instance" and not self.instance_configured:
            raise AliyunKmsConfigError(
                "read_gateway=instance needs the kms instance gateway settings"
            )
        if self.read_gateway == "shared" and not self.shared_configured:
            raise AliyunKmsConfigError("read_gateway=shared needs shared gateway credentials")
        self._check_numbers()
        self._check_naming()

    # -- derived ---------------------------------------------------------------------------
    @property
    def instance_configured(self) -> bool:
        """Whether the instance gateway is configured."""
        return bool(self.kms_instance_id) and self._has_client_key and self._has_password

    @property
    def shared_configured(self) -> bool:
        """Whether the shared gateway is configured."""
        return self.effective_credential_type is not None

    @property
    def effective_credential_type(self) -> CredentialType | None:
        """``credential_type``, or the type implied by an access key pair."""
        if self.credential_type is not None:
            return self.credential_type
        if self.access_key_id or self.access_key_secret:
            return "sts" if self.security_token else "access_key"
        return None

    @property
    def _has_client_key(self) -> bool:
        return self.client_key is not None or self.client_key_path is not None

    @property
    def _has_password(self) -> bool:
        return self.password is not None or self.password_path is not None

    # -- checks ----------------------------------------------------------------------------
    def _check_instance(self) -> None:
        _one_of(self.client_key, self.client_key_path, "client_key")
        _one_of(self.password, self.password_path, "password")
        _one_of(self.cert_pem, self.cert_pem_path, "cert_pem")
        given = {
            "kms_instance_id": bool(self.kms_instance_id),
            "client_key": self._has_client_key,
            "password": self._has_password,
        }
        # kms_instance_id alone is fine: it names the instance new secrets are created in.
        if (given["client_key"] or given["password"]) and not all(given.values()):
            missing = ", ".join(name for name, ok in given.items() if not ok)
            raise AliyunKmsConfigError(
                f"aliyun kms instance gateway settings incomplete: missing {missing}"
            )
        if self.instance_configured and not (
            self.cert_pem is not None
            or self.cert_pem_path is not None
            or self.insecure_skip_tls_verify
        ):
            raise AliyunKmsConfigError(
                "aliyun kms instance gateway needs the instance CA (cert_pem or cert_pem_path)"
            )
        if self.instance_endpoint is not None and (
            "/" in self.instance_endpoint or not self.instance_endpoint
        ):
            raise AliyunKmsConfigError("instance_endpoint must be host[:port], without a scheme")

    def _check_shared(self) -> None:
        kind = self.effective_credential_type
        if kind is None:
            return
        if not (self.region_id or self.shared_endpoint):
            raise AliyunKmsConfigError(
                "aliyun kms shared gateway needs region_id or shared_endpoint"
            )
        if self.shared_endpoint is not None and "/" in self.shared_endpoint:
            raise AliyunKmsConfigError("shared_endpoint must be host[:port], without a scheme")
        needs: dict[str, tuple[str, ...]] = {
            "access_key": ("access_key_id", "access_key_secret"),
            "sts": ("access_key_id", "access_key_secret", "security_token"),
            "ram_role_arn": ("access_key_id", "access_key_secret", "role_arn"),
            "ecs_ram_role": (),
            "oidc_role_arn": (),
            "default": (),
        }
        missing = [name for name in needs[kind] if not getattr(self, name)]
        if missing:
            raise AliyunKmsConfigError(
                f"aliyun kms credential_type={kind} needs {', '.join(missing)}"
            )

    def _check_numbers(self) -> None:
        positive = {
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "backoff_initial": self.backoff_initial,
            "backoff_max": self.backoff_max,
            "retry_deadline": self.retry_deadline,
        }
        non_negative = {
            "cache_ttl": self.cache_ttl,
            "cache_max_stale": self.cache_max_stale,
            "stale_refresh_interval": self.stale_refresh_interval,
            "negative_cache_ttl": self.negative_cache_ttl,
        }
        for name, value in positive.items():
            if not math.isfinite(value) or value <= 0:
                raise AliyunKmsConfigError(f"{name} must be a positive number of seconds")
        for name, value in non_negative.items():
            if not math.isfinite(value) or value < 0:
                raise AliyunKmsConfigError(f"{name} must be zero or a positive number of seconds")
        if self.max_attempts < 1:
            raise AliyunKmsConfigError("max_attempts must be at least 1")
        if self.recovery_window_days not in _RECOVERY_WINDOW_RANGE:
            raise AliyunKmsConfigError("recovery_window_days must be between 7 and 30")
        if self.list_page_size not in _PAGE_SIZE_RANGE:
            raise AliyunKmsConfigError("list_page_size must be between 1 and 100")
        if self.max_list_pages < 1 or self.cache_max_entries < 1:
            raise AliyunKmsConfigError("max_list_pages and cache_max_entries must be at least 1")
        if not 0 < self.max_resource_bytes <= KMS_MAX_SECRET_DATA_BYTES:
            raise AliyunKmsConfigError(
                f"max_resource_bytes must be 1..{KMS_MAX_SECRET_DATA_BYTES} (the kms limit)"
            )

    def _check_naming(self) -> None:
        if self.naming == "template":
            try:
                validate_template(self.name_template)
            except ValueError as exc:
                raise AliyunKmsConfigError(str(exc)) from None
        try:
            TagNaming(repository=self.tag_repository, type_=self.tag_type)
        except InvalidResourcePathError:
            raise AliyunKmsConfigError(
                "tag_repository and tag_type must be valid path segments"
            ) from None

    # -- I/O -------------------------------------------------------------------------------
    def read_instance_material(self) -> InstanceMaterial:
        """Return the client key JSON, password and CA, reading the ``*_path`` files.

        Raises:
            AliyunKmsConfigError: the instance gateway is not configured or a file is unreadable.
        """
        if not self.instance_configured:
            raise AliyunKmsConfigError("aliyun kms instance gateway is not configured")
        client_key = (
            self.client_key
            if self.client_key is not None
            else _read_text(self._require(self.client_key_path), "client key")
        )
        password = (
            self.password
            if self.password is not None
            else _read_text(self._require(self.password_path), "client key password")
        )
        if self.cert_pem is not None:
            ca_pem: str | None = self.cert_pem
        elif self.cert_pem_path is not None:
            ca_pem = _read_text(self.cert_pem_path, "instance CA")
        else:
            ca_pem = None
        return InstanceMaterial(client_key_json=client_key, password=password, ca_pem=ca_pem)

    @staticmethod
    def _require(path: Path | None) -> Path:
        assert path is not None  # instance_configured guarantees content or path
        return path
