# SPDX-License-Identifier: Apache-2.0
"""FileBackend: layouts, the seed workflow, symlink refusal, permissions and atomicity."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage_backends import (
    FileBackend,
    InvalidResourcePathError,
    ResourceDesc,
    ResourceNotFoundError,
    ResourceTooLargeError,
    StorageUnavailableError,
)
from storage_backends import file as file_module
from storage_backends.file import FLAT_SEPARATOR

SAMPLE = ResourceDesc("cai", "sample", "password")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "repository"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the root holding a file no resource may reach."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "password").write_bytes(b"host secret")
    return path


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """Prove modes come from the backend, not from a friendly umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def tree(root: Path) -> FileBackend:
    return FileBackend(root, layout="tree")


def flat(root: Path) -> FileBackend:
    return FileBackend(root, layout="flat")


def all_names(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---------------------------------------------------------------- layouts


async def test_seed_workflow_tree(root: Path) -> None:
    # An administrator copies files in with ordinary tools (default modes, no temp files).
    (root / "cai" / "sample").mkdir(parents=True)
    (root / "cai" / "sample" / "password").write_bytes(b"hunter2\n")
    (root / "default" / "key").mkdir(parents=True)
    (root / "default" / "key" / "key.bin").write_bytes(b"\x00\x01")
    backend = tree(root)
    assert await backend.get(SAMPLE) == b"hunter2\n"
    assert await backend.get(ResourceDesc.parse("default/key/key.bin")) == b"\x00\x01"
    assert await backend.list() == [SAMPLE, ResourceDesc.parse("default/key/key.bin")]


async def test_tree_layout_on_disk(root: Path) -> None:
    await tree(root).put(SAMPLE, b"v")
    assert (root / "cai" / "sample" / "password").read_bytes() == b"v"
    assert all_names(root) == ["cai", "cai/sample", "cai/sample/password"]


async def test_flat_layout_on_disk(root: Path) -> None:
    assert FLAT_SEPARATOR == "\\x2F"
    assert len(FLAT_SEPARATOR) == 4
    await flat(root).put(SAMPLE, b"v")
    # The file name holds the four characters backslash, x, 2, F (Trustee KV LocalFs).
    assert all_names(root) == ["cai\\x2Fsample\\x2Fpassword"]
    assert (root / "cai\\x2Fsample\\x2Fpassword").read_bytes() == b"v"


async def test_flat_layout_reads_trustee_files(root: Path) -> None:
    # As written by Trustee v0.20+ under <dir_path>/repository/.
    (root / "default\\x2Fkey\\x2Ftestfile").write_bytes(b"from trustee")
    backend = flat(root)
    desc = ResourceDesc("default", "key", "testfile")
    assert await backend.get(desc) == b"from trustee"
    assert await backend.list() == [desc]


async def test_flat_list_skips_foreign_names(root: Path) -> None:
    (root / "a\\x2Fb\\x2Fc").write_bytes(b"ok")
    for name in (
        "a\\x2Fb",  # two segments
        "a\\x2Fb\\x2Fc\\x2Fd",  # four segments
        "resource-policy.rego",  # another namespace's key
        ".tmp-1-0",  # an orphaned temporary file
        ".a\\x2Fb\\x2Fc",  # hidden
        "a\\x2F.b\\x2Fc",  # hidden segment
        "a\\x2Fb c\\x2Fd",  # invalid character
        "a\\x2F\\x2Fc",  # empty segment
    ):
        (root / name).write_bytes(b"no")
    (root / "x\\x2Fy\\x2Fdir").mkdir()
    assert await flat(root).list() == [ResourceDesc("a", "b", "c")]


async def test_layouts_do_not_see_each_other(root: Path) -> None:
    await tree(root).put(SAMPLE, b"tree")
    await flat(root).put(SAMPLE, b"flat")
    assert await tree(root).get(SAMPLE) == b"tree"
    assert await flat(root).get(SAMPLE) == b"flat"
    assert await tree(root).list() == [SAMPLE]
    assert await flat(root).list() == [SAMPLE]


async def test_flat_name_too_long(root: Path) -> None:
    long = ResourceDesc("r" * 200, "t" * 20, "g" * 30)  # each segment valid, name > 255
    with pytest.raises(InvalidResourcePathError, match="too long"):
        await flat(root).put(long, b"v")
    with pytest.raises(ResourceNotFoundError):
        await flat(root).get(long)
    with pytest.raises(ResourceNotFoundError):
        await flat(root).delete(long)
    await tree(root).put(long, b"v")  # fine as three directory levels
    assert await tree(root).get(long) == b"v"


async def test_tree_list_skips_strays(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "c").write_bytes(b"ok")
    (root / "a" / "b" / ".tmp-1-0").write_bytes(b"orphan")
    (root / "a" / "b" / ".hidden").write_bytes(b"no")
    (root / "a" / "b" / "bad name").write_bytes(b"no")
    (root / "a" / "b" / "subdir" / "deeper").mkdir(parents=True)
    (root / "a" / "b" / "subdir" / "deeper" / "x").write_bytes(b"too deep")
    (root / "a" / "file-at-depth-2").write_bytes(b"no")
    (root / "file-at-depth-1").write_bytes(b"no")
    (root / ".git" / "b").mkdir(parents=True)
    (root / ".git" / "b" / "c").write_bytes(b"hidden repo")
    (root / "a" / ".cache").mkdir()
    (root / "a" / ".cache" / "c").write_bytes(b"hidden type")
    os.mkfifo(root / "a" / "b" / "fifo")
    assert await tree(root).list() == [ResourceDesc("a", "b", "c")]


async def test_non_regular_files_are_not_found(root: Path) -> None:
    (root / "a" / "b" / "dir").mkdir(parents=True)
    (root / "a" / "file").write_bytes(b"not a directory")
    backend = tree(root)
    for path in ("a/b/dir", "a/file/x", "a/b/missing", "missing/b/c"):
        with pytest.raises(ResourceNotFoundError):
            await backend.get(ResourceDesc.parse(path))
        with pytest.raises(ResourceNotFoundError):
            await backend.delete(ResourceDesc.parse(path))
    assert (root / "a" / "b" / "dir").is_dir()


async def test_fifo_is_not_found_and_does_not_block(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    fifo = root / "a" / "b" / "fifo"
    os.mkfifo(fifo)
    done = threading.Event()
    rescued = threading.Event()

    def rescue() -> None:
        # Should the backend block in open() waiting for a writer, be that writer, so the
        # test fails instead of hanging. O_NONBLOCK on the write side fails unless a
        # reader is waiting.
        if not done.wait(5):
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                rescued.set()

    helper = threading.Thread(target=rescue)
    helper.start()
    try:
        with pytest.raises(ResourceNotFoundError):
            await tree(root).get(ResourceDesc("a", "b", "fifo"))
    finally:
        done.set()
        helper.join()
    assert not rescued.is_set(), "get() blocked opening a FIFO"
    with pytest.raises(ResourceNotFoundError):
        await tree(root).delete(ResourceDesc("a", "b", "fifo"))
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


async def test_put_over_a_directory_fails_cleanly(root: Path) -> None:
    (root / "a" / "b" / "c").mkdir(parents=True)
    with pytest.raises(StorageUnavailableError):
        await tree(root).put(ResourceDesc("a", "b", "c"), b"v")
    assert all_names(root) == ["a", "a/b", "a/b/c"]
    (root / "x").write_bytes(b"a file where a directory belongs")
    with pytest.raises(StorageUnavailableError, match="not a directory"):
        await tree(root).put(ResourceDesc("x", "b", "c"), b"v")


async def test_stored_value_over_cap_is_too_large(root: Path) -> None:
    await tree(root).put(SAMPLE, b"x" * 100)
    small = FileBackend(root, max_resource_bytes=99)
    with pytest.raises(ResourceTooLargeError):
        await small.get(SAMPLE)


async def test_huge_file_is_too_large_without_being_read(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    with (root / "a" / "b" / "huge").open("wb") as f:
        f.truncate(64 * 1024**3)  # sparse: reading it all would take minutes and 64 GiB
    with pytest.raises(ResourceTooLargeError):
        await tree(root).get(ResourceDesc("a", "b", "huge"))


async def test_dot_dot_cannot_arrive() -> None:
    for path in ("../etc/passwd", "a/../b", "a/b/..", "./b/c", "a/b/.", "/etc/passwd", "a/b/c/"):
        with pytest.raises(InvalidResourcePathError):
            ResourceDesc.parse(path)
    with pytest.raises(InvalidResourcePathError):
        ResourceDesc("..", "etc", "passwd")


# ---------------------------------------------------------------- symlinks


@pytest.mark.parametrize("layout", ["tree", "flat"])
async def test_symlinked_file_pointing_outside_is_refused(
    root: Path, outside: Path, layout: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FileBackend(root, layout="tree" if layout == "tree" else "flat")
    if layout == "tree":
        (root / "cai" / "sample").mkdir(parents=True)
        link = root / "cai" / "sample" / "password"
    else:
        link = root / "cai\\x2Fsample\\x2Fpassword"
    link.symlink_to(outside / "password")
    caplog.set_level(logging.WARNING, logger="storage_backends.file")
    with pytest.raises(ResourceNotFoundError):
        await backend.get(SAMPLE)
    assert "symlink" in caplog.text
    assert "host secret" not in caplog.text
    caplog.clear()
    assert await backend.list() == []
    assert "symlink" in caplog.text
    caplog.clear()
    with pytest.raises(ResourceNotFoundError):
        await backend.delete(SAMPLE)
    assert "symlink" in caplog.text
    with pytest.raises(StorageUnavailableError, match="symlink"):
        await backend.put(SAMPLE, b"overwrite")
    # Nothing outside changed, the link is still there, and no temp file is left.
    assert (outside / "password").read_bytes() == b"host secret"
    assert link.is_symlink()
    assert not [n for n in all_names(root) if ".tmp" in n]


@pytest.mark.parametrize("level", ["repository", "type"])
async def test_symlinked_directory_pointing_outside_is_refused(
    root: Path, outside: Path, level: str
) -> None:
    if level == "repository":
        (root / "cai").symlink_to(outside, target_is_directory=True)
        (outside / "sample").mkdir()
        (outside / "sample" / "password").write_bytes(b"host secret")
    else:
        (root / "cai").mkdir()
        (root / "cai" / "sample").symlink_to(outside, target_is_directory=True)
    backend = tree(root)
    with pytest.raises(ResourceNotFoundError):
        await backend.get(SAMPLE)
    with pytest.raises(ResourceNotFoundError):
        await backend.delete(SAMPLE)
    assert await backend.list() == []
    with pytest.raises(StorageUnavailableError, match="symlink"):
        await backend.put(SAMPLE, b"planted")
    with pytest.raises(StorageUnavailableError, match="symlink"):
        await backend.put(ResourceDesc("cai", "sample", "new"), b"planted")
    planted = ["password", "sample", "sample/password"] if level == "repository" else ["password"]
    assert all_names(outside) == planted  # nothing new appeared outside
    assert (outside / "password").read_bytes() == b"host secret"


async def test_symlink_within_root_is_refused_too(root: Path) -> None:
    # Decision: no symlink is followed, even one that stays inside the root; an alias
    # would let a resource name reach another resource's secret.
    backend = tree(root)
    real = ResourceDesc("real", "key", "k")
    await backend.put(real, b"real secret")
    (root / "alias").symlink_to("real", target_is_directory=True)
    (root / "real" / "key" / "link").symlink_to("k")
    with pytest.raises(ResourceNotFoundError):
        await backend.get(ResourceDesc("alias", "key", "k"))
    with pytest.raises(ResourceNotFoundError):
        await backend.get(ResourceDesc("real", "key", "link"))
    assert await backend.list() == [real]


async def test_dangling_symlinks(root: Path, tmp_path: Path) -> None:
    target = tmp_path / "not-yet-there"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "c").symlink_to(target)
    (root / "d").symlink_to(tmp_path / "no-dir", target_is_directory=True)
    backend = tree(root)
    for path in ("a/b/c", "d/b/c"):
        with pytest.raises(ResourceNotFoundError):
            await backend.get(ResourceDesc.parse(path))
        # A naive open(O_CREAT) would follow the link and create the target outside.
        with pytest.raises(StorageUnavailableError, match="symlink"):
            await backend.put(ResourceDesc.parse(path), b"v")
    assert not target.exists()
    assert not (tmp_path / "no-dir").exists()
    assert await backend.list() == []


async def test_symlinked_root_is_followed(tmp_path: Path, root: Path) -> None:
    # The root is operator configuration, like Trustee's dir_path.
    await tree(root).put(SAMPLE, b"v")
    link = tmp_path / "link-to-root"
    link.symlink_to(root, target_is_directory=True)
    assert await tree(link).get(SAMPLE) == b"v"


# ---------------------------------------------------------------- writes


@pytest.mark.usefixtures("umask_zero")
async def test_modes_of_written_files_and_directories(root: Path) -> None:
    await tree(root).put(SAMPLE, b"v")
    assert stat.S_IMODE((root / "cai").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "cai" / "sample").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "cai" / "sample" / "password").stat().st_mode) == 0o600
    # An overwrite of a seeded 0o644 file is 0o600 too: it is a new file.
    seeded = root / "cai" / "sample" / "seeded"
    seeded.write_bytes(b"v")
    seeded.chmod(0o644)
    await tree(root).put(ResourceDesc("cai", "sample", "seeded"), b"w")
    assert stat.S_IMODE(seeded.stat().st_mode) == 0o600
    await flat(root).put(SAMPLE, b"v")
    assert stat.S_IMODE((root / "cai\\x2Fsample\\x2Fpassword").stat().st_mode) == 0o600


@pytest.mark.usefixtures("umask_zero")
async def test_create_root(tmp_path: Path) -> None:
    root = tmp_path / "new" / "repository"
    backend = FileBackend(root, create=True)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    await backend.check()
    assert await backend.list() == []


async def test_missing_root_is_unavailable_not_empty(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "typo")
    assert not (tmp_path / "typo").exists()
    with pytest.raises(StorageUnavailableError, match="root"):
        await backend.check()
    with pytest.raises(StorageUnavailableError, match="root"):
        await backend.get(SAMPLE)
    with pytest.raises(StorageUnavailableError, match="root"):
        await backend.list()
    with pytest.raises(StorageUnavailableError, match="root"):
        await backend.put(SAMPLE, b"v")
    assert not (tmp_path / "typo").exists()


async def test_root_that_is_a_file_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageUnavailableError):
        await FileBackend(tmp_path / "file").check()


