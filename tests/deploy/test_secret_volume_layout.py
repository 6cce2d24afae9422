# SPDX-License-Identifier: Apache-2.0
"""Why the chart mounts kbs.resourceRepository Secrets one key at a time (subPath).

The kubelet writes a whole Secret volume as ``<key> -> ..data/<key>``,
``..data -> ..<timestamp>``: symlinks. The file backend never follows a symlink below its
root (storage_backends/file.py, rule 2), so such a volume inside the repository serves
nothing. A subPath mount is the resolved file itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from storage_backends.base import ResourceDesc
from storage_backends.errors import ResourceNotFoundError
from storage_backends.file import FileBackend


def _secret_volume(directory: Path, items: dict[str, bytes], stamp: str) -> None:
    """Lay out ``items`` the way the kubelet's atomic writer does."""
    directory.mkdir(parents=True, exist_ok=True)
    versioned = directory / f"..{stamp}"
    versioned.mkdir()
    for key, value in items.items():
        (versioned / key).write_bytes(value)
    (directory / "..data").symlink_to(versioned.name)
    for key in items:
        (directory / key).symlink_to(f"..data/{key}")


async def test_a_whole_secret_volume_is_refused(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    _secret_volume(repository / "cai" / "sample", {"password": b"x"}, "2026_01_01_00_00_00.1")
    backend = FileBackend(repository, layout="tree", create=True)
    with pytest.raises(ResourceNotFoundError):
        await backend.get(ResourceDesc("cai", "sample", "password"))


async def test_a_subpath_mount_is_a_plain_file(tmp_path: Path) -> None:
    """What the container sees with subPath: the key's content at the resource path."""
    repository = tmp_path / "repository"
    (repository / "cai" / "sample").mkdir(parents=True)
    (repository / "cai" / "sample" / "password").write_bytes(b"from the secret")
    backend = FileBackend(repository, layout="tree", create=True)
    assert await backend.get(ResourceDesc("cai", "sample", "password")) == b"from the secret"
