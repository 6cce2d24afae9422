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

Blocking file I/O runs in a worker thread, one :func:`asyncio.to_thread` per operation.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
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
    StorageBackend,
    is_valid_segment,
)
from storage_backends.errors import (
    InvalidResourcePathError,
    ResourceNotFoundError,
    ResourceTooLargeError,
    StorageUnavailableError,
    UnsupportedOperationError,
)

_logger = logging.getLogger(__name__)

__all__ = ["FLAT_SEPARATOR", "FileBackend", "Layout"]

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
    ) -> None:
        """Serve resources from ``root``.

        Args:
            root: The storage directory (Trustee's ``dir_path``; for ``flat``, its
                ``repository`` namespace directory).
            layout: ``"tree"`` (``<root>/<repo>/<type>/<tag>``) or ``"flat"``.
            create: Create ``root`` (mode ``0o700``, with missing parents) if it does not
                exist. Off by default, so a mistyped path is an error, not an empty store.
            max_resource_bytes: Size cap for one resource.

        Raises:
            ValueError: ``layout`` is unknown.
            UnsupportedOperationError: the platform cannot open files relative to a
                directory descriptor without following symlinks.
            OSError: ``create`` is set and ``root`` could not be created.
        """
        super().__init__(max_resource_bytes=max_resource_bytes)
        if layout not in ("tree", "flat"):
            raise ValueError(f"unknown file backend layout: {layout!r}")
        _require_platform_support()
        self.root = Path(root).absolute()
        self.layout: Layout = layout
        if create and not self.root.exists():
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            _logger.info("created storage root %s", self.root)

    # ------------------------------------------------------------------ async hooks

    async def _get(self, desc: ResourceDesc) -> bytes:
        return await asyncio.to_thread(self._get_sync, desc)

    async def _put(self, desc: ResourceDesc, data: bytes) -> None:
        await asyncio.to_thread(self._put_sync, desc, data)

    async def _delete(self, desc: ResourceDesc) -> None:
        await asyncio.to_thread(self._delete_sync, desc)

    async def _list(self) -> builtins.list[ResourceDesc]:
        return await asyncio.to_thread(self._list_sync)

    async def _check(self) -> None:
        await asyncio.to_thread(self._check_sync)

    # ------------------------------------------------------------------ operations

    def _get_sync(self, desc: ResourceDesc) -> bytes:
        with self._open_root() as root_fd, self._open_parent(root_fd, desc) as parent:
            if parent is None:
                raise ResourceNotFoundError("resource not found")
            dir_fd, name = parent
            return self._read_file(dir_fd, name, desc)

    def _put_sync(self, desc: ResourceDesc, data: bytes) -> None:
        if self.layout == "flat" and len(_flat_name(desc)) > NAME_MAX:
            raise InvalidResourcePathError("resource path too long for the flat layout")
        with self._open_root() as root_fd, self._make_parent(root_fd, desc) as (dir_fd, name):
            _write_atomically(dir_fd, name, data, desc)

    def _delete_sync(self, desc: ResourceDesc) -> None:
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

    def _read_file(self, dir_fd: int, name: str, desc: ResourceDesc) -> bytes:
        """Read the regular file ``name`` in ``dir_fd``, at most the size cap plus one byte.

        Raises:
            ResourceNotFoundError: no regular file (or a symlink) is there.
            ResourceTooLargeError: the file is larger than the size cap.
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
            # Read one byte past the cap: a file that grew since fstat still trips the
            # cap check in StorageBackend.get instead of being read without bound.
            return _read_at_most(fd, self.max_resource_bytes + 1)


# ---------------------------------------------------------------------- helpers


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
