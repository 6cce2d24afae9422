# SPDX-License-Identifier: Apache-2.0
"""One behaviour for every backend: the same tests run against each implementation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from storage_backends import (
    DEFAULT_MAX_RESOURCE_BYTES,
    FileBackend,
    MemoryBackend,
    ResourceDesc,
    ResourceNotFoundError,
    ResourceTooLargeError,
    SqlBackend,
    StorageBackend,
)

MakeBackend = Callable[..., StorageBackend]

KEY = ResourceDesc("default", "key", "model-1")
OTHER = ResourceDesc("default", "key", "model-2")


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
    """A factory: ``make_backend(max_resource_bytes=...)`` over one shared store."""
    kind = request.param
    if kind == "file-tree":
        return lambda **kw: FileBackend(tmp_path / "repo", layout="tree", create=True, **kw)
    if kind == "file-flat":
        return lambda **kw: FileBackend(tmp_path / "repo", layout="flat", create=True, **kw)
    if kind == "memory":
        return MemoryBackend
    engine = request.getfixturevalue("sqlite_engine" if kind == "sql-sqlite" else "postgres_engine")
    return lambda **kw: SqlBackend(engine, clock=clock, **kw)


@pytest.fixture
def backend(make_backend: MakeBackend) -> StorageBackend:
    return make_backend()


async def test_missing_resource_is_not_found(backend: StorageBackend) -> None:
    with pytest.raises(ResourceNotFoundError):
        await backend.get(KEY)


async def test_put_then_get(backend: StorageBackend) -> None:
    await backend.put(KEY, b"secret")
    assert await backend.get(KEY) == b"secret"


async def test_put_overwrites(backend: StorageBackend) -> None:
    await backend.put(KEY, b"first value, longer")
    await backend.put(KEY, b"second")
    assert await backend.get(KEY) == b"second"


async def test_paths_are_independent(backend: StorageBackend) -> None:
    same_tag_other_type = ResourceDesc("default", "other", KEY.tag)
    same_tag_other_repo = ResourceDesc("other", KEY.type, KEY.tag)
    await backend.put(KEY, b"a")
    await backend.put(same_tag_other_type, b"b")
    await backend.put(same_tag_other_repo, b"c")
    assert await backend.get(KEY) == b"a"
    assert await backend.get(same_tag_other_type) == b"b"
    assert await backend.get(same_tag_other_repo) == b"c"


async def test_delete(backend: StorageBackend) -> None:
    await backend.put(KEY, b"secret")
    await backend.put(OTHER, b"kept")
    await backend.delete(KEY)
    with pytest.raises(ResourceNotFoundError):
        await backend.get(KEY)
    assert await backend.get(OTHER) == b"kept"


async def test_delete_missing_is_not_found(backend: StorageBackend) -> None:
    with pytest.raises(ResourceNotFoundError):
        await backend.delete(KEY)
    await backend.put(KEY, b"secret")
    await backend.delete(KEY)
    with pytest.raises(ResourceNotFoundError):
        await backend.delete(KEY)


async def test_list(backend: StorageBackend) -> None:
    assert await backend.list() == []
    descs = [
        ResourceDesc.parse(p)
        for p in ("b/b/b", "a/b/d", "a/b/c", "a/c/c", "a.b/c-d/e_f.g", "A/b/c", "0/1/2")
    ]
    for desc in descs:
        await backend.put(desc, b"x")
    await backend.put(descs[0], b"again")  # an overwrite lists once
    assert await backend.list() == sorted(descs)
    await backend.delete(descs[1])
    assert await backend.list() == sorted(descs[:1] + descs[2:])


async def test_size_cap_on_put(make_backend: MakeBackend) -> None:
    backend = make_backend(max_resource_bytes=16)
    await backend.put(KEY, b"x" * 16)
    with pytest.raises(ResourceTooLargeError):
        await backend.put(KEY, b"y" * 17)
    assert await backend.get(KEY) == b"x" * 16
    with pytest.raises(ResourceTooLargeError):
        await backend.put(OTHER, b"y" * 17)
    assert await backend.list() == [KEY]


async def test_binary_data_round_trips(backend: StorageBackend) -> None:
    data = b"\x00" + bytes(range(256)) * 4 + b"\x00\x00\xff\r\n\x00"
    await backend.put(KEY, data)
    assert await backend.get(KEY) == data


async def test_empty_value(backend: StorageBackend) -> None:
    await backend.put(KEY, b"")
    assert await backend.get(KEY) == b""
    assert await backend.list() == [KEY]


async def test_one_mebibyte(backend: StorageBackend) -> None:
    assert backend.max_resource_bytes == DEFAULT_MAX_RESOURCE_BYTES == 1024 * 1024
    data = bytes(i % 251 for i in range(1024 * 1024))
    await backend.put(KEY, data)
    assert await backend.get(KEY) == data
    with pytest.raises(ResourceTooLargeError):
        await backend.put(OTHER, data + b"!")


async def test_check(backend: StorageBackend) -> None:
    await backend.check()
    await backend.aclose()
