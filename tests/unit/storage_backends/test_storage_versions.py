# SPDX-License-Identifier: Apache-2.0
"""Resource life cycle, the same for every backend that keeps versions: metadata, kept
versions, rollback, deleting one version, pruning, and the defaults of the interface."""

from __future__ import annotations

import builtins
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from storage_backends import (
    FileBackend,
    InvalidResourcePathError,
    MemoryBackend,
    ResourceConflictError,
    ResourceDesc,
    ResourceNotFoundError,
    SqlBackend,
    StorageBackend,
    UnsupportedOperationError,
)
from storage_backends.file import VERSIONS_DIR

KEY = ResourceDesc("cai", "key", "model-1")
OTHER = ResourceDesc("cai", "key", "model-2")
KEEP = 2

MakeBackend = Callable[..., StorageBackend]


@pytest.fixture(
    params=[
        "file-tree",
        "file-flat",
        "memory",
        "sql-sqlite",
        pytest.param("sql-postgres", marks=pytest.mark.postgres),
    ]
)
def make_backend(request: pytest.FixtureRequest, tmp_path: Path, clock) -> MakeBackend:
    kind = request.param
    if kind.startswith("file"):
        layout = kind.removeprefix("file-")
        return lambda **kw: FileBackend(tmp_path / "repo", layout=layout, create=True, **kw)
    if kind == "memory":
        memory = MemoryBackend(keep_versions=KEEP, clock=clock)
        return lambda **_: memory
    engine = request.getfixturevalue("sqlite_engine" if kind == "sql-sqlite" else "postgres_engine")
    return lambda **kw: SqlBackend(engine, clock=clock, **kw)


@pytest.fixture
def backend(make_backend: MakeBackend) -> StorageBackend:
    return make_backend(keep_versions=KEEP)


async def test_put_returns_increasing_versions(backend: StorageBackend) -> None:
    first = await backend.put(KEY, b"v1")
    second = await backend.put(KEY, b"v2")
    assert first is not None
    assert second is not None
    assert int(second) > int(first)
    value = await backend.read(KEY)
    assert value.data == b"v2"
    assert value.version == second


async def test_versions_are_kept_newest_first(backend: StorageBackend) -> None:
    v1 = await backend.put(KEY, b"one")
    v2 = await backend.put(KEY, b"two!")
    versions = await backend.list_versions(KEY)
    assert [v.version for v in versions] == [v2, v1]
    assert [v.current for v in versions] == [True, False]
    assert [v.size for v in versions] == [4, 3]
    assert await backend.get_version(KEY, v1) == b"one"
    assert await backend.get_version(KEY, v2) == b"two!"


async def test_only_keep_versions_previous_values_are_kept(backend: StorageBackend) -> None:
    numbers = [await backend.put(KEY, f"value {i}".encode()) for i in range(5)]
    kept = [v.version for v in await backend.list_versions(KEY)]
    assert kept == list(reversed(numbers))[: KEEP + 1]
    with pytest.raises(ResourceNotFoundError):
        await backend.get_version(KEY, numbers[0])


async def test_rollback_makes_an_old_value_current(backend: StorageBackend) -> None:
    good = await backend.put(KEY, b"good key")
    await backend.put(KEY, b"bad rotation")
    now = await backend.restore_version(KEY, good)
    assert await backend.get(KEY) == b"good key"
    value = await backend.read(KEY)
    assert value.version == now
    # The rollback is itself a version: the bad value can still be inspected.
    assert (await backend.list_versions(KEY))[0].current
    assert b"bad rotation" in [
        await backend.get_version(KEY, v.version) for v in await backend.list_versions(KEY)
    ]


async def test_unknown_and_malformed_versions(backend: StorageBackend) -> None:
    await backend.put(KEY, b"v")
    with pytest.raises(ResourceNotFoundError):
        await backend.get_version(KEY, "99")
    with pytest.raises(ResourceNotFoundError):
        await backend.get_version(OTHER, "1")
    with pytest.raises(ResourceNotFoundError):
        await backend.restore_version(KEY, "99")
    for bad in ("", "../1", "1/2", "x" * 65, ".1"):
        with pytest.raises(InvalidResourcePathError):
            await backend.get_version(KEY, bad)


async def test_delete_one_version_but_not_the_current(backend: StorageBackend) -> None:
    old = await backend.put(KEY, b"leaked")
    current = await backend.put(KEY, b"fresh")
    assert current is not None
    with pytest.raises(ResourceConflictError):
        await backend.delete_version(KEY, current)
    assert old is not None
    await backend.delete_version(KEY, old)
    assert [v.version for v in await backend.list_versions(KEY)] == [current]
    with pytest.raises(ResourceNotFoundError):
        await backend.delete_version(KEY, old)


async def test_delete_removes_history(backend: StorageBackend) -> None:
    old = await backend.put(KEY, b"a")
    await backend.put(KEY, b"b")
    await backend.delete(KEY)
    assert old is not None
    with pytest.raises(ResourceNotFoundError):
        await backend.get_version(KEY, old)
    with pytest.raises(ResourceNotFoundError):
        await backend.describe(KEY)
    await backend.put(KEY, b"reborn")
    assert len(await backend.list_versions(KEY)) == 1


async def test_metadata_never_carries_values(backend: StorageBackend, clock) -> None:
    await backend.put(KEY, b"abc")
    clock.at += dt.timedelta(seconds=30)
    version = await backend.put(KEY, b"abcdef")
    await backend.put(OTHER, b"x")
    info = await backend.describe(KEY)
    assert info.desc == KEY
    assert info.backend == backend.kind
    assert info.size == 6
    assert info.version == version
    assert info.versions == 2
    assert info.updated is not None
    assert info.created is not None
    assert info.created <= info.updated
    listed = await backend.list_info()
    assert [i.desc for i in listed] == [KEY, OTHER]
    assert listed[0] == info
    assert "abcdef" not in repr(listed)


