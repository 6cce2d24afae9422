# SPDX-License-Identifier: Apache-2.0
"""AAP client keys: loading, password handling, and the instance API request signature."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from kbs.clock import FrozenClock
from storage_backends.aliyun_kms import AliyunKmsConfigError, ClientKey, InstanceGatewayClient
from storage_backends.aliyun_kms.instance import string_to_sign
from support.kms_fixtures import (
    CLIENT_KEY_PASSWORD as PASSWORD,
)
from support.kms_fixtures import ClientKeyMaterial, TlsPki, write_client_key_files


def test_string_to_sign_matches_recorded_sdk_layout():
    # Research notes 2.4: recorded from alibabacloud-dkms-gcs 1.0.2 / the CoCo Rust client.
    text = string_to_sign(
        method="POST",
        content_sha256="259CE1DE0CD714FFA66AC94926D2A042D2BD3E9D900FF08E51AA96E3BF7839BE",
        content_type="application/x-protobuf",
        date="Sun, 22 Nov 2026 02:44:26 GMT",
        kms_headers={
            "x-kms-signaturemethod": "RSA_PKCS1_SHA_256",
            "x-kms-apiversion": "dkms-gcs-0.2",
            "x-kms-acccesskeyid": "KAAP.0b2a1c3d-1111-2222-3333-444455556666",
            "x-kms-apiname": "GetSecretValue",
        },
    )
    assert text == (
        "POST\n"
        "259CE1DE0CD714FFA66AC94926D2A042D2BD3E9D900FF08E51AA96E3BF7839BE\n"
        "application/x-protobuf\n"
        "Sun, 22 Nov 2026 02:44:26 GMT\n"
        "x-kms-acccesskeyid:KAAP.0b2a1c3d-1111-2222-3333-444455556666\n"
        "x-kms-apiname:GetSecretValue\n"
        "x-kms-apiversion:dkms-gcs-0.2\n"
        "x-kms-signaturemethod:RSA_PKCS1_SHA_256\n"
        "/"
    )


def test_signed_headers_are_the_recorded_set_and_verify(
    client_key: ClientKeyMaterial, kms_pki: TlsPki
):
    clock = FrozenClock(dt.datetime(2026, 11, 22, 2, 44, 26, tzinfo=dt.UTC))
    key = ClientKey.from_json(client_key.client_key_json, PASSWORD)
    client = InstanceGatewayClient(
        endpoint="127.0.0.1:1",
        client_key=key,
        ca_pem=kms_pki.ca_pem,
        now=clock.now,
        connect_timeout=1,
        read_timeout=1,
    )
    body = bytes.fromhex("0a146d6f64656c2d64656372797074696f6e2d6b6579")
    headers = client.signed_headers("GetSecretValue", body)
    assert headers["date"] == "Sun, 22 Nov 2026 02:44:26 GMT"
    assert headers["content-sha256"] == (
        "259CE1DE0CD714FFA66AC94926D2A042D2BD3E9D900FF08E51AA96E3BF7839BE"
    )
    assert headers["x-kms-acccesskeyid"] == client_key.key_id  # sic: three c's
    assert headers["x-kms-apiversion"] == "dkms-gcs-0.2"
    assert headers["x-kms-signaturemethod"] == "RSA_PKCS1_SHA_256"
    assert headers["content-type"] == headers["accept"] == "application/x-protobuf"
    assert headers["authorization"].startswith("Bearer ")
    signature = base64.b64decode(headers["authorization"].removeprefix("Bearer "))
    to_sign = string_to_sign(
        method="POST",
        content_sha256=headers["content-sha256"],
        content_type="application/x-protobuf",
        date=headers["date"],
        kms_headers={k: v for k, v in headers.items() if k.startswith("x-kms-")},
    )
    client_key.public_key.verify(signature, to_sign.encode(), padding.PKCS1v15(), hashes.SHA256())


def test_load_legacy_pkcs12_client_key(client_key: ClientKeyMaterial):
    key = ClientKey.from_json(client_key.client_key_json, PASSWORD)
    assert key.key_id == client_key.key_id
    assert key.private_key.public_key().public_numbers() == client_key.public_key.public_numbers()
    assert "private_key" not in repr(key)


@pytest.mark.parametrize("password", [PASSWORD + "\n", PASSWORD + "\r\n", PASSWORD + "  \n"])
def test_trailing_newline_of_password_is_ignored(client_key: ClientKeyMaterial, password: str):
    assert ClientKey.from_json(client_key.client_key_json, password).key_id == client_key.key_id


def test_guest_components_json_password_form(client_key: ClientKeyMaterial):
    wrapped = json.dumps({"ClientKeyPassword": PASSWORD}) + "\n"
    assert ClientKey.from_json(client_key.client_key_json, wrapped).key_id == client_key.key_id


def test_wrong_password_is_a_clear_error_without_the_password(client_key: ClientKeyMaterial):
    wrong = "not-the-password-9f8e7d"
    with pytest.raises(AliyunKmsConfigError, match="wrong client key password") as info:
        ClientKey.from_json(client_key.client_key_json, wrong)
    message = str(info.value)
    assert client_key.key_id in message
    assert wrong not in message
    assert PASSWORD not in message
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


@pytest.mark.parametrize(
    ("document", "match"),
    [
        ("not json", "not valid JSON"),
        ("[]", "not a JSON object"),
        ('{"PrivateKeyData": "MIIJ"}', "has no KeyId"),
        ('{"KeyId": "KAAP.x"}', "has no PrivateKeyData"),
        ('{"KeyId": "KAAP.x", "PrivateKeyData": "***"}', "not base64"),
        ('{"KeyId": "KAAP.x", "PrivateKeyData": "MIIJ"}', "could not be decrypted"),
    ],
)
def test_malformed_client_key_documents(document: str, match: str):
    with pytest.raises(AliyunKmsConfigError, match=match):
        ClientKey.from_json(document, PASSWORD)


def test_files_written_like_console_downloads(tmp_path: Path, client_key: ClientKeyMaterial):
    key_path, password_path = write_client_key_files(tmp_path, client_key)
    assert password_path.read_text().endswith("\n")
    key = ClientKey.from_json(key_path.read_text(), password_path.read_text())
    assert key.key_id == client_key.key_id
