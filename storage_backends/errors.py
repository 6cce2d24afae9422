# SPDX-License-Identifier: Apache-2.0
"""Errors raised by secret storage backends.

"The resource is not there / the request is wrong" is kept apart from "we could not reach
the backend" (:class:`StorageUnavailableError`, a 503 at the HTTP edge).
"""

from __future__ import annotations

__all__ = [
    "InvalidResourcePathError",
    "ResourceConflictError",
    "ResourceNotFoundError",
    "ResourceTooLargeError",
    "StorageError",
    "StorageUnavailableError",
    "UnsupportedOperationError",
]


class StorageError(Exception):
    """Root of every error this package raises."""


class InvalidResourcePathError(StorageError):
    """A resource path is not ``<repository>/<type>/<tag>`` with valid segments."""


class ResourceNotFoundError(StorageError):
    """The backend holds no resource at that path."""


class ResourceTooLargeError(StorageError):
    """A resource exceeds the backend's size limit."""


class ResourceConflictError(StorageError):
    """The operation conflicts with the resource's state (e.g. deleting its current version)."""


class UnsupportedOperationError(StorageError):
    """The backend cannot perform this operation (for example, a read-only backend)."""


class StorageUnavailableError(StorageError):
    """The backend could not be reached or failed; the request may succeed later."""
