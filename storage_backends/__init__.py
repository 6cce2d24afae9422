# SPDX-License-Identifier: Apache-2.0
"""Secret storage backends behind one interface (:class:`~storage_backends.base.StorageBackend`)."""

from storage_backends.base import (
    DEFAULT_MAX_RESOURCE_BYTES,
    ResourceDesc,
    StorageBackend,
    is_valid_segment,
)
from storage_backends.errors import (
    InvalidResourcePathError,
    ResourceNotFoundError,
    ResourceTooLargeError,
    StorageError,
    StorageUnavailableError,
    UnsupportedOperationError,
)
from storage_backends.file import FileBackend
from storage_backends.memory import MemoryBackend
from storage_backends.sql import SqlBackend

__all__ = [
    "DEFAULT_MAX_RESOURCE_BYTES",
    "FileBackend",
    "InvalidResourcePathError",
    "MemoryBackend",
    "ResourceDesc",
    "ResourceNotFoundError",
    "ResourceTooLargeError",
    "SqlBackend",
    "StorageBackend",
    "StorageError",
    "StorageUnavailableError",
    "UnsupportedOperationError",
    "is_valid_segment",
]