async def test_without_keep_versions_history_is_unsupported(make_backend: MakeBackend) -> None:
    backend = make_backend(keep_versions=0)
    if isinstance(backend, MemoryBackend):
        backend = MemoryBackend()
    await backend.put(KEY, b"v1")
    await backend.put(KEY, b"v2")
    for call in (
        backend.list_versions(KEY),
        backend.get_version(KEY, "1"),
        backend.restore_version(KEY, "1"),
        backend.delete_version(KEY, "1"),
    ):
        with pytest.raises(UnsupportedOperationError):
            await call
    info = await backend.describe(KEY)
    assert info.size == 2


async def test_negative_keep_versions_is_refused(make_backend: MakeBackend, tmp_path) -> None:
    with pytest.raises(ValueError):
        MemoryBackend(keep_versions=-1)
    with pytest.raises(ValueError):
        FileBackend(tmp_path, keep_versions=-1)


# --------------------------------------------------------------------------- defaults


class _Minimal(StorageBackend):
    """A backend written against the first interface: only the four basic hooks."""

    kind = "minimal"

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[ResourceDesc, bytes] = {}

    async def _get(self, desc: ResourceDesc) -> bytes:
        try:
            return self.data[desc]
        except KeyError:
            raise ResourceNotFoundError("resource not found") from None

    async def _put(self, desc: ResourceDesc, data: bytes) -> None:
        self.data[desc] = data

    async def _delete(self, desc: ResourceDesc) -> None:
        del self.data[desc]

    async def _list(self) -> builtins.list[ResourceDesc]:
        return list(self.data)


async def test_interface_defaults_for_old_backends() -> None:
    backend = _Minimal()
    assert await backend.put(KEY, b"1234") is None
    value = await backend.read(KEY)
    assert (value.data, value.version) == (b"1234", None)
    info = await backend.describe(KEY)
    assert (info.backend, info.size, info.version, info.created) == ("minimal", 4, None, None)
    assert [i.desc for i in await backend.list_info()] == [KEY]
    with pytest.raises(UnsupportedOperationError, match="minimal backend does not keep versions"):
        await backend.list_versions(KEY)
    with pytest.raises(UnsupportedOperationError):
        await backend.restore_version(KEY, "1")


# --------------------------------------------------------------------------- file layout


@pytest.mark.parametrize("layout", ["tree", "flat"])
async def test_file_versions_live_in_a_hidden_directory(tmp_path: Path, layout: str) -> None:
    backend = FileBackend(tmp_path / "repo", layout=layout, create=True, keep_versions=KEEP)
    await backend.put(KEY, b"old")
    await backend.put(KEY, b"new")
    kept = tmp_path / "repo" / VERSIONS_DIR / "cai" / "key" / "model-1"
    assert sorted(p.name for p in kept.iterdir()) == ["1", "2", "created"]
    assert (kept / "1").read_bytes() == b"old"
    assert oct((kept / "1").stat().st_mode & 0o777) == "0o600"
    # Nothing in the hidden directory is a resource, for any path a guest can send.
    assert await backend.list() == [KEY]
    with pytest.raises(InvalidResourcePathError):
        ResourceDesc.parse(f"{VERSIONS_DIR}/cai/key")


async def test_file_value_copied_in_by_hand_is_archived(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "repo", create=True, keep_versions=KEEP)
    await backend.put(KEY, b"through the api")
    (tmp_path / "repo/cai/key/model-1").write_bytes(b"copied by hand")
    assert (await backend.read(KEY)).version is None  # not a version we stored
    assert (await backend.describe(KEY)).version is None
    new = await backend.put(KEY, b"rotated")
    versions = await backend.list_versions(KEY)
    assert [v.version for v in versions] == [new, "2", "1"]
    assert await backend.get_version(KEY, "2") == b"copied by hand"


async def test_file_version_symlink_is_not_followed(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "repo", create=True, keep_versions=KEEP)
    await backend.put(KEY, b"v1")
    await backend.put(KEY, b"v2")
    outside = tmp_path / "outside"
    outside.write_bytes(b"do not serve")
    version_file = tmp_path / "repo" / VERSIONS_DIR / "cai/key/model-1/1"
    version_file.unlink()
    version_file.symlink_to(outside)
    with pytest.raises(ResourceNotFoundError):
        await backend.get_version(KEY, "1")
    assert [v.version for v in await backend.list_versions(KEY)] == ["2"]


async def test_file_delete_purges_history_even_without_the_resource_file(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "repo", create=True, keep_versions=KEEP)
    await backend.put(KEY, b"v1")
    (tmp_path / "repo/cai/key/model-1").unlink()
    with pytest.raises(ResourceNotFoundError):
        await backend.delete(KEY)
    assert not (tmp_path / "repo" / VERSIONS_DIR / "cai/key/model-1").exists()


async def test_concurrent_writers_get_distinct_versions(backend: StorageBackend) -> None:
    import asyncio  # noqa: PLC0415

    numbers = await asyncio.gather(*(backend.put(KEY, f"w{i}".encode()) for i in range(8)))
    assert len(set(numbers)) == 8
    versions = await backend.list_versions(KEY)
    assert len(versions) == KEEP + 1
    assert sum(v.current for v in versions) == 1
    current = await backend.read(KEY)
    assert current.version == next(v.version for v in versions if v.current)
    assert await backend.get_version(KEY, current.version) == current.data
