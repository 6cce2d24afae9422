# SPDX-License-Identifier: Apache-2.0
"""The secret storage interface and the resource path type.

A resource is addressed as ``<repository>/<type>/<tag>``, exactly three segments, each
matching :data:`SEGMENT_PATTERN` (no segment may start with ``.``), as in the reference
KBS. :class:`ResourceDesc` is the only way a path reaches a backend, so a backend never
sees ``..``, ``/`` inside a segment, or an empty segment.

Beyond Trustee's get/put/delete/list, the interface has a life-cycle part for the admin
API: metadata without values (:meth:`StorageBackend.describe`, :meth:`~StorageBackend.list_info`),
the version that is current (:meth:`~StorageBackend.read`), and kept versions
(:meth:`~StorageBackend.list_versions`, :meth:`~StorageBackend.get_version`,
:meth:`~StorageBackend.restore_version`, :meth:`~StorageBackend.delete_version`). Each has
a default: metadata falls back to reading the value's size; version operations raise
:class:`UnsupportedOperationError` unless the backend keeps versions. Version ids are
opaque strings chosen by the backend (``"3"`` for file/sql/memory, KMS version ids).
"""

from __future__ import annotations

import abc
import builtins
import datetime as dt
import logging
import re
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

from storage_backends.errors import (
    InvalidResourcePathError,
    ResourceNotFoundError,
    ResourceTooLargeError,
    StorageError,
    StorageUnavailableError,
    UnsupportedOperationError,
)

_logger = logging.getLogger(__name__)

_T = TypeVar("_T")

__all__ = [
    "DEFAULT_MAX_RESOURCE_BYTES",
    "MAX_SEGMENT_LENGTH",
    "MAX_VERSION_LENGTH",
    "SEGMENT_PATTERN",
    "ResourceDesc",
    "ResourceInfo",
    "StorageBackend",
    "VersionInfo",
    "VersionedValue",
    "is_valid_segment",
    "is_valid_version",
]

#: One path segment: starts with ``[A-Za-z0-9_-]``, then ``[A-Za-z0-9_.-]*``.
SEGMENT_PATTERN: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")

#: Longest accepted segment; file systems cap names at 255 bytes.
MAX_SEGMENT_LENGTH: Final = 255

#: Default cap on one stored secret (model keys are bytes to kilobytes).
DEFAULT_MAX_RESOURCE_BYTES: Final = 1024 * 1024

#: Longest version id accepted from a caller (KMS version ids are at most 64 characters).
MAX_VERSION_LENGTH: Final = 64
_VERSION_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def is_valid_segment(value: object) -> bool:
    """Tell whether ``value`` may be one segment of a resource path.

    Backends that enumerate stored names (directory walks, SQL rows) use this to skip
    anything :class:`ResourceDesc` would reject, before descending into it.
    """
    return (
        isinstance(value, str)
        and len(value) <= MAX_SEGMENT_LENGTH
        and SEGMENT_PATTERN.fullmatch(value) is not None
    )


def is_valid_version(value: object) -> bool:
    """Tell whether ``value`` may be a version id (caller input is checked before a backend)."""
    return (
        isinstance(value, str)
        and len(value) <= MAX_VERSION_LENGTH
        and _VERSION_PATTERN.fullmatch(value) is not None
    )


@dataclass(frozen=True, slots=True, order=True)
class ResourceDesc:
    """A validated resource path ``<repository>/<type>/<tag>``."""

    repository: str
    type: str
    tag: str

    def __post_init__(self) -> None:
        """Reject any segment that is not a valid resource path segment."""
        for name, value in (
            ("repository", self.repository),
            ("type", self.type),
            ("tag", self.tag),
        ):
            if not is_valid_segment(value):
                raise InvalidResourcePathError(f"invalid resource path segment ({name})")

    @classmethod
    def parse(cls, path: str | Sequence[str]) -> ResourceDesc:
        """Build a descriptor from ``"repo/type/tag"`` or ``["repo", "type", "tag"]``.

        Raises:
            InvalidResourcePathError: not exactly three valid segments.
        """
        parts = path.split("/") if isinstance(path, str) else list(path)
        if len(parts) != 3:  # noqa: PLR2004 - the protocol's three segments
            raise InvalidResourcePathError("resource path must be <repository>/<type>/<tag>")
        return cls(parts[0], parts[1], parts[2])

    @property
    def segments(self) -> tuple[str, str, str]:
        """The three segments in order."""
        return (self.repository, self.type, self.tag)

    def __str__(self) -> str:
        """Return ``repository/type/tag``."""
        return f"{self.repository}/{self.type}/{self.tag}"


@dataclass(frozen=True, slots=True)
class VersionedValue:
    """A resource's value and the id of the version it is (``None``: not tracked)."""

    data: bytes = field(repr=False)
    version: str | None


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """Metadata of one kept version of a resource; never its value."""

    version: str
    size: int | None
    created: dt.datetime | None
    current: bool


