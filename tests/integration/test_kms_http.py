# SPDX-License-Identifier: Apache-2.0
"""Alibaba Cloud KMS as a resource backend, through the KBS HTTP API, against the emulator.

The emulator (``support.kms_emulator``) checks every request signature the way the real
gateways do and serves the instance gateway over TLS with a test CA. The guest side is
the sample TEE with reference values registered through the admin API, so its token is
``affirming`` and the default resource policy releases secrets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from kbs.client.api import KbsClientError
from kbs.settings import ConfigError
from storage_backends.base import ResourceDesc
from storage_backends.errors import UnsupportedOperationError
from support.kbs_app import (
    SAMPLE_REFERENCE_VALUES,
    AdminKey,
    RunningKbs,
    running_kbs,
    settings_for,
    without_request_id,
)
from support.kms_app import kms_entry, kms_environment_names, kms_mount, trustee_keys
from support.kms_emulator import KmsEmulator
from support.kms_fixtures import (
    ACCESS_KEY_ID,
    ACCESS_KEY_SECRET,
    CLIENT_KEY_PASSWORD,
    STS_ACCESS_KEY_ID,
    STS_ACCESS_KEY_SECRET,
    STS_TOKEN,
    ClientKeyMaterial,
    TlsPki,
    make_client_key,
    make_tls_pki,
)

ERR = "https://github.com/confidential-containers/kbs/errors/"
MODEL_KEY_URI = "kbs:///default/aliyun/model-decryption-key"
MODEL_KEY_PATH = "/kbs/v0/resource/default/aliyun/model-decryption-key"
MODEL_KEY = "model key 7f3a9c1e from kms"
FILE_SECRET = b"file secret 4b8d"
WRITTEN_V1 = b"written value one 2c9e"
WRITTEN_V2 = b"written value two 8a1f"
BINARY = b"\x00\xff binary 5d7c \x80"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _hermetic_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in kms_environment_names():
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def kms_pki(tmp_path_factory: pytest.TempPathFactory) -> TlsPki:
    return make_tls_pki(tmp_path_factory.mktemp("kms-pki"))


@pytest.fixture(scope="module")
def client_key() -> ClientKeyMaterial:
    return make_client_key(CLIENT_KEY_PASSWORD)


@pytest.fixture
def emulator(kms_pki: TlsPki, client_key: ClientKeyMaterial) -> Iterator[KmsEmulator]:
    with KmsEmulator(tls=kms_pki.server_context()) as emu:
        emu.add_client_key(client_key.key_id, client_key.public_key)
        emu.add_access_key(ACCESS_KEY_ID, ACCESS_KEY_SECRET)
        emu.add_access_key(STS_ACCESS_KEY_ID, STS_ACCESS_KEY_SECRET, STS_TOKEN)
        emu.create_secret("model-decryption-key", MODEL_KEY, instance_id=kms_pki.kms_instance_id)
        yield emu


@dataclass
class Kms:
    """One test's KMS emulator, its PKI and client key, and where the KBS keeps files."""

    emulator: KmsEmulator
    pki: TlsPki
    client_key: ClientKeyMaterial
    tmp_path: Path
    admin_key: AdminKey

    def files_with_mount(self, **kms: Any) -> dict[str, Any]:
        """Files for everything, the KMS for ``default/aliyun``."""
        return {
            "storage_backend_type": "LocalFs",
            "dir_path": str(self.tmp_path / "repository"),
            "mounts": [kms_mount(self.emulator, self.pki, self.client_key, **kms)],
        }

    def kbs(self, plugin: dict[str, Any]) -> contextlib.AbstractAsyncContextManager[RunningKbs]:
        return kbs_with(self.tmp_path, self.admin_key, plugin)


@pytest.fixture
def kms(
    emulator: KmsEmulator,
    kms_pki: TlsPki,
    client_key: ClientKeyMaterial,
    tmp_path: Path,
    admin_key: AdminKey,
) -> Kms:
    return Kms(emulator, kms_pki, client_key, tmp_path, admin_key)


