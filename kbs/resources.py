# SPDX-License-Identifier: Apache-2.0
"""Which storage backend holds which resource, built from the configuration.

Resources are looked up through a :class:`ResourceRouter`: a list of mounts, each a
``(repository, type)`` prefix (``None`` = any) and a backend; the first matching mount
wins, and the last mount is the catch-all default.

The configuration's ``[[plugins]] name = "resource"`` entry gives the default backend;
its ``[[plugins.mounts]]`` (ours) put other backends in front of it, e.g. Alibaba Cloud
KMS for ``default/aliyun`` beside files for everything else.

The life-cycle operations of the admin API (metadata, kept versions, rollback) go to the
backend that holds the path, like reads and writes. A listing asks every backend and keeps
only the paths each backend actually serves (a path another, earlier mount shadows is not
listed twice); backends that cannot enumerate are named instead.
"""

from __future__ import annotations

import builtins
import datetime as dt
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from kbs.entropy import Entropy, system_entropy
from kbs.settings import ConfigError, KbsSettings, ResourceBackendSettings
from storage_backends.aliyun_kms import AliyunKmsBackend, AliyunKmsConfigError, KmsObserver
from storage_backends.base import (
    ResourceDesc,
    ResourceInfo,
    StorageBackend,
    VersionedValue,
    VersionInfo,
)
from storage_backends.errors import StorageError, StorageUnavailableError, UnsupportedOperationError
from storage_backends.file import FileBackend
from storage_backends.memory import MemoryBackend
from storage_backends.sql import RowReader, SqlBackend

_logger = logging.getLogger(__name__)

__all__ = ["Mount", "ResourceRouter", "build_resource_router", "check_resource_backends"]


@dataclass(frozen=True, slots=True)
class Mount:
    """Resources whose repository/type match go to ``backend``."""

    repository: str | None
    type: str | None
    backend: StorageBackend

    def matches(self, desc: ResourceDesc) -> bool:
        """Whether ``desc`` falls under this mount."""
        return (self.repository is None or self.repository == desc.repository) and (
            self.type is None or self.type == desc.type
        )

    @property
    def label(self) -> str:
        """``<repository>/<type>`` with ``*`` for any (``*/*`` is the default)."""
        return f"{self.repository or '*'}/{self.type or '*'}"


