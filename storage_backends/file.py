# SPDX-License-Identifier: Apache-2.0
r"""Secrets as files under one root directory (Trustee's ``LocalFs``).

Two layouts, both readable and writable by the reference KBS:

``tree`` (Trustee up to v0.18, and the seed workflow)
    ``<root>/<repository>/<type>/<tag>`` as real directories. An administrator copies a
    file to ``<root>/cai/sample/password`` and a guest fetches ``kbs:///cai/sample/password``.

``flat`` (Trustee v0.20+ key-value ``LocalFs``)
    One file per resource directly in ``<root>``, named ``<repository>\x2F<type>\x2F<tag>``
    (``/`` replaced by the literal four characters ``\x2F``). Trustee keeps resources in
    the ``repository`` namespace directory, so point ``root`` at
    ``<storage_backend.backends.local_fs.dir_path>/repository``.

Security model, enforced on every operation:

1. The root is operator configuration and is opened as given (a symlink in the root's
   own path is followed). Nothing outside it is ever read or written.
2. Below the root, every path component is opened relative to its parent directory's
   descriptor with ``O_NOFOLLOW``, so no symlink is ever followed, whatever it points at
   (outside the root, inside it, or nowhere). A resource whose path crosses a symlink
   does not exist: ``get`` and ``delete`` raise :class:`ResourceNotFoundError`, ``list``
   skips it, and ``put`` refuses with :class:`StorageUnavailableError`. Each refusal is
   logged as a WARNING naming the resource path, so an operator sees why. (Kubernetes
   Secret volumes present their keys as symlinks into a hidden ``..data`` directory;
   they cannot be mounted below the root as they are.)
3. Only regular files are served; directories, FIFOs, sockets and devices at a resource
   path do not exist. FIFOs are opened with ``O_NONBLOCK`` so they cannot stall a worker.
4. Names starting with ``.`` (temporary files, editor and VCS droppings) are never
   listed or served; :class:`ResourceDesc` cannot name them.
5. Writes are atomic: the value goes to a new ``0o600`` temporary file (``O_EXCL``) in
   the target's directory, is fsynced, renamed over the target, and the directory is
   fsynced. A crash leaves either the old or the new value, never a partial one; an
   orphaned temporary file is invisible (rule 4). Directories are created ``0o700``.

Not covered: hard links are not detected (whoever can write below the root already
decides what is served, so keep it ``0o700`` and owned by the KBS user), and ``delete``
leaves empty directories in place (removing them would race with a concurrent ``put``).

Versions (``keep_versions > 0``): every ``put`` also stores the value as
``<root>/.kbs-versions/<repository>/<type>/<tag>/<n>`` (``n`` = 1, 2, ...; created with
``O_EXCL`` through a hard link, so concurrent writers never share a number) and keeps the
newest ``keep_versions + 1`` of them. Versioned writers of one resource take an exclusive
``flock`` on its version directory, so the resource file always holds the newest version.
The resource file itself stays where Trustee and the seed workflow expect it.
``.kbs-versions`` starts with ``.``, so no resource path can name it (rule 4): the guest
path never reaches a kept version. The current version is the newest kept one whose bytes
equal the resource file; a value copied in by hand is archived as a new version by the
next ``put``, so it can be rolled back to. A marker file ``created`` in the version
directory dates the resource's first versioned write.
``delete`` removes the version directory too.

Blocking file I/O runs in a worker thread, one :func:`asyncio.to_thread` per operation,
with one exception: without versions, ``get`` and ``read`` (the guest path) of a regular
file of at most ``inline_read_max_bytes`` (:data:`INLINE_READ_MAX_BYTES`) run inline on
the event loop: the same ``O_NOFOLLOW`` walk, ``fstat`` and read, a handful of system
calls on a local directory, cheaper than the hand-off to a thread and back. A larger
file is closed again after ``fstat`` and read in a worker thread. Pass
``inline_read_max_bytes=0`` for a root whose file system may stall (a network mount).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime as dt
import errno
import fcntl
import itertools
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final, Literal

from storage_backends.base import (
    DEFAULT_MAX_RESOURCE_BYTES,
    ResourceDesc,
    ResourceInfo,
    StorageBackend,
    VersionedValue,
    VersionInfo,
    is_valid_segment,
)
from storage_backends.errors import (
    InvalidResourcePathError,
    ResourceConflictError,
    ResourceNotFoundError,
    ResourceTooLargeError,
    StorageUnavailableError,
    UnsupportedOperationError,
)

_logger = logging.getLogger(__name__)

__all__ = ["FLAT_SEPARATOR", "VERSIONS_DIR", "FileBackend", "Layout"]

#: The two on-disk layouts (see the module docstring).
Layout = Literal["tree", "flat"]

#: What Trustee's key-value ``LocalFs`` writes in place of ``/`` in a key: four characters.
FLAT_SEPARATOR: Final = "\\x2F"

#: Mode of directories this backend creates.
DIR_MODE: Final = 0o700
#: Mode of files this backend writes.
FILE_MODE: Final = 0o600
#: Longest file name Linux file systems accept, in bytes.
NAME_MAX: Final = 255
#: Temporary files start with ``.`` so that nothing ever lists or serves them.
TEMP_PREFIX: Final = ".tmp-"
#: How many temporary names to try before giving up (only stale orphans can collide).
MAX_TEMP_ATTEMPTS: Final = 64
#: Read granularity.
READ_CHUNK_BYTES: Final = 64 * 1024
#: Hidden directory under the root that holds kept versions (no resource path can name it).
VERSIONS_DIR: Final = ".kbs-versions"
#: Marker file in a resource's version directory; its mtime dates the first versioned write.
CREATED_MARKER: Final = "created"
#: Most version files one resource's directory is scanned for (a guard against junk).
MAX_VERSION_FILES: Final = 10_000
#: Largest resource file ``get``/``read`` read inline on the event loop (see module doc).
INLINE_READ_MAX_BYTES: Final = 64 * 1024

# Open flags, written out in full (STYLE: security-relevant options even at their default).
_ROOT_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_TEMP_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# A resource path has three segments: repository, type, tag.
_SEGMENT_COUNT: Final = 3

# Opening a symlink with O_NOFOLLOW fails with ELOOP, or ENOTDIR when O_DIRECTORY is set.
_REFUSED_ERRNOS: Final = frozenset({errno.ELOOP, errno.ENOTDIR})

# Unique temporary names within this process; the pid separates processes. No randomness:
# names need to be unique, not unpredictable (O_EXCL and the 0o700 directory do the rest).
_temp_counter = itertools.count()


class FileBackend(StorageBackend):
    """Resources as files under ``root``, in the ``tree`` or ``flat`` layout.

    See the module docstring for the layouts and the security model. Several processes
    may share one root: writes are atomic renames, and the last writer wins.
    """

    kind = "file"

    def __init__(
        self,
        root: Path,
        *,
        layout: Layout = "tree",
        create: bool = False,
        max_resource_bytes: int = DEFAULT_MAX_RESOURCE_BYTES,
        keep_versions: int = 0,
        inline_read_max_bytes: int = INLINE_READ_MAX_BYTES,
    ) -> None:
        """Serve resources from ``root``.

        Args:
            root: The storage directory (Trustee's ``dir_path``; for ``flat``, its
                ``repository`` namespace directory).
            layout: ``"tree"`` (``<root>/<repo>/<type>/<tag>``) or ``"flat"``.
            create: Create ``root`` (mode ``0o700``, with missing parents) if it does not
                exist. Off by default, so a mistyped path is an error, not an empty store.
            max_resource_bytes: Size cap for one resource.
            keep_versions: How many previous values to keep per resource, under
                ``<root>/.kbs-versions`` (0: none, and no version directory is written).
            inline_read_max_bytes: Without versions, read files up to this size inline
                on the event loop (0: always in a worker thread).

        Raises:
            ValueError: ``layout`` is unknown, or ``keep_versions`` is negative.
            UnsupportedOperationError: the platform cannot open files relative to a
                directory descriptor without following symlinks.
            OSError: ``create`` is set and ``root`` could not be created.
        """
        super().__init__(max_resource_bytes=max_resource_bytes)
        if layout not in ("tree", "flat"):
            raise ValueError(f"unknown file backend layout: {layout!r}")
        if keep_versions < 0:
            raise ValueError("keep_versions must not be negative")
        self.keep_versions = keep_versions
        self.inline_read_max_bytes = inline_read_max_bytes
        _require_platform_support()
        self.root = Path(root).absolute()
        self.layout: Layout = layout
        if create and not self.root.exists():
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            _logger.info("created storage root %s", self.root)

    # ------------------------------------------------------------------ async hooks

    async def _get(self, desc: ResourceDesc) -> bytes:
        if self.inline_read_max_bytes > 0:
            with contextlib.suppress(_NotInlineError):
                return self._get_sync(desc, inline_max=self.inline_read_max_bytes)
        return await asyncio.to_thread(self._get_sync, desc)

    async def _put(self, desc: ResourceDesc, data: bytes) -> str | None:
        return await asyncio.to_thread(self._put_sync, desc, data)

    async def _delete(self, desc: ResourceDesc) -> None:
        await asyncio.to_thread(self._delete_sync, desc)

    async def _list(self) -> builtins.list[ResourceDesc]:
        return await asyncio.to_thread(self._list_sync)

    async def _check(self) -> None:
        await asyncio.to_thread(self._check_sync)

    async def _read(self, desc: ResourceDesc) -> VersionedValue:
        if self.keep_versions == 0 and self.inline_read_max_bytes > 0:
            with contextlib.suppress(_NotInlineError):
                return VersionedValue(
                    self._get_sync(desc, inline_max=self.inline_read_max_bytes), None
                )
        return await asyncio.to_thread(self._read_sync, desc)

    async def _describe(self, desc: ResourceDesc) -> ResourceInfo:
        return await asyncio.to_thread(self._describe_sync, desc)

    async def _list_info(self) -> builtins.list[ResourceInfo]:
        return await asyncio.to_thread(self._list_info_sync)

    async def _list_versions(self, desc: ResourceDesc) -> builtins.list[VersionInfo]:
        self._require_versions()
        return await asyncio.to_thread(self._list_versions_sync, desc)

    async def _get_version(self, desc: ResourceDesc, version: str) -> bytes:
        self._require_versions()
        return await asyncio.to_thread(self._get_version_sync, desc, version)

    async def _delete_version(self, desc: ResourceDesc, version: str) -> None:
        self._require_versions()
        await asyncio.to_thread(self._delete_version_sync, desc, version)

    def _require_versions(self) -> None:
        if self.keep_versions == 0:
            raise UnsupportedOperationError("file backend keeps no versions (keep_versions = 0)")

    # ------------------------------------------------------------------ operations

    def _get_sync(self, desc: ResourceDesc, *, inline_max: int | None = None) -> bytes:
        """The resource file's bytes (see :meth:`_read_file` for ``inline_max``)."""
        with self._open_root() as root_fd, self._open_parent(root_fd, desc) as parent:
            if parent is None:
                raise ResourceNotFoundError("resource not found")
            dir_fd, name = parent
            return self._read_file(dir_fd, name, desc, inline_max=inline_max)

    def _put_sync(self, desc: ResourceDesc, data: bytes) -> str | None:
        if self.layout == "flat" and len(_flat_name(desc)) > NAME_MAX:
            raise InvalidResourcePathError("resource path too long for the flat layout")
        with self._open_root() as root_fd, self._make_parent(root_fd, desc) as (dir_fd, name):
            if self.keep_versions == 0:
                _write_atomically(dir_fd, name, data, desc)
                return None
            with self._open_versions(root_fd, desc, create=True) as versions_fd:
                assert versions_fd is not None
                # 0. One versioned writer per resource at a time, across threads and
                #    processes (released when the descriptor closes), so the resource file
                #    always ends up holding the newest version.
                fcntl.flock(versions_fd, fcntl.LOCK_EX)
                _mark_created(versions_fd)
                numbers = _version_numbers(versions_fd)
                # 1. A value written by hand (or before versioning was on) is archived
                #    first, so it can be rolled back to.
                current = self._read_optional(dir_fd, name, desc)
                newest = numbers[-1] if numbers else 0
                if current is not None and (
                    not numbers or self._read_version_file(versions_fd, newest, desc) != current
                ):
                    newest = _store_version(versions_fd, newest + 1, current)
                # 2. The new value as the next version, then 3. in place, atomically.
                number = _store_version(versions_fd, newest + 1, data)
                _write_atomically(dir_fd, name, data, desc)
                # 4. Keep the newest keep_versions + 1.
                _prune_versions(versions_fd, self.keep_versions + 1)
                return str(number)

    def _delete_sync(self, desc: ResourceDesc) -> None:
        with self._open_root() as root_fd:
            # Kept versions go too (even when the resource file is already gone): a
            # deleted secret must not linger on disk.
            self._purge_versions(root_fd, desc)
        self._delete_file_sync(desc)

    def _delete_file_sync(self, desc: ResourceDesc) -> None:
        with self._open_root() as root_fd, self._open_parent(root_fd, desc) as parent:
            if parent is None:
                raise ResourceNotFoundError("resource not found")
            dir_fd, name = parent
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise ResourceNotFoundError("resource not found") from None
            if stat.S_ISLNK(st.st_mode):
                _warn_symlink(desc)
                raise ResourceNotFoundError("resource not found")
            if not stat.S_ISREG(st.st_mode):
                raise ResourceNotFoundError("resource not found")
            # If the entry was swapped for a symlink since the stat, unlink removes the
            # link itself: unlinkat never follows the last component.
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                raise ResourceNotFoundError("resource not found") from None
            os.fsync(dir_fd)

    def _list_sync(self) -> builtins.list[ResourceDesc]:
        with self._open_root() as root_fd:
            if self.layout == "flat":
                return _list_flat(root_fd)
            found: builtins.list[ResourceDesc] = []
            for repo, repo_fd in _subdirs(root_fd):
                with contextlib.closing(_Fd(repo_fd)):
                    for type_, type_fd in _subdirs(repo_fd):
                        with contextlib.closing(_Fd(type_fd)):
                            found.extend(
                                ResourceDesc(repo, type_, tag) for tag in _regular_files(type_fd)
                            )
            return found

    # ------------------------------------------------------------------ versions

    def _read_sync(self, desc: ResourceDesc) -> VersionedValue:
        with self._open_root() as root_fd, self._open_parent(root_fd, desc) as parent:
            if parent is None:
                raise ResourceNotFoundError("resource not found")
            dir_fd, name = parent
            data = self._read_file(dir_fd, name, desc)
            if self.keep_versions == 0:
                return VersionedValue(data, None)
            with self._open_versions(root_fd, desc, create=False) as versions_fd:
                if versions_fd is None:
                    return VersionedValue(data, None)
                number = self._current_number(versions_fd, data, desc)
        return VersionedValue(data, None if number is None else str(number))

    def _describe_sync(self, desc: ResourceDesc) -> ResourceInfo:
        with self._open_root() as root_fd, self._open_parent(root_fd, desc) as parent:
            if parent is None:
                raise ResourceNotFoundError("resource not found")
            dir_fd, name = parent
            data = self._read_file(dir_fd, name, desc)
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            info = ResourceInfo(
                desc=desc, backend=self.kind, size=len(data), updated=_mtime(st.st_mtime)
            )
            if self.keep_versions == 0:
                return info
            with self._open_versions(root_fd, desc, create=False) as versions_fd:
                if versions_fd is None:
                    return info
                number = self._current_number(versions_fd, data, desc)
                try:
                    marker = os.stat(CREATED_MARKER, dir_fd=versions_fd, follow_symlinks=False)
                    created: dt.datetime | None = _mtime(marker.st_mtime)
                except FileNotFoundError:
                    created = None
                count = len(_version_numbers(versions_fd))
        return ResourceInfo(
            desc=desc,
            backend=self.kind,
            size=len(data),
            created=created,
            updated=info.updated,
            version=None if number is None else str(number),
            versions=count,
        )

    def _list_info_sync(self) -> builtins.list[ResourceInfo]:
        found: builtins.list[ResourceInfo] = []
        for desc in self._list_sync():
            try:
                found.append(self._describe_sync(desc))
            except (ResourceNotFoundError, ResourceTooLargeError):
                continue  # deleted while we listed, or unreadable: not listable
        return found

    def _list_versions_sync(self, desc: ResourceDesc) -> builtins.list[VersionInfo]:
        with self._open_root() as root_fd, self._open_parent(root_fd, desc) as parent:
            if parent is None:
                raise ResourceNotFoundError("resource not found")
            dir_fd, name = parent
            data = self._read_file(dir_fd, name, desc)
            with self._open_versions(root_fd, desc, create=False) as versions_fd:
                if versions_fd is None:
                    return []
                current = self._current_number(versions_fd, data, desc)
                listed = []
                for number in reversed(_version_numbers(versions_fd)):
                    try:
                        st = os.stat(str(number), dir_fd=versions_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # pruned by a concurrent writer
                    listed.append(
                        VersionInfo(
                            version=str(number),
                            size=st.st_size,
                            created=_mtime(st.st_mtime),
                            current=number == current,
                        )
                    )
        return listed

    def _get_version_sync(self, desc: ResourceDesc, version: str) -> bytes:
        number = _version_number(version)
        with (
            self._open_root() as root_fd,
            self._open_versions(root_fd, desc, create=False) as versions_fd,
        ):
            if versions_fd is None:
                raise ResourceNotFoundError("resource version not found")
            try:
                return self._read_version_file(versions_fd, number, desc)
            except ResourceNotFoundError:
                raise ResourceNotFoundError("resource version not found") from None

    def _delete_version_sync(self, desc: ResourceDesc, version: str) -> None:
        number = _version_number(version)
        with self._open_root() as root_fd, self._open_parent(root_fd, desc) as parent:
            if parent is None:
                raise ResourceNotFoundError("resource not found")
            dir_fd, name = parent
            data = self._read_file(dir_fd, name, desc)
            with self._open_versions(root_fd, desc, create=False) as versions_fd:
                if versions_fd is None or number not in _version_numbers(versions_fd):
                    raise ResourceNotFoundError("resource version not found")
                if self._current_number(versions_fd, data, desc) == number:
                    raise ResourceConflictError("cannot delete the current version")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(str(number), dir_fd=versions_fd)
                os.fsync(versions_fd)

    def _current_number(self, versions_fd: int, data: bytes, desc: ResourceDesc) -> int | None:
        """The newest kept version whose bytes equal ``data`` (the resource file)."""
        for number in reversed(_version_numbers(versions_fd)):
            try:
                if self._read_version_file(versions_fd, number, desc) == data:
                    return number
            except ResourceNotFoundError:
                continue
        return None

    def _read_version_file(self, versions_fd: int, number: int, desc: ResourceDesc) -> bytes:
        return self._read_file(versions_fd, str(number), desc)

    def _read_optional(self, dir_fd: int, name: str, desc: ResourceDesc) -> bytes | None:
        try:
            return self._read_file(dir_fd, name, desc)
        except ResourceNotFoundError:
            return None

    @contextlib.contextmanager
    def _open_versions(
        self, root_fd: int, desc: ResourceDesc, *, create: bool
    ) -> Iterator[int | None]:
        """Yield ``<root>/.kbs-versions/<repo>/<type>/<tag>`` (``None`` if missing).

        Raises:
            StorageUnavailableError: ``create`` and a directory on the way is a symlink.
        """
        with contextlib.ExitStack() as stack:
            dir_fd = root_fd
            for segment in (VERSIONS_DIR, *desc.segments):
                if create:
                    child: int | None = _make_dir(dir_fd, segment, desc)
                else:
                    child = _open_dir(dir_fd, segment, desc)
                    if child is None:
                        yield None
                        return
                assert child is not None
                stack.callback(os.close, child)
                dir_fd = child
            yield dir_fd

    def _purge_versions(self, root_fd: int, desc: ResourceDesc) -> None:
        with contextlib.ExitStack() as stack:
            dir_fd = root_fd
            for segment in (VERSIONS_DIR, desc.repository, desc.type):
                child = _open_dir(dir_fd, segment, desc)
                if child is None:
                    return
                stack.callback(os.close, child)
                dir_fd = child
            tag_fd = _open_dir(dir_fd, desc.tag, desc)
            if tag_fd is None:
                return
            with contextlib.closing(_Fd(tag_fd)):
                with os.scandir(tag_fd) as entries:
                    names = [entry.name for entry in entries]
                for entry_name in names:
                    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                        os.unlink(entry_name, dir_fd=tag_fd)
            with contextlib.suppress(FileNotFoundError, OSError):
                os.rmdir(desc.tag, dir_fd=dir_fd)
            os.fsync(dir_fd)

    def _check_sync(self) -> None:
        with self._open_root():
            pass
        # Opening O_RDONLY proved read permission; walking into it also needs search (x).
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise StorageUnavailableError("file backend root is not readable")

    # ------------------------------------------------------------------ path walking

    @contextlib.contextmanager
    def _open_root(self) -> Iterator[int]:
        """Open the root directory.

        Raises:
            StorageUnavailableError: the root is missing, not a directory or unreadable.
        """
        try:
            fd = os.open(self.root, _ROOT_FLAGS)
        except OSError as exc:
            _logger.warning("cannot open storage root %s: %s", self.root, exc.strerror)
            raise StorageUnavailableError(
                "file backend root is not an accessible directory"
            ) from exc
        try:
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _open_parent(self, root_fd: int, desc: ResourceDesc) -> Iterator[tuple[int, str] | None]:
        """Yield the directory holding ``desc``'s file and the file's name, or ``None``.

        ``None`` means the resource cannot exist: a directory on the way is missing, is
        not a directory, or is a symlink (logged), or the flat name is too long.
        """
        if self.layout == "flat":
            name = _flat_name(desc)
            yield None if len(name) > NAME_MAX else (root_fd, name)
            return
        with contextlib.ExitStack() as stack:
            dir_fd = root_fd
            for segment in (desc.repository, desc.type):
                child = _open_dir(dir_fd, segment, desc)
                if child is None:
                    yield None
                    return
                stack.callback(os.close, child)
                dir_fd = child
            yield dir_fd, desc.tag

    @contextlib.contextmanager
    def _make_parent(self, root_fd: int, desc: ResourceDesc) -> Iterator[tuple[int, str]]:
        """Like :meth:`_open_parent`, creating missing directories (``0o700``).

        Raises:
            StorageUnavailableError: a directory on the way is a symlink or not a directory.
        """
        if self.layout == "flat":
            yield root_fd, _flat_name(desc)
            return
        with contextlib.ExitStack() as stack:
            dir_fd = root_fd
            for segment in (desc.repository, desc.type):
                dir_fd = _make_dir(dir_fd, segment, desc)
                stack.callback(os.close, dir_fd)
            yield dir_fd, desc.tag

    def _read_file(
        self, dir_fd: int, name: str, desc: ResourceDesc, *, inline_max: int | None = None
    ) -> bytes:
        """Read the regular file ``name`` in ``dir_fd``, at most the size cap plus one byte.

        With ``inline_max`` (the caller runs on the event loop), a file larger than that
        is not read: :class:`_NotInlineError` tells the caller to read it in a thread.

        Raises:
            ResourceNotFoundError: no regular file (or a symlink) is there.
            ResourceTooLargeError: the file is larger than the size cap.
            _NotInlineError: the file is larger than ``inline_max``.
        """
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            raise ResourceNotFoundError("resource not found") from None
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            _warn_symlink(desc)
            raise ResourceNotFoundError("resource not found") from None
        with contextlib.closing(_Fd(fd)):
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ResourceNotFoundError("resource not found")
            if st.st_size > self.max_resource_bytes:
                raise ResourceTooLargeError("stored resource exceeds the size limit")
            if inline_max is not None and st.st_size > inline_max:
                raise _NotInlineError
            if inline_max is not None:
                # Bounded like the thread path: a file that grew since fstat is read to
                # one byte past inline_max and handed to the thread path as too big.
                data = _read_at_most(fd, inline_max + 1)
                if len(data) > inline_max:
                    raise _NotInlineError
                return data
            # Read one byte past the cap: a file that grew since fstat still trips the
            # cap check in StorageBackend.get instead of being read without bound.
            return _read_at_most(fd, self.max_resource_bytes + 1)


# ---------------------------------------------------------------------- helpers


class _NotInlineError(Exception):
    """The file is too large to read on the event loop; read it in a worker thread."""


class _Fd:
    """A descriptor for :func:`contextlib.closing`."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)


def _require_platform_support() -> None:
    """Fail closed where symlink-safe relative opens are unavailable.

    Raises:
        UnsupportedOperationError: ``dir_fd`` or ``O_NOFOLLOW`` is missing.
    """
    needed = {os.open, os.mkdir, os.rename, os.stat, os.unlink}
    if not needed <= os.supports_dir_fd or os.scandir not in os.supports_fd:
        raise UnsupportedOperationError("file backend needs dir_fd support (Linux)")


def _flat_name(desc: ResourceDesc) -> str:
    """Trustee's key-value ``LocalFs`` file name for ``desc``."""
    return FLAT_SEPARATOR.join(desc.segments)


def _warn_symlink(desc: ResourceDesc) -> None:
    _logger.warning(
        "refusing resource %s: its path crosses a symlink (symlinks under the storage root "
        "are never followed)",
        desc,
    )


def _is_symlink(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _open_dir(dir_fd: int, name: str, desc: ResourceDesc) -> int | None:
    """Open subdirectory ``name`` without following a symlink; ``None`` if it is not one."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno not in _REFUSED_ERRNOS:
            raise
        if _is_symlink(dir_fd, name):
            _warn_symlink(desc)
        return None


def _make_dir(dir_fd: int, name: str, desc: ResourceDesc) -> int:
    """Open subdirectory ``name``, creating it ``0o700`` first if missing.

    Raises:
        StorageUnavailableError: ``name`` is a symlink or not a directory.
    """
    try:
        os.mkdir(name, DIR_MODE, dir_fd=dir_fd)
    except FileExistsError:
        created = False  # Also for a symlink (mkdirat never follows): refused below.
    else:
        created = True
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in _REFUSED_ERRNOS:
            raise
        if _is_symlink(dir_fd, name):
            _warn_symlink(desc)
            raise StorageUnavailableError("refusing to write through a symlink") from exc
        raise StorageUnavailableError("resource path component is not a directory") from exc
    if created:
        # Make the new directory entry durable before a file inside it is.
        os.fsync(dir_fd)
    return fd


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = os.read(fd, min(remaining, READ_CHUNK_BYTES))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _create_temp(dir_fd: int) -> tuple[int, str]:
    """Create a new ``0o600`` temporary file in ``dir_fd``; return its fd and name.

    Raises:
        StorageUnavailableError: no free temporary name was found.
    """
    pid = os.getpid()
    for _ in range(MAX_TEMP_ATTEMPTS):
        name = f"{TEMP_PREFIX}{pid}-{next(_temp_counter)}"
        try:
            return os.open(name, _TEMP_FLAGS, FILE_MODE, dir_fd=dir_fd), name
        except FileExistsError:
            continue  # an orphan from a crashed process that had the same pid
    raise StorageUnavailableError("could not create a temporary file")


def _write_atomically(dir_fd: int, name: str, data: bytes, desc: ResourceDesc) -> None:
    """Replace ``name`` in ``dir_fd`` with ``data``, all or nothing.

    Raises:
        StorageUnavailableError: ``name`` is a symlink.
        OSError: the write failed; the previous value, if any, is intact.
    """
    # 1. Refuse to replace a symlink, in line with reads (which never follow one). A race
    #    that swaps one in after this check is harmless: the rename in step 3 replaces the
    #    link itself and never writes through it.
    if _is_symlink(dir_fd, name):
        _warn_symlink(desc)
        raise StorageUnavailableError("refusing to write through a symlink")
    # 2. Write the value to a fresh temporary file beside the target and fsync it.
    fd, temp_name = _create_temp(dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        # 3. Atomically move it over the target.
        os.replace(temp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        # Never leave an orphan behind (it would be invisible, but it holds the secret).
        with contextlib.suppress(OSError):
            os.unlink(temp_name, dir_fd=dir_fd)
        raise
    # 4. Make the rename durable.
    os.fsync(dir_fd)


def _subdirs(dir_fd: int) -> Iterator[tuple[str, int]]:
    """Yield ``(name, fd)`` for each real subdirectory with a valid segment name.

    The caller closes each fd. Symlinks are skipped (and logged).
    """
    with os.scandir(dir_fd) as entries:
        names = [e.name for e in entries if is_valid_segment(e.name)]
    for name in names:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            continue  # removed while we walked
        except OSError as exc:
            if exc.errno not in _REFUSED_ERRNOS:
                raise
            if _is_symlink(dir_fd, name):
                _logger.warning("not listing symlinked directory %s under the storage root", name)
            continue
        yield name, fd


def _regular_files(dir_fd: int) -> list[str]:
    """Names of the regular files in ``dir_fd`` that are valid segments; no symlinks."""
    names: list[str] = []
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            if not is_valid_segment(entry.name):
                continue
            if entry.is_symlink():
                _logger.warning("not listing symlink %s under the storage root", entry.name)
            elif entry.is_file(follow_symlinks=False):
                names.append(entry.name)
    return names


def _list_flat(root_fd: int) -> list[ResourceDesc]:
    found: list[ResourceDesc] = []
    with os.scandir(root_fd) as entries:
        for entry in entries:
            segments = entry.name.split(FLAT_SEPARATOR)
            if len(segments) != _SEGMENT_COUNT or not all(is_valid_segment(s) for s in segments):
                continue  # temporary files, other namespaces' keys, stray files
            if entry.is_symlink():
                _logger.warning("not listing symlink %s under the storage root", entry.name)
            elif entry.is_file(follow_symlinks=False):
                found.append(ResourceDesc(*segments))
    return found


# ---------------------------------------------------------------------- version files


def _mtime(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)


def _version_number(version: str) -> int:
    if not version.isdigit() or len(version) > 18:  # noqa: PLR2004 - fits an int64
        raise ResourceNotFoundError("resource version not found")
    return int(version)


def _version_numbers(versions_fd: int) -> list[int]:
    """The version numbers kept in ``versions_fd``, ascending (regular files only)."""
    numbers: list[int] = []
    with os.scandir(versions_fd) as entries:
        for entry in entries:
            if (
                entry.name.isdigit()
                and not entry.name.startswith("0")
                and entry.is_file(follow_symlinks=False)
            ):
                numbers.append(int(entry.name))
                if len(numbers) > MAX_VERSION_FILES:
                    raise StorageUnavailableError("too many files in a version directory")
    return sorted(numbers)


def _mark_created(versions_fd: int) -> None:
    try:
        fd = os.open(CREATED_MARKER, _TEMP_FLAGS, FILE_MODE, dir_fd=versions_fd)
    except FileExistsError:
        return
    os.close(fd)


def _store_version(versions_fd: int, first: int, data: bytes) -> int:
    """Store ``data`` as version ``first`` (or the next free number); return the number.

    The bytes go to a temporary file that is fsynced and then hard-linked under its
    number: ``link`` fails instead of replacing, so concurrent writers never share or
    overwrite a version, and a reader never sees a partial one.
    """
    fd, temp_name = _create_temp(versions_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        number = first
        for _ in range(MAX_TEMP_ATTEMPTS):
            try:
                os.link(
                    temp_name,
                    str(number),
                    src_dir_fd=versions_fd,
                    dst_dir_fd=versions_fd,
                    follow_symlinks=False,
                )
                break
            except FileExistsError:
                number += 1
        else:
            raise StorageUnavailableError("could not allocate a version number")
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp_name, dir_fd=versions_fd)
    os.fsync(versions_fd)
    return number


def _prune_versions(versions_fd: int, keep: int) -> None:
    numbers = _version_numbers(versions_fd)
    for number in numbers[: max(0, len(numbers) - keep)]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(str(number), dir_fd=versions_fd)
    os.fsync(versions_fd)
