# SPDX-License-Identifier: Apache-2.0
"""AliyunKmsBackend life cycle against the emulator: KMS's own versions, rollback by
moving ``ACSCurrent``, metadata without values."""

from __future__ import annotations

import pytest

from storage_backends.base import ResourceDesc
from storage_backends.errors import (
    ResourceNotFoundError,
    UnsupportedOperationError,
)

KEY = ResourceDesc("default", "aliyun", "model-decryption-key")


@pytest.fixture
def backend(emulator, settings, make_backend):
    return make_backend(settings.both(cache_ttl=0, negative_cache_ttl=0))


async def test_put_returns_the_kms_version_id(emulator, backend) -> None:
    first = await backend.put(KEY, b"v1")
    second = await backend.put(KEY, b"v2")
    assert first.startswith("kbs-")
    assert second.startswith("kbs-")
    assert first != second
    assert [v for v, _ in emulator.versions("model-decryption-key")] == [first, second]
    value = await backend.read(KEY)
    assert (value.data, value.version) == (b"v2", second)


async def test_versions_newest_first_and_readable_by_id(emulator, backend) -> None:
    ids = [await backend.put(KEY, f"value {i}".encode()) for i in range(3)]
    versions = await backend.list_versions(KEY)
    assert [v.version for v in versions] == list(reversed(ids))
    assert [v.current for v in versions] == [True, False, False]
    assert all(v.size is None and v.created is not None for v in versions)
    assert await backend.get_version(KEY, ids[0]) == b"value 0"
    assert emulator.count(action="ListSecretVersionIds") >= 1
    with pytest.raises(ResourceNotFoundError, match="version"):
        await backend.get_version(KEY, "kbs-" + "0" * 32)


async def test_rollback_moves_acscurrent(emulator, backend) -> None:
    good = await backend.put(KEY, b"good")
    bad = await backend.put(KEY, b"bad")
    assert await backend.get(KEY) == b"bad"
    writes = emulator.count(action="PutSecretValue")
    assert await backend.restore_version(KEY, good) == good
    assert await backend.get(KEY) == b"good"
    stages = dict(emulator.versions("model-decryption-key"))
    assert stages[good] == frozenset({"ACSCurrent"})
    assert stages[bad] == frozenset({"ACSPrevious"})
    # No version was written: the rollback is the stage move itself.
    assert emulator.count(action="PutSecretValue") == writes
    assert emulator.count(action="UpdateSecretVersionStage") == 1
    assert (await backend.read(KEY)).version == good
    # Rolling back to the current version is a no-op.
    assert await backend.restore_version(KEY, good) == good
    with pytest.raises(ResourceNotFoundError):
        await backend.restore_version(KEY, "kbs-" + "1" * 32)


async def test_rollback_drops_the_cached_value(emulator, settings, make_backend) -> None:
    backend = make_backend(settings.both(cache_ttl=600))
    good = await backend.put(KEY, b"good")
    await backend.put(KEY, b"bad")
    assert await backend.get(KEY) == b"bad"  # cached now
    await backend.restore_version(KEY, good)
    assert await backend.get(KEY) == b"good"


async def test_metadata_from_list_and_describe(emulator, backend) -> None:
    await backend.put(KEY, b"v1")
    current = await backend.put(KEY, b"v2")
    other = ResourceDesc("default", "aliyun", "other")
    await backend.put(other, b"x")
    listed = await backend.list_info()
    assert [i.desc for i in listed] == [KEY, other]
    assert all(i.backend == "aliyun_kms" and i.created and i.updated for i in listed)
    info = await backend.describe(KEY)
    assert (info.version, info.versions, info.size) == (current, 2, None)
    assert info.created is not None
    with pytest.raises(ResourceNotFoundError):
        await backend.describe(ResourceDesc("default", "aliyun", "missing"))
    await backend.delete(other)  # scheduled for deletion: gone for the KBS
    assert [i.desc for i in await backend.list_info()] == [KEY]
    with pytest.raises(ResourceNotFoundError):
        await backend.describe(other)


async def test_single_versions_cannot_be_deleted(backend) -> None:
    version = await backend.put(KEY, b"v1")
    with pytest.raises(UnsupportedOperationError, match="single secret version"):
        await backend.delete_version(KEY, version)


async def test_version_operations_need_the_shared_gateway(emulator, settings, make_backend):
    emulator.create_secret("model-decryption-key", "v", instance_id=None)
    backend = make_backend(settings.instance())
    assert (await backend.read(KEY)).data == b"v"
    for call in (
        backend.list_versions(KEY),
        backend.get_version(KEY, "v1"),
        backend.restore_version(KEY, "v1"),
        backend.describe(KEY),
    ):
        with pytest.raises(UnsupportedOperationError, match="shared gateway"):
            await call


async def test_tag_mode_rollback_only_under_the_mount(backend) -> None:
    version = await backend.put(KEY, b"v1")
    with pytest.raises(UnsupportedOperationError, match="tag naming"):
        await backend.restore_version(ResourceDesc("x", "y", KEY.tag), version)
