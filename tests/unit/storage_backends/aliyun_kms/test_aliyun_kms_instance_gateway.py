# SPDX-License-Identifier: Apache-2.0
"""The dedicated KMS instance gateway client against the emulator (TLS, RSA signatures)."""

from __future__ import annotations

import datetime as dt

import pytest

from kbs.clock import FrozenClock, SystemClock
from storage_backends.aliyun_kms import (
    AliyunKmsConfigError,
    ClientKey,
    ErrorKind,
    InstanceGatewayClient,
    KmsRequestError,
)
from storage_backends.base import ResourceDesc
from storage_backends.errors import (
    ResourceNotFoundError,
    StorageUnavailableError,
    UnsupportedOperationError,
)
from support.kms_emulator import KmsEmulator
from support.kms_fixtures import (
    CLIENT_KEY_PASSWORD,
    ClientKeyMaterial,
    make_client_key,
    write_client_key_files,
)

MODEL_KEY = ResourceDesc("default", "aliyun", "model-decryption-key")


def make_client(
    emulator: KmsEmulator,
    client_key: ClientKeyMaterial,
    ca_pem: str | None,
    *,
    endpoint: str | None = None,
    now=None,
    **kwargs,
) -> InstanceGatewayClient:
    return InstanceGatewayClient(
        endpoint=endpoint or emulator.endpoint,
        client_key=ClientKey.from_json(client_key.client_key_json, CLIENT_KEY_PASSWORD),
        ca_pem=ca_pem,
        now=now or SystemClock().now,
        connect_timeout=2,
        read_timeout=2,
        **kwargs,
    )


async def test_get_secret_value_over_tls(emulator, client_key, kms_pki):
    emulator.create_secret("model-decryption-key", "k3y-material")
    client = make_client(emulator, client_key, kms_pki.ca_pem)
    try:
        secret = await client.get_secret_value("model-decryption-key")
    finally:
        await client.aclose()
    assert secret.data == "k3y-material"
    assert secret.data_type == "text"
    assert secret.version_id == "v1"
    assert "k3y-material" not in repr(secret)
    [request] = emulator.requests
    assert (request.gateway, request.action, request.status) == ("instance", "GetSecretValue", 200)
    assert request.signature == "RSA_PKCS1_SHA_256"


async def test_host_name_verification_with_dns_san(emulator, client_key, kms_pki):
    emulator.create_secret("s", "v")
    client = make_client(
        emulator, client_key, kms_pki.ca_pem, endpoint=f"localhost:{emulator.port}"
    )
    try:
        assert (await client.get_secret_value("s")).data == "v"
    finally:
        await client.aclose()


async def test_not_found_is_classified(emulator, client_key, kms_pki):
    client = make_client(emulator, client_key, kms_pki.ca_pem)
    try:
        with pytest.raises(KmsRequestError) as info:
            await client.get_secret_value("missing")
    finally:
        await client.aclose()
    assert info.value.kind is ErrorKind.NOT_FOUND
    assert info.value.code == "Forbidden.ResourceNotFound"
    assert info.value.http_status == 404
    assert info.value.request_id
    assert info.value.request_id.startswith("emu-")


async def test_tls_with_the_wrong_ca_fails(emulator, client_key, other_pki):
    emulator.create_secret("s", "v")
    client = make_client(emulator, client_key, other_pki.ca_pem)
    try:
        with pytest.raises(KmsRequestError, match="tls verification failed") as info:
            await client.get_secret_value("s")
    finally:
        await client.aclose()
    assert info.value.kind is ErrorKind.UNAVAILABLE
    assert emulator.count() == 0  # the handshake failed before any request


async def test_system_trust_store_is_not_used(emulator, client_key, other_pki):
    # Only the configured CA is trusted: the emulator's CA is not in it, so even a
    # "valid" certificate by some other authority fails.
    client = make_client(emulator, client_key, other_pki.ca_pem)
    try:
        with pytest.raises(KmsRequestError, match="tls"):
            await client.get_secret_value("s")
    finally:
        await client.aclose()


async def test_insecure_skip_tls_verify(emulator, client_key):
    emulator.create_secret("s", "v")
    client = make_client(emulator, client_key, None, insecure_skip_tls_verify=True)
    try:
        assert (await client.get_secret_value("s")).data == "v"
    finally:
        await client.aclose()


def test_missing_or_bad_ca_is_a_config_error(emulator, client_key):
    with pytest.raises(AliyunKmsConfigError, match="needs the instance CA"):
        make_client(emulator, client_key, None)
    with pytest.raises(AliyunKmsConfigError, match="not a PEM certificate"):
        make_client(
            emulator, client_key, "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"
        )


async def test_broken_signature_is_rejected(emulator, client_key, kms_pki, monkeypatch):
    emulator.create_secret("s", "v")
    real_sign = ClientKey.sign
    # A signing bug: sign the string with one byte changed.
    monkeypatch.setattr(ClientKey, "sign", lambda self, message: real_sign(self, message + b"x"))
    client = make_client(emulator, client_key, kms_pki.ca_pem)
    try:
        with pytest.raises(KmsRequestError) as info:
            await client.get_secret_value("s")
    finally:
        await client.aclose()
    assert (info.value.code, info.value.http_status) == ("SignatureNotMatch", 401)
    assert info.value.kind is ErrorKind.REJECTED