class ResourceRouter:
    """Dispatches resource operations to the mounted backends."""

    def __init__(self, mounts: Sequence[Mount]) -> None:
        """Route through ``mounts`` in order; the last must be a catch-all."""
        if not mounts:
            raise ValueError("at least one resource backend is required")
        self.mounts = tuple(mounts)

    def backend_for(self, desc: ResourceDesc) -> StorageBackend:
        """The backend that holds ``desc`` (the default if no mount matches)."""
        return self.mount_for(desc).backend

    def mount_for(self, desc: ResourceDesc) -> Mount:
        """The mount that takes ``desc``: the first match, else the last (the default)."""
        for mount in self.mounts:
            if mount.matches(desc):
                return mount
        return self.mounts[-1]

    async def get(self, desc: ResourceDesc) -> bytes:
        """Read ``desc`` from its backend (see :meth:`StorageBackend.get`)."""
        return await self.backend_for(desc).get(desc)

    async def put(self, desc: ResourceDesc, data: bytes) -> str | None:
        """Write ``desc`` to its backend; the new version id (:meth:`StorageBackend.put`)."""
        return await self.backend_for(desc).put(desc, data)

    async def delete(self, desc: ResourceDesc) -> None:
        """Delete ``desc`` from its backend (see :meth:`StorageBackend.delete`)."""
        await self.backend_for(desc).delete(desc)

    async def list(self, *, skip_unsupported: bool = False) -> builtins.list[ResourceDesc]:
        """Every resource a request can reach, sorted.

        Each backend lists what it holds; a path is reported only if this router sends
        it to that backend (a file at ``default/aliyun/x`` behind a KMS mount at
        ``default/aliyun`` is unreachable, so it is left out).

        Args:
            skip_unsupported: leave out mounts whose backend cannot enumerate (an Aliyun
                KMS backend without shared-gateway credentials) instead of failing.

        Raises:
            UnsupportedOperationError: a backend cannot enumerate (the message names
                its mount), unless ``skip_unsupported``.
            StorageUnavailableError: a backend could not be read.
        """
        found: set[ResourceDesc] = set()
        for mount in self.mounts:
            try:
                held = await mount.backend.list()
            except UnsupportedOperationError as exc:
                if skip_unsupported:
                    _logger.info("resources under %s are not listed: %s", mount.label, exc)
                    continue
                raise UnsupportedOperationError(f"resources under {mount.label}: {exc}") from exc
            found.update(desc for desc in held if self.mount_for(desc) is mount)
        return sorted(found)

    async def read(self, desc: ResourceDesc) -> VersionedValue:
        """Read ``desc`` and its version id (see :meth:`StorageBackend.read`)."""
        return await self.backend_for(desc).read(desc)

    async def describe(self, desc: ResourceDesc) -> ResourceInfo:
        """Metadata of ``desc`` (see :meth:`StorageBackend.describe`)."""
        return await self.backend_for(desc).describe(desc)

    async def list_info(
        self, *, visible: Callable[[ResourceDesc], bool] = lambda _: True
    ) -> tuple[builtins.list[ResourceInfo], builtins.list[str]]:
        """Metadata of every resource ``visible`` accepts, and the kinds that cannot list.

        Raises:
            StorageUnavailableError: a backend could not be read.
        """
        found: builtins.list[ResourceInfo] = []
        unlisted: builtins.list[str] = []
        seen: set[int] = set()
        for mount in self.mounts:
            backend = mount.backend
            if id(backend) in seen:
                continue
            seen.add(id(backend))
            try:
                infos = await backend.list_info()
            except UnsupportedOperationError:
                _logger.info("resource listing skips the %s backend (cannot list)", backend.kind)
                unlisted.append(backend.kind)
                continue
            found.extend(
                info
                for info in infos
                if self.backend_for(info.desc) is backend and visible(info.desc)
            )
        return sorted(found, key=lambda info: info.desc), unlisted

    async def list_versions(self, desc: ResourceDesc) -> builtins.list[VersionInfo]:
        """Kept versions of ``desc``, newest first (see :meth:`StorageBackend.list_versions`)."""
        return await self.backend_for(desc).list_versions(desc)

    async def get_version(self, desc: ResourceDesc, version: str) -> bytes:
        """One kept version's value (see :meth:`StorageBackend.get_version`)."""
        return await self.backend_for(desc).get_version(desc, version)

    async def restore_version(self, desc: ResourceDesc, version: str) -> str | None:
        """Make a kept version current (see :meth:`StorageBackend.restore_version`)."""
        return await self.backend_for(desc).restore_version(desc, version)

    async def delete_version(self, desc: ResourceDesc, version: str) -> None:
        """Delete one kept version (see :meth:`StorageBackend.delete_version`)."""
        await self.backend_for(desc).delete_version(desc, version)

    async def check(self) -> None:
        """Probe every mounted backend (readiness); a failure names each failing mount.

        Raises:
            StorageUnavailableError: one or more backends are not usable now.
        """
        failures: builtins.list[str] = []
        for mount in self.mounts:
            try:
                await mount.backend.check()
            except StorageError as exc:
                failures.append(f"{mount.label} ({mount.backend.kind}): {exc}")
        if failures:
            raise StorageUnavailableError("; ".join(failures))

    async def aclose(self) -> None:
        """Close every backend."""
        for mount in self.mounts:
            await mount.backend.aclose()


