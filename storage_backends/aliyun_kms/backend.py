# SPDX-License-Identifier: Apache-2.0
"""``AliyunKmsBackend``: KBS resources stored as Alibaba Cloud KMS generic secrets.

Reads (``get``) use the dedicated KMS instance gateway when it is configured (Trustee's
``client_key``/``password``/``cert_pem``/``kms_instance_id``), else the shared gateway.
Writes (``put``), deletes and ``list`` use the shared gateway, the only one with secret
management operations; without shared-gateway credentials they raise
:class:`~storage_backends.errors.UnsupportedOperationError` (never a panic, unlike the
reference's ``todo!()``).

What a read returns: for ``SecretDataType=text`` the UTF-8 bytes of ``SecretData``,
byte-identical to the reference; for ``SecretDataType=binary`` the base64-decoded bytes
(``decode_binary_secrets``, default on; the reference returns the base64 text unchanged).
``put`` stores bytes that are valid UTF-8 as a ``text`` secret and anything else as a
``binary`` secret holding base64, so ``get`` returns exactly what was put either way.

Versions are KMS's own: ``put`` returns the new version id (``kbs-<32 hex>``);
``list_versions`` is ListSecretVersionIds (versions without a stage included),
``get_version`` is GetSecretValue by ``VersionId``, and ``restore_version`` moves the
``ACSCurrent`` stage back to the old version with UpdateSecretVersionStage (no new
version is written). KMS decides how long versions without a stage are kept; single
versions cannot be deleted. These operations, like writes, need the shared gateway.

Failure behaviour: every KMS call has timeouts and bounded, jittered retries
(:mod:`._retry`); values are cached with a TTL and served stale up to ``cache_max_stale``
while KMS throttles or is down (:mod:`._cache`); then
:class:`~storage_backends.errors.StorageUnavailableError` says ``"aliyun kms unavailable…"``.
Credentials and secret values never appear in logs, exception messages or reprs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import datetime as dt
import logging
import re
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from storage_backends.aliyun_kms._cache import CacheState, SecretCache
from storage_backends.aliyun_kms._retry import RetryPolicy, retrying
from storage_backends.aliyun_kms.api import (
    ErrorKind,
    KmsObserver,
    KmsRequestError,
    SecretManager,
    SecretPage,
    SecretReader,
    SecretValue,
    SecretVersion,
    SecretVersionPage,
)
from storage_backends.aliyun_kms.instance import (
    ClientKey,
    InstanceGatewayClient,
    default_instance_endpoint,
)
from storage_backends.aliyun_kms.naming import SecretNaming, TagNaming, TemplateNaming
from storage_backends.aliyun_kms.settings import (
    KMS_MAX_SECRET_DATA_BYTES,
    AliyunKmsConfigError,
    AliyunKmsSettings,
)
from storage_backends.aliyun_kms.shared import SharedGatewayClient
from storage_backends.base import (
    ResourceDesc,
    ResourceInfo,
    StorageBackend,
    VersionedValue,
    VersionInfo,
)
from storage_backends.errors import (
    ResourceNotFoundError,
    ResourceTooLargeError,
    StorageUnavailableError,
    UnsupportedOperationError,
)

_logger = logging.getLogger(__name__)

__all__ = ["READINESS_PROBE_SECRET", "AliyunKmsBackend"]

_T = TypeVar("_T")

#: Name ``check()`` asks for. "Not found" (or "no permission") proves the gateway is reachable
#: and accepted our signature, without needing a real secret or reading one.
READINESS_PROBE_SECRET: Final = "kbs-readiness-probe"  # noqa: S105 - a secret name, not a secret
#: Bytes of entropy in a version id (``kbs-<32 hex>``, within KMS's 64-character limit).
_VERSION_ID_BYTES: Final = 16
_JITTER_BYTES: Final = 4
_UNAVAILABLE: Final = "aliyun kms unavailable"
#: Error codes are echoed into log lines and messages; keep them to a safe alphabet.
_SAFE_CODE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: ListSecretVersionIds page size, and the most pages read for one secret.
_VERSION_PAGE_SIZE: Final = 50
_MAX_VERSION_PAGES: Final = 20
_CURRENT_STAGE: Final = "ACSCurrent"
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _parse_time(text: str | None) -> dt.datetime | None:
    """A KMS ``CreateTime``/``UpdateTime`` (ISO 8601) as an aware datetime, else ``None``."""
    if not text:
        return None
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _reason(err: KmsRequestError) -> str:
    code = err.code if err.code and _SAFE_CODE.fullmatch(err.code) else None
    if err.kind is ErrorKind.THROTTLED:
        return "throttled"
    if err.kind is ErrorKind.UNAVAILABLE:
        return err.detail or (
            f"server error (http {err.http_status})" if err.http_status else "server error"
        )
    if err.kind is ErrorKind.REJECTED:
        return f"request rejected ({code})" if code else "request rejected"
    if err.kind is ErrorKind.INTERNAL:
        return "client error"
    return f"unexpected answer ({code})" if code else "unexpected answer"


def _unavailable(err: KmsRequestError) -> StorageUnavailableError:
    return StorageUnavailableError(f"{_UNAVAILABLE}: {_reason(err)}")


class AliyunKmsBackend(StorageBackend):
    """KBS resources in Alibaba Cloud KMS (kind ``aliyun_kms``)."""

    kind = "aliyun_kms"

    def __init__(
        self,
        settings: AliyunKmsSettings,
        *,
        now: Callable[[], dt.datetime],
        entropy: Callable[[int], bytes],
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        instance_client: SecretReader | None = None,
        shared_client: SecretManager | None = None,
        observer: KmsObserver | None = None,
    ) -> None:
        """Build the backend and its gateway clients (reads files; sends no request).

        Args:
            settings: the backend settings.
            now: wall clock (aware datetimes) for the instance gateway's ``Date`` header.
            entropy: ``entropy(n)`` returns ``n`` random bytes (version ids, retry jitter).
            monotonic: clock for cache ages and retry deadlines.
            sleep: awaitable sleep between retries (tests inject a fake).
            instance_client: use this reader instead of building the instance gateway client.
            shared_client: use this client instead of building the shared gateway client.
                When either client is given, neither is built from ``settings``.
            observer: told about every KMS call of the clients built here (for metrics).

        Raises:
            AliyunKmsConfigError: bad client key or password, missing SDK, unreadable files.
        """
        super().__init__(max_resource_bytes=settings.max_resource_bytes)
        self.settings = settings
        self._entropy = entropy
        self._monotonic = monotonic
        self._sleep = sleep
        if settings.insecure_skip_tls_verify:
            _logger.warning(
                "aliyun kms: insecure_skip_tls_verify is on: gateway certificates are not verified"
            )
        if instance_client is None and shared_client is None:
            instance_client, shared_client = _build_clients(settings, now=now, observer=observer)
        reader: SecretReader | None
        if settings.read_gateway == "shared":
            reader = shared_client
        elif settings.read_gateway == "instance":
            reader = instance_client
        else:
            reader = instance_client or shared_client
        if reader is None:
            raise AliyunKmsConfigError("aliyun kms backend has no gateway to read from")
        self._reader: SecretReader = reader
        self._manager: SecretManager | None = shared_client
        self._instance_client = instance_client
        self._naming: SecretNaming = (
            TemplateNaming(settings.name_template)
            if settings.naming == "template"
            else TagNaming(repository=settings.tag_repository, type_=settings.tag_type)
        )
        self._cache = SecretCache(
            ttl=settings.cache_ttl,
            max_stale=settings.cache_max_stale,
            negative_ttl=settings.negative_cache_ttl,
            stale_refresh_interval=settings.stale_refresh_interval,
            max_entries=settings.cache_max_entries,
            monotonic=monotonic,
        )
        self._policy = RetryPolicy(
            max_attempts=settings.max_attempts,
            backoff_initial=settings.backoff_initial,
            backoff_max=settings.backoff_max,
            deadline=settings.retry_deadline,
        )
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._last_check_ok: float | None = None
        _logger.info(
            "aliyun kms backend: reads via %s gateway, writes %s, naming %s",
            self._reader.gateway,
            "via shared gateway"
            if self._manager
            else "unsupported (no shared gateway credentials)",
            self._naming.mode,
        )

    def __repr__(self) -> str:
        """Describe gateways and naming; no credentials, no values."""
        return (
            f"AliyunKmsBackend(read={self._reader!r}, manage={self._manager!r}, "
            f"naming={self._naming.mode})"
        )

    @property
    def naming(self) -> SecretNaming:
        """The resource path <-> secret name mapping in use."""
        return self._naming

    def secret_name(self, desc: ResourceDesc) -> str:
        """Return the KMS secret name that stores ``desc``.

        Raises:
            InvalidResourcePathError: ``desc`` does not map to a legal secret name.
        """
        return self._naming.secret_name(desc)

    async def aclose(self) -> None:
        """Close the gateway clients."""
        for client in {
            id(c): c for c in (self._reader, self._manager, self._instance_client) if c
        }.values():
            await client.aclose()

    # -- helpers ---------------------------------------------------------------------------
    def _jitter(self) -> float:
        raw = int.from_bytes(self._entropy(_JITTER_BYTES), "big")
        return float(raw) / float(1 << (8 * _JITTER_BYTES))

    async def _retry(self, call: Callable[[], Awaitable[_T]]) -> _T:
        return await retrying(
            call,
            policy=self._policy,
            monotonic=self._monotonic,
            sleep=self._sleep,
            jitter=self._jitter,
        )

    def _require_manager(self, operation: str) -> SecretManager:
        if self._manager is None:
            raise UnsupportedOperationError(
                f"aliyun kms backend cannot {operation}: the kms instance gateway only serves "
                "GetSecretValue; configure shared gateway credentials (credential_type, "
                "region_id) to manage secrets"
            )
        return self._manager

    def _writable_name(self, desc: ResourceDesc, operation: str) -> str:
        if not self._naming.writable(desc):
            mount = self._naming
            assert isinstance(mount, TagNaming)
            raise UnsupportedOperationError(
                f"aliyun kms backend in tag naming mode can only {operation} "
                f"{mount.repository}/{mount.type}/<tag> (every */*/<tag> path names the same "
                "secret); use template naming for other paths"
            )
        return self._naming.secret_name(desc)

    def _decode(self, value: SecretValue) -> bytes:
        if value.data_type == "binary" and self.settings.decode_binary_secrets:
            try:
                return base64.b64decode(value.data, validate=True)
            except (binascii.Error, ValueError):
                raise StorageUnavailableError(
                    f"{_UNAVAILABLE}: binary secret is not valid base64"
                ) from None
        return value.data.encode("utf-8")

    def _encode(self, data: bytes) -> tuple[str, str]:
        try:
            text, data_type = data.decode("utf-8"), "text"
        except UnicodeDecodeError:
            text, data_type = base64.b64encode(data).decode("ascii"), "binary"
        if len(text.encode("utf-8")) > KMS_MAX_SECRET_DATA_BYTES:
            raise ResourceTooLargeError(
                f"resource exceeds the aliyun kms secret size limit of {KMS_MAX_SECRET_DATA_BYTES} "
                "bytes (binary data is stored base64-encoded)"
            )
        return text, data_type

    def _new_version_id(self) -> str:
        return "kbs-" + self._entropy(_VERSION_ID_BYTES).hex()

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[name] = lock
        return lock

    # -- StorageBackend hooks --------------------------------------------------------------
    async def _get(self, desc: ResourceDesc) -> bytes:
        name = self._naming.secret_name(desc)
        if self._naming.mode == "tag" and not self._naming.writable(desc):
            _logger.debug(
                "aliyun kms: tag naming ignores %s/%s for %s", desc.repository, desc.type, name
            )
        # 1. Fresh, known-missing, or backing off after a failed refresh: no KMS call.
        state, value = self._cache.lookup(name)
        if state in {CacheState.FRESH, CacheState.STALE_BACKING_OFF}:
            assert value is not None
            return value
        if state is CacheState.MISSING:
            raise ResourceNotFoundError("resource not found")
        lock = self._lock(name)
        # 2. Another task is already refreshing this name: serve the stale value meanwhile.
        if lock.locked() and state is CacheState.STALE:
            assert value is not None
            return value
        async with lock:
            # 3. Re-check: the task we waited for may have refreshed it.
            state, value = self._cache.lookup(name)
            if state in {CacheState.FRESH, CacheState.STALE_BACKING_OFF}:
                assert value is not None
                return value
            if state is CacheState.MISSING:
                raise ResourceNotFoundError("resource not found")
            return await self._refresh(name)

    async def _refresh(self, name: str) -> bytes:
        try:
            secret = await self._retry(lambda: self._reader.get_secret_value(name))
        except KmsRequestError as err:
            if err.kind in {ErrorKind.NOT_FOUND, ErrorKind.IN_DELETE_WINDOW}:
                self._cache.store_missing(name)
                raise ResourceNotFoundError("resource not found") from err
            stale = self._cache.stale_value(name) if err.kind.retryable else None
            if stale is not None:
                self._cache.note_failed_refresh(name)
                _logger.warning(
                    "aliyun kms: serving cached %s after a failed refresh (%s)", name, err
                )
                return stale
            _logger.warning("aliyun kms: reading %s failed (%s)", name, err)
            raise _unavailable(err) from err
        value = self._decode(secret)
        self._cache.store(name, value, version=secret.version_id)
        return value

    async def _read(self, desc: ResourceDesc) -> VersionedValue:
        data = await self._get(desc)
        # No await since _get returned: the cache entry is the one the value came from.
        return VersionedValue(data, self._cache.version_of(self._naming.secret_name(desc)))

    async def _put(self, desc: ResourceDesc, data: bytes) -> str:
        name = self._writable_name(desc, "write")
        manager = self._require_manager("write")
        secret_data, data_type = self._encode(data)
        version_id = self._new_version_id()

        async def put_version() -> None:
            try:
                await self._retry(
                    lambda: manager.put_secret_value(
                        name, data=secret_data, data_type=data_type, version_id=version_id
                    )
                )
            except KmsRequestError as err:
                # Our version id is random and unused, so "exists" means an earlier attempt
                # of this very call landed (its answer was lost to a timeout).
                if err.kind is not ErrorKind.EXISTS:
                    raise

        try:
            try:
                await put_version()
            except KmsRequestError as err:
                if err.kind is ErrorKind.NOT_FOUND:
                    await self._create(
                        name=name,
                        manager=manager,
                        secret_data=secret_data,
                        data_type=data_type,
                        version_id=version_id,
                        put_version=put_version,
                    )
                elif err.kind is ErrorKind.IN_DELETE_WINDOW:
                    _logger.info(
                        "aliyun kms: restoring %s (scheduled for deletion) to write it", name
                    )
                    await self._retry(lambda: manager.restore_secret(name))
                    await put_version()
                else:
                    raise
        except KmsRequestError as err:
            _logger.warning("aliyun kms: writing %s failed (%s)", name, err)
            raise _unavailable(err) from err
        finally:
            # Even a failed write may have landed: never serve the old value from memory.
            self._cache.invalidate(name)
        _logger.info("aliyun kms: stored %s as a new version (%s)", name, data_type)
        return version_id

    async def _create(
        self,
        *,
        name: str,
        manager: SecretManager,
        secret_data: str,
        data_type: str,
        version_id: str,
        put_version: Callable[[], Awaitable[None]],
    ) -> None:
        try:
            await self._retry(
                lambda: manager.create_secret(
                    name,
                    data=secret_data,
                    data_type=data_type,
                    version_id=version_id,
                    kms_instance_id=self.settings.kms_instance_id,
                    encryption_key_id=self.settings.encryption_key_id,
                )
            )
        except KmsRequestError as err:
            if err.kind is not ErrorKind.EXISTS:
                raise
            # Someone created it in between (or our create landed and its answer was lost):
            # add our value as a new version.
            await put_version()

    async def delete(self, desc: ResourceDesc, *, force: bool | None = None) -> None:
        """Delete the secret behind ``desc``.

        Args:
            desc: the resource.
            force: ``True`` deletes at once (``ForceDeleteWithoutRecovery``), ``False``
                schedules deletion after ``recovery_window_days``; ``None`` uses the
                ``force_delete`` setting.

        Raises:
            ResourceNotFoundError: no such secret (or it is already scheduled for deletion).
            UnsupportedOperationError: no shared gateway, or a path outside the tag mount.
            StorageUnavailableError: KMS could not be reached or refused.
        """
        await self._guard(self._delete_secret(desc, force=force), "delete")

    async def _delete(self, desc: ResourceDesc) -> None:
        await self._delete_secret(desc, force=None)

    async def _delete_secret(self, desc: ResourceDesc, *, force: bool | None) -> None:
        name = self._writable_name(desc, "delete")
        manager = self._require_manager("delete")
        really_force = self.settings.force_delete if force is None else force
        try:
            await self._retry(
                lambda: manager.delete_secret(
                    name,
                    force=really_force,
                    recovery_window_days=self.settings.recovery_window_days,
                )
            )
        except KmsRequestError as err:
            if err.kind in {ErrorKind.NOT_FOUND, ErrorKind.IN_DELETE_WINDOW}:
                raise ResourceNotFoundError("resource not found") from err
            _logger.warning("aliyun kms: deleting %s failed (%s)", name, err)
            raise _unavailable(err) from err
        finally:
            self._cache.invalidate(name)
        if really_force:
            _logger.info("aliyun kms: deleted %s without recovery window", name)
        else:
            _logger.info(
                "aliyun kms: scheduled %s for deletion (recoverable for %d days)",
                name,
                self.settings.recovery_window_days,
            )

    async def _list(self) -> builtins.list[ResourceDesc]:
        manager = self._require_manager("list")
        found: set[ResourceDesc] = set()
        seen = 0
        for page_number in range(1, self.settings.max_list_pages + 1):

            def list_page(number: int = page_number) -> Awaitable[SecretPage]:
                return manager.list_secrets(
                    page_number=number,
                    page_size=self.settings.list_page_size,
                    kms_instance_id=self.settings.kms_instance_id,
                )

            try:
                page = await self._retry(list_page)
            except KmsRequestError as err:
                _logger.warning("aliyun kms: listing failed (%s)", err)
                raise _unavailable(err) from err
            for summary in page.secrets:
                if summary.planned_delete_time:
                    continue  # scheduled for deletion: no longer a stored resource
                desc = self._naming.resource_for(summary.name)
                if desc is not None:
                    found.add(desc)
            seen += len(page.secrets)
            if not page.secrets or seen >= page.total_count:
                break
        else:
            _logger.warning(
                "aliyun kms: list stopped after %d pages (max_list_pages); the result is partial",
                self.settings.max_list_pages,
            )
        return builtins.list(found)

    # -- life cycle (admin API) -----------------------------------------------------------
    async def _kms(self, call: Callable[[], Awaitable[_T]], *, what: str, name: str) -> _T:
        try:
            return await self._retry(call)
        except KmsRequestError as err:
            if err.kind in {ErrorKind.NOT_FOUND, ErrorKind.IN_DELETE_WINDOW}:
                missing = "resource version" if what == "version" else "resource"
                raise ResourceNotFoundError(f"{missing} not found") from err
            _logger.warning("aliyun kms: %s of %s failed (%s)", what, name, err)
            raise _unavailable(err) from err

    async def _versions_of(self, name: str, manager: SecretManager) -> list[SecretVersion]:
        """Every version of ``name``, newest first."""
        found: list[SecretVersion] = []
        for page_number in range(1, _MAX_VERSION_PAGES + 1):

            def list_page(number: int = page_number) -> Awaitable[SecretVersionPage]:
                return manager.list_secret_versions(
                    name, page_number=number, page_size=_VERSION_PAGE_SIZE
                )

            page = await self._kms(list_page, what="versions", name=name)
            found.extend(page.versions)
            if not page.versions or len(found) >= page.total_count:
                break
        # KMS does not document an order: newest first by CreateTime, and for equal times
        # (one-second resolution) the later entry first.
        indexed = list(enumerate(found))
        indexed.sort(
            key=lambda item: (_parse_time(item[1].create_time) or _EPOCH, item[0]),
            reverse=True,
        )
        return [version for _, version in indexed]

    async def _describe(self, desc: ResourceDesc) -> ResourceInfo:
        name = self._naming.secret_name(desc)
        manager = self._require_manager("describe resources")
        described = await self._kms(
            lambda: manager.describe_secret(name), what="describe", name=name
        )
        if described.planned_delete_time:
            raise ResourceNotFoundError("resource not found")
        versions = await self._versions_of(name, manager)
        current = next((v for v in versions if _CURRENT_STAGE in v.stages), None)
        return ResourceInfo(
            desc=desc,
            backend=self.kind,
            size=None,  # KMS tells sizes only with values; listing never reads values
            created=_parse_time(described.create_time),
            updated=_parse_time(described.update_time),
            version=current.version_id if current else None,
            versions=len(versions),
        )

    async def _list_info(self) -> builtins.list[ResourceInfo]:
        # One ListSecrets walk: names and times. Current versions would cost a call per
        # secret; describe() (one resource) has them.
        manager = self._require_manager("list")
        found: dict[ResourceDesc, ResourceInfo] = {}
        seen = 0
        for page_number in range(1, self.settings.max_list_pages + 1):

            def list_page(number: int = page_number) -> Awaitable[SecretPage]:
                return manager.list_secrets(
                    page_number=number,
                    page_size=self.settings.list_page_size,
                    kms_instance_id=self.settings.kms_instance_id,
                )

            page = await self._kms(list_page, what="list", name="*")
            for summary in page.secrets:
                desc = self._naming.resource_for(summary.name)
                if desc is None or summary.planned_delete_time:
                    continue
                found[desc] = ResourceInfo(
                    desc=desc,
                    backend=self.kind,
                    created=_parse_time(summary.create_time),
                    updated=_parse_time(summary.update_time),
                )
            seen += len(page.secrets)
            if not page.secrets or seen >= page.total_count:
                break
        return builtins.list(found.values())

    async def _list_versions(self, desc: ResourceDesc) -> builtins.list[VersionInfo]:
        name = self._naming.secret_name(desc)
        manager = self._require_manager("list versions")
        versions = await self._versions_of(name, manager)
        if not versions:
            raise ResourceNotFoundError("resource not found")
        return [
            VersionInfo(
                version=v.version_id,
                size=None,
                created=_parse_time(v.create_time),
                current=_CURRENT_STAGE in v.stages,
            )
            for v in versions
        ]

    async def _get_version(self, desc: ResourceDesc, version: str) -> bytes:
        name = self._naming.secret_name(desc)
        manager = self._require_manager("read versions")
        secret = await self._kms(
            lambda: manager.get_secret_version(name, version_id=version),
            what="version",
            name=name,
        )
        return self._decode(secret)

    async def _restore_version(self, desc: ResourceDesc, version: str) -> str:
        name = self._writable_name(desc, "roll back")
        manager = self._require_manager("roll back")
        versions = await self._versions_of(name, manager)
        if not any(v.version_id == version for v in versions):
            raise ResourceNotFoundError("resource version not found")
        current = next((v for v in versions if _CURRENT_STAGE in v.stages), None)
        if current is not None and current.version_id == version:
            return version
        try:
            await self._kms(
                lambda: manager.move_current_stage(
                    name,
                    to_version=version,
                    from_version=current.version_id if current else None,
                ),
                what="version",
                name=name,
            )
        finally:
            self._cache.invalidate(name)
        _logger.info("aliyun kms: moved ACSCurrent of %s back to version %s", name, version)
        return version

    async def _delete_version(self, desc: ResourceDesc, version: str) -> None:
        del desc, version
        raise UnsupportedOperationError(
            "aliyun kms cannot delete a single secret version (KMS retires versions "
            "without a stage itself); delete the resource instead"
        )

    async def _check(self) -> None:
        now = self._monotonic()
        if self._last_check_ok is not None and now - self._last_check_ok < self.settings.cache_ttl:
            return
        try:
            await self._retry(lambda: self._reader.get_secret_value(READINESS_PROBE_SECRET))
        except KmsRequestError as err:
            reachable = err.kind in {ErrorKind.NOT_FOUND, ErrorKind.IN_DELETE_WINDOW} or (
                err.code == "Forbidden.NoPermission"
            )
            if not reachable:
                _logger.warning("aliyun kms: readiness probe failed (%s)", err)
                raise _unavailable(err) from err
        self._last_check_ok = now


def _build_clients(
    settings: AliyunKmsSettings,
    *,
    now: Callable[[], dt.datetime],
    observer: KmsObserver | None = None,
) -> tuple[SecretReader | None, SecretManager | None]:
    """Build the configured gateway clients.

    Raises:
        AliyunKmsConfigError: bad client key or password, missing SDK, unreadable files.
    """
    instance: SecretReader | None = None
    shared: SecretManager | None = None
    if settings.instance_configured:
        material = settings.read_instance_material()
        client_key = ClientKey.from_json(material.client_key_json, material.password)
        assert settings.kms_instance_id is not None
        instance = InstanceGatewayClient(
            endpoint=settings.instance_endpoint
            or default_instance_endpoint(settings.kms_instance_id),
            client_key=client_key,
            ca_pem=material.ca_pem,
            now=now,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            insecure_skip_tls_verify=settings.insecure_skip_tls_verify,
            observer=observer,
        )
    if settings.shared_configured:
        shared = SharedGatewayClient.from_settings(settings, observer=observer)
    return instance, shared