@dataclass
class LogCheck:
    """What :func:`secrets_never_logged` checks besides its fixed list."""

    #: More texts that must not contain a secret (response bodies, error messages).
    texts: list[str] = field(default_factory=list)
    #: More values that must appear nowhere (credentials a test creates).
    forbidden: list[str] = field(default_factory=list)


@pytest.fixture
def secrets_never_logged(
    caplog: pytest.LogCaptureFixture, client_key: ClientKeyMaterial
) -> Iterator[LogCheck]:
    """Capture DEBUG logs; at the end, no credential and no secret value may be in them."""
    check = LogCheck()
    caplog.set_level(logging.DEBUG)
    yield check
    private_key_data = client_key.client_key_json.split('"PrivateKeyData": "')[1][:40]
    forbidden = [
        CLIENT_KEY_PASSWORD,
        private_key_data,
        ACCESS_KEY_SECRET,
        STS_ACCESS_KEY_SECRET,
        STS_TOKEN,
        MODEL_KEY,
        FILE_SECRET.decode(),
        WRITTEN_V1.decode(),
        WRITTEN_V2.decode(),
        base64.b64encode(BINARY).decode(),
        *check.forbidden,
    ]
    # At teardown caplog.text holds only this phase's records: format setup's and call's.
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    records = [*caplog.get_records("setup"), *caplog.get_records("call")]
    assert records, "nothing was logged: the capture is not working"
    logged = "\n".join(formatter.format(record) for record in records)
    for text in [logged, *check.texts]:
        for secret in forbidden:
            assert secret not in text


@contextlib.asynccontextmanager
async def kbs_with(
    tmp_path: Path, admin_key: AdminKey, plugin: dict[str, Any]
) -> AsyncIterator[RunningKbs]:
    """A KBS whose resource plugin is ``plugin``, with affirming sample reference values."""
    settings = settings_for(
        tmp_path, admin_key, overrides={"plugins": [{"name": "resource", **plugin}]}
    )
    async with running_kbs(settings, admin_key=admin_key) as kbs:
        await kbs.admin().set_reference_values(SAMPLE_REFERENCE_VALUES)
        yield kbs


async def raw_get(kbs: RunningKbs, path: str) -> httpx.Response:
    """GET a resource with an attested session, without the client's 401 retries."""
    async with kbs.guest() as guest:
        await guest.attest()
        return await guest._http.get(path)


async def fetch(kbs: RunningKbs, uri: str) -> bytes:
    async with kbs.guest() as guest:
        return await guest.get_resource(uri)


# --------------------------------------------------------------------------- RCAR flow


@pytest.mark.parametrize("type_key", ["storage_backend_type", "type"])
@pytest.mark.parametrize("endpoint_from", ["file", "environment"])
async def test_trustee_config_serves_the_model_key_from_kms(
    kms,
    monkeypatch,
    secrets_never_logged,
    type_key,
    endpoint_from,
):
    # A Trustee user's plugin entry: the four keys as contents. The endpoint (not a
    # Trustee key: Trustee can only reach <kst>.cryptoservice.kms.aliyuncs.com) comes from
    # the openanolis fork's `endpoint` key or its environment override.
    keys = trustee_keys(kms.emulator, kms.pki, kms.client_key)
    if endpoint_from == "environment":
        monkeypatch.setenv("KBS_RESOURCE_STORAGE_ALIYUN_ENDPOINT", keys.pop("endpoint"))
    plugin = {type_key: "Aliyun", **keys}
    async with kms.kbs(plugin) as kbs:
        assert await fetch(kbs, MODEL_KEY_URI) == MODEL_KEY.encode()
        # Trustee's tag naming: repository and type are ignored on reads.
        assert await fetch(kbs, "kbs:///other/thing/model-decryption-key") == MODEL_KEY.encode()
        (mount,) = kbs.app.state.kbs.resources.mounts
        assert (mount.label, mount.backend.kind) == ("*/*", "aliyun_kms")
    reads = [r for r in kms.emulator.requests if r.action == "GetSecretValue"]
    assert reads
    assert {(r.gateway, r.signature, r.status) for r in reads} == {
        ("instance", "RSA_PKCS1_SHA_256", 200)
    }


