# SPDX-License-Identifier: Apache-2.0
"""The secret storage interface and the resource path type.

A resource is addressed as ``<repository>/<type>/<tag>``, exactly three segments, each
matching :data:`SEGMENT_PATTERN` (no segment may start with ``.``), as in the reference
KBS. :class:`ResourceDesc` is the only way a path reaches a backend, so a backend never
sees ``..``, ``/`` inside a segment, or an empty segment.
"""

from __future__ import annotations

import abc
import builtins
import logging
import re
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from storage_backends.errors import (
    InvalidResourcePathError,
    ResourceTooLargeError,
    StorageError,
    StorageUnavailableError,
)

_logger = logging.getLogger(__name__)

_T = TypeVar("_T")

__all__ = [
    "DEFAULT_MAX_RESOURCE_BYTES",
    "MAX_SEGMENT_LENGTH",
    "SEGMENT_PATTERN",
    "ResourceDesc",
    "StorageBackend",
    "is_valid_segment",
]

#: One path segment: starts with ``[A-Za-z0-9_-]``, then ``[A-Za-z0-9_.-]*``.
SEGMENT_PATTERN: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")

#: Longest accepted segment; file systems cap names at 255 bytes.
MAX_SEGMENT_LENGTH: Final = 255

#: Default cap on one stored secret (model keys are bytes to kilobytes).
DEFAULT_MAX_RESOURCE_BYTES: Final = 1024 * 1024


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


class StorageBackend(abc.ABC):
    """Base class of every secret backend.

    Subclasses implement the ``_get``/``_put``/``_delete``/``_list`` hooks. The public
    methods add what every backend shares: the size cap, and wrapping of unexpected
    errors into :class:`StorageUnavailableError` so callers see one error tree.
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

    async def put(self, desc: ResourceDesc, data: bytes) -> None:
        """Store ``data`` at ``desc``, replacing any previous value.

        Raises:
            ResourceTooLargeError: ``data`` exceeds the size cap.
            UnsupportedOperationError: the backend is read-only.
            StorageUnavailableError: the backend could not be written.
        """
        if len(data) > self.max_resource_bytes:
            raise ResourceTooLargeError(
                f"resource exceeds the size limit of {self.max_resource_bytes} bytes"
            )
        await self._guard(self._put(desc, data), "put")

    async def delete(self, desc: ResourceDesc) -> None:
        """Delete the resource at ``desc``.

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
    async def _put(self, desc: ResourceDesc, data: bytes) -> None:
        """Hook for :meth:`put`."""

    @abc.abstractmethod
    async def _delete(self, desc: ResourceDesc) -> None:
        """Hook for :meth:`delete`."""

    @abc.abstractmethod
    async def _list(self) -> builtins.list[ResourceDesc]:
        """Hook for :meth:`list`."""

    async def _check(self) -> None:
        """Hook for :meth:`check`; the default lists nothing and succeeds."""
        return