def build_resource_router(
    settings: KbsSettings,
    *,
    engine: AsyncEngine,
    clock: Callable[[], dt.datetime],
    entropy: Entropy = system_entropy,
    kms_observer: KmsObserver | None = None,
    read_row: RowReader | None = None,
) -> ResourceRouter:
    """Build the backends the configuration names.

    * no ``[[plugins]]`` resource entry: files under ``<data_dir>/repository`` (tree layout);
    * ``type = "LocalFs"``: real directories under ``dir_path`` (Trustee <= v0.18 layout);
    * ``kvstorage`` with ``[storage_backend] storage_type = "LocalFs"``: Trustee v0.20+
      flat files under ``<dir_path>/repository``; ``"Postgres"``: the database;
      ``"Memory"``: process memory (lost on restart); no ``[storage_backend]``: the database;
    * ``Aliyun``: Alibaba Cloud KMS (``clock`` dates its requests, ``entropy`` makes
      version ids and retry jitter, ``kms_observer`` counts its calls);
    * ``read_row`` (the plain-SQL hot path on the same database) serves the database
      backend's guest reads;
    * each ``[[plugins.mounts]]`` entry: one of the above for its ``<repository>/<type>``,
      in front of the default.

    Raises:
        ConfigError: an Aliyun KMS backend cannot be built (bad client key or password,
            unreadable file, missing SDK); the message names the mount, never a secret.
        ValueError: another backend cannot be built from the settings.
    """
    plugin = settings.resource_plugin
    if plugin is None:
        default = FileBackend(
            settings.data_dir / "repository",
            layout="tree",
            create=True,
            keep_versions=settings.keep_resource_versions,
        )
        return ResourceRouter([Mount(None, None, default)])
    build = functools.partial(
        _build_backend,
        settings=settings,
        engine=engine,
        clock=clock,
        entropy=entropy,
        kms_observer=kms_observer,
        read_row=read_row,
    )
    mounts = [
        Mount(entry.repository, entry.resource_type, build(entry, entry.path))
        for entry in plugin.mounts
    ]
    default_backend = build(plugin, "*/*")
    router = ResourceRouter([*mounts, Mount(None, None, default_backend)])
    if mounts:
        _logger.info(
            "resource mounts: %s",
            ", ".join(f"{m.label} -> {m.backend.kind}" for m in router.mounts),
        )
    return router


def _build_backend(
    entry: ResourceBackendSettings,
    label: str,
    settings: KbsSettings,
    *,
    engine: AsyncEngine,
    clock: Callable[[], dt.datetime],
    entropy: Entropy,
    kms_observer: KmsObserver | None = None,
    read_row: RowReader | None = None,
) -> StorageBackend:
    keep = settings.keep_resource_versions
    backend: StorageBackend
    if entry.storage_backend_type == "LocalFs":
        backend = FileBackend(entry.dir_path, layout="tree", create=True, keep_versions=keep)
    elif entry.storage_backend_type == "kvstorage":
        kv = settings.storage_backend
        if kv is None or kv.storage_type == "Postgres":
            backend = SqlBackend(engine, clock=clock, keep_versions=keep, read_row=read_row)
        elif kv.storage_type == "LocalFs":
            backend = FileBackend(
                kv.backends.local_fs.dir_path / "repository",
                layout="flat",
                create=True,
                keep_versions=keep,
            )
        else:
            _logger.warning(
                "resources are kept in process memory (storage_type = Memory): "
                "they are lost on restart and not shared between processes"
            )
            backend = MemoryBackend(keep_versions=keep, clock=clock)
    elif entry.storage_backend_type == "Aliyun":
        backend = _aliyun_backend(
            entry, label, clock=clock, entropy=entropy, kms_observer=kms_observer
        )
    else:
        raise ValueError(f"resource backend {entry.storage_backend_type!r} is not available")
    return backend


def _aliyun_backend(
    entry: ResourceBackendSettings,
    label: str,
    *,
    clock: Callable[[], dt.datetime],
    entropy: Entropy,
    kms_observer: KmsObserver | None = None,
) -> AliyunKmsBackend:
    try:
        return AliyunKmsBackend(
            entry.aliyun_kms_settings(), now=clock, entropy=entropy, observer=kms_observer
        )
    except AliyunKmsConfigError as exc:
        # The message names keys, files and the client key id, never a secret.
        raise ConfigError(f"resource backend {label}: {exc}") from exc


async def check_resource_backends(
    settings: KbsSettings, *, clock: Callable[[], dt.datetime], entropy: Entropy
) -> None:
    """Build and close every Aliyun KMS backend once, sending no request.

    Building one opens the client key with its password and reads the CA, credential
    and key files, so ``kbs serve`` calls this before it starts any worker: a wrong
    password is a one-line error and a non-zero exit instead of a worker that fails
    its start-up.

    Raises:
        ConfigError: a backend cannot be built; the message names the mount and the
            problem, never a secret.
    """
    plugin = settings.resource_plugin
    if plugin is None:
        return
    entries: builtins.list[tuple[str, ResourceBackendSettings]] = [
        (mount.path, mount) for mount in plugin.mounts
    ]
    entries.append(("*/*", plugin))
    for label, entry in entries:
        if entry.storage_backend_type == "Aliyun":
            backend = _aliyun_backend(entry, label, clock=clock, entropy=entropy)
            await backend.aclose()