async def test_missing_secret_is_the_protocols_resource_not_found(kms, secrets_never_logged):
    plugin = kms.files_with_mount()
    async with kms.kbs(plugin) as kbs:
        response = await raw_get(kbs, "/kbs/v0/resource/default/aliyun/no-such-secret")
    assert response.status_code == 401
    assert without_request_id(response.json()) == {
        "type": ERR + "PluginInternalError",
        "detail": "resource not found",
    }
    assert kms.emulator.count(action="GetSecretValue", status=404) == 1


# --------------------------------------------------------------------------- admin writes


async def test_admin_put_creates_then_versions_and_delete_schedules_deletion(
    kms, secrets_never_logged
):
    plugin = kms.files_with_mount(recovery_window_days=7)
    async with kms.kbs(plugin) as kbs:
        admin = kbs.admin()
        # 1. First put: CreateSecret in the KMS instance.
        await admin.set_resource("default/aliyun/written", WRITTEN_V1)
        data, data_type, first_version = kms.emulator.current("written")
        assert (data, data_type) == (WRITTEN_V1.decode(), "text")
        assert kms.emulator.instance_of("written") == kms.pki.kms_instance_id
        assert await fetch(kbs, "kbs:///default/aliyun/written") == WRITTEN_V1
        # 2. Second put: a new version becomes ACSCurrent; the cached v1 is not served.
        await admin.set_resource("default/aliyun/written", WRITTEN_V2)
        versions = kms.emulator.versions("written")
        assert [stages for _, stages in versions] == [
            frozenset({"ACSPrevious"}),
            frozenset({"ACSCurrent"}),
        ]
        assert versions[0][0] == first_version
        assert versions[1][0].startswith("kbs-")
        assert await fetch(kbs, "kbs:///default/aliyun/written") == WRITTEN_V2
        # 3. Bytes that are not UTF-8 are stored as a binary secret and come back exact.
        await admin.set_resource("default/aliyun/binary", BINARY)
        assert kms.emulator.current("binary")[:2] == (base64.b64encode(BINARY).decode(), "binary")
        assert await fetch(kbs, "kbs:///default/aliyun/binary") == BINARY
        # 4. Delete: scheduled with the configured recovery window, then "not found".
        await admin.delete_resource("default/aliyun/written")
        planned = dt.datetime.strptime(
            kms.emulator.planned_delete_time("written") or "", "%Y-%m-%dT%H:%M:%SZ"
        ).replace(tzinfo=dt.UTC)
        expected = kbs.clock.now() + dt.timedelta(days=7)
        assert abs(planned - expected) < dt.timedelta(minutes=5)
        response = await raw_get(kbs, "/kbs/v0/resource/default/aliyun/written")
        assert response.status_code == 401
        assert without_request_id(response.json())["detail"] == "resource not found"
        # 5. A second delete of the same secret is "not found" too.
        with pytest.raises(KbsClientError, match="resource not found"):
            await admin.delete_resource("default/aliyun/written")
    writes = {r.action for r in kms.emulator.requests if r.gateway == "shared"}
    assert {"CreateSecret", "PutSecretValue", "DeleteSecret"} <= writes
    assert {r.signature for r in kms.emulator.requests if r.gateway == "shared"} == {
        "ACS3-HMAC-SHA256"
    }


async def test_admin_put_without_shared_credentials_says_why(kms, secrets_never_logged):
    # Trustee's instance-only configuration: the instance API has no write operation.
    plugin = kms.files_with_mount(shared=False)
    async with kms.kbs(plugin) as kbs:
        response = await kbs.http.post(
            "/kbs/v0/resource/default/aliyun/written",
            content=WRITTEN_V1,
            headers={"Authorization": f"Bearer {kbs.admin()._bearer()}"},
        )
    assert response.status_code == 401
    assert response.json()["type"] == ERR + "PluginInternalError"
    assert "shared gateway credentials" in response.json()["detail"]
    assert kms.emulator.secret_names() == ["model-decryption-key"]


