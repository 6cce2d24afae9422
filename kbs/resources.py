# SPDX-License-Identifier: Apache-2.0
"""Which storage backend holds which resource, built from the configuration.

Resources are looked up through a :class:`ResourceRouter`: a list of mounts, each a
``(repository, type)`` prefix (``None`` = any) and a backend; the first matching mount
wins, and the last mount is the catch-all default.

The life-cycle operations of the admin API (metadata, kept versions, rollback) go to the
backend that holds the path, like reads and writes. A listing asks every backend and keeps
only the paths each backend actually serves (a path another, earlier mount shadows is not
listed twice); backends that cannot enumerate are named instead.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from kbs.settings import KbsSettings
from storage_backends.base import (
    ResourceDesc,
    ResourceInfo,
    StorageBackend,
    VersionedValue,
    VersionInfo,
)
from storage_backends.errors import UnsupportedOperationError
from storage_backends.file import FileBackend
from storage_backends.memory import MemoryBackend
from storage_backends.sql import SqlBackend

_logger = logging.getLogger(__name__)

__all__ = ["Mount", "ResourceRouter", "build_resource_router"]


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


class ResourceRouter:
    """Dispatches resource operations to the mounted backends."""

    def __init__(self, mounts: Sequence[Mount]) -> None:
        """Route through ``mounts`` in order; the last must be a catch-all."""
        if not mounts:
            raise ValueError("at least one resource backend is required")
        self.mounts = tuple(mounts)

    def backend_for(self, desc: ResourceDesc) -> StorageBackend:
        """The backend that holds ``desc`` (the default if no mount matches)."""
        for mount in self.mounts:
            if mount.matches(desc):
                return mount.backend
        return self.mounts[-1].backend

    async def get(self, desc: ResourceDesc) -> bytes:
        """Read ``desc`` from its backend (see :meth:`StorageBackend.get`)."""
        return await self.backend_for(desc).get(desc)

    async def put(self, desc: ResourceDesc, data: bytes) -> str | None:
        """Write ``desc`` to its backend; the new version id (:meth:`StorageBackend.put`)."""
        return await self.backend_for(desc).put(desc, data)

    async def delete(self, desc: ResourceDesc) -> None:
        """Delete ``desc`` from its backend (see :meth:`StorageBackend.delete`)."""
        await self.backend_for(desc).delete(desc)

    async def read(self, desc: ResourceDesc) -> VersionedValue:
        """Read ``desc`` and its version id (see :meth:`StorageBackend.read`)."""
        return await self.backend_for(desc).read(desc)

    async def describe(self, desc: ResourceDesc) -> ResourceInfo:
        """Metadata of ``desc`` (see :meth:`StorageBackend.describe`)."""
        return await self.backend_for(desc).describe(desc)

    async def list_info(
        self, *, visible: Callable[[ResourceDesc], bool] = lambda _: True
    ) -> tuple[list[ResourceInfo], list[str]]:
        """Metadata of every resource ``visible`` accepts, and the kinds that cannot list.

        Raises:
            StorageUnavailableError: a backend could not be read.
        """
        found: list[ResourceInfo] = []
        unlisted: list[str] = []
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

    async def list_versions(self, desc: ResourceDesc) -> list[VersionInfo]:
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
        """Probe every backend (readiness)."""
        for mount in self.mounts:
            await mount.backend.check()

    async def aclose(self) -> None:
        """Close every backend."""
        for mount in self.mounts:
            await mount.backend.aclose()


def build_resource_router(
    settings: KbsSettings, *, engine: AsyncEngine, clock: Callable[[], dt.datetime]
) -> ResourceRouter:
    """Build the backends the configuration names.

    * no ``[[plugins]]`` resource entry: files under ``<data_dir>/repository`` (tree layout);
    * ``type = "LocalFs"``: real directories under ``dir_path`` (Trustee <= v0.18 layout);
    * ``kvstorage`` with ``[storage_backend] storage_type = "LocalFs"``: Trustee v0.20+
      flat files under ``<dir_path>/repository``; ``"Postgres"``: the database;
      ``"Memory"``: process memory (lost on restart); no ``[storage_backend]``: the database.

    Raises:
        ValueError: a backend cannot be built from the settings.
    """
    plugin = settings.resource_plugin
    keep = settings.keep_resource_versions
    backend: StorageBackend
    if plugin is None:
        backend = FileBackend(
            settings.data_dir / "repository", layout="tree", create=True, keep_versions=keep
        )
    elif plugin.storage_backend_type == "LocalFs":
        backend = FileBackend(plugin.dir_path, layout="tree", create=True, keep_versions=keep)
    elif plugin.storage_backend_type == "kvstorage":
        kv = settings.storage_backend
        if kv is None or kv.storage_type == "Postgres":
            backend = SqlBackend(engine, clock=clock, keep_versions=keep)
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
    else:
        raise ValueError(f"resource backend {plugin.storage_backend_type!r} is not available")
    return ResourceRouter([Mount(None, None, backend)])