@pytest.fixture
def unreadable_root(root: Path) -> Iterator[Path]:
    root.chmod(0)
    try:
        yield root
    finally:
        root.chmod(0o700)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
async def test_unreadable_root_is_unavailable(unreadable_root: Path) -> None:
    with pytest.raises(StorageUnavailableError):
        await tree(unreadable_root).check()


def test_unknown_layout_is_rejected(root: Path) -> None:
    with pytest.raises(ValueError, match="layout"):
        FileBackend(root, layout="nested")  # type: ignore[arg-type]


@pytest.mark.parametrize("layout", ["tree", "flat"])
@pytest.mark.parametrize("failing", ["fsync", "replace"])
async def test_failed_write_keeps_old_value_and_leaves_no_temp(
    root: Path, monkeypatch: pytest.MonkeyPatch, layout: str, failing: str
) -> None:
    backend = FileBackend(root, layout="tree" if layout == "tree" else "flat")
    await backend.put(SAMPLE, b"old value")

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(5, "simulated I/O error")

    with monkeypatch.context() as patch:
        # A failure after the temp file exists: before (fsync) or at (replace) the rename.
        patch.setattr(os, failing, boom)
        with pytest.raises(StorageUnavailableError):
            await backend.put(SAMPLE, b"new value that never lands")
    assert await backend.get(SAMPLE) == b"old value"
    assert await backend.list() == [SAMPLE]
    assert not [n for n in all_names(root) if ".tmp" in n]