# --------------------------------------------------------------------------- listing


async def test_listing_through_the_router_covers_every_mount(kms, secrets_never_logged):
    # The HTTP listing endpoint belongs to the admin issue; the router is what it calls.
    kms.emulator.create_secret("other-key", "x", instance_id=kms.pki.kms_instance_id)
    kms.emulator.create_secret("elsewhere", "x", instance_id="kst-another-instance")
    plugin = kms.files_with_mount()
    async with kms.kbs(plugin) as kbs:
        await kbs.admin().set_resource("cai/sample/password", FILE_SECRET)
        # A file behind the KMS mount can never be served: it is not listed.
        shadowed = kms.tmp_path / "repository/default/aliyun/shadowed"
        shadowed.parent.mkdir(parents=True)
        shadowed.write_bytes(b"unreachable")
        listed = await kbs.app.state.kbs.resources.list()
    assert listed == [
        ResourceDesc("cai", "sample", "password"),
        ResourceDesc("default", "aliyun", "model-decryption-key"),
        ResourceDesc("default", "aliyun", "other-key"),
    ]
    assert kms.emulator.count(action="ListSecrets", gateway="shared") == 1


async def test_listing_an_instance_only_mount_is_unsupported_unless_skipped(kms):
    plugin = kms.files_with_mount(shared=False)
    async with kms.kbs(plugin) as kbs:
        await kbs.admin().set_resource("cai/sample/password", FILE_SECRET)
        router = kbs.app.state.kbs.resources
        with pytest.raises(UnsupportedOperationError, match="resources under default/aliyun"):
            await router.list()
        assert await router.list(skip_unsupported=True) == [
            ResourceDesc("cai", "sample", "password")
        ]


# --------------------------------------------------------------------------- failures


async def test_throttling_is_served_from_the_cache(kms, secrets_never_logged):
    # cache_ttl 0: every read asks KMS, so the throttled refresh really happens.
    plugin = kms.files_with_mount(
        cache_ttl=0,
        cache_max_stale=3600,
        stale_refresh_interval=0,
        max_attempts=2,
    )
    async with kms.kbs(plugin) as kbs:
        assert await fetch(kbs, MODEL_KEY_URI) == MODEL_KEY.encode()
        kms.emulator.throttle(times=None, gateway="instance")
        throttled_before = kms.emulator.count(status=429)
        for _ in range(3):
            assert await fetch(kbs, MODEL_KEY_URI) == MODEL_KEY.encode()
    # Each read tried KMS (twice: max_attempts) and got 429 before the cache answered.
    assert kms.emulator.count(status=429) - throttled_before == 6


async def test_outage_past_max_stale_is_503_naming_the_kms(kms, secrets_never_logged):
    plugin = kms.files_with_mount(
        cache_ttl=0,
        cache_max_stale=2.0,
        stale_refresh_interval=0,
        max_attempts=1,
    )
    async with kms.kbs(plugin) as kbs:
        assert await fetch(kbs, MODEL_KEY_URI) == MODEL_KEY.encode()
        kms.emulator.go_down("refused")
        try:
            # Within max-stale: the last good value.
            assert await fetch(kbs, MODEL_KEY_URI) == MODEL_KEY.encode()
            # (The backend ages its cache on the monotonic clock, which create_app does not
            # inject: wait for real, with a wide margin over the few ms the reads take.)
            await asyncio.sleep(2.3)
            # Past it: our fault, 503, and the guest is told what failed.
            response = await raw_get(kbs, MODEL_KEY_PATH)
            assert response.status_code == 503
            assert without_request_id(response.json()) == {
                "type": ERR + "StorageUnavailable",
                "detail": "aliyun kms unavailable: network error",
            }
            secrets_never_logged.texts.append(response.text)
            with pytest.raises(KbsClientError) as caught:
                await fetch(kbs, MODEL_KEY_URI)
            assert caught.value.status == 503
            # File resources on the same server are unaffected.
            await kbs.admin().set_resource("cai/sample/password", FILE_SECRET)
            assert await fetch(kbs, "kbs:///cai/sample/password") == FILE_SECRET
        finally:
            kms.emulator.come_back()
        assert await fetch(kbs, MODEL_KEY_URI) == MODEL_KEY.encode()


