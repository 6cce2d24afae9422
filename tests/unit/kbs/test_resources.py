# SPDX-License-Identifier: Apache-2.0
"""The resource router: mount order, listing what is reachable, readiness of every mount."""

from __future__ import annotations

import builtins

import pytest

from kbs.resources import Mount, ResourceRouter
from storage_backends.base import ResourceDesc
from storage_backends.errors import StorageUnavailableError, UnsupportedOperationError
from storage_backends.memory import MemoryBackend


class Unlistable(MemoryBackend):
    kind = "unlistable"

    async def _list(self) -> builtins.list[ResourceDesc]:
        raise UnsupportedOperationError("this backend cannot enumerate")


class Failing(MemoryBackend):
    kind = "failing"

    async def _check(self) -> None:
        raise StorageUnavailableError("down for a test")


def d(path: str) -> ResourceDesc:
    return ResourceDesc.parse(path)


async def test_first_matching_mount_wins_and_the_last_is_the_default() -> None:
    kms, any_aliyun, files = MemoryBackend(), MemoryBackend(), MemoryBackend()
    router = ResourceRouter(
        [
            Mount("default", "aliyun", kms),
            Mount(None, "aliyun", any_aliyun),
            Mount(None, None, files),
        ]
    )
    assert router.backend_for(d("default/aliyun/k")) is kms
    assert router.backend_for(d("other/aliyun/k")) is any_aliyun
    assert router.backend_for(d("default/other/k")) is files
    assert [m.label for m in router.mounts] == ["default/aliyun", "*/aliyun", "*/*"]


async def test_list_reports_only_reachable_paths() -> None:
    kms, files = MemoryBackend(), MemoryBackend()
    router = ResourceRouter([Mount("default", "aliyun", kms), Mount(None, None, files)])
    await kms.put(d("default/aliyun/model"), b"k")
    await files.put(d("cai/sample/password"), b"f")
    # Behind the KMS mount: a request for it reaches the KMS, never this file.
    await files.put(d("default/aliyun/shadowed"), b"f")
    assert await router.list() == [d("cai/sample/password"), d("default/aliyun/model")]


async def test_list_of_an_unlistable_mount_fails_or_is_skipped() -> None:
    kms, files = Unlistable(), MemoryBackend()
    router = ResourceRouter([Mount("default", "aliyun", kms), Mount(None, None, files)])
    await files.put(d("cai/sample/password"), b"f")
    with pytest.raises(UnsupportedOperationError, match=r"^resources under default/aliyun: this"):
        await router.list()
    assert await router.list(skip_unsupported=True) == [d("cai/sample/password")]


async def test_check_probes_every_mount_and_names_each_failure() -> None:
    router = ResourceRouter(
        [
            Mount("a", "b", Failing()),
            Mount("c", None, MemoryBackend()),
            Mount(None, None, Failing()),
        ]
    )
    with pytest.raises(StorageUnavailableError) as caught:
        await router.check()
    assert str(caught.value) == "a/b (failing): down for a test; */* (failing): down for a test"
    await ResourceRouter([Mount(None, None, MemoryBackend())]).check()
