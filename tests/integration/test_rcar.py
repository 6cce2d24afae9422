# SPDX-License-Identifier: Apache-2.0
"""The KBS attestation protocol end to end over HTTP, with the sample TEE."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import httpx
import jwt
import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwe as jw_jwe
from jwcrypto import jwk as jw_jwk

from kbs.client.api import KbsClientError, SampleAttester, SampleDeviceAttester
from kbs.client.tee_key import TeeKeyPair
from support.kbs_app import RunningKbs, advance, without_request_id

SECRET = b"model-key-\x00\x01\x02-bytes"
ERR = "https://github.com/confidential-containers/kbs/errors/"


def _error(response, variant: str, detail: str, *, guest: bool = True) -> dict[str, str]:
    """The error body: {type, detail} plus the request id (named in detail for guests)."""
    request_id = response.headers["x-request-id"]
    if guest:
        detail = f"{detail} (request id {request_id})"
    return {"type": ERR + variant, "detail": detail, "request_id": request_id}


def _digest(obj: object) -> bytes:
    return hashlib.sha384(rfc8785.dumps(obj)).digest()


async def _auth(http, version: str = "0.4.0", tee: str = "sample"):
    return await http.post(
        "/kbs/v0/auth", json={"version": version, "tee": tee, "extra-params": ""}
    )


async def _attest_body(http, key: TeeKeyPair, nonce: str, *, report_data: bytes | None = None):
    runtime = {"tee-pubkey": key.public_jwk(), "nonce": nonce, "additional-evidence": ""}
    rd = report_data if report_data is not None else _digest(runtime)
    body = {
        "init-data": None,
        "runtime-data": {"nonce": nonce, "tee-pubkey": key.public_jwk()},
        "tee-evidence": {
            "primary_evidence": {"svn": "1", "report_data": base64.b64encode(rd).decode()},
            "additional_evidence": "",
        },
    }
    return await http.post("/kbs/v0/attest", json=body)


# --------------------------------------------------------------------------- happy paths


@pytest.mark.parametrize("kind", ["ec-p256", "ec-p521", "rsa-oaep-256", "rsa1_5"])
async def test_full_flow_every_key_type_decrypts_independently(
    affirming_kbs: RunningKbs, kind: str
) -> None:
    kbs = affirming_kbs
    await kbs.admin().set_resource("cai/sample/password", SECRET)
    key = TeeKeyPair.generate(kind)  # type: ignore[arg-type]
    guest = kbs.guest(tee_key=key)
    async with guest:
        # Our client (as the guest) decrypts it ...
        assert await guest.get_resource("kbs:///cai/sample/password") == SECRET
        # ... and so does an independent JOSE implementation.
        raw = await guest._http.get("/kbs/v0/resource/cai/sample/password")
    assert raw.status_code == 200
    envelope = raw.json()
    assert list(envelope) == ["protected", "encrypted_key", "iv", "ciphertext", "tag"]
    token = jw_jwe.JWE(algs=["RSA1_5", "RSA-OAEP-256", "ECDH-ES+A256KW", "A256GCM"])
    token.deserialize(json.dumps(envelope), key=jw_jwk.JWK.from_pem(key.to_pem()))
    assert token.payload == SECRET


async def test_token_claims_are_ear_with_tee_key(affirming_kbs: RunningKbs) -> None:
    key = TeeKeyPair.generate("ec-p256")
    async with affirming_kbs.guest(tee_key=key) as guest:
        token = await guest.attest()
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256"
    assert header["jwk"]["crv"] == "P-256"
    assert header["kid"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["eat_profile"] == "tag:github.com,2024:confidential-containers/Trustee"
    assert claims["iss"] == "CoCo-Attestation-Service"
    assert claims["exp"] - claims["iat"] == 300
    cpu0 = claims["submods"]["cpu0"]
    assert cpu0["ear.status"] == "affirming"
    assert cpu0["ear.appraisal-policy-id"] == "default"
    annotated = cpu0["ear.veraison.annotated-evidence"]
    assert annotated["runtime_data_claims"]["tee-pubkey"] == key.public_jwk()
    assert annotated["runtime_data_claims"]["additional-evidence"] == ""
    assert annotated["sample"]["launch_digest"] == "abcde"
    # The published JWKS verifies the token.
    jwks = (await affirming_kbs.http.get("/.well-known/jwks.json")).json()
    (entry,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    public = jwt.PyJWK(entry).key
    jwt.decode(token, public, algorithms=["ES256"], options={"verify_exp": False})


async def test_second_attest_returns_same_token(affirming_kbs: RunningKbs) -> None:
    http = affirming_kbs.new_http()
    async with http:
        nonce = (await _auth(http)).json()["nonce"]
        key = TeeKeyPair.generate()
        first = await _attest_body(http, key, nonce)
        second = await _attest_body(http, key, "whatever: the session is already attested")
    assert first.status_code == 200
    assert second.status_code == 200
    assert first.json()["token"] == second.json()["token"]


async def test_bearer_token_flow(affirming_kbs: RunningKbs) -> None:
    await affirming_kbs.admin().set_resource("default/key/one", SECRET)
    async with affirming_kbs.guest() as guest:
        await guest.attest()
        assert await guest.get_resource("default/key/one", bearer=True) == SECRET


async def test_additional_device_evidence(affirming_kbs: RunningKbs) -> None:
    async with affirming_kbs.guest(additional_attesters=[SampleDeviceAttester()]) as guest:
        token = await guest.attest()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert set(claims["submods"]) == {"cpu0", "gpu0"}
    gpu0 = claims["submods"]["gpu0"]["ear.veraison.annotated-evidence"]
    assert gpu0["sampledevice"]["svn"] == "1"
    # Device runtime data has no additional-evidence key; the primary's commits to it.
    assert "additional-evidence" not in gpu0["runtime_data_claims"]
    cpu0 = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]
    assert json.loads(cpu0["runtime_data_claims"]["additional-evidence"])["sampledevice"]


async def test_init_data_is_echoed_into_the_token(affirming_kbs: RunningKbs) -> None:
    init_data = (
        'version = "0.1.0"\nalgorithm = "sha384"\n[data]\n'
        "\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"http://kbs\"\n'''\n"
    )
    async with affirming_kbs.guest(init_data=init_data) as guest:
        token = await guest.attest()
    annotated = jwt.decode(token, options={"verify_signature": False})["submods"]["cpu0"][
        "ear.veraison.annotated-evidence"
    ]
    digest = hashlib.sha384(init_data.encode()).digest()
    assert annotated["init_data"] == base64.b64encode(digest).decode()
    assert annotated["init_data_claims"]["aa.toml"]["token_configs"]["kbs"]["url"] == "http://kbs"


async def test_file_backend_seed_workflow(affirming_kbs: RunningKbs, tmp_path: Path) -> None:
    # The seed: an admin copies a file into the repository directory by hand.
    target = tmp_path / "repository" / "cai" / "sample" / "password"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"hunter2\n")
    async with affirming_kbs.guest() as guest:
        assert await guest.get_resource("kbs:///cai/sample/password") == b"hunter2\n"


# --------------------------------------------------------------------------- older clients


async def test_seed_connectivity_check_with_protocol_0_1_0(kbs: RunningKbs) -> None:
    response = await kbs.http.post(
        "/kbs/v0/auth", json={"version": "0.1.0", "tee": "tdx", "extra-params": "foo"}
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"nonce", "extra-params"}
    assert body["extra-params"] == ""
    assert len(base64.b64decode(body["nonce"], validate=True)) == 32
    assert body["nonce"].endswith("=")
    cookie = response.headers["set-cookie"]
    assert re.fullmatch(
        r"kbs-session-id=[0-9a-f]{32}; Expires=\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", cookie
    )


async def test_unsupported_version_is_refused(kbs: RunningKbs) -> None:
    response = await _auth(kbs.http, version="0.5.0")
    assert response.status_code == 401
    assert response.json()["type"] == ERR + "AttestationError"
    assert "Version Mismatch" in response.json()["detail"]


@pytest.mark.parametrize("version", ["0.1.0", "0.1.1", "0.2.0"])
async def test_legacy_attest_body(affirming_kbs: RunningKbs, version: str) -> None:
    await affirming_kbs.admin().set_resource("one/two/three", SECRET)
    http = affirming_kbs.new_http()
    key = TeeKeyPair.generate("rsa1_5" if version.startswith("0.1") else "ec-p256")
    async with http:
        nonce = (await _auth(http, version=version)).json()["nonce"]
        digest = _digest({"nonce": nonce, "tee-pubkey": key.public_jwk()})
        evidence = {"svn": "1", "report_data": base64.b64encode(digest).decode()}
        response = await http.post(
            "/kbs/v0/attest",
            json={"tee-pubkey": key.public_jwk(), "tee-evidence": json.dumps(evidence)},
        )
        assert response.status_code == 200, response.text
        envelope = (await http.get("/kbs/v0/resource/one/two/three")).json()
    if version.startswith("0.1"):
        assert envelope["tag"] == ""
        assert json.loads(envelope["protected"]) == {"alg": "RSA1_5", "enc": "A256GCM"}
        assert key.decrypt_legacy(envelope) == SECRET
    else:
        assert key.decrypt(envelope) == SECRET


async def test_protocol_0_3_0_composite_body(affirming_kbs: RunningKbs) -> None:
    http = affirming_kbs.new_http()
    key = TeeKeyPair.generate()
    async with http:
        nonce = (await _auth(http, version="0.3.0")).json()["nonce"]
        digest = _digest(
            {"nonce": nonce, "tee-pubkey": key.public_jwk(), "additional-evidence": ""}
        )
        response = await http.post(
            "/kbs/v0/attest",
            json={
                "tee-pubkey": key.public_jwk(),
                "tee-evidence": {
                    "primary_evidence": {
                        "svn": "1",
                        "report_data": base64.b64encode(digest).decode(),
                    },
                    "additional_evidence": "",
                },
            },
        )
    assert response.status_code == 200, response.text


# --------------------------------------------------------------------------- negative cases


async def test_wrong_nonce_is_rejected(kbs: RunningKbs) -> None:
    http = kbs.new_http()
    async with http:
        await _auth(http)
        response = await _attest_body(http, TeeKeyPair.generate(), "not-the-nonce")
    assert response.status_code == 401
    assert response.json() == _error(
        response,
        "AttestationError",
        "Attestation error: RCAR handshake Attest failed: nonce does not match the session",
    )


async def test_attest_without_cookie(kbs: RunningKbs) -> None:
    response = await _attest_body(kbs.new_http(), TeeKeyPair.generate(), "x")
    assert response.status_code == 401
    assert "cookie" in response.json()["detail"]


async def test_attest_with_unknown_cookie(kbs: RunningKbs) -> None:
    http = kbs.new_http()
    http.cookies.set("kbs-session-id", "0" * 32)
    async with http:
        response = await _attest_body(http, TeeKeyPair.generate(), "x")
    assert response.status_code == 401
    assert "session not found" in response.json()["detail"]


async def test_expired_session_is_rejected(kbs: RunningKbs) -> None:
    http = kbs.new_http()
    async with http:
        nonce = (await _auth(http)).json()["nonce"]
        advance(kbs.clock, minutes=5, seconds=1)
        response = await _attest_body(http, TeeKeyPair.generate(), nonce)
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


async def test_tampered_report_data_is_rejected(kbs: RunningKbs) -> None:
    http = kbs.new_http()
    async with http:
        nonce = (await _auth(http)).json()["nonce"]
        key = TeeKeyPair.generate()
        good = _digest({"tee-pubkey": key.public_jwk(), "nonce": nonce, "additional-evidence": ""})
        bad = bytes([good[0] ^ 1]) + good[1:]
        response = await _attest_body(http, key, nonce, report_data=bad)
    assert response.status_code == 401
    assert "report_data" in response.json()["detail"]


async def test_report_data_without_additional_evidence_key_is_rejected(kbs: RunningKbs) -> None:
    # A 0.4.0 binding must include "additional-evidence" even when it is empty.
    http = kbs.new_http()
    async with http:
        nonce = (await _auth(http)).json()["nonce"]
        key = TeeKeyPair.generate()
        legacy_digest = _digest({"tee-pubkey": key.public_jwk(), "nonce": nonce})
        response = await _attest_body(http, key, nonce, report_data=legacy_digest)
    assert response.status_code == 401


async def test_sample_tee_refused_when_not_enabled(tmp_path: Path, admin_key) -> None:
    from support.kbs_app import running_kbs, settings_for  # noqa: PLC0415

    settings = settings_for(
        tmp_path,
        admin_key,
        overrides={"attestation_service": {"insecure_allow_sample_evidence": False}},
    )
    async with running_kbs(settings, admin_key=admin_key) as kbs, kbs.guest() as guest:
        with pytest.raises(KbsClientError, match="not enabled"):
            await guest.attest()


async def test_policy_denies_contraindicated_sample(kbs: RunningKbs) -> None:
    # No reference values registered: the default CPU policy says contraindicated,
    # the default resource policy wants affirming.
    await kbs.admin().set_resource("a/b/c", SECRET)
    async with kbs.guest() as guest:
        token = await guest.attest()
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["submods"]["cpu0"]["ear.status"] == "contraindicated"
        response = await guest._http.get("/kbs/v0/resource/a/b/c")
    assert response.status_code == 401
    assert response.json() == _error(response, "PolicyDeny", "Access denied by policy")


async def test_custom_resource_policy_deny_and_allow(affirming_kbs: RunningKbs) -> None:
    admin = affirming_kbs.admin()
    await admin.set_resource("one/two/three", SECRET)
    await admin.set_resource("one/two/four", SECRET)
    await admin.set_resource_policy(
        'package policy\ndefault allow = false\nallow if {\n  data["resource-path"] == ["one", "two", "three"]\n}\n'
    )
    async with affirming_kbs.guest() as guest:
        assert await guest.get_resource("one/two/three") == SECRET
        denied = await guest._http.get("/kbs/v0/resource/one/two/four")
    assert denied.json()["type"] == ERR + "PolicyDeny"


async def test_missing_resource(affirming_kbs: RunningKbs) -> None:
    async with affirming_kbs.guest() as guest:
        await guest.attest()
        response = await guest._http.get("/kbs/v0/resource/no/such/thing")
    assert response.status_code == 401
    assert response.json() == _error(response, "PluginInternalError", "resource not found")


async def test_no_token(kbs: RunningKbs) -> None:
    response = await kbs.new_http().get("/kbs/v0/resource/a/b/c")
    assert response.status_code == 401
    assert response.json()["type"] == ERR + "TokenNotFound"


async def test_expired_token_replayed_as_bearer(affirming_kbs: RunningKbs) -> None:
    await affirming_kbs.admin().set_resource("a/b/c", SECRET)
    async with affirming_kbs.guest() as guest:
        token = await guest.attest()
    fresh = affirming_kbs.new_http()
    async with fresh:
        for _ in range(2):  # the second is a hit in the verifier's cache of good tokens
            ok = await fresh.get(
                "/kbs/v0/resource/a/b/c", headers={"Authorization": f"Bearer {token}"}
            )
            assert ok.status_code == 200
        advance(affirming_kbs.clock, minutes=6, seconds=1)  # past exp + 60 s leeway
        late = await fresh.get(
            "/kbs/v0/resource/a/b/c", headers={"Authorization": f"Bearer {token}"}
        )
    assert late.status_code == 401
    assert late.json() == _error(late, "TokenVerifierError", "token has expired")


async def test_token_signed_by_another_key(affirming_kbs: RunningKbs) -> None:
    async with affirming_kbs.guest() as guest:
        token = await guest.attest()
    claims = jwt.decode(token, options={"verify_signature": False})
    other = ec.generate_private_key(ec.SECP256R1())
    from kbs.tokens import public_jwk  # noqa: PLC0415

    forged = jwt.encode(
        claims, other, algorithm="ES256", headers={"jwk": public_jwk(other.public_key())}
    )
    # Also: our own header key, but a signature by another key.
    header = jwt.get_unverified_header(token)
    spliced = jwt.encode(
        claims, other, algorithm="ES256", headers={"jwk": header["jwk"], "kid": header["kid"]}
    )
    for bad in (forged, spliced):
        response = await affirming_kbs.new_http().get(
            "/kbs/v0/resource/a/b/c", headers={"Authorization": f"Bearer {bad}"}
        )
        assert response.status_code == 401
        assert response.json()["type"] == ERR + "TokenVerifierError"


async def test_alg_none_token(affirming_kbs: RunningKbs) -> None:
    async with affirming_kbs.guest() as guest:
        token = await guest.attest()
    claims = jwt.decode(token, options={"verify_signature": False})
    header = {"alg": "none", "typ": "JWT"}

    def b64(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    unsigned = f"{b64(header)}.{b64(claims)}."
    response = await affirming_kbs.new_http().get(
        "/kbs/v0/resource/a/b/c", headers={"Authorization": f"Bearer {unsigned}"}
    )
    assert response.status_code == 401
    assert response.json()["type"] == ERR + "TokenVerifierError"
    assert "none" in response.json()["detail"]


async def test_own_token_header_with_forged_alg_or_payload(affirming_kbs: RunningKbs) -> None:
    """Our exact token header (jwk + kid) does not make a changed token acceptable."""
    await affirming_kbs.admin().set_resource("a/b/c", SECRET)
    async with affirming_kbs.guest() as guest:
        token = await guest.attest()
    header_b64, payload_b64, signature = token.split(".")
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    attacker = TeeKeyPair.generate("ec-p256").public_jwk()
    claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["runtime_data_claims"][
        "tee-pubkey"
    ] = attacker

    def b64(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    cases = {
        "none": (f"{b64({**header, 'alg': 'none'})}.{b64(claims)}.", "algorithm"),
        "HS256": (f"{b64({**header, 'alg': 'HS256'})}.{payload_b64}.{signature}", "algorithm"),
        "payload": (f"{header_b64}.{b64(claims)}.{signature}", "signature verification failed"),
        "signature": (f"{header_b64}.{payload_b64}.{signature[::-1]}", "signature"),
    }
    for bad, detail in cases.values():
        response = await affirming_kbs.new_http().get(
            "/kbs/v0/resource/a/b/c", headers={"Authorization": f"Bearer {bad}"}
        )
        assert response.status_code == 401
        assert response.json()["type"] == ERR + "TokenVerifierError"
        assert detail in response.json()["detail"]
    ok = await affirming_kbs.new_http().get(
        "/kbs/v0/resource/a/b/c", headers={"Authorization": f"Bearer {token}"}
    )
    assert ok.status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/kbs/v0/resource/a/b",
        "/kbs/v0/resource/a/b/c/d",
        "/kbs/v0/resource/.hidden/b/c",
        "/kbs/v0/resource/a/%2E%2E/c",
        "/kbs/v0/resource/a/b/..%2F..%2Fetc%2Fpasswd",
        "/kbs/v0/resource/a/b/%2Fetc%2Fpasswd",
        "/kbs/v0/resource/a//c",
    ],
)
async def test_traversal_and_malformed_paths(
    affirming_kbs: RunningKbs, path: str, tmp_path: Path
) -> None:
    (tmp_path / "secret-outside").write_bytes(b"do not serve")
    async with affirming_kbs.guest() as guest:
        await guest.attest()
        response = await guest._http.get(path)
    assert response.status_code == 404
    assert response.json()["type"] == ERR + "InvalidRequestPath"


async def test_symlink_out_of_repository_is_not_served(
    affirming_kbs: RunningKbs, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"do not serve")
    link = tmp_path / "repository" / "a" / "b" / "c"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    async with affirming_kbs.guest() as guest:
        await guest.attest()
        response = await guest._http.get("/kbs/v0/resource/a/b/c")
    assert response.status_code in (401, 404)
    assert b"do not serve" not in response.content


async def test_unknown_plugin_and_wrong_method(kbs: RunningKbs) -> None:
    response = await kbs.http.get("/kbs/v0/nebula-ca/credential")
    assert response.status_code == 404
    assert response.json() == _error(
        response, "PluginNotFound", "Plugin nebula-ca not found", guest=False
    )
    response = await kbs.http.get("/kbs/v0/auth")
    assert response.status_code == 404
    assert response.json()["type"] == ERR + "PluginNotFound"


async def test_malformed_auth_body(kbs: RunningKbs) -> None:
    response = await kbs.http.post("/kbs/v0/auth", content=b"{not json")
    assert response.status_code == 401
    assert response.json()["type"] == ERR + "AttestationError"


async def test_session_only_lives_for_the_configured_timeout(affirming_kbs: RunningKbs) -> None:
    await affirming_kbs.admin().set_resource("a/b/c", SECRET)
    async with affirming_kbs.guest() as guest:
        await guest.attest()
        advance(affirming_kbs.clock, minutes=5, seconds=1)
        response = await guest._http.get("/kbs/v0/resource/a/b/c")
    # The session is gone; the cookie no longer yields a token.
    assert response.status_code == 401
    assert response.json()["type"] == ERR + "TokenNotFound"


async def test_guest_client_reattests_after_401(affirming_kbs: RunningKbs) -> None:
    await affirming_kbs.admin().set_resource("a/b/c", SECRET)
    async with affirming_kbs.guest() as guest:
        await guest.attest()
        advance(affirming_kbs.clock, minutes=10)
        # The session expired; the client re-runs the handshake, as the reference does.
        assert await guest.get_resource("a/b/c") == SECRET


async def test_entropy_is_injected(tmp_path: Path, admin_key) -> None:
    from support.kbs_app import running_kbs, settings_for  # noqa: PLC0415

    def entropy(n: int) -> bytes:
        return bytes(range(n))

    async with running_kbs(settings_for(tmp_path, admin_key), entropy=entropy) as kbs:
        response = await _auth(kbs.http)
    assert base64.b64decode(response.json()["nonce"]) == bytes(range(32))
    assert response.headers["set-cookie"].startswith("kbs-session-id=" + bytes(range(16)).hex())


def test_runtime_data_hash_vector() -> None:
    from kbs.protocol import runtime_digest  # noqa: PLC0415

    assert (
        runtime_digest({"b": 1, "a": "test", "c": {"d": "e"}}).hex()
        == "e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c4597480a186427c813ca941da78870c3"
    )


async def test_guest_client_against_sample_attester_without_rvs_fails_closed(
    kbs: RunningKbs,
) -> None:
    await kbs.admin().set_resource("a/b/c", SECRET)
    async with kbs.guest(attester=SampleAttester()) as guest:
        with pytest.raises(KbsClientError, match="PolicyDeny"):
            await guest.get_resource("a/b/c")


async def test_auth_is_rate_limited_per_client(tmp_path: Path, admin_key) -> None:
    from support.kbs_app import running_kbs, settings_for  # noqa: PLC0415

    settings = settings_for(
        tmp_path, admin_key, overrides={"rate_limit": {"burst": 2, "requests_per_second": 1}}
    )
    async with running_kbs(settings) as kbs:
        assert [(await _auth(kbs.http)).status_code for _ in range(3)] == [200, 200, 429]
        refused = await _auth(kbs.http)
        assert refused.status_code == 429
        assert without_request_id(refused.json()) == {
            "type": ERR + "TooManyRequests",
            "detail": "too many requests from this client",
        }
        assert refused.headers["retry-after"] == "1"
        assert "set-cookie" not in refused.headers
        # A second later the client has one request again; others were never limited.
        advance(kbs.clock, seconds=1)
        assert (await _auth(kbs.http)).status_code == 200
        assert (await _auth(kbs.http)).status_code == 429
        other = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=kbs.app, client=("192.0.2.7", 1234)),
            base_url="http://kbs",
        )
        async with other:
            assert (await _auth(other)).status_code == 200