@pytest.mark.parametrize("gateway", ["instance", "shared"])
async def test_a_signing_bug_is_our_fault_503_not_401(
    kms, monkeypatch, secrets_never_logged, gateway
):
    if gateway == "instance":
        # Sign a string that is not the one the service rebuilds (a lower-case hash).
        from storage_backends.aliyun_kms import instance  # noqa: PLC0415

        real = instance.string_to_sign

        def buggy(**kwargs: Any) -> str:
            return real(**{**kwargs, "content_sha256": kwargs["content_sha256"].lower()})

        monkeypatch.setattr(instance, "string_to_sign", buggy)
        plugin = kms.files_with_mount()
        request = ("GET", MODEL_KEY_PATH)
        rejected_code = "SignatureNotMatch"
    else:
        # Break the SDK's ACS3 HMAC: the shared gateway must reject it.
        from alibabacloud_tea_openapi import utils as sdk_utils  # noqa: PLC0415

        real_method = sdk_utils.signature_method

        def buggy_method(secret: str, source: str, sign_type: str) -> bytes:
            return real_method(secret, source + "\n", sign_type)

        monkeypatch.setattr(sdk_utils, "signature_method", buggy_method)
        plugin = kms.files_with_mount(read_gateway="shared")
        request = ("GET", MODEL_KEY_PATH)
        rejected_code = "SignatureDoesNotMatch"
    async with kms.kbs(plugin) as kbs:
        response = await raw_get(kbs, request[1])
        secrets_never_logged.texts.append(response.text)
        assert response.status_code == 503
        assert without_request_id(response.json()) == {
            "type": ERR + "StorageUnavailable",
            "detail": f"aliyun kms unavailable: request rejected ({rejected_code})",
        }
        if gateway == "shared":
            # Writes go through the same (broken) signer.
            put = await kbs.http.post(
                "/kbs/v0/resource/default/aliyun/written",
                content=WRITTEN_V1,
                headers={"Authorization": f"Bearer {kbs.admin()._bearer()}"},
            )
            assert put.status_code == 503
            assert put.json()["type"] == ERR + "StorageUnavailable"
    assert kms.emulator.count(gateway=gateway, action="GetSecretValue", status=200) == 0
    rejected = [r for r in kms.emulator.requests if r.code == rejected_code]
    assert rejected
    assert all(r.gateway == gateway for r in rejected)


# --------------------------------------------------------------------------- mounts


@pytest.mark.parametrize("default", ["LocalFs", "kvstorage"])
async def test_one_server_serves_file_and_kms_resources(kms, secrets_never_logged, default):
    plugin: dict[str, Any] = {
        "storage_backend_type": default,
        "mounts": [kms_mount(kms.emulator, kms.pki, kms.client_key, shared=False)],
    }
    if default == "LocalFs":
        plugin["dir_path"] = str(kms.tmp_path / "repository")
    async with kms.kbs(plugin) as kbs:
        await kbs.admin().set_resource("cai/sample/password", FILE_SECRET)
        assert await fetch(kbs, "kbs:///cai/sample/password") == FILE_SECRET
        assert await fetch(kbs, MODEL_KEY_URI) == MODEL_KEY.encode()
        # Only default/aliyun goes to KMS: the same tag elsewhere is the default backend's.
        response = await raw_get(kbs, "/kbs/v0/resource/other/aliyun/model-decryption-key")
        assert without_request_id(response.json())["detail"] == "resource not found"
        ready = await kbs.http.get("/readyz")
        kinds = [m.backend.kind for m in kbs.app.state.kbs.resources.mounts]
    assert kinds == ["aliyun_kms", "file" if default == "LocalFs" else "sql"]
    assert ready.status_code == 200
    if default == "LocalFs":
        assert (kms.tmp_path / "repository/cai/sample/password").read_bytes() == FILE_SECRET
    assert kms.emulator.count(action="GetSecretValue", gateway="instance", status=200) >= 1


