# SPDX-License-Identifier: Apache-2.0
"""Secrets in a dictionary (Trustee's ``Memory`` storage).

Everything is lost when the process exits, and every process has its own copy, so this
backend suits tests and single-process development only. Several KBS replicas must share
a persistent backend instead (:class:`~storage_backends.sql.SqlBackend`).

Versions: every ``put`` gets the next version number (``"1"``, ``"2"``...); with
``keep_versions > 0`` that many previous values are kept for rollback.
"""

from __future__ import annotations

import builtins
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from storage_backends.base import (
    DEFAULT_MAX_RESOURCE_BYTES,
    ResourceDesc,
    ResourceInfo,
    StorageBackend,
    VersionedValue,
    VersionInfo,
)
from storage_backends.errors import (
    ResourceConflictError,
    ResourceNotFoundError,
    UnsupportedOperationError,
)

_logger = logging.getLogger(__name__)

__all__ = ["MemoryBackend"]


@dataclass(slots=True)
class _Version:
    number: int
    data: bytes = field(repr=False)
    created: dt.datetime | None


@dataclass(slots=True)
class _Entry:
    created: dt.datetime | None
    #: Oldest first; the last one is current.
    versions: list[_Version]


class MemoryBackend(StorageBackend):
    """A process-local, non-persistent secret store.

    The hooks never await, so each operation runs to completion on the event loop without
    interleaving; no lock is needed.
    """

    kind = "memory"

    def __init__(
        self,
        *,
        max_resource_bytes: int = DEFAULT_MAX_RESOURCE_BYTES,
        keep_versions: int = 0,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        """Start empty.

        Args:
            max_resource_bytes: size cap for one resource.
            keep_versions: how many previous values to keep per resource (0: none).
            clock: stamps creation and update times (none: times are unknown).

        Raises:
            ValueError: ``keep_versions`` is negative.
        """
        super().__init__(max_resource_bytes=max_resource_bytes)
        if keep_versions < 0:
            raise ValueError("keep_versions must not be negative")
        self.keep_versions = keep_versions
        self._clock = clock
        self._data: dict[ResourceDesc, _Entry] = {}

    def _entry(self, desc: ResourceDesc) -> _Entry:
        try:
            return self._data[desc]
        except KeyError:
            raise ResourceNotFoundError("resource not found") from None

    def _version(self, desc: ResourceDesc, version: str) -> _Version:
        entry = self._entry(desc)
        for kept in entry.versions:
            if str(kept.number) == version:
                return kept
        raise ResourceNotFoundError("resource version not found")

    async def _get(self, desc: ResourceDesc) -> bytes:
        """Return the stored value.

        Raises:
            ResourceNotFoundError: nothing is stored at ``desc``.
        """
        return self._entry(desc).versions[-1].data

    async def _read(self, desc: ResourceDesc) -> VersionedValue:
        current = self._entry(desc).versions[-1]
        return VersionedValue(current.data, str(current.number))

    async def _put(self, desc: ResourceDesc, data: bytes) -> str:
        """Store a private copy of ``data``, so a caller's later mutation cannot reach it."""
        now = self._clock() if self._clock is not None else None
        entry = self._data.get(desc)
        if entry is None:
            entry = self._data[desc] = _Entry(created=now, versions=[])
        number = entry.versions[-1].number + 1 if entry.versions else 1
        entry.versions.append(_Version(number, bytes(data), now))
        del entry.versions[: -(self.keep_versions + 1)]
        return str(number)

    async def _delete(self, desc: ResourceDesc) -> None:
        """Forget ``desc`` and its versions.

        Raises:
            ResourceNotFoundError: nothing is stored at ``desc``.
        """
        try:
            del self._data[desc]
        except KeyError:
            raise ResourceNotFoundError("resource not found") from None

    async def _list(self) -> builtins.list[ResourceDesc]:
        """Return every stored path."""
        return builtins.list(self._data)

    async def _describe(self, desc: ResourceDesc) -> ResourceInfo:
        entry = self._entry(desc)
        current = entry.versions[-1]
        return ResourceInfo(
            desc=desc,
            backend=self.kind,
            size=len(current.data),
            created=entry.created,
            updated=current.created,
            version=str(current.number),
            versions=len(entry.versions),
        )

    def _require_versions(self) -> None:
        if self.keep_versions == 0:
            raise UnsupportedOperationError("memory backend keeps no versions (keep_versions = 0)")

    async def _list_versions(self, desc: ResourceDesc) -> builtins.list[VersionInfo]:
        self._require_versions()
        entry = self._entry(desc)
        last = entry.versions[-1].number
        return [
            VersionInfo(
                version=str(v.number), size=len(v.data), created=v.created, current=v.number == last
            )
            for v in reversed(entry.versions)
        ]

    async def _get_version(self, desc: ResourceDesc, version: str) -> bytes:
        self._require_versions()
        return self._version(desc, version).data

    async def _delete_version(self, desc: ResourceDesc, version: str) -> None:
        self._require_versions()
        kept = self._version(desc, version)
        entry = self._entry(desc)
        if kept is entry.versions[-1]:
            raise ResourceConflictError("cannot delete the current version")
        entry.versions.remove(kept)