async def test_orphaned_temp_files_are_invisible(root: Path) -> None:
    # What a crash between write and rename leaves behind.
    await tree(root).put(SAMPLE, b"old")
    (root / "cai" / "sample" / f".tmp-{os.getpid()}-0").write_bytes(b"partial")
    (root / f".tmp-{os.getpid()}-1").write_bytes(b"partial")
    assert await tree(root).get(SAMPLE) == b"old"
    assert await tree(root).list() == [SAMPLE]
    assert await flat(root).list() == []


async def test_colliding_temp_name_is_skipped_not_clobbered(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a crash, a restarted process can get the same pid and reach the same name.
    monkeypatch.setattr(file_module, "_temp_counter", itertools.count())
    (root / "cai" / "sample").mkdir(parents=True)
    orphan = root / "cai" / "sample" / f".tmp-{os.getpid()}-0"
    orphan.write_bytes(b"orphan")
    await tree(root).put(SAMPLE, b"new")
    assert await tree(root).get(SAMPLE) == b"new"
    assert orphan.read_bytes() == b"orphan"


@pytest.mark.parametrize("layout", ["tree", "flat"])
async def test_concurrent_puts_leave_one_complete_value(root: Path, layout: str) -> None:
    backend = FileBackend(root, layout="tree" if layout == "tree" else "flat")
    values = [bytes([i]) * (256 * 1024) for i in range(16)]
    seen: list[bytes] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            with contextlib.suppress(ResourceNotFoundError):
                seen.append(asyncio.run(backend.get(SAMPLE)))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        # Each put runs in its own worker thread; all of them race on one target.
        await asyncio.gather(*(backend.put(SAMPLE, v) for v in values))
        # And from separate threads with separate event loops and backend instances.
        writers = [
            threading.Thread(
                target=asyncio.run, args=(FileBackend(root, layout=backend.layout).put(SAMPLE, v),)
            )
            for v in values
        ]
        for w in writers:
            w.start()
        for w in writers:
            w.join()
    finally:
        stop.set()
        thread.join()
    assert await backend.get(SAMPLE) in values
    assert all(v in values for v in seen)  # no reader ever saw a torn value
    assert await backend.list() == [SAMPLE]
    assert not [n for n in all_names(root) if ".tmp" in n]


async def test_errors_never_carry_the_secret(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(5, "simulated I/O error")

    monkeypatch.setattr(os, "replace", boom)
    with caplog.at_level(logging.DEBUG), pytest.raises(StorageUnavailableError) as info:
        await tree(root).put(SAMPLE, b"TOP-SECRET-VALUE")
    assert "TOP-SECRET-VALUE" not in str(info.value)
    assert "TOP-SECRET-VALUE" not in caplog.text


# ---------------------------------------------------------------- inline reads


@pytest.fixture
def thread_hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the operations the backend hands to a worker thread."""
    hops: list[str] = []
    real = asyncio.to_thread

    async def counting(func, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        hops.append(func.__name__)
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(file_module.asyncio, "to_thread", counting)
    return hops


async def test_small_files_are_read_inline_and_large_ones_in_a_thread(
    root: Path, thread_hops: list[str]
) -> None:
    backend = FileBackend(root, inline_read_max_bytes=1024)
    small, large = ResourceDesc("a", "b", "small"), ResourceDesc("a", "b", "large")
    await backend.put(small, b"s" * 1024)
    await backend.put(large, b"L" * 1025)
    thread_hops.clear()
    assert await backend.get(small) == b"s" * 1024
    assert (await backend.read(small)).data == b"s" * 1024
    assert thread_hops == []
    assert await backend.get(large) == b"L" * 1025
    assert (await backend.read(large)).data == b"L" * 1025
    assert thread_hops == ["_get_sync", "_read_sync"]
    # Missing files answer the same on either path.
    with pytest.raises(ResourceNotFoundError):
        await backend.read(ResourceDesc("a", "b", "missing"))


async def test_inline_reads_can_be_turned_off_and_skip_versioned_reads(
    root: Path, thread_hops: list[str]
) -> None:
    off = FileBackend(root, inline_read_max_bytes=0)
    await off.put(SAMPLE, b"v")
    thread_hops.clear()
    assert await off.get(SAMPLE) == b"v"
    assert thread_hops == ["_get_sync"]
    versioned = FileBackend(root, keep_versions=2)
    await versioned.put(SAMPLE, b"v2")
    thread_hops.clear()
    value = await versioned.read(SAMPLE)
    assert (value.data, value.version) == (b"v2", "2")
    assert thread_hops == ["_read_sync"]  # the version number needs the version files


@pytest.mark.parametrize("inline_max", [0, 1024])
async def test_symlinks_are_refused_on_both_read_paths(
    root: Path, outside: Path, inline_max: int
) -> None:
    (root / "cai" / "sample").mkdir(parents=True)
    (root / "cai" / "sample" / "password").symlink_to(outside / "password")
    (root / "cai" / "linked").symlink_to(root / "cai" / "sample")
    backend = FileBackend(root, inline_read_max_bytes=inline_max)
    for desc in (SAMPLE, ResourceDesc("cai", "linked", "password")):
        with pytest.raises(ResourceNotFoundError):
            await backend.read(desc)
        with pytest.raises(ResourceNotFoundError):
            await backend.get(desc)