async def test_readyz_checks_every_mounted_backend(kms):
    plugin = kms.files_with_mount(cache_ttl=0, max_attempts=1)
    async with kms.kbs(plugin) as kbs:
        ready = await kbs.http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["resources"] == "ok"
        probes = kms.emulator.count(action="GetSecretValue", gateway="instance")
        assert probes >= 1
        kms.emulator.go_down("refused")
        try:
            down = await kbs.http.get("/readyz")
        finally:
            kms.emulator.come_back()
        again = await kbs.http.get("/readyz")
    assert down.status_code == 503
    assert down.json()["checks"]["resources"] == (
        "default/aliyun (aliyun_kms): aliyun kms unavailable: network error"
    )
    assert again.status_code == 200


# --------------------------------------------------------------------------- start-up


async def test_wrong_client_key_password_is_a_clear_startup_error(kms, secrets_never_logged):
    wrong = make_client_key("not-the-password-9d2e")
    keys = {
        **trustee_keys(kms.emulator, kms.pki, kms.client_key),
        "client_key": wrong.client_key_json,
    }
    settings = settings_for(
        kms.tmp_path,
        kms.admin_key,
        overrides={
            "plugins": [
                {
                    "name": "resource",
                    "type": "LocalFs",
                    "mounts": [
                        {"path": "default/aliyun", "storage_backend_type": "Aliyun", **keys}
                    ],
                }
            ]
        },
    )
    with pytest.raises(ConfigError) as caught:
        async with running_kbs(settings, admin_key=kms.admin_key):
            pass
    message = str(caught.value)
    assert message == (
        f"resource backend default/aliyun: aliyun kms client key {wrong.key_id} could not be "
        "decrypted: wrong client key password or corrupt PKCS#12"
    )
    secrets_never_logged.texts.append(message)
    assert "not-the-password-9d2e" not in message
    assert kms.emulator.requests == []


async def test_a_kms_mount_elsewhere_writes_and_reads_under_its_own_path(kms):
    # Tag naming: the mount's path is where writes are accepted (not default/aliyun).
    entry = kms_entry(kms.emulator, kms.pki, kms.client_key)
    plugin = {
        "storage_backend_type": "LocalFs",
        "dir_path": str(kms.tmp_path / "r"),
        "mounts": [{"path": "secrets/kms", **entry}],
    }
    async with kms.kbs(plugin) as kbs:
        await kbs.admin().set_resource("secrets/kms/model-decryption-key", WRITTEN_V1)
        assert await fetch(kbs, "kbs:///secrets/kms/model-decryption-key") == WRITTEN_V1
        backend = kbs.app.state.kbs.resources.mounts[0].backend
        assert backend.settings.tag_repository == "secrets"
        assert backend.settings.tag_type == "kms"
    assert kms.emulator.current("model-decryption-key")[0] == WRITTEN_V1.decode()


# --------------------------------------------------------------------------- RRSA


def trust_test_ca_in_certifi(monkeypatch: pytest.MonkeyPatch, kms: Kms) -> None:
    """The credential provider calls STS over https and trusts only certifi's bundle."""
    import certifi  # noqa: PLC0415

    bundle = kms.tmp_path / "ca-bundle.pem"
    bundle.write_text(Path(certifi.where()).read_text() + kms.pki.ca_pem)
    monkeypatch.setattr(certifi, "where", lambda: str(bundle))


