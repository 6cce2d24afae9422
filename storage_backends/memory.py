# SPDX-License-Identifier: Apache-2.0
"""Secrets in a dictionary (Trustee's ``Memory`` storage).

Everything is lost when the process exits, and every process has its own copy, so this
backend suits tests and single-process development only. Several KBS replicas must share
a persistent backend instead (:class:`~storage_backends.sql.SqlBackend`).
"""

from __future__ import annotations

import builtins
import logging

from storage_backends.base import DEFAULT_MAX_RESOURCE_BYTES, ResourceDesc, StorageBackend
from storage_backends.errors import ResourceNotFoundError

_logger = logging.getLogger(__name__)

__all__ = ["MemoryBackend"]


class MemoryBackend(StorageBackend):
    """A process-local, non-persistent secret store.

    The hooks never await, so each operation runs to completion on the event loop without
    interleaving; no lock is needed.
    """

    kind = "memory"

    def __init__(self, *, max_resource_bytes: int = DEFAULT_MAX_RESOURCE_BYTES) -> None:
        """Start empty."""
        super().__init__(max_resource_bytes=max_resource_bytes)
        self._data: dict[ResourceDesc, bytes] = {}

    async def _get(self, desc: ResourceDesc) -> bytes:
        """Return the stored value.

        Raises:
            ResourceNotFoundError: nothing is stored at ``desc``.
        """
        try:
            return self._data[desc]
        except KeyError:
            raise ResourceNotFoundError("resource not found") from None

    async def _put(self, desc: ResourceDesc, data: bytes) -> None:
        """Store a private copy of ``data``, so a caller's later mutation cannot reach it."""
        self._data[desc] = bytes(data)

    async def _delete(self, desc: ResourceDesc) -> None:
        """Forget ``desc``.

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
