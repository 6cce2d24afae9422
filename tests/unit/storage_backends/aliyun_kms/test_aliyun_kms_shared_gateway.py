# SPDX-License-Identifier: Apache-2.0
"""The shared KMS gateway through alibabacloud-kms20160120, against the emulator.

The emulator verifies the SDK's ACS3-HMAC-SHA256 and v2 HMAC-SHA1 signatures with the
AccessKey secrets it knows, so a wrong secret, a missing STS token or a tampered signer
fails here as it would against Alibaba Cloud.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import sys
from pathlib import Path

import pytest
from alibabacloud_tea_openapi.utils import Utils

from kbs.clock import SystemClock
from storage_backends.aliyun_kms import AliyunKmsConfigError, SharedGatewayClient
from storage_backends.base import ResourceDesc
from storage_backends.errors import (
    ResourceNotFoundError,
    ResourceTooLargeError,
    StorageUnavailableError,
    UnsupportedOperationError,
)
from support.kms_fixtures import (
    ACCESS_KEY_SECRET,
    STS_ACCESS_KEY_ID,
    STS_ACCESS_KEY_SECRET,
    STS_TOKEN,
)

MODEL_KEY = ResourceDesc("default", "aliyun", "model-decryption-key")


def desc(tag: str) -> ResourceDesc:
    return ResourceDesc("default", "aliyun", tag)


# ---------------------------------------------------------------- reads and signatures


@pytest.mark.parametrize("algorithm", ["ACS3-HMAC-SHA256", "v2"])
async def test_get_with_access_key(emulator, settings, make_backend, algorithm):
    emulator.create_secret("model-decryption-key", "k3y")
    backend = make_backend(settings.shared(signature_algorithm=algorithm))
    assert await backend.get(MODEL_KEY) == b"k3y"
    [request] = emulator.requests
    assert (request.gateway, request.action, request.status) == ("shared", "GetSecretValue", 200)
    assert request.signature == algorithm


@pytest.mark.parametrize("algorithm", ["ACS3-HMAC-SHA256", "v2"])
async def test_get_with_sts_token(emulator, settings, make_backend, algorithm):
    emulator.create_secret("model-decryption-key", "k3y")
    backend = make_backend(
        settings.shared(
            credential_type="sts",
            access_key_id=STS_ACCESS_KEY_ID,
            access_key_secret=STS_ACCESS_KEY_SECRET,
            security_token=STS_TOKEN,
            signature_algorithm=algorithm,
        )
    )
    assert await backend.get(MODEL_KEY) == b"k3y"


async def test_sts_key_without_its_token_is_rejected(emulator, settings, make_backend):
    emulator.create_secret("model-decryption-key", "k3y")
    backend = make_backend(
        settings.shared(access_key_id=STS_ACCESS_KEY_ID, access_key_secret=STS_ACCESS_KEY_SECRET)
    )
    with pytest.raises(
        StorageUnavailableError, match=r"InvalidSecurityToken\.MismatchWithAccessKey"
    ):
        await backend.get(MODEL_KEY)


@pytest.mark.parametrize("algorithm", ["ACS3-HMAC-SHA256", "v2"])
async def test_wrong_access_key_secret_is_rejected(emulator, settings, make_backend, algorithm):
    emulator.create_secret("model-decryption-key", "k3y")
    backend = make_backend(
        settings.shared(access_key_secret="not-the-secret", signature_algorithm=algorithm)
    )
    with pytest.raises(StorageUnavailableError) as info:
        await backend.get(MODEL_KEY)
    assert str(info.value) == "aliyun kms unavailable: request rejected (SignatureDoesNotMatch)"
    assert "not-the-secret" not in str(info.value)
    assert emulator.count(status=400) == 1  # a signature error is not retried


async def test_tampered_signer_is_rejected(emulator, settings, make_backend, monkeypatch):
    emulator.create_secret("model-decryption-key", "k3y")
    real = Utils.get_authorization

    def off_by_one(request, sign_type, payload, ak, secret):
        return real(request, sign_type, payload + "0", ak, secret)

    monkeypatch.setattr(Utils, "get_authorization", staticmethod(off_by_one))
    backend = make_backend(settings.shared())
    with pytest.raises(StorageUnavailableError, match="SignatureDoesNotMatch"):
        await backend.get(MODEL_KEY)


async def test_unknown_access_key(emulator, settings, make_backend):
    backend = make_backend(settings.shared(access_key_id="LTAIunknown"))
    with pytest.raises(StorageUnavailableError, match=r"InvalidAccessKeyId\.NotFound"):
        await backend.get(MODEL_KEY)


async def test_shared_gateway_tls_with_the_wrong_ca_fails(
    emulator, settings, other_pki, make_backend
):
    emulator.create_secret("model-decryption-key", "k3y")
    backend = make_backend(settings.shared(shared_ca_path=other_pki.ca_path))
    with pytest.raises(StorageUnavailableError, match="aliyun kms unavailable"):
        await backend.get(MODEL_KEY)
    assert emulator.count() == 0


async def test_plain_http_needs_the_insecure_switch(
    plain_emulator, plain_settings, make_backend, caplog
):
    plain_emulator.create_secret("model-decryption-key", "k3y")
    with caplog.at_level(logging.WARNING):
        backend = make_backend(
            plain_settings.shared(shared_ca_path=None, insecure_shared_gateway_http=True)
        )
    assert "insecure_shared_gateway_http" in caplog.text
    assert await backend.get(MODEL_KEY) == b"k3y"


async def test_v2_sts_token_never_reaches_logs(emulator, settings, make_backend, caplog):
    emulator.create_secret("model-decryption-key", "k3y")
    backend = make_backend(
        settings.shared(
            credential_type="sts",
            access_key_id=STS_ACCESS_KEY_ID,
            access_key_secret=STS_ACCESS_KEY_SECRET,
            security_token=STS_TOKEN,
            signature_algorithm="v2",
        )
    )
    with caplog.at_level(logging.DEBUG):
        assert await backend.get(MODEL_KEY) == b"k3y"
        emulator.go_down("refused")
        await backend.get(MODEL_KEY)  # cached: still fine
    assert "SecretName=model-decryption-key" in caplog.text  # urllib3 did log the URL...
    assert STS_TOKEN not in caplog.text  # ...without the token
    assert "SecurityToken=<redacted>" in caplog.text
    assert STS_ACCESS_KEY_SECRET not in caplog.text


@pytest.mark.parametrize(
    "query",
    [
        "SecurityToken=CAIS-secret-token",
        "Signature=c2VjcmV0LXNpZ25hdHVyZQ%3D%3D",
        "OIDCToken=eyJhbGciOi.secret-oidc.sig",  # the RRSA provider's AssumeRoleWithOIDC
    ],
)
def test_third_party_url_logs_are_redacted(caplog, query):
    from storage_backends.aliyun_kms.shared import _install_log_redaction  # noqa: PLC0415

    _install_log_redaction()
    with caplog.at_level(logging.DEBUG, logger="urllib3.connectionpool"):
        logging.getLogger("urllib3.connectionpool").debug(
            '%s://%s:%s "%s %s %s" %s %s',
            "https",
            "sts.aliyuncs.com",
            443,
            "GET",
            f"/?Action=X&{query}&Timestamp=2026",
            "HTTP/1.1",
            200,
            100,
        )
    name, _, value = query.partition("=")
    assert f"{name}=<redacted>&Timestamp=2026" in caplog.text
    assert value not in caplog.text


# ---------------------------------------------------------------- writes


async def test_put_creates_then_adds_versions(emulator, settings, kms_pki, make_backend):
    backend = make_backend(settings.shared(kms_instance_id=kms_pki.kms_instance_id))
    await backend.put(MODEL_KEY, b"first")
    assert emulator.current("model-decryption-key")[:2] == ("first", "text")
    assert emulator.instance_of("model-decryption-key") == kms_pki.kms_instance_id
    await backend.put(MODEL_KEY, b"second")
    assert await backend.get(MODEL_KEY) == b"second"
    versions = emulator.versions("model-decryption-key")
    assert len(versions) == 2
    assert versions[0][1] == {"ACSPrevious"}
    assert versions[1][1] == {"ACSCurrent"}
    assert all(version_id.startswith("kbs-") for version_id, _ in versions)
    assert emulator.count(action="CreateSecret") == 1
    assert emulator.count(action="PutSecretValue") == 2  # the first one found no secret


async def test_binary_values_are_stored_base64_and_read_back(emulator, settings, make_backend):
    backend = make_backend(settings.shared())
    blob = bytes(range(256))
    await backend.put(desc("blob"), blob)
    data, data_type, _ = emulator.current("blob")
    assert data_type == "binary"
    assert data == base64.b64encode(blob).decode()
    assert await backend.get(desc("blob")) == blob


async def test_put_after_a_lost_create_race(emulator, settings, make_backend):
    emulator.create_secret("model-decryption-key", "old")
    # PutSecretValue says "no such secret" once (as if it were created meanwhile by someone else).
    emulator.inject_error(404, "Forbidden.ResourceNotFound", action="PutSecretValue")
    backend = make_backend(settings.shared())
    await backend.put(MODEL_KEY, b"new")
    assert emulator.current("model-decryption-key")[0] == "new"
    assert [r.code for r in emulator.requests] == [
        "Forbidden.ResourceNotFound",
        "Rejected.ResourceExist",
        None,
    ]


async def test_put_restores_a_secret_scheduled_for_deletion(emulator, settings, make_backend):
    emulator.create_secret("model-decryption-key", "old")
    backend = make_backend(settings.shared())
    await backend.delete(MODEL_KEY)
    assert emulator.planned_delete_time("model-decryption-key") is not None
    await backend.put(MODEL_KEY, b"again")
    assert emulator.planned_delete_time("model-decryption-key") is None
    assert await backend.get(MODEL_KEY) == b"again"
    assert emulator.count(action="RestoreSecret") == 1


async def test_put_too_large_for_kms(emulator, settings, make_backend):
    backend = make_backend(settings.shared())
    with pytest.raises(ResourceTooLargeError):
        await backend.put(MODEL_KEY, b"x" * 30_721)
    # Binary data grows by a third in base64.
    with pytest.raises(ResourceTooLargeError, match="base64"):
        await backend.put(MODEL_KEY, b"\xff" * 30_000)
    assert emulator.count() == 0


async def test_tag_mode_only_writes_the_mount(emulator, settings, make_backend):
    backend = make_backend(settings.shared())
    with pytest.raises(
        UnsupportedOperationError, match="tag naming mode can only write default/aliyun"
    ):
        await backend.put(ResourceDesc("other", "aliyun", "model-decryption-key"), b"x")
    with pytest.raises(UnsupportedOperationError, match="only delete"):
        await backend.delete(ResourceDesc("default", "other", "model-decryption-key"))
    assert emulator.count() == 0


async def test_tag_mode_reads_ignore_repository_and_type(emulator, settings, make_backend):
    emulator.create_secret("model-decryption-key", "k3y")
    backend = make_backend(settings.shared())
    assert await backend.get(ResourceDesc("any", "thing", "model-decryption-key")) == b"k3y"


async def test_template_mode_keeps_resources_apart(emulator, settings, make_backend):
    backend = make_backend(
        settings.shared(naming="template", name_template="kbs/{repository}/{type}/{tag}")
    )
    await backend.put(ResourceDesc("a-b", "c", "d"), b"one")
    await backend.put(ResourceDesc("a", "b-c", "d"), b"two")
    assert sorted(emulator.secret_names()) == ["kbs/a-b/c/d", "kbs/a/b-c/d"]
    assert await backend.get(ResourceDesc("a-b", "c", "d")) == b"one"
    assert await backend.get(ResourceDesc("a", "b-c", "d")) == b"two"
    emulator.create_secret("unrelated", "x")
    assert await backend.list() == [ResourceDesc("a", "b-c", "d"), ResourceDesc("a-b", "c", "d")]


# ---------------------------------------------------------------- delete


async def test_delete_with_recovery_window(emulator, settings, make_backend):
    emulator.create_secret("model-decryption-key", "k3y")
    backend = make_backend(settings.shared(recovery_window_days=7))
    assert await backend.get(MODEL_KEY) == b"k3y"
    await backend.delete(MODEL_KEY)
    assert emulator.planned_delete_time("model-decryption-key") is not None
    assert "model-decryption-key" in emulator.secret_names()  # recoverable
    with pytest.raises(ResourceNotFoundError):  # and gone for the KBS, cache included
        await backend.get(MODEL_KEY)
    with pytest.raises(ResourceNotFoundError):  # deleting again: already deleted
        await backend.delete(MODEL_KEY)
    assert await backend.list() == []


async def test_recovery_window_is_sent(emulator, settings, make_backend):
    emulator.create_secret("model-decryption-key", "k3y")
    backend = make_backend(settings.shared(recovery_window_days=7))
    await backend.delete(MODEL_KEY)
    planned = dt.datetime.strptime(
        emulator.planned_delete_time("model-decryption-key"), "%Y-%m-%dT%H:%M:%SZ"
    ).replace(tzinfo=dt.UTC)
    assert abs(planned - (SystemClock().now() + dt.timedelta(days=7))) < dt.timedelta(minutes=5)


async def test_forced_delete(emulator, settings, make_backend):
    emulator.create_secret("model-decryption-key", "k3y")
    emulator.create_secret("other", "x")
    backend = make_backend(settings.shared())
    await backend.delete(MODEL_KEY, force=True)
    assert "model-decryption-key" not in emulator.secret_names()
    forced = make_backend(settings.shared(force_delete=True))
    await forced.delete(desc("other"))
    assert emulator.secret_names() == []


async def test_forced_delete_of_a_secret_pending_deletion(emulator, settings, make_backend):
    emulator.create_secret("model-decryption-key", "k3y")
    backend = make_backend(settings.shared())
    await backend.delete(MODEL_KEY)
    await backend.delete(MODEL_KEY, force=True)
    assert emulator.secret_names() == []


async def test_delete_missing(emulator, settings, make_backend):
    backend = make_backend(settings.shared())
    with pytest.raises(ResourceNotFoundError):
        await backend.delete(MODEL_KEY)


# ---------------------------------------------------------------- list


async def test_list_pages_and_skips_secrets_of_other_instances(
    emulator, settings, kms_pki, make_backend
):
    for index in range(25):
        emulator.create_secret(f"key-{index:02d}", "v", instance_id=kms_pki.kms_instance_id)
    emulator.create_secret("elsewhere", "v", instance_id="kst-other")
    emulator.create_secret("not/a/tag", "v", instance_id=kms_pki.kms_instance_id)
    backend = make_backend(
        settings.shared(kms_instance_id=kms_pki.kms_instance_id, list_page_size=10)
    )
    listed = await backend.list()
    assert listed == [desc(f"key-{index:02d}") for index in range(25)]
    assert emulator.count(action="ListSecrets") == 3


async def test_list_without_instance_filter_and_a_page_cap(
    emulator, settings, make_backend, caplog
):
    for index in range(5):
        emulator.create_secret(f"key-{index}", "v")
    backend = make_backend(settings.shared(list_page_size=2, max_list_pages=2))
    with caplog.at_level(logging.WARNING):
        listed = await backend.list()
    assert listed == [desc("key-0"), desc("key-1"), desc("key-2"), desc("key-3")]
    assert "result is partial" in caplog.text


# ---------------------------------------------------------------- construction


@pytest.mark.parametrize(
    "overrides",
    [
        {"credential_type": "ram_role_arn", "role_arn": "acs:ram::1:role/kbs"},
        {"credential_type": "ecs_ram_role", "ecs_role_name": "kbs-role"},
        {
            "credential_type": "oidc_role_arn",
            "role_arn": "acs:ram::1:role/kbs",
            "oidc_provider_arn": "acs:ram::1:oidc-provider/ack-rrsa-c1",
            "oidc_token_file_path": "/var/run/secrets/ack.alibabacloud.com/rrsa-tokens/token",
        },
        {"credential_type": "default"},
    ],
)
async def test_role_credentials_are_built_lazily(emulator, settings, overrides):
    # Building a client must not fetch anything (no STS, no metadata service); pytest-socket
    # would refuse non-loopback connections anyway.
    values = dict(overrides)
    if "oidc_token_file_path" in values:
        values["oidc_token_file_path"] = Path(values["oidc_token_file_path"])
    client = SharedGatewayClient.from_settings(settings.shared(**values))
    assert "shared gateway" in repr(client)
    assert ACCESS_KEY_SECRET not in repr(client)
    assert emulator.count() == 0


@pytest.mark.parametrize(
    ("network", "endpoint"),
    [("public", "kms.cn-shanghai.aliyuncs.com"), ("vpc", "kms-vpc.cn-shanghai.aliyuncs.com")],
)
def test_endpoint_from_region(settings, network, endpoint):
    client = SharedGatewayClient.from_settings(
        settings.shared(shared_endpoint=None, region_id="cn-shanghai", shared_network=network)
    )
    assert client._client._endpoint == endpoint
    assert client._client._protocol == "https"


async def test_oidc_without_provider_is_a_config_error(settings):
    with pytest.raises(AliyunKmsConfigError, match="credential_type=oidc_role_arn is incomplete"):
        SharedGatewayClient.from_settings(
            settings.shared(credential_type="oidc_role_arn", role_arn="acs:ram::1:role/kbs")
        )


def test_missing_sdk_is_a_clear_startup_error(settings, monkeypatch):
    monkeypatch.setitem(sys.modules, "alibabacloud_kms20160120.client", None)
    with pytest.raises(AliyunKmsConfigError, match="needs the packages alibabacloud-kms20160120"):
        SharedGatewayClient.from_settings(settings.shared())