async def test_shared_gateway_with_ack_rrsa_reads_and_writes(
    kms, monkeypatch, secrets_never_logged
):
    # The pod's projected service-account token is exchanged at STS (AssumeRoleWithOIDC)
    # for temporary credentials, which sign the KMS calls (the emulator checks both).
    role_arn = "acs:ram::1234567890123456:role/kbs-kms"
    provider_arn = "acs:ram::1234567890123456:oidc-provider/ack-rrsa-c0ffee"
    oidc_token = "eyJhbGciOiJSUzI1NiJ9.emu-projected-token-4e1d.sig"
    token_file = kms.tmp_path / "rrsa-token"
    token_file.write_text(oidc_token)
    kms.emulator.add_oidc_role(role_arn, provider_arn, oidc_token)
    trust_test_ca_in_certifi(monkeypatch, kms)
    plugin = {
        "storage_backend_type": "kvstorage",
        "mounts": [
            {
                "path": "default/aliyun",
                "storage_backend_type": "Aliyun",
                "credential_type": "oidc_role_arn",
                "role_arn": role_arn,
                "oidc_provider_arn": provider_arn,
                "oidc_token_file_path": str(token_file),
                "sts_endpoint": kms.emulator.endpoint,
                "region_id": "cn-hangzhou",
                "shared_endpoint": kms.emulator.endpoint,
                "shared_ca_path": str(kms.pki.ca_path),
                "kms_instance_id": kms.pki.kms_instance_id,
                "connect_timeout": 2.0,
                "read_timeout": 2.0,
            }
        ],
    }
    async with kms.kbs(plugin) as kbs:
        assert await fetch(kbs, MODEL_KEY_URI) == MODEL_KEY.encode()
        await kbs.admin().set_resource("default/aliyun/written", WRITTEN_V1)
        assert await fetch(kbs, "kbs:///default/aliyun/written") == WRITTEN_V1
        listed = await kbs.app.state.kbs.resources.list()
    assert ResourceDesc("default", "aliyun", "written") in listed
    assert kms.emulator.instance_of("written") == kms.pki.kms_instance_id
    # One token exchange; every KMS call signed with the temporary key (and its token).
    assert kms.emulator.count(action="AssumeRoleWithOIDC", status=200) == 1
    kms_calls = [r for r in kms.emulator.requests if r.action != "AssumeRoleWithOIDC"]
    # (the one 404: PutSecretValue on a new name, before CreateSecret)
    assert {r.code for r in kms_calls} == {None, "Forbidden.ResourceNotFound"}
    assert {r.signature for r in kms_calls} == {"ACS3-HMAC-SHA256"}
    (issued,) = kms.emulator.issued_sts
    # The OIDC token and the temporary credentials stay out of the logs too.
    secrets_never_logged.forbidden.extend([oidc_token, issued[1], issued[2]])


# --------------------------------------------------------------------------- metrics


async def test_metrics_count_every_kms_call_by_action_and_error_kind(kms, secrets_never_logged):
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    plugin = kms.files_with_mount()
    async with kms.kbs(plugin) as kbs:
        kms.emulator.throttle(times=1, gateway="instance")  # retried, then served
        assert await fetch(kbs, MODEL_KEY_URI) == MODEL_KEY.encode()
        missing = await raw_get(kbs, "/kbs/v0/resource/default/aliyun/no-such-secret")
        assert missing.status_code == 401
        await kbs.admin().set_resource("default/aliyun/written", WRITTEN_V1)
        text = (await kbs.http.get("/metrics")).text
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def value(name: str, **labels: str) -> float:
        return sum(s.value for s in samples if s.name == name and s.labels == labels)

    # One count per request the emulator saw, whichever gateway served it.
    actions = {r.action for r in kms.emulator.requests}
    assert {"GetSecretValue", "CreateSecret"} <= actions
    for action in actions:
        assert value("kbs_kms_requests_total", action=action) == kms.emulator.count(action=action)
    # Each attempt counts: the throttled one and its retry.
    assert kms.emulator.count(action="GetSecretValue", status=429) == 1
    assert value("kbs_kms_errors_total", action="GetSecretValue", kind="throttled") == 1
    # The missing secret, and the readiness probe's (absent) probe secret.
    not_found = kms.emulator.count(action="GetSecretValue", status=404)
    assert not_found >= 1
    assert value("kbs_kms_errors_total", action="GetSecretValue", kind="not_found") == not_found
    assert value("kbs_resource_reads_total", resource_path="default/aliyun/model-decryption-key")
    # Secret names are not labels: only actions and error kinds are.
    assert "no-such-secret" not in text