async def test_signature_by_another_key_is_rejected(emulator, client_key, kms_pki):
    impostor = make_client_key("other-password", key_id=client_key.key_id)
    client = InstanceGatewayClient(
        endpoint=emulator.endpoint,
        client_key=ClientKey.from_json(impostor.client_key_json, "other-password"),
        ca_pem=kms_pki.ca_pem,
        now=SystemClock().now,
        connect_timeout=2,
        read_timeout=2,
    )
    try:
        with pytest.raises(KmsRequestError, match="SignatureNotMatch"):
            await client.get_secret_value("s")
    finally:
        await client.aclose()


async def test_unknown_client_key_is_unauthorized(emulator, kms_pki):
    stranger = make_client_key("pw", key_id="KAAP.ffffffff-0000-0000-0000-000000000000")
    client = InstanceGatewayClient(
        endpoint=emulator.endpoint,
        client_key=ClientKey.from_json(stranger.client_key_json, "pw"),
        ca_pem=kms_pki.ca_pem,
        now=SystemClock().now,
        connect_timeout=2,
        read_timeout=2,
    )
    try:
        with pytest.raises(KmsRequestError) as info:
            await client.get_secret_value("s")
    finally:
        await client.aclose()
    assert (info.value.code, info.value.http_status) == ("Unauthorized", 401)


async def test_clock_skew_over_15_minutes_is_rejected(emulator, client_key, kms_pki):
    skewed = FrozenClock(SystemClock().now() - dt.timedelta(minutes=16))
    client = make_client(emulator, client_key, kms_pki.ca_pem, now=skewed.now)
    try:
        with pytest.raises(KmsRequestError, match="RequestTimeTooSkewed"):
            await client.get_secret_value("s")
    finally:
        await client.aclose()


async def test_content_sha256_is_checked(emulator, client_key, kms_pki, monkeypatch):
    client = make_client(emulator, client_key, kms_pki.ca_pem)
    original = client.signed_headers

    def tampered(api_name: str, body: bytes) -> dict[str, str]:
        headers = original(api_name, body)
        headers["content-sha256"] = headers["content-sha256"].lower()  # must be upper-case hex
        return headers

    monkeypatch.setattr(client, "signed_headers", tampered)
    try:
        with pytest.raises(KmsRequestError, match="SignatureNotMatch"):
            await client.get_secret_value("s")
    finally:
        await client.aclose()


async def test_connection_refused_is_unavailable(emulator, client_key, kms_pki):
    client = make_client(emulator, client_key, kms_pki.ca_pem)
    emulator.go_down("refused")
    try:
        with pytest.raises(KmsRequestError, match="network error") as info:
            await client.get_secret_value("s")
    finally:
        await client.aclose()
    assert info.value.kind.retryable


async def test_read_timeout_is_unavailable(emulator, client_key, kms_pki):
    emulator.set_latency(0.5)
    client = InstanceGatewayClient(
        endpoint=emulator.endpoint,
        client_key=ClientKey.from_json(client_key.client_key_json, CLIENT_KEY_PASSWORD),
        ca_pem=kms_pki.ca_pem,
        now=SystemClock().now,
        connect_timeout=2,
        read_timeout=0.1,
    )
    try:
        with pytest.raises(KmsRequestError, match="timed out") as info:
            await client.get_secret_value("s")
    finally:
        await client.aclose()
    assert info.value.kind is ErrorKind.UNAVAILABLE


async def test_backend_reads_through_the_instance_gateway(emulator, settings, make_backend):
    emulator.create_secret("model-decryption-key", "k3y")
    backend = make_backend(settings.instance())
    assert await backend.get(MODEL_KEY) == b"k3y"
    assert emulator.count(gateway="instance") == 1
    with pytest.raises(ResourceNotFoundError):
        await backend.get(ResourceDesc("default", "aliyun", "absent"))


async def test_backend_construction_with_wrong_password_names_the_problem(settings, make_backend):
    with pytest.raises(AliyunKmsConfigError, match="wrong client key password") as info:
        make_backend(settings.instance(password="definitely-wrong-pw"))
    assert "definitely-wrong-pw" not in str(info.value)


async def test_backend_with_key_files(
    tmp_path, emulator, settings, client_key, kms_pki, *, make_backend
):
    key_path, password_path = write_client_key_files(tmp_path, client_key, password_as_json=True)
    emulator.create_secret("model-decryption-key", "from-files")
    backend = make_backend(
        settings.instance(
            client_key=None,
            client_key_path=key_path,
            password=None,
            password_path=password_path,
            cert_pem=None,
            cert_pem_path=kms_pki.ca_path,
        )
    )
    assert await backend.get(MODEL_KEY) == b"from-files"


async def test_instance_only_backend_is_read_only(emulator, settings, make_backend):
    backend = make_backend(settings.instance())
    with pytest.raises(UnsupportedOperationError, match="only serves GetSecretValue"):
        await backend.put(MODEL_KEY, b"x")
    with pytest.raises(UnsupportedOperationError, match="cannot delete"):
        await backend.delete(MODEL_KEY)
    with pytest.raises(UnsupportedOperationError, match="cannot list"):
        await backend.list()
    assert emulator.count() == 0


async def test_backend_maps_signature_rejection_to_unavailable(
    emulator, settings, make_backend, monkeypatch
):
    emulator.create_secret("model-decryption-key", "k3y")
    monkeypatch.setattr(ClientKey, "sign", lambda _self, _message: b"\x00" * 256)
    backend = make_backend(settings.instance())
    with pytest.raises(
        StorageUnavailableError, match="aliyun kms unavailable: request rejected"
    ) as info:
        await backend.get(MODEL_KEY)
    assert "SignatureNotMatch" in str(info.value)
    assert emulator.count(status=401) == 1  # not retried: a signature error will not heal
