# SPDX-License-Identifier: Apache-2.0
"""The shared KMS gateway (OpenAPI ``2016-01-20``) through ``alibabacloud-kms20160120``.

The SDK and ``alibabacloud-credentials`` are imported lazily, in
:meth:`SharedGatewayClient.from_settings`, so the rest of ``storage_backends`` imports
without them; a missing SDK is a clear :class:`~.settings.AliyunKmsConfigError` at startup.

Why the sync SDK calls run in ``asyncio.to_thread``: the SDK's async path does honour the
``ca`` file (checked against the emulator), but it opens a new ``aiohttp`` session, hence a
new TCP and TLS handshake, for every request, and its built-in backoff sleeps with the
blocking ``time.sleep``. The sync path keeps a pooled ``requests`` session per endpoint,
honours the CA file and the connect/read timeouts, and in a worker thread never blocks the
event loop. SDK retries are switched off (``RetryOptions(retryable=False)``); the backend
retries with its own bounded, jittered, non-blocking backoff. Every call also has an
overall ``asyncio`` timeout (the worker thread itself ends by the SDK's own timeouts).

Operations (all that the backend needs): GetSecretValue (current, or by ``VersionId``),
CreateSecret, PutSecretValue, DeleteSecret (``RecoveryWindowInDays`` /
``ForceDeleteWithoutRecovery``), RestoreSecret, ListSecrets, and for the admin life cycle
DescribeSecret, ListSecretVersionIds and UpdateSecretVersionStage. They also manage
secrets stored in a dedicated KMS instance, which is why writes go through this gateway
even when reads use the instance gateway.

Credentials (``credential_type``): ``access_key``, ``sts``, ``ram_role_arn``,
``ecs_ram_role``, ``oidc_role_arn`` (ACK RRSA), or ``default`` (the SDK's default chain,
which may ask the ECS metadata service; it must be chosen explicitly).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from storage_backends.aliyun_kms.api import (
    ErrorKind,
    KmsObserver,
    KmsRequestError,
    NoKmsObserver,
    SecretDescription,
    SecretPage,
    SecretSummary,
    SecretValue,
    SecretVersion,
    SecretVersionPage,
    classify_response_error,
    observe_kms_call,
)
from storage_backends.aliyun_kms.settings import AliyunKmsConfigError, AliyunKmsSettings

_logger = logging.getLogger(__name__)

__all__ = ["API_VERSION", "SharedGatewayClient"]

API_VERSION: Final = "2016-01-20"
_GATEWAY: Final = "shared"
_MS: Final = 1000
#: Seconds added to the SDK's own connect + read timeouts for the overall asyncio timeout.
_CALL_TIMEOUT_MARGIN: Final = 1.0
_T = TypeVar("_T")

#: Third-party loggers that can print request URLs or headers at DEBUG level: urllib3 logs
#: every URL (with the v2 signature, the query carries ``SecurityToken``; the RRSA provider's
#: STS ``AssumeRoleWithOIDC`` call carries the pod's ``OIDCToken``), and the SDK core logs
#: all headers when ``DEBUG=sdk`` is set.
_REDACTED_LOGGERS: Final = ("urllib3.connectionpool", "darabonba-core")
_REDACTIONS: Final = (
    (re.compile(r"(SecurityToken|Signature|OIDCToken)=[^&\s\"']*"), r"\1=<redacted>"),
    (
        re.compile(r"(x-acs-security-token|authorization)(\s*:\s*)[^\n]*", re.IGNORECASE),
        r"\1\2<redacted>",
    ),
)


class _RedactCredentials(logging.Filter):
    """Rewrites records of third-party HTTP loggers so tokens and signatures never reach logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = message
        for pattern, replacement in _REDACTIONS:
            redacted = pattern.sub(replacement, redacted)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _install_log_redaction() -> None:
    for name in _REDACTED_LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(f, _RedactCredentials) for f in target.filters):
            target.addFilter(_RedactCredentials())


@dataclass(frozen=True, slots=True)
class _Sdk:
    """The SDK names we use, imported once."""

    kms_client: Any
    models: Any
    config: Any
    runtime_options: Any
    retry_options: Any
    credential_client: Any
    credential_config: Any
    response_exception: type[BaseException]
    tea_exception: type[BaseException]
    credential_exception: type[BaseException]


