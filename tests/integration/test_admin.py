# SPDX-License-Identifier: Apache-2.0
"""Trustee-compatible admin endpoints and their authentication, over HTTP."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from kbs.client.api import AdminClient, KbsClientError
from support.kbs_app import RunningKbs, make_admin_key, running_kbs, settings_for

ERR = "https://github.com/confidential-containers/kbs/errors/"


def _token(key, alg: str, **claims) -> str:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    body = {"role": "admin", "iat": now, "exp": now + 300, **claims}
    return jwt.encode(body, key, algorithm=alg)


async def test_admin_without_token_is_refused(kbs: RunningKbs) -> None:
    response = await kbs.http.post("/kbs/v0/resource/a/b/c", content=b"x")
    assert response.status_code == 401
    assert response.json()["type"] == ERR + "AdminAuthAccess"
    for method, path in (
        ("POST", "/kbs/v0/resource-policy"),
        ("GET", "/kbs/v0/resource-policy"),
        ("POST", "/kbs/v0/attestation-policy"),
        ("POST", "/kbs/v0/reference-value"),
        ("GET", "/kbs/v0/reference-value/svn"),
        ("DELETE", "/kbs/v0/resource/a/b/c"),
    ):
        response = await kbs.http.request(method, path, json={})
        assert response.status_code == 401, (method, path)
        assert response.json()["type"] == ERR + "AdminAuthAccess"


async def test_admin_with_a_token_from_another_key(kbs: RunningKbs) -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    response = await kbs.http.post(
        "/kbs/v0/resource/a/b/c",
        content=b"x",
        headers={"Authorization": f"Bearer {_token(other, 'EdDSA')}"},
    )
    assert response.status_code == 401
    assert "not signed by a trusted identity provider" in response.json()["detail"]


async def test_admin_token_problems(kbs: RunningKbs) -> None:
    key = serialization.load_pem_private_key(kbs.admin_key.private_pem, password=None)
    now = int(dt.datetime.now(dt.UTC).timestamp())
    cases = {
        "expired": jwt.encode({"role": "admin", "exp": now - 3600}, key, algorithm="EdDSA"),
        "no role": jwt.encode({"exp": now + 300}, key, algorithm="EdDSA"),
        "wrong role": jwt.encode({"role": "viewer", "exp": now + 300}, key, algorithm="EdDSA"),
        "no exp": jwt.encode({"role": "admin"}, key, algorithm="EdDSA"),
    }
    details = {}
    for name, token in cases.items():
        response = await kbs.http.post(
            "/kbs/v0/resource/a/b/c", content=b"x", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401, name
        details[name] = response.json()["detail"]
    assert "expired" in details["expired"]
    assert "no role" in details["no role"]
    assert "role viewer not allowed" in details["wrong role"]
    assert "exp" in details["no exp"]


async def test_set_and_delete_resource(affirming_kbs: RunningKbs, tmp_path: Path) -> None:
    admin = affirming_kbs.admin()
    await admin.set_resource("cai/sample/password", b"v1")
    response = await affirming_kbs.http.post(
        "/kbs/v0/resource/cai/sample/password",
        content=b"v2",
        headers={
            "Authorization": f"Bearer {admin._bearer()}",
            "Content-Type": "application/octet-stream",
        },
    )
    assert response.status_code == 200
    assert response.content == b""
    assert (tmp_path / "repository/cai/sample/password").read_bytes() == b"v2"
    async with affirming_kbs.guest() as guest:
        assert await guest.get_resource("cai/sample/password") == b"v2"
    await admin.delete_resource("cai/sample/password")
    assert not (tmp_path / "repository/cai/sample/password").exists()
    with pytest.raises(KbsClientError, match="PluginInternalError"):
        await admin.delete_resource("cai/sample/password")


async def test_resource_policy_endpoints(kbs: RunningKbs) -> None:
    admin = kbs.admin()
    assert await admin.get_resource_policy() == ["resource-policy"]
    # Padded base64 is tolerated; the reference's clients send it unpadded.
    text = "package policy\ndefault allow = false\n"
    body = {"policy": base64.urlsafe_b64encode(text.encode()).decode()}
    response = await kbs.http.post(
        "/kbs/v0/resource-policy", json=body, headers={"Authorization": f"Bearer {admin._bearer()}"}
    )
    assert response.status_code == 200
    bad = await kbs.http.post(
        "/kbs/v0/resource-policy",
        json={"policy": base64.urlsafe_b64encode(b"package policy\nallow if {").decode()},
        headers={"Authorization": f"Bearer {admin._bearer()}"},
    )
    assert bad.status_code == 401
    assert bad.json()["type"] == ERR + "PolicyEngineError"
    not_b64 = await kbs.http.post(
        "/kbs/v0/resource-policy",
        json={"policy": "%%%"},
        headers={"Authorization": f"Bearer {admin._bearer()}"},
    )
    assert not_b64.json()["type"] == ERR + "ParsePolicyError"


async def test_attestation_policy_upload_changes_appraisal(kbs: RunningKbs) -> None:
    admin = kbs.admin()
    await admin.set_attestation_policy(
        'package policy\nimport rego.v1\ntrust_claims := {"hardware": 2, "executables": 3, "configuration": 2}\n',
        policy_id="default_cpu",
    )
    async with kbs.guest() as guest:
        token = await guest.attest()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["submods"]["cpu0"]["ear.status"] == "affirming"
    with pytest.raises(KbsClientError, match="PolicyEngineError"):
        await admin.set_attestation_policy(
            "package policy\ntrust_claims := {", policy_id="default_cpu"
        )
    with pytest.raises(KbsClientError, match="ParsePolicyError"):
        await admin.set_attestation_policy("package policy", policy_id="../etc")


async def test_reference_values(kbs: RunningKbs) -> None:
    admin = kbs.admin()
    await admin.set_reference_values({"mr_td": ["aa", "bb"], "svn": ["1"]})
    assert await admin.get_reference_value("mr_td") == ["aa", "bb"]
    with pytest.raises(KbsClientError, match="RvpsError"):
        await admin.get_reference_value("nope")
    headers = {"Authorization": f"Bearer {admin._bearer()}"}
    bad = await kbs.http.post(
        "/kbs/v0/reference-value",
        json={"version": "9.9.9", "type": "sample", "payload": ""},
        headers=headers,
    )
    assert bad.status_code == 401
    assert bad.json()["type"] == ERR + "RvpsError"
    good = await kbs.http.post(
        "/kbs/v0/reference-value",
        json={
            "version": "0.1.0",
            "type": "sample",
            "payload": base64.b64encode(json.dumps({"xfam": ["e7"]}).encode()).decode(),
        },
        headers=headers,
    )
    assert good.status_code == 200
    assert good.headers["content-type"] == "application/json"


async def test_admin_denied_by_default_without_admin_section(tmp_path: Path) -> None:
    async with running_kbs(settings_for(tmp_path, None)) as kbs:
        key = ed25519.Ed25519PrivateKey.generate()
        response = await kbs.http.post(
            "/kbs/v0/resource/a/b/c",
            content=b"x",
            headers={"Authorization": f"Bearer {_token(key, 'EdDSA')}"},
        )
    assert response.status_code == 401
    assert response.json()["type"] == ERR + "AdminAuthAccess"


@pytest.mark.parametrize("kind", ["ES256", "RS256"])
async def test_other_admin_key_types_and_acl(tmp_path: Path, kind: str) -> None:
    if kind == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = tmp_path / "idp.pub"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    overrides = {
        "admin": {
            "authorization_mode": "AuthenticatedAuthorization",
            "authentication": {
                "bearer_jwt": {
                    "identity_providers": [
                        {
                            "issuer": "https://idp",
                            "audience": "kbs",
                            "public_key_uri": f"file://{pub}",
                        }
                    ]
                }
            },
            "authorization": {
                "regex_acl": {
                    "acls": [
                        {"role": "policy-admin", "allowed_endpoints": "^/kbs/v0/resource-policy$"}
                    ]
                }
            },
        }
    }
    async with running_kbs(settings_for(tmp_path, None, overrides=overrides)) as kbs:

        async def call(path: str, **claims) -> int:
            claims = {"role": "policy-admin", "iss": "https://idp", "aud": ["kbs"], **claims}
            token = _token(key, kind, **claims)
            response = await kbs.http.get(path, headers={"Authorization": f"Bearer {token}"})
            return response.status_code

        assert await call("/kbs/v0/resource-policy") == 200
        assert await call("/kbs/v0/reference-value/x") == 401  # ACL does not cover it
        assert await call("/kbs/v0/resource-policy", iss="https://evil") == 401
        assert await call("/kbs/v0/resource-policy", aud=["other"]) == 401
        # The ACL regex sees the query string too, as in the reference.
        assert await call("/kbs/v0/resource-policy?x=1") == 401


async def test_admin_client_with_token_file_flow(tmp_path: Path) -> None:
    admin_key = make_admin_key(tmp_path)
    async with running_kbs(settings_for(tmp_path, admin_key), admin_key=admin_key) as kbs:
        key = serialization.load_pem_private_key(admin_key.private_pem, password=None)
        client = AdminClient("http://kbs", token=_token(key, "EdDSA"), http=kbs.http)
        assert await client.get_resource_policy() == ["resource-policy"]