@dataclass(frozen=True, slots=True)
class ResourceInfo:
    """Metadata of a stored resource; never its value.

    Attributes:
        desc: the resource path.
        backend: the backend kind (``file``, ``sql``, ``memory``, ``aliyun_kms``).
        size: bytes of the current value, when known without reading it into memory
            (or when cheap to read).
        created: when the resource was first stored, if the backend knows.
        updated: when the current value was stored, if the backend knows.
        version: the current version id, if the backend tracks versions.
        versions: how many versions are kept, the current one included, if known.
    """

    desc: ResourceDesc
    backend: str
    size: int | None = None
    created: dt.datetime | None = None
    updated: dt.datetime | None = None
    version: str | None = None
    versions: int | None = None


class StorageBackend(abc.ABC):
    """Base class of every secret backend.

    Subclasses implement the ``_get``/``_put``/``_delete``/``_list`` hooks. The public
    methods add what every backend shares: the size cap, and wrapping of unexpected
    errors into :class:`StorageUnavailableError` so callers see one error tree.

    The life-cycle hooks (``_read``, ``_describe``, ``_list_info``, ``_list_versions``,
    ``_get_version``, ``_restore_version``, ``_delete_version``) are optional: the
    defaults derive what they can from the four basic hooks and otherwise raise
    :class:`UnsupportedOperationError`, so a backend written against the first version
    of this interface keeps working unchanged.
    """

    #: Short name of the backend kind, reported in metadata and logs (``file``, ``aliyun_kms``...).
    kind: str = "backend"

    def __init__(self, *, max_resource_bytes: int = DEFAULT_MAX_RESOURCE_BYTES) -> None:
        """Set the size cap shared by all backends."""
        self.max_resource_bytes = max_resource_bytes

    async def get(self, desc: ResourceDesc) -> bytes:
        """Return the current value of ``desc``.

        Raises:
            ResourceNotFoundError: nothing is stored at ``desc``.
            ResourceTooLargeError: the stored value exceeds the size cap.
            StorageUnavailableError: the backend could not be read.
        """
        data = await self._guard(self._get(desc), "get")
        if len(data) > self.max_resource_bytes:
            raise ResourceTooLargeError("stored resource exceeds the size limit")
        return data

    async def put(self, desc: ResourceDesc, data: bytes) -> str | None:
        """Store ``data`` at ``desc``, replacing any previous value.

        Backends that keep versions keep the replaced value as a previous version.

        Returns:
            The id of the new version, or ``None`` when the backend does not track versions.

        Raises:
            ResourceTooLargeError: ``data`` exceeds the size cap.
            UnsupportedOperationError: the backend is read-only.
            StorageUnavailableError: the backend could not be written.
        """
        if len(data) > self.max_resource_bytes:
            raise ResourceTooLargeError(
                f"resource exceeds the size limit of {self.max_resource_bytes} bytes"
            )
        return await self._guard(self._put(desc, data), "put")

    async def delete(self, desc: ResourceDesc) -> None:
        """Delete the resource at ``desc`` (and the versions kept of it).

        Raises:
            ResourceNotFoundError: nothing is stored at ``desc``.
            UnsupportedOperationError: the backend is read-only.
            StorageUnavailableError: the backend could not be written.
        """
        await self._guard(self._delete(desc), "delete")

    async def list(self) -> builtins.list[ResourceDesc]:
        """Return every stored resource path, sorted.

        Raises:
            UnsupportedOperationError: the backend cannot enumerate.
            StorageUnavailableError: the backend could not be read.
        """
        return sorted(await self._guard(self._list(), "list"))

    async def read(self, desc: ResourceDesc) -> VersionedValue:
        """Return the current value of ``desc`` and the id of its version.

        Raises:
            ResourceNotFoundError: nothing is stored at ``desc``.
            ResourceTooLargeError: the stored value exceeds the size cap.
            StorageUnavailableError: the backend could not be read.
        """
        value = await self._guard(self._read(desc), "read")
        if len(value.data) > self.max_resource_bytes:
            raise ResourceTooLargeError("stored resource exceeds the size limit")
        return value

    async def describe(self, desc: ResourceDesc) -> ResourceInfo:
        """Return the metadata of ``desc`` (never its value).

        Raises:
            ResourceNotFoundError: nothing is stored at ``desc``.
            StorageUnavailableError: the backend could not be read.
        """
        return await self._guard(self._describe(desc), "describe")

    async def list_info(self) -> builtins.list[ResourceInfo]:
        """Return the metadata of every stored resource, sorted by path.

        Raises:
            UnsupportedOperationError: the backend cannot enumerate.
            StorageUnavailableError: the backend could not be read.
        """
        found = await self._guard(self._list_info(), "list")
        return sorted(found, key=lambda info: info.desc)

    async def list_versions(self, desc: ResourceDesc) -> builtins.list[VersionInfo]:
        """Return the kept versions of ``desc``, newest first (metadata only).

        Raises:
            ResourceNotFoundError: nothing is stored at ``desc``.
            UnsupportedOperationError: the backend keeps no versions.
            StorageUnavailableError: the backend could not be read.
        """
        return await self._guard(self._list_versions(desc), "list versions")

    async def get_version(self, desc: ResourceDesc, version: str) -> bytes:
        """Return the value of one kept version of ``desc``.

        Raises:
            InvalidResourcePathError: ``version`` is not a valid version id.
            ResourceNotFoundError: no such resource or version.
            UnsupportedOperationError: the backend keeps no versions.
            ResourceTooLargeError: the stored value exceeds the size cap.
            StorageUnavailableError: the backend could not be read.
        """
        _check_version(version)
        data = await self._guard(self._get_version(desc, version), "get version")
        if len(data) > self.max_resource_bytes:
            raise ResourceTooLargeError("stored resource exceeds the size limit")
        return data

    async def restore_version(self, desc: ResourceDesc, version: str) -> str | None:
        """Make a kept version of ``desc`` current again (roll back a bad rotation).

        The default stores the old value as a new version, so the rollback itself is
        kept in the history; a backend with native version stages may move its
        "current" marker instead.

        Returns:
            The id of the version that is now current.

        Raises:
            InvalidResourcePathError: ``version`` is not a valid version id.
            ResourceNotFoundError: no such resource or version.
            UnsupportedOperationError: the backend keeps no versions or is read-only.
            StorageUnavailableError: the backend could not be read or written.
        """
        _check_version(version)
        return await self._guard(self._restore_version(desc, version), "restore version")

    async def delete_version(self, desc: ResourceDesc, version: str) -> None:
        """Delete one kept, non-current version of ``desc`` (e.g. a leaked value).

        Raises:
            InvalidResourcePathError: ``version`` is not a valid version id.
            ResourceNotFoundError: no such resource or version.
            ResourceConflictError: ``version`` is the current version (delete the
                resource, or restore another version first).
            UnsupportedOperationError: the backend cannot delete single versions.
            StorageUnavailableError: the backend could not be written.
        """
        _check_version(version)
        await self._guard(self._delete_version(desc, version), "delete version")

    async def check(self) -> None:
        """Probe that the backend is usable (for readiness checks).

        Raises:
            StorageUnavailableError: the backend is not usable now.
        """
        await self._guard(self._check(), "check")

    async def aclose(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Release connections or handles; the default does nothing."""

    async def _guard(self, awaitable: Awaitable[_T], op: str) -> _T:
        try:
            return await awaitable
        except StorageError:
            raise
        except Exception as exc:
            _logger.warning("%s backend %s failed", self.kind, op, exc_info=True)
            raise StorageUnavailableError(f"{self.kind} backend {op} failed") from exc

    @abc.abstractmethod
    async def _get(self, desc: ResourceDesc) -> bytes:
        """Hook for :meth:`get`."""

    @abc.abstractmethod
    async def _put(self, desc: ResourceDesc, data: bytes) -> str | None:
        """Hook for :meth:`put`; returns the new version id, if versions are tracked."""

    @abc.abstractmethod
    async def _delete(self, desc: ResourceDesc) -> None:
        """Hook for :meth:`delete`."""

    @abc.abstractmethod
    async def _list(self) -> builtins.list[ResourceDesc]:
        """Hook for :meth:`list`."""

    async def _check(self) -> None:
        """Hook for :meth:`check`; the default lists nothing and succeeds."""
        return

    async def _read(self, desc: ResourceDesc) -> VersionedValue:
        """Hook for :meth:`read`; the default reads the value without a version."""
        return VersionedValue(await self._get(desc), None)

    async def _describe(self, desc: ResourceDesc) -> ResourceInfo:
        """Hook for :meth:`describe`; the default reads the value to learn its size."""
        value = await self._read(desc)
        return ResourceInfo(
            desc=desc, backend=self.kind, size=len(value.data), version=value.version
        )

    async def _list_info(self) -> builtins.list[ResourceInfo]:
        """Hook for :meth:`list_info`; the default describes each listed path."""
        found: builtins.list[ResourceInfo] = []
        for desc in await self._list():
            try:
                found.append(await self._describe(desc))
            except ResourceNotFoundError:
                continue  # deleted while we listed
        return found

    async def _list_versions(self, desc: ResourceDesc) -> builtins.list[VersionInfo]:
        """Hook for :meth:`list_versions`; the default keeps no versions."""
        del desc
        raise UnsupportedOperationError(f"{self.kind} backend does not keep versions")

    async def _get_version(self, desc: ResourceDesc, version: str) -> bytes:
        """Hook for :meth:`get_version`; the default keeps no versions."""
        del desc, version
        raise UnsupportedOperationError(f"{self.kind} backend does not keep versions")

    async def _restore_version(self, desc: ResourceDesc, version: str) -> str | None:
        """Hook for :meth:`restore_version`: store the old value as a new version."""
        return await self._put(desc, await self._get_version(desc, version))

    async def _delete_version(self, desc: ResourceDesc, version: str) -> None:
        """Hook for :meth:`delete_version`; the default keeps no versions."""
        del desc, version
        raise UnsupportedOperationError(f"{self.kind} backend does not keep versions")


def _check_version(version: object) -> None:
    if not is_valid_version(version):
        raise InvalidResourcePathError("invalid resource version id")