def _import_sdk() -> _Sdk:
    """Import the Alibaba Cloud SDK (lazily: only the shared gateway needs it).

    Raises:
        AliyunKmsConfigError: the SDK packages are not installed.
    """
    try:
        from alibabacloud_credentials.client import Client as CredentialClient  # noqa: PLC0415
        from alibabacloud_credentials.exceptions import CredentialException  # noqa: PLC0415
        from alibabacloud_credentials.models import Config as CredentialConfig  # noqa: PLC0415
        from alibabacloud_kms20160120 import models  # noqa: PLC0415
        from alibabacloud_kms20160120.client import Client as KmsClient  # noqa: PLC0415
        from alibabacloud_tea_openapi.utils_models import Config  # noqa: PLC0415
        from darabonba.exceptions import ResponseException  # noqa: PLC0415
        from darabonba.policy.retry import RetryOptions  # noqa: PLC0415
        from darabonba.runtime import RuntimeOptions  # noqa: PLC0415
        from Tea.exceptions import TeaException  # noqa: PLC0415
    except ImportError as exc:
        raise AliyunKmsConfigError(
            "the aliyun kms shared gateway needs the packages alibabacloud-kms20160120 "
            f"and alibabacloud-credentials ({exc.name} is missing)"
        ) from None
    return _Sdk(
        kms_client=KmsClient,
        models=models,
        config=Config,
        runtime_options=RuntimeOptions,
        retry_options=RetryOptions,
        credential_client=CredentialClient,
        credential_config=CredentialConfig,
        response_exception=ResponseException,
        tea_exception=TeaException,
        credential_exception=CredentialException,
    )


def _build_credential(sdk: _Sdk, settings: AliyunKmsSettings) -> Any:
    """Build the ``alibabacloud-credentials`` client for ``settings.credential_type``.

    Nothing is fetched here: role and metadata providers fetch on the first KMS call.

    Raises:
        AliyunKmsConfigError: the provider rejects its parameters.
    """
    kind = settings.effective_credential_type
    http = {
        "timeout": int(settings.read_timeout * _MS),
        "connect_timeout": int(settings.connect_timeout * _MS),
    }
    try:
        if kind == "default":
            _logger.info(
                "aliyun kms: using the default credential chain (env, files, ECS metadata)"
            )
            return sdk.credential_client()
        if kind == "access_key":
            config = sdk.credential_config(
                type="access_key",
                access_key_id=settings.access_key_id,
                access_key_secret=settings.access_key_secret,
            )
        elif kind == "sts":
            config = sdk.credential_config(
                type="sts",
                access_key_id=settings.access_key_id,
                access_key_secret=settings.access_key_secret,
                security_token=settings.security_token,
            )
        elif kind == "ram_role_arn":
            config = sdk.credential_config(
                type="ram_role_arn",
                access_key_id=settings.access_key_id,
                access_key_secret=settings.access_key_secret,
                security_token=settings.security_token,
                role_arn=settings.role_arn,
                role_session_name=settings.role_session_name,
                sts_endpoint=settings.sts_endpoint,
                **http,
            )
        elif kind == "ecs_ram_role":
            config = sdk.credential_config(
                type="ecs_ram_role", role_name=settings.ecs_role_name, **http
            )
        elif kind == "oidc_role_arn":
            config = sdk.credential_config(
                type="oidc_role_arn",
                role_arn=settings.role_arn,
                oidc_provider_arn=settings.oidc_provider_arn,
                oidc_token_file_path=(
                    str(settings.oidc_token_file_path) if settings.oidc_token_file_path else None
                ),
                role_session_name=settings.role_session_name,
                sts_endpoint=settings.sts_endpoint,
                **http,
            )
        else:  # pragma: no cover - settings validation leaves no other value
            raise AliyunKmsConfigError("aliyun kms shared gateway has no credential_type")
        return sdk.credential_client(config)
    except (ValueError, TypeError, sdk.credential_exception) as exc:
        # Provider messages name missing parameters, never their values; keep only the type.
        raise AliyunKmsConfigError(
            f"aliyun kms credential_type={kind} is incomplete or invalid ({type(exc).__name__})"
        ) from None


