# SPDX-License-Identifier: Apache-2.0
"""Resource life cycle over HTTP: listing with metadata (never values), kept versions,
admin reads of old versions, rollback, explicit deletes; file, flat file, database,
memory and Aliyun KMS backends."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import kbs.app as kbs_app
from kbs.client.api import KbsClientError
from kbs.resources import Mount, ResourceRouter
from storage_backends import MemoryBackend, ResourceDesc, UnsupportedOperationError
from storage_backends.aliyun_kms import AliyunKmsBackend, AliyunKmsSettings
from storage_backends.file import VERSIONS_DIR
from support.kbs_app import (
    SAMPLE_REFERENCE_VALUES,
    RunningKbs,
    make_admin_key,
    running_kbs,
    settings_for,
)
from support.kms_emulator import KmsEmulator
from support.kms_fixtures import ACCESS_KEY_ID, ACCESS_KEY_SECRET

ERR = "https://github.com/confidential-containers/kbs/errors/"
PATH = "cai/key/model"
GOOD = b"good model key \x00\x01"
BAD = b"bad rotation"

BACKENDS = {
    "file": None,  # settings_for's LocalFs (tree) plugin
    "flat": "LocalFs",
    "sql": "Postgres",
    "memory": "Memory",
}
KINDS = {"file": "file", "flat": "file", "sql": "sql", "memory": "memory"}


def _overrides(backend: str, tmp_path: Path) -> dict[str, Any]:
    storage = BACKENDS[backend]
    if storage is None:
        return {}
    overrides: dict[str, Any] = {
        "plugins": [{"name": "resource", "storage_backend_type": "kvstorage"}]
    }
    if storage == "LocalFs":
        overrides["storage_backend"] = {
            "storage_type": "LocalFs",
            "backends": {"local_fs": {"dir_path": str(tmp_path / "kv")}},
        }
    elif storage == "Memory":
        overrides["storage_backend"] = {"storage_type": "Memory"}
    return overrides


@pytest.fixture(params=list(BACKENDS))
async def kbs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RunningKbs]:
    admin_key = make_admin_key(tmp_path)
    settings = settings_for(tmp_path, admin_key, overrides=_overrides(request.param, tmp_path))
    async with running_kbs(settings, admin_key=admin_key) as running:
        await running.admin().set_reference_values(SAMPLE_REFERENCE_VALUES)
        running.backend_kind = KINDS[request.param]  # type: ignore[attr-defined]
        yield running


def _headers(kbs: RunningKbs) -> dict[str, str]:
    return {"Authorization": f"Bearer {kbs.admin()._bearer()}"}


async def test_versions_rollback_and_admin_reads(kbs: RunningKbs) -> None:
    admin = kbs.admin()
    first = await admin.set_resource(PATH, GOOD)
    second = await admin.set_resource(PATH, BAD)
    assert first is not None
    assert second is not None
    assert first != second
    async with kbs.guest() as guest:
        assert await guest.get_resource(PATH) == BAD

    # Listing: metadata, never values.
    response = await kbs.http.get("/kbs/v0/resource", headers=_headers(kbs))
    assert response.status_code == 200
    assert BAD not in response.content
    assert GOOD not in response.content
    [entry] = response.json()
    assert entry["path"] == PATH
    assert entry["backend"] == kbs.backend_kind  # type: ignore[attr-defined]
    assert entry["size"] == len(BAD)
    assert entry["version"] == second
    assert entry["versions"] == 2
    assert entry["updated"].endswith("Z")

    history = await admin.resource_versions(PATH)
    assert [v["version"] for v in history["history"]] == [second, first]
    assert [v["current"] for v in history["history"]] == [True, False]

    # An admin reads the old version; a guest's token never reaches an old version.
    assert await admin.get_resource_version(PATH, first) == GOOD
    async with kbs.guest() as guest:
        token = await guest.attest()
        denied = await guest._http.get(f"/kbs/v0/resource/{PATH}", params={"version": first})
        bearer = await kbs.new_http().get(
            f"/kbs/v0/resource/{PATH}",
            params={"version": first},
            headers={"Authorization": f"Bearer {token}"},
        )
    for response in (denied, bearer):
        assert response.status_code == 401
        assert response.json()["type"] == ERR + "AdminAuthAccess"
        assert GOOD not in response.content

    # Roll the bad rotation back.
    rolled = await admin.rollback_resource(PATH, first)
    assert rolled["restored"] == first
    async with kbs.guest() as guest:
        assert await guest.get_resource(PATH) == GOOD
    history = await admin.resource_versions(PATH)
    assert history["history"][0] == {
        **history["history"][0],
        "version": rolled["version"],
        "current": True,
    }

    # Deleting one kept version, but never the current one.
    with pytest.raises(KbsClientError, match="ResourceConflict"):
        await admin.delete_resource(PATH, version=rolled["version"])
    await admin.delete_resource(PATH, version=second)
    with pytest.raises(KbsClientError, match="PluginInternalError: resource not found"):
        await admin.get_resource_version(PATH, second)

    # Deleting the resource is explicit and takes the history with it.
    await admin.delete_resource(PATH)
    assert await admin.list_resources() == []
    with pytest.raises(KbsClientError):
        await admin.get_resource_version(PATH, first)
    # The guest path (plain SQL on the database backend) no longer finds it.
    async with kbs.guest() as guest:
        with pytest.raises(KbsClientError, match="resource not found"):
            await guest.get_resource(PATH)


async def test_listing_filters_and_formats(kbs: RunningKbs) -> None:
    admin = kbs.admin()
    for path in ("cai/key/a", "cai/other/b", "default/aliyun/c"):
        await admin.set_resource(path, b"x")
    assert await admin.list_resources(paths_only=True) == [
        "cai/key/a",
        "cai/other/b",
        "default/aliyun/c",
    ]
    listed = await admin.list_resources(prefix="cai/*")
    assert [e["path"] for e in listed] == ["cai/key/a", "cai/other/b"]
    assert [e["path"] for e in await admin.list_resources(prefix="*/*/c")] == ["default/aliyun/c"]
    response = await kbs.http.get(
        "/kbs/v0/resource", params={"prefix": "cai"}, headers=_headers(kbs)
    )
    assert response.status_code == 404
    assert response.json()["type"] == ERR + "InvalidRequestPath"
    # The trailing-slash spelling lists too; without a token it is refused.
    assert (await kbs.http.get("/kbs/v0/resource/", headers=_headers(kbs))).status_code == 200
    refused = await kbs.http.get("/kbs/v0/resource")
    assert refused.status_code == 401
    assert refused.json()["type"] == ERR + "AdminAuthAccess"


async def test_bad_version_ids_and_bodies(kbs: RunningKbs) -> None:
    admin = kbs.admin()
    await admin.set_resource(PATH, GOOD)
    for version in ("../1", "", "a b"):
        response = await kbs.http.get(
            f"/kbs/v0/resource/{PATH}", params={"version": version}, headers=_headers(kbs)
        )
        assert response.status_code == 404, version
        assert response.json()["type"] == ERR + "InvalidRequestPath"
    response = await kbs.http.post(
        f"/kbs/v0/resource-rollback/{PATH}", json={"version": 3}, headers=_headers(kbs)
    )
    assert response.status_code == 401
    assert response.json()["type"] == ERR + "SerdeError"
    with pytest.raises(KbsClientError, match="not found"):
        await admin.rollback_resource(PATH, "99")


async def test_file_history_is_hidden_from_guests(tmp_path: Path) -> None:
    admin_key = make_admin_key(tmp_path)
    async with running_kbs(settings_for(tmp_path, admin_key), admin_key=admin_key) as kbs:
        await kbs.admin().set_reference_values(SAMPLE_REFERENCE_VALUES)
        await kbs.admin().set_resource(PATH, GOOD)
        await kbs.admin().set_resource(PATH, BAD)
        assert (tmp_path / "repository" / VERSIONS_DIR / PATH / "1").read_bytes() == GOOD
        async with kbs.guest() as guest:
            await guest.attest()
            for probe in (
                f"/kbs/v0/resource/{VERSIONS_DIR}/cai/key",
                f"/kbs/v0/resource/{VERSIONS_DIR}%2Fcai/key/model",
                "/kbs/v0/resource/.kbs-versions/cai/key",
            ):
                response = await guest._http.get(probe)
                assert response.status_code == 404, probe
                assert GOOD not in response.content


async def test_keep_resource_versions_setting(tmp_path: Path) -> None:
    admin_key = make_admin_key(tmp_path)
    settings = settings_for(tmp_path, admin_key, overrides={"keep_resource_versions": 1})
    async with running_kbs(settings, admin_key=admin_key) as kbs:
        admin = kbs.admin()
        for i in range(4):
            await admin.set_resource(PATH, f"v{i}".encode())
        history = (await admin.resource_versions(PATH))["history"]
        assert [v["version"] for v in history] == ["4", "3"]
    settings = settings_for(tmp_path, admin_key, overrides={"keep_resource_versions": 0})
    async with running_kbs(settings, admin_key=admin_key) as kbs:
        body = await kbs.admin().resource_versions(PATH)
        assert body["history"] is None
        assert "keeps no versions" in body["versioning"]


# --------------------------------------------------------------------------- KMS


@pytest.fixture
def emulator() -> Iterator[KmsEmulator]:
    with KmsEmulator() as emu:
        emu.add_access_key(ACCESS_KEY_ID, ACCESS_KEY_SECRET)
        yield emu


def mount_kms(monkeypatch: pytest.MonkeyPatch, emulator: KmsEmulator) -> None:
    """Mount the Aliyun KMS backend (shared gateway on the emulator) at default/aliyun."""
    original = kbs_app.build_resource_router
    kms_settings = AliyunKmsSettings(
        credential_type="access_key",
        access_key_id=ACCESS_KEY_ID,
        access_key_secret=ACCESS_KEY_SECRET,
        shared_endpoint=emulator.endpoint,
        region_id="cn-hangzhou",
        insecure_shared_gateway_http=True,
        cache_ttl=0,
        negative_cache_ttl=0,
        connect_timeout=2.0,
        read_timeout=2.0,
    )

    def with_kms(settings: Any, **kwargs: Any) -> ResourceRouter:
        base = original(settings, **kwargs)
        clock = kwargs["clock"]
        backend = AliyunKmsBackend(kms_settings, now=clock, entropy=os.urandom)
        return ResourceRouter([Mount("default", "aliyun", backend), *base.mounts])

    monkeypatch.setattr(kbs_app, "build_resource_router", with_kms)


async def test_kms_versions_through_the_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulator: KmsEmulator
) -> None:
    mount_kms(monkeypatch, emulator)
    admin_key = make_admin_key(tmp_path)
    kms_path = "default/aliyun/model-decryption-key"
    async with running_kbs(settings_for(tmp_path, admin_key), admin_key=admin_key) as kbs:
        admin = kbs.admin()
        await admin.set_reference_values(SAMPLE_REFERENCE_VALUES)
        good = await admin.set_resource(kms_path, GOOD)
        bad = await admin.set_resource(kms_path, BAD)
        await admin.set_resource("cai/key/file-one", b"on disk")
        assert good is not None
        assert good.startswith("kbs-")
        assert bad is not None
        listed = {e["path"]: e for e in await admin.list_resources()}
        assert listed[kms_path]["backend"] == "aliyun_kms"
        assert listed["cai/key/file-one"]["backend"] == "file"
        history = await admin.resource_versions(kms_path)
        assert history["version"] == bad
        assert [v["version"] for v in history["history"]] == [bad, good]
        assert await admin.get_resource_version(kms_path, good) == GOOD
        assert (await admin.rollback_resource(kms_path, good))["version"] == good
        async with kbs.guest() as guest:
            assert await guest.get_resource(kms_path) == GOOD
        assert dict(emulator.versions("model-decryption-key"))[good] == frozenset({"ACSCurrent"})
        with pytest.raises(KbsClientError, match="single secret version"):
            await admin.delete_resource(kms_path, version=bad)
        await admin.delete_resource(kms_path)
        assert kms_path not in [e["path"] for e in await admin.list_resources()]


async def test_a_backend_that_is_down_fails_the_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulator: KmsEmulator
) -> None:
    emulator.go_down()
    mount_kms(monkeypatch, emulator)
    admin_key = make_admin_key(tmp_path)
    async with running_kbs(settings_for(tmp_path, admin_key), admin_key=admin_key) as kbs:
        response = await kbs.http.get("/kbs/v0/resource", headers=_headers(kbs))
    # Down is not "cannot list": a partial answer would hide resources, so 503.
    assert response.status_code == 503
    assert response.json()["type"] == ERR + "StorageUnavailable"


class _Unlistable(MemoryBackend):
    kind = "unlistable"

    async def _list(self) -> list[ResourceDesc]:
        raise UnsupportedOperationError("this backend cannot enumerate")


async def test_backends_that_cannot_list_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = kbs_app.build_resource_router

    def with_unlistable(settings: Any, **kwargs: Any) -> ResourceRouter:
        base = original(settings, **kwargs)
        return ResourceRouter([Mount("vault", None, _Unlistable()), *base.mounts])

    monkeypatch.setattr(kbs_app, "build_resource_router", with_unlistable)
    admin_key = make_admin_key(tmp_path)
    async with running_kbs(settings_for(tmp_path, admin_key), admin_key=admin_key) as kbs:
        await kbs.admin().set_resource("vault/key/hidden", b"x")
        await kbs.admin().set_resource("cai/key/listed", b"y")
        response = await kbs.http.get("/kbs/v0/resource", headers=_headers(kbs))
    assert response.status_code == 200
    assert [e["path"] for e in response.json()] == ["cai/key/listed"]
    assert response.headers["x-kbs-unlisted-backends"] == "unlistable"
