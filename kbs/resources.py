# SPDX-License-Identifier: Apache-2.0
"""Which storage backend holds which resource, built from the configuration.

Resources are looked up through a :class:`ResourceRouter`: a list of mounts, each a
``(repository, type)`` prefix (``None`` = any) and a backend; the first matching mount
wins, and the last mount is the catch-all default.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from kbs.settings import KbsSettings
from storage_backends.base import ResourceDesc, StorageBackend
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

    async def put(self, desc: ResourceDesc, data: bytes) -> None:
        """Write ``desc`` to its backend (see :meth:`StorageBackend.put`)."""
        await self.backend_for(desc).put(desc, data)

    async def delete(self, desc: ResourceDesc) -> None:
        """Delete ``desc`` from its backend (see :meth:`StorageBackend.delete`)."""
        await self.backend_for(desc).delete(desc)

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
    backend: StorageBackend
    if plugin is None:
        backend = FileBackend(settings.data_dir / "repository", layout="tree", create=True)
    elif plugin.storage_backend_type == "LocalFs":
        backend = FileBackend(plugin.dir_path, layout="tree", create=True)
    elif plugin.storage_backend_type == "kvstorage":
        kv = settings.storage_backend
        if kv is None or kv.storage_type == "Postgres":
            backend = SqlBackend(engine, clock=clock)
        elif kv.storage_type == "LocalFs":
            backend = FileBackend(
                kv.backends.local_fs.dir_path / "repository", layout="flat", create=True
            )
        else:
            _logger.warning(
                "resources are kept in process memory (storage_type = Memory): "
                "they are lost on restart and not shared between processes"
            )
            backend = MemoryBackend()
    else:
        raise ValueError(f"resource backend {plugin.storage_backend_type!r} is not available")
    return ResourceRouter([Mount(None, None, backend)])
