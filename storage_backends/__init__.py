# SPDX-License-Identifier: Apache-2.0
"""Secret storage backends behind one interface (:class:`~storage_backends.base.StorageBackend`)."""

from storage_backends.base import (
    DEFAULT_MAX_RESOURCE_BYTES,
    ResourceDesc,
    ResourceInfo,
    StorageBackend,
    VersionedValue,
    VersionInfo,
    is_valid_segment,
    is_valid_version,
)
from storage_backends.errors import (
    InvalidResourcePathError,
    ResourceConflictError,
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
    "ResourceConflictError",
    "ResourceDesc",
    "ResourceInfo",
    "ResourceNotFoundError",
    "ResourceTooLargeError",
    "SqlBackend",
    "StorageBackend",
    "StorageError",
    "StorageUnavailableError",
    "UnsupportedOperationError",
    "VersionInfo",
    "VersionedValue",
    "is_valid_segment",
    "is_valid_version",
]