class SharedGatewayClient:
    """Secret life cycle through the shared KMS gateway (a :class:`~.api.SecretManager`)."""

    gateway = _GATEWAY

    def __init__(
        self,
        sdk_client: Any,
        *,
        sdk: _Sdk,
        connect_timeout: float,
        read_timeout: float,
        ignore_ssl: bool = False,
        description: str = "shared gateway",
        observer: KmsObserver | None = None,
    ) -> None:
        """Wrap an ``alibabacloud_kms20160120.client.Client``; prefer :meth:`from_settings`.

        ``observer`` is told about every call (for metrics).
        """
        self._client = sdk_client
        self._observer: KmsObserver = observer or NoKmsObserver()
        self._sdk = sdk
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._ignore_ssl = ignore_ssl
        self._description = description
        # A credential refresh (STS/OIDC/metadata) may precede the KMS request itself.
        self._call_timeout = 2 * (connect_timeout + read_timeout) + _CALL_TIMEOUT_MARGIN

    @classmethod
    def from_settings(
        cls, settings: AliyunKmsSettings, *, observer: KmsObserver | None = None
    ) -> SharedGatewayClient:
        """Build the SDK client for ``settings`` (no request is sent).

        ``observer`` is told about every call (for metrics).

        Raises:
            AliyunKmsConfigError: the SDK is missing or the credentials are incomplete.
        """
        sdk = _import_sdk()
        _install_log_redaction()
        credential = _build_credential(sdk, settings)
        protocol = "http" if settings.insecure_shared_gateway_http else "https"
        if settings.insecure_shared_gateway_http:
            _logger.warning(
                "aliyun kms: insecure_shared_gateway_http is on: secrets travel unencrypted"
            )
        config = sdk.config(
            credential=credential,
            region_id=settings.region_id,
            endpoint=settings.shared_endpoint,
            network="vpc" if settings.shared_network == "vpc" else None,
            protocol=protocol,
            ca=str(settings.shared_ca_path) if settings.shared_ca_path else None,
            read_timeout=int(settings.read_timeout * _MS),
            connect_timeout=int(settings.connect_timeout * _MS),
            signature_algorithm=settings.signature_algorithm,
            # We retry ourselves, without blocking the event loop.
            retry_options=sdk.retry_options({"retryable": False}),
            tls_min_version="TLSv1.2",
            user_agent="confidential-kbs",
        )
        try:
            client = sdk.kms_client(config)
        except Exception as exc:  # noqa: BLE001 - the SDK raises bare Tea/Dara errors
            raise AliyunKmsConfigError(
                f"aliyun kms shared gateway client could not be built ({type(exc).__name__})"
            ) from None
        where = settings.shared_endpoint or f"region {settings.region_id}"
        auth = settings.effective_credential_type
        return cls(
            client,
            sdk=sdk,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            ignore_ssl=settings.insecure_skip_tls_verify,
            description=f"shared gateway {where} ({protocol}, {auth})",
            observer=observer,
        )

    def __repr__(self) -> str:
        """Describe the endpoint and credential type only."""
        return f"SharedGatewayClient({self._description})"

    async def aclose(self) -> None:
        """Nothing to release: the SDK pools connections process-wide."""

    # -- plumbing --------------------------------------------------------------------------
    def _runtime(self) -> Any:
        return self._sdk.runtime_options(
            read_timeout=int(self._read_timeout * _MS),
            connect_timeout=int(self._connect_timeout * _MS),
            ignore_ssl=self._ignore_ssl,
            autoretry=False,
        )

    async def _run(self, operation: str, call: Callable[[], _T]) -> _T:
        try:
            result = await self._run_once(operation, call)
        except KmsRequestError as err:
            observe_kms_call(self._observer, operation, err)
            raise
        observe_kms_call(self._observer, operation, None)
        return result

    async def _run_once(self, operation: str, call: Callable[[], _T]) -> _T:
        def guarded() -> _T:
            try:
                return call()
            except Exception as exc:  # noqa: BLE001 - every SDK failure is translated
                error = self._translate(operation, exc)
            # Raised outside the except block, so the SDK exception (whose text may quote
            # the request URL) is not even kept as __context__.
            raise error

        try:
            async with asyncio.timeout(self._call_timeout):
                return await asyncio.to_thread(guarded)
        except TimeoutError:
            raise KmsRequestError(
                gateway=_GATEWAY,
                operation=operation,
                kind=ErrorKind.UNAVAILABLE,
                detail="timed out",
            ) from None

    def _translate(self, operation: str, exc: Exception) -> KmsRequestError:
        """Turn an SDK exception into a :class:`KmsRequestError` without its text.

        SDK exception texts can quote request URLs (with the v2 signature, the query string
        carries ``SecurityToken``), so only codes, statuses and request ids are kept.
        """
        if isinstance(exc, KmsRequestError):
            return exc
        if isinstance(exc, self._sdk.response_exception):
            status = getattr(exc, "status_code", None)
            code = getattr(exc, "code", None)
            request_id = getattr(exc, "request_id", None)
            retry_after_ms = getattr(exc, "retry_after", None)
            return KmsRequestError(
                gateway=_GATEWAY,
                operation=operation,
                kind=classify_response_error(code, status),
                code=code or None,
                http_status=status if isinstance(status, int) else None,
                request_id=request_id if request_id not in (None, "None") else None,
                retry_after=retry_after_ms / _MS if isinstance(retry_after_ms, int) else None,
            )
        if hasattr(exc, "inner_exception") or isinstance(exc, OSError):
            # UnretryableException wraps connection errors, timeouts and unparsable error
            # bodies (an HTML 502 from a load balancer): all worth retrying.
            return KmsRequestError(
                gateway=_GATEWAY,
                operation=operation,
                kind=ErrorKind.UNAVAILABLE,
                detail="network error, timeout or malformed response",
            )
        if isinstance(exc, self._sdk.credential_exception):
            return KmsRequestError(
                gateway=_GATEWAY,
                operation=operation,
                kind=ErrorKind.UNAVAILABLE,
                detail="credential provider failed",
            )
        if isinstance(exc, self._sdk.tea_exception | ValueError):
            return KmsRequestError(
                gateway=_GATEWAY,
                operation=operation,
                kind=ErrorKind.UNAVAILABLE,
                detail="malformed response",
            )
        _logger.error(
            "aliyun kms shared gateway %s: unexpected %s\n%s",
            operation,
            type(exc).__name__,
            "".join(traceback.format_tb(exc.__traceback__)),
        )
        return KmsRequestError(
            gateway=_GATEWAY,
            operation=operation,
            kind=ErrorKind.INTERNAL,
            detail=type(exc).__name__,
        )

    # -- operations ------------------------------------------------------------------------
    async def get_secret_value(self, name: str) -> SecretValue:
        """GetSecretValue (``ACSCurrent``).

        Raises:
            KmsRequestError: the call failed.
        """
        request = self._sdk.models.GetSecretValueRequest(
            secret_name=name, version_stage="ACSCurrent"
        )
        response = await self._run(
            "GetSecretValue",
            lambda: self._client.get_secret_value_with_options(request, self._runtime()),
        )
        body = response.body
        if body is None or not isinstance(body.secret_data, str):
            raise KmsRequestError(
                gateway=_GATEWAY,
                operation="GetSecretValue",
                kind=ErrorKind.UNAVAILABLE,
                detail="malformed response",
            )
        return SecretValue(
            name=body.secret_name or name,
            data=body.secret_data,
            data_type=body.secret_data_type or "text",
            version_id=body.version_id,
        )

    async def create_secret(
        self,
        name: str,
        *,
        data: str,
        data_type: str,
        version_id: str,
        kms_instance_id: str | None,
        encryption_key_id: str | None,
    ) -> None:
        """CreateSecret (a ``Generic`` secret, in ``kms_instance_id`` when given).

        Raises:
            KmsRequestError: the call failed.
        """
        request = self._sdk.models.CreateSecretRequest(
            secret_name=name,
            secret_data=data,
            secret_data_type=data_type,
            secret_type="Generic",  # noqa: S106 - the KMS secret kind, not a password
            version_id=version_id,
            dkmsinstance_id=kms_instance_id,
            encryption_key_id=encryption_key_id,
            description="managed by confidential-kbs",
        )
        await self._run(
            "CreateSecret",
            lambda: self._client.create_secret_with_options(request, self._runtime()),
        )

    async def put_secret_value(
        self, name: str, *, data: str, data_type: str, version_id: str
    ) -> None:
        """PutSecretValue (the new version becomes ``ACSCurrent``).

        Raises:
            KmsRequestError: the call failed.
        """
        request = self._sdk.models.PutSecretValueRequest(
            secret_name=name, secret_data=data, secret_data_type=data_type, version_id=version_id
        )
        await self._run(
            "PutSecretValue",
            lambda: self._client.put_secret_value_with_options(request, self._runtime()),
        )

    async def delete_secret(self, name: str, *, force: bool, recovery_window_days: int) -> None:
        """DeleteSecret, with a recovery window or ``ForceDeleteWithoutRecovery``.

        Raises:
            KmsRequestError: the call failed.
        """
        request = self._sdk.models.DeleteSecretRequest(
            secret_name=name,
            force_delete_without_recovery="true" if force else "false",
            recovery_window_in_days=None if force else str(recovery_window_days),
        )
        await self._run(
            "DeleteSecret",
            lambda: self._client.delete_secret_with_options(request, self._runtime()),
        )

    async def restore_secret(self, name: str) -> None:
        """RestoreSecret (cancel a scheduled deletion).

        Raises:
            KmsRequestError: the call failed.
        """
        request = self._sdk.models.RestoreSecretRequest(secret_name=name)
        await self._run(
            "RestoreSecret",
            lambda: self._client.restore_secret_with_options(request, self._runtime()),
        )

    async def list_secrets(
        self, *, page_number: int, page_size: int, kms_instance_id: str | None
    ) -> SecretPage:
        """ListSecrets, one page.

        Raises:
            KmsRequestError: the call failed.
        """
        filters = (
            json.dumps([{"Key": "DKMSInstanceId", "Values": [kms_instance_id]}])
            if kms_instance_id
            else None
        )
        request = self._sdk.models.ListSecretsRequest(
            page_number=page_number, page_size=page_size, filters=filters
        )
        response = await self._run(
            "ListSecrets", lambda: self._client.list_secrets_with_options(request, self._runtime())
        )
        body = response.body
        entries = (
            body.secret_list.secret if body is not None and body.secret_list is not None else []
        )
        secrets = tuple(
            SecretSummary(
                name=entry.secret_name,
                planned_delete_time=entry.planned_delete_time or None,
                create_time=_text(entry.create_time),
                update_time=_text(entry.update_time),
            )
            for entry in entries or []
            if isinstance(entry.secret_name, str)
        )
        total = (
            body.total_count
            if body is not None and isinstance(body.total_count, int)
            else len(secrets)
        )
        return SecretPage(secrets=secrets, total_count=total)

    async def get_secret_version(self, name: str, *, version_id: str) -> SecretValue:
        """GetSecretValue of one version, by ``VersionId``.

        Raises:
            KmsRequestError: the call failed.
        """
        request = self._sdk.models.GetSecretValueRequest(secret_name=name, version_id=version_id)
        response = await self._run(
            "GetSecretValue",
            lambda: self._client.get_secret_value_with_options(request, self._runtime()),
        )
        body = response.body
        if body is None or not isinstance(body.secret_data, str):
            raise KmsRequestError(
                gateway=_GATEWAY,
                operation="GetSecretValue",
                kind=ErrorKind.UNAVAILABLE,
                detail="malformed response",
            )
        return SecretValue(
            name=body.secret_name or name,
            data=body.secret_data,
            data_type=body.secret_data_type or "text",
            version_id=body.version_id or version_id,
        )

    async def list_secret_versions(
        self, name: str, *, page_number: int, page_size: int
    ) -> SecretVersionPage:
        """ListSecretVersionIds, one page, versions without a stage included.

        Raises:
            KmsRequestError: the call failed.
        """
        request = self._sdk.models.ListSecretVersionIdsRequest(
            secret_name=name,
            include_deprecated="true",
            page_number=page_number,
            page_size=page_size,
        )
        response = await self._run(
            "ListSecretVersionIds",
            lambda: self._client.list_secret_version_ids_with_options(request, self._runtime()),
        )
        body = response.body
        entries = (
            body.version_ids.version_id if body is not None and body.version_ids is not None else []
        )
        versions = tuple(
            SecretVersion(
                version_id=entry.version_id,
                create_time=_text(entry.create_time),
                stages=tuple(
                    stage
                    for stage in (
                        entry.version_stages.version_stage
                        if entry.version_stages is not None
                        else None
                    )
                    or []
                    if isinstance(stage, str)
                ),
            )
            for entry in entries or []
            if isinstance(entry.version_id, str)
        )
        total = (
            body.total_count
            if body is not None and isinstance(body.total_count, int)
            else len(versions)
        )
        return SecretVersionPage(versions=versions, total_count=total)

    async def move_current_stage(
        self, name: str, *, to_version: str, from_version: str | None
    ) -> None:
        """UpdateSecretVersionStage: move ``ACSCurrent`` from one version to another.

        Raises:
            KmsRequestError: the call failed.
        """
        request = self._sdk.models.UpdateSecretVersionStageRequest(
            secret_name=name,
            version_stage="ACSCurrent",
            move_to_version=to_version,
            remove_from_version=from_version,
        )
        await self._run(
            "UpdateSecretVersionStage",
            lambda: self._client.update_secret_version_stage_with_options(request, self._runtime()),
        )

    async def describe_secret(self, name: str) -> SecretDescription:
        """DescribeSecret.

        Raises:
            KmsRequestError: the call failed.
        """
        request = self._sdk.models.DescribeSecretRequest(secret_name=name)
        response = await self._run(
            "DescribeSecret",
            lambda: self._client.describe_secret_with_options(request, self._runtime()),
        )
        body = response.body
        if body is None:
            raise KmsRequestError(
                gateway=_GATEWAY,
                operation="DescribeSecret",
                kind=ErrorKind.UNAVAILABLE,
                detail="malformed response",
            )
        return SecretDescription(
            name=body.secret_name or name,
            create_time=_text(body.create_time),
            update_time=_text(body.update_time),
            planned_delete_time=_text(body.planned_delete_time),
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
