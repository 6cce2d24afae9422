# SPDX-License-Identifier: Apache-2.0
"""Input nested thousands deep (within every size limit) is the client's error, never a 500.

``[[[[...`` exhausts Python's JSON and TOML parsers' stack (RecursionError); before the
fix every JSON endpoint, the unauthenticated /kbs/v0/auth and /attestation included,
answered 500 InternalError. Each place that parses client input is driven here.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from kbs.client.tee_key import TeeKeyPair
from support.api_fuzz import admin_token
from support.kbs_app import make_admin_key, running_kbs, settings_for

ERR = "https://github.com/confidential-containers/kbs/errors/"
DEEP = b"[" * 100_000
DEEP_TEXT = DEEP.decode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
async def kbs(tmp_path: Path):
    key = make_admin_key(tmp_path)
    async with running_kbs(settings_for(tmp_path, key), admin_key=key) as running:
        yield running


@pytest.mark.parametrize(
    ("path", "admin", "variant"),
    [
        ("/kbs/v0/auth", False, "AttestationError"),
        ("/kbs/v0/resource-policy", True, "SerdeError"),
        ("/kbs/v0/attestation-policy", True, "SerdeError"),
        ("/kbs/v0/reference-value", True, "SerdeError"),
        ("/kbs/v0/release-policy", True, "SerdeError"),
        ("/kbs/v0/explain", True, "SerdeError"),
        ("/kbs/v0/resource-rollback/a/b/c", True, "SerdeError"),
    ],
)
async def test_kbs_json_bodies(kbs, path: str, admin: bool, variant: str) -> None:
    headers = {"Authorization": f"Bearer {admin_token(kbs.admin_key)}"} if admin else {}
    response = await kbs.http.post(path, content=DEEP, headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["type"] == ERR + variant
    assert "nested too deeply" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/attestation", "/challenge", "/as/attestation"])
async def test_attestation_service_bodies(kbs, path: str) -> None:
    response = await kbs.http.post(path, content=DEEP, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.text.startswith("Json deserialize error: recursion limit exceeded at line 1")


async def test_attestation_service_policy_body(kbs) -> None:
    response = await kbs.http.post(
        "/policy",
        content=DEEP,
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {admin_token(kbs.admin_key)}",
        },
    )
    assert response.status_code == 400
    assert "recursion limit exceeded" in response.text


async def test_attestation_service_evidence(kbs) -> None:
    body = {
        "verification_requests": [{"tee": "sample", "evidence": _b64url(DEEP)}],
        "policy_ids": [],
    }
    response = await kbs.http.post("/attestation", json=body)
    # The reference's framing of bad evidence (500 text), with its cause, not "internal error".
    assert response.status_code == 500
    assert response.text.endswith("\n0: failed to parse evidence as JSON\n1: not a JSON document")


async def _session_nonce(http) -> str:
    response = await http.post(
        "/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample", "extra-params": ""}
    )
    assert response.status_code == 200
    return response.json()["nonce"]


def _attestation(nonce: str, **overrides: object) -> dict[str, object]:
    key = TeeKeyPair.generate("ec-p256")
    body: dict[str, object] = {
        "init-data": None,
        "runtime-data": {"nonce": nonce, "tee-pubkey": key.public_jwk()},
        "tee-evidence": {"primary_evidence": {"svn": "1"}, "additional_evidence": ""},
    }
    body.update(overrides)
    return body


@pytest.mark.parametrize(
    ("shape", "detail"),
    [
        ("body", "nested too deeply"),
        ("init-data", "init-data body is nested too deeply"),
        ("additional-evidence", "additional_evidence is not JSON"),
        ("evidence-string", "sample evidence is not JSON"),
    ],
)
async def test_attest_inputs(kbs, shape: str, detail: str) -> None:
    guest = kbs.new_http()
    async with guest:
        nonce = await _session_nonce(guest)
        if shape == "body":
            content = DEEP
        elif shape == "init-data":
            toml = 'version = "0.1.0"\nalgorithm = "sha384"\n[data]\nx = ' + "[" * 5000
            content = json.dumps(
                _attestation(nonce, **{"init-data": {"format": "toml", "body": toml}})
            ).encode()
        elif shape == "additional-evidence":
            evidence = {"primary_evidence": {"svn": "1"}, "additional_evidence": DEEP_TEXT}
            content = json.dumps(_attestation(nonce, **{"tee-evidence": evidence})).encode()
        else:
            evidence = {"primary_evidence": DEEP_TEXT, "additional_evidence": ""}
            content = json.dumps(_attestation(nonce, **{"tee-evidence": evidence})).encode()
        response = await guest.post("/kbs/v0/attest", content=content)
    assert response.status_code == 401, response.text
    assert response.json()["type"] == ERR + "AttestationError"
    assert detail in response.json()["detail"]


async def test_reference_value_payload(kbs) -> None:
    message = {
        "version": "0.1.0",
        "type": "sample",
        "payload": base64.b64encode(DEEP).decode(),
    }
    response = await kbs.http.post(
        "/kbs/v0/reference-value",
        json=message,
        headers={"Authorization": f"Bearer {admin_token(kbs.admin_key)}"},
    )
    assert response.status_code == 401
    assert response.json()["type"] == ERR + "RvpsError"
