# SPDX-License-Identifier: Apache-2.0
"""The attestation-service API over HTTP, driven by clients that behave as the real ones.

TNG v2.2.x (legacy body, Simple RS384 token), TNG v2.4+ (current body, /certificate, EAR),
the attestation agent's coco_as getter, and passport mode (attest here, then fetch a
secret from the KBS with the token), each with sample and test-PKI TDX evidence.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from attestation.tdx.collateral import CachingCollateralSource, PccsFetcher
from attestation.tdx.verifier import TdxVerifier
from kbs.client.tee_key import TeeKeyPair
from support.fake_pccs import FakePccs
from support.kbs_app import (
    SAMPLE_REFERENCE_VALUES,
    AdminKey,
    RunningKbs,
    advance,
    make_admin_key,
    running_kbs,
    settings_for,
    without_request_id,
)
from support.tdx_pki import TestPki
from support.tng_client import (
    Tng22Verifier,
    Tng24Verifier,
    TngError,
    b64url,
    coco_as_token,
    report_data_for,
    sample_evidence,
    tdx_evidence,
    tng_runtime_data,
)

ERR = "https://github.com/confidential-containers/kbs/errors/"
SIMPLE = {"attestation_service": {"attestation_token_broker": {"type": "Simple"}}}
#: What the TNG v2.2 attester binds: a 32-byte digest of its DICE claims.
REPORT = hashlib.sha256(b"tls public key and other dice claims").digest()

#: Reference values that make the test PKI's default TDX quote affirming: MRTD, XFAM
#: and RTMR1/2 registered (a grub-style boot without event log earns executables 4).
TDX_REFERENCE_VALUES = {
    "mr_td": ["42" * 48],
    "xfam": ["e702060000000000"],
    "rtmr_1": ["00" * 48],
    "rtmr_2": ["00" * 48],
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pccs_and_pki() -> Iterator[tuple[FakePccs, TestPki]]:
    with FakePccs({}) as pccs:
        pki = TestPki.create(root_cdp=pccs.cdp_url)
        now = dt.datetime.now(dt.UTC)
        pccs.parts = {pki.fmspc: pki.collateral_parts(now)}
        yield pccs, pki


@pytest.fixture
async def tdx_verifier(pccs_and_pki, tdx_executor) -> AsyncIterator[TdxVerifier]:
    pccs, pki = pccs_and_pki
    async with httpx.AsyncClient() as client:
        fetcher = PccsFetcher(client, base_urls=[pccs.url], root_ca_der=pki.root_der)
        source = CachingCollateralSource(fetcher, root_ca_der=pki.root_der)
        yield TdxVerifier(collateral=source, root_ca_der=pki.root_der, executor=tdx_executor)


async def _start(tmp_path: Path, tdx_verifier: TdxVerifier, **overrides: Any):
    admin_key = make_admin_key(tmp_path)
    settings = settings_for(tmp_path, admin_key, overrides=overrides)
    return running_kbs(settings, admin_key=admin_key, extra_verifiers=[tdx_verifier])


@pytest.fixture
async def kbs(tmp_path: Path, tdx_verifier: TdxVerifier) -> AsyncIterator[RunningKbs]:
    """EAR by default; sample and TDX reference values registered (affirming)."""
    async with await _start(tmp_path, tdx_verifier) as running:
        await running.admin().set_reference_values(
            {**SAMPLE_REFERENCE_VALUES, **TDX_REFERENCE_VALUES}
        )
        yield running


@pytest.fixture
async def simple_kbs(tmp_path: Path, tdx_verifier: TdxVerifier) -> AsyncIterator[RunningKbs]:
    """``attestation_token_broker.type = "Simple"``, as TNG v2.2's CI configures it."""
    async with await _start(tmp_path, tdx_verifier, **SIMPLE) as running:
        await running.admin().set_reference_values(
            {**SAMPLE_REFERENCE_VALUES, **TDX_REFERENCE_VALUES}
        )
        yield running


def _evidence(kind: str, pki: TestPki, report_data: bytes) -> bytes:
    if kind == "sample":
        return sample_evidence(report_data)
    return tdx_evidence(pki.quote(report_data=report_data.ljust(64, b"\x00")))


def _now(kbs: RunningKbs) -> dt.datetime:
    return kbs.clock.now()


# --------------------------------------------------------------------------- TNG v2.2


@pytest.mark.parametrize("tee", ["sample", "tdx"])
@pytest.mark.parametrize("as_addr", ["http://kbs/trustee/as/", "http://kbs/as", "http://kbs"])
async def test_tng_22_background_check(simple_kbs, pccs_and_pki, tee, as_addr):
    # The ALB strips /trustee; an AS behind a prefix-keeping proxy sees /as/...
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=simple_kbs.app),
        event_hooks={"request": [_strip_release]},
    )
    async with http:
        tng = Tng22Verifier(http, as_addr, ["default"])
        runtime = tng_runtime_data(REPORT)
        evidence = _evidence(tee, pccs_and_pki[1], report_data_for(runtime))
        token = await tng.verify(tee=tee, evidence=evidence, report=REPORT, now=_now(simple_kbs))
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "JWT"
    assert set(header["jwk"]) >= {"kty", "alg", "n", "e", "x5c"}
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == "CoCo-Attestation-Service"
    assert len(claims["jti"]) == 10
    assert claims["jti"].isalnum()
    assert claims["nbf"] == claims["iat"]
    assert claims["exp"] - claims["iat"] == 300
    assert claims["tee"] == tee
    assert claims["customized_claims"] == {"init_data": None, "runtime_data": runtime}
    (report,) = claims["evaluation-reports"]
    assert report["policy-id"] == "default"
    assert len(report["policy-hash"]) == 96
    tcb = json.loads(claims["tcb-status"])
    assert tcb["report_data"]
    assert any(key.startswith(f"{tee}.") for key in tcb)
    assert claims["jwk"] == header["jwk"]  # old TNG reads the claims copy
    assert "aud" not in claims


async def _strip_release(request: httpx.Request) -> None:
    # What the ALB does with /<release>/...: forward the rest.
    if request.url.path.startswith("/trustee/"):
        request.url = request.url.copy_with(path=request.url.path.removeprefix("/trustee"))


async def test_tng_22_with_trusted_certs_from_the_certificate_endpoint(simple_kbs):
    anchors = x509.load_pem_x509_certificates(
        (await simple_kbs.http.get("/as/certificate")).content
    )
    tng = Tng22Verifier(simple_kbs.http, "http://kbs/as/", ["default"], trusted_certs=anchors)
    runtime = tng_runtime_data(REPORT)
    evidence = sample_evidence(report_data_for(runtime))
    await tng.verify(tee="sample", evidence=evidence, report=REPORT, now=_now(simple_kbs))
    # A verifier that trusts another root refuses the same kind of token.
    stranger = _self_signed_ca("stranger")[1]
    other = Tng22Verifier(simple_kbs.http, "http://kbs/as/", ["default"], trusted_certs=[stranger])
    with pytest.raises(TngError, match="UnknownIssuer"):
        await other.verify(tee="sample", evidence=evidence, report=REPORT, now=_now(simple_kbs))


async def test_tng_22_refused_when_the_policy_is_not_satisfied(tmp_path, tdx_verifier):
    # No reference values: the default CPU policy finds nothing approved.
    async with await _start(tmp_path, tdx_verifier, **SIMPLE) as kbs:
        tng = Tng22Verifier(kbs.http, "http://kbs/as", ["default"])
        runtime = tng_runtime_data(REPORT)
        with pytest.raises(TngError) as info:
            await tng.verify(
                tee="sample",
                evidence=sample_evidence(report_data_for(runtime)),
                report=REPORT,
                now=_now(kbs),
            )
    assert "status: 500" in str(info.value)
    assert (
        "An internal error occured: \n0: attestation report evaluate\n1: Reject by policy default"
        in str(info.value)
    )


async def test_tng_22_policy_ids_must_all_be_reported(simple_kbs):
    tng = Tng22Verifier(simple_kbs.http, "http://kbs/as", ["default", "other"])
    runtime = tng_runtime_data(REPORT)
    with pytest.raises(TngError, match="attestation policy 'other_cpu' not found"):
        await tng.verify(
            tee="sample",
            evidence=sample_evidence(report_data_for(runtime)),
            report=REPORT,
            now=_now(simple_kbs),
        )


async def test_tng_22_rejects_an_ear_token(kbs):
    # Against an EAR-configured AS the old client fails closed, as the real one does.
    tng = Tng22Verifier(kbs.http, "http://kbs/as", ["default"])
    runtime = tng_runtime_data(REPORT)
    with pytest.raises(TngError, match="runtime_data"):
        await tng.verify(
            tee="sample",
            evidence=sample_evidence(report_data_for(runtime)),
            report=REPORT,
            now=_now(kbs),
        )


# --------------------------------------------------------------------------- TNG v2.4+


@pytest.mark.parametrize("tee", ["sample", "tdx"])
async def test_tng_24_background_check_ear(kbs, pccs_and_pki, tee):
    tng = Tng24Verifier(kbs.http, "http://kbs/as/", ["default"])
    runtime = {"pubkey-hash": base64.b64encode(REPORT).decode(), "nonce": "n-1"}
    evidence = _evidence(tee, pccs_and_pki[1], report_data_for(runtime))
    claims = await tng.verify(tee=tee, evidence=evidence, runtime_data=runtime, now=_now(kbs))
    assert tng.requests == ["POST http://kbs/as/attestation", "GET http://kbs/as/certificate"]
    cpu0 = claims["submods"]["cpu0"]
    assert cpu0["ear.status"] == "affirming"
    assert cpu0["ear.appraisal-policy-id"] == "default"
    annotated = cpu0["ear.veraison.annotated-evidence"]
    assert annotated["runtime_data_claims"] == runtime
    assert tee in annotated


async def test_tng_24_accepts_a_simple_token_too(simple_kbs):
    tng = Tng24Verifier(simple_kbs.http, "http://kbs/as", ["default"])
    runtime = {"pubkey-hash": "abc"}
    claims = await tng.verify(
        tee="sample",
        evidence=sample_evidence(report_data_for(runtime)),
        runtime_data=runtime,
        now=_now(simple_kbs),
    )
    assert claims["evaluation-reports"][0]["policy-id"] == "default"


async def test_tng_24_refuses_contraindicated_ear(tmp_path, tdx_verifier):
    async with await _start(tmp_path, tdx_verifier) as kbs:
        runtime = {"pubkey-hash": "abc"}
        body = {
            "verification_requests": [
                {
                    "tee": "sample",
                    "evidence": b64url(sample_evidence(report_data_for(runtime))),
                    "runtime_data": {"structured": runtime},
                }
            ],
            "policy_ids": [],
        }
        # The AS still answers 200: with EAR the relying party judges the status ...
        response = await kbs.http.post("/as/attestation", json=body)
        assert response.status_code == 200
        claims = jwt.decode(response.text, options={"verify_signature": False})
        assert claims["submods"]["cpu0"]["ear.status"] == "contraindicated"
        # ... and TNG does.
        tng = Tng24Verifier(kbs.http, "http://kbs/as", ["default"])
        with pytest.raises(TngError, match="should be \"affirming\" but got 'contraindicated'"):
            await tng.verify(
                tee="sample",
                evidence=sample_evidence(report_data_for(runtime)),
                runtime_data=runtime,
                now=_now(kbs),
            )


async def test_tng_24_fails_with_standard_base64_x5c(tmp_path, tdx_verifier):
    # Trustee v0.21's encoding breaks TNG; we default to base64url but can be switched.
    overrides = {"attestation_service": {"attestation_token_broker": {"x5c_encoding": "base64"}}}
    async with await _start(tmp_path, tdx_verifier, **overrides) as kbs:
        await kbs.admin().set_reference_values(SAMPLE_REFERENCE_VALUES)
        runtime = {"pubkey-hash": "abc"}
        evidence = sample_evidence(report_data_for(runtime))
        response = await kbs.http.post(
            "/attestation",
            json={
                "verification_requests": [
                    {
                        "tee": "sample",
                        "evidence": b64url(evidence),
                        "runtime_data": {"structured": runtime},
                    }
                ],
                "policy_ids": ["default"],
            },
        )
        x5c = jwt.get_unverified_header(response.text)["jwk"]["x5c"]
        assert any(c.endswith("=") or "+" in c or "/" in c for c in x5c)
        # (a DER certificate in standard base64 nearly always carries one of them)
        tng = Tng24Verifier(kbs.http, "http://kbs/as", ["default"])
        with pytest.raises(TngError, match="Illegal x5c cert"):
            await tng.verify(tee="sample", evidence=evidence, runtime_data=runtime, now=_now(kbs))


# --------------------------------------------------------------------------- AA, passport


@pytest.mark.parametrize("tee", ["sample", "tdx"])
async def test_coco_as_getter_with_a_trailing_slash(kbs, pccs_and_pki, tee):
    # No runtime data: the token proves platform state only. The URL ends in "/".
    evidence = _evidence(tee, pccs_and_pki[1], b"")
    if tee == "sample":
        evidence = json.dumps({"svn": "1", "report_data": ""}).encode()
    token = await coco_as_token(kbs.http, "http://kbs/as/", tee=tee, evidence=evidence)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["submods"]["cpu0"]["ear.appraisal-policy-id"] == "default"
    assert claims["submods"]["cpu0"]["ear.status"] == "affirming"


@pytest.mark.parametrize("profile", ["ear", "simple"])
@pytest.mark.parametrize("tee", ["sample", "tdx"])
async def test_passport_mode(kbs, pccs_and_pki, profile, tee):
    await kbs.admin().set_resource("cai/model/key", b"passport secret")
    tee_key = TeeKeyPair.generate()
    runtime = {"tee-pubkey": tee_key.public_jwk(), "nonce": "guest-chosen"}
    body = {
        "verification_requests": [
            {
                "tee": tee,
                "evidence": b64url(_evidence(tee, pccs_and_pki[1], report_data_for(runtime))),
                "runtime_data": {"structured": runtime},
                "runtime_data_hash_algorithm": "sha384",
            }
        ],
        "policy_ids": ["default"],
        "token_type": profile,
    }
    attested = await kbs.http.post("/as/attestation", json=body)
    assert attested.status_code == 200, attested.text
    alg = jwt.get_unverified_header(attested.text)["alg"]
    assert alg == {"ear": "ES256", "simple": "RS384"}[profile]
    # A fresh client (no session cookie) presents the token to the KBS.
    async with kbs.new_http() as guest:
        response = await guest.get(
            "/kbs/v0/resource/cai/model/key", headers={"Authorization": f"Bearer {attested.text}"}
        )
    assert response.status_code == 200, response.text
    assert tee_key.decrypt(response.json()) == b"passport secret"


async def test_passport_token_of_another_key_is_refused(kbs):
    # A Simple-looking token signed by a stranger's RSA key is not trusted by the KBS.
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(stranger.public_key()))
    now = int(_now(kbs).timestamp())
    token = jwt.encode(
        {
            "exp": now + 60,
            "evaluation-reports": [{"policy-id": "default"}],
            "customized_claims": {
                "runtime_data": {"tee-pubkey": TeeKeyPair.generate().public_jwk()}
            },
        },
        stranger,
        algorithm="RS384",
        headers={"jwk": {**jwk, "alg": "RS384"}},
    )
    await kbs.admin().set_resource("cai/model/key", b"x")
    response = await kbs.http.get(
        "/kbs/v0/resource/cai/model/key", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401
    assert response.json()["type"] == ERR + "TokenVerifierError"


# --------------------------------------------------------------------------- framing, paths


def _sample_body(**extra: Any) -> dict[str, Any]:
    runtime = {"k": "v"}
    return {
        "verification_requests": [
            {
                "tee": "sample",
                "evidence": b64url(sample_evidence(report_data_for(runtime))),
                "runtime_data": {"structured": runtime},
            }
        ],
        "policy_ids": [],
        **extra,
    }


@pytest.mark.parametrize(
    "path",
    ["/attestation", "/as/attestation", "/as//attestation", "//attestation", "/as///attestation/"],
)
async def test_prefix_and_double_slash_paths(kbs, path):
    # An absolute URL: httpx would treat a relative "//x" as a host name.
    response = await kbs.http.post(f"http://kbs{path}", json=_sample_body(), follow_redirects=True)
    assert response.status_code == 200
    assert response.text.count(".") == 2
    assert not response.text.endswith("\n")
    assert "content-type" not in response.headers


async def test_kbs_paths_keep_their_meaning(kbs, tmp_path):
    # Collapsing slashes is for the AS API only: KBS paths answer as without it.
    (tmp_path / "kbs-only").mkdir()
    settings = settings_for(tmp_path / "kbs-only", kbs.admin_key)
    async with running_kbs(settings, apis=["kbs"]) as kbs_only:
        for path in ("/kbs/v0//auth", "//kbs/v0/auth", "/kbs/v0/resource//a/b", "/kbs/v0//"):
            url = f"http://kbs{path}"
            body = {"version": "0.4.0", "tee": "sample"}
            headers = {"X-Request-Id": "same-request"}  # both answers carry the same id
            ours = await kbs.http.post(url, json=body, headers=headers)
            plain = await kbs_only.http.post(url, json=body, headers=headers)
            assert (ours.status_code, ours.content) == (plain.status_code, plain.content)
            assert ours.status_code in (401, 404), path


async def test_legacy_body_with_raw_runtime_data_and_init_data(kbs):
    raw = b"exact report data bytes"
    init = {"workload": "llm"}
    init_digest = hashlib.sha512(json.dumps(init, separators=(",", ":")).encode()).digest()
    evidence = sample_evidence(raw)
    body = {
        "tee": "sample",
        "evidence": b64url(evidence),
        "runtime_data": {"raw": b64url(raw)},
        "init_data": {"structured": init},
        "runtime_data_hash_algorithm": None,
        "init_data_hash_algorithm": "SHA512",
        "policy_ids": ["default"],
    }
    response = await kbs.http.post("/as/attestation", json=body)
    assert response.status_code == 200, response.text
    annotated = jwt.decode(response.text, options={"verify_signature": False})["submods"]["cpu0"][
        "ear.veraison.annotated-evidence"
    ]
    assert annotated["runtime_data_claims"] is None  # raw runtime data yields no claims
    assert annotated["init_data_claims"] == init
    assert base64.b64decode(annotated["init_data"]) == init_digest
    # Padded and standard base64 are accepted as well.
    padded = {**body, "evidence": base64.b64encode(evidence).decode()}
    assert (await kbs.http.post("/as/attestation", json=padded)).status_code == 200


async def test_init_data_toml_and_sha512_runtime_data(kbs):
    toml = 'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"aa.toml" = "x = 1"\n'
    runtime = {"a": "test", "b": 1, "c": {"d": "e"}}
    body = _sample_body()
    req = body["verification_requests"][0]
    req["runtime_data"] = {"structured": runtime}
    req["runtime_data_hash_algorithm"] = "sha512"
    req["evidence"] = b64url(
        sample_evidence(hashlib.sha512(b'{"a":"test","b":1,"c":{"d":"e"}}').digest())
    )
    req["init_data"] = {"init_data_toml": toml}
    response = await kbs.http.post("/attestation", json=body)
    assert response.status_code == 200, response.text
    annotated = jwt.decode(response.text, options={"verify_signature": False})["submods"]["cpu0"][
        "ear.veraison.annotated-evidence"
    ]
    assert annotated["init_data_claims"] == {"aa.toml": {"x": 1}}
    assert base64.b64decode(annotated["init_data"]) == hashlib.sha256(toml.encode()).digest()


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        (
            {"verification_requests": [{"tee": "sample", "evidence": "!!"}], "policy_ids": []},
            500,
            "An internal error occured: \n0: base64 decode evidence\n1: Invalid symbol 33, offset 0.",
        ),
        (
            {
                "verification_requests": [{"tee": "sample", "evidence": b64url(b"{no")}],
                "policy_ids": [],
            },
            500,
            "An internal error occured: \n0: failed to parse evidence as JSON\n1: not a JSON document",
        ),
        (
            {
                "verification_requests": [{"tee": "foo", "evidence": b64url(b"{}")}],
                "policy_ids": [],
            },
            500,
            "An internal error occured: \n0: tee `foo not supported`",
        ),
        (
            {
                "verification_requests": [{"tee": "snp", "evidence": b64url(b"{}")}],
                "policy_ids": [],
            },
            500,
            (
                "An internal error occured: \n0: attestation report evaluate\n"
                "1: tee 'snp' is not enabled on this server"
            ),
        ),
        (
            {"verification_requests": [], "policy_ids": []},
            500,
            (
                "An internal error occured: \n0: attestation report evaluate\n"
                "1: No verification requests provided."
            ),
        ),
        (
            {
                "verification_requests": [
                    {
                        "tee": "sample",
                        "evidence": b64url(b"{}"),
                        "runtime_data": {"structured": {}},
                        "runtime_data_hash_algorithm": "md5",
                    }
                ],
                "policy_ids": [],
            },
            500,
            "An internal error occured: \n0: parse runtime data HashAlgorithm failed\n",
        ),
        (
            {
                "verification_requests": [
                    {"tee": "sample", "evidence": b64url(b"{}"), "runtime_data": {"raw": "a=b"}}
                ],
                "policy_ids": [],
            },
            500,
            (
                "An internal error occured: \n0: decode given Runtime Data\n"
                "1: base64 decode raw runtime data\n2: Invalid symbol 61, offset 1."
            ),
        ),
        (
            _sample_body() | {"verification_requests": [{"evidence": "e30"}]},
            400,
            "Json deserialize error: missing field `tee` at line 1 column ",
        ),
        (
            {"tee": "sample", "policy_ids": []},
            400,
            "Json deserialize error: missing field `evidence` at line 1 column 32",
        ),
        (
            {"verification_requests": []},
            400,
            "Json deserialize error: missing field `policy_ids` at line 1 column 28",
        ),
        (
            {"evidence": "e30", "policy_ids": []},
            400,
            "Json deserialize error: missing field `verification_requests`",
        ),
        (
            _sample_body(token_type="oidc"),
            400,
            "Json deserialize error: unknown variant `oidc`, expected `ear` or `simple`",
        ),
        (
            {"verification_requests": [{"tee": 5, "evidence": ""}], "policy_ids": []},
            400,
            "Json deserialize error: invalid type: integer `5`, expected a string",
        ),
    ],
)
async def test_error_framing(kbs, body, status, text):
    response = await kbs.http.post(
        "/as/attestation",
        content=json.dumps(body, separators=(",", ":")),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == status
    assert response.text.startswith(text), response.text
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


async def test_evidence_that_fails_verification_is_a_500(kbs, pccs_and_pki):
    body = _sample_body()
    # TDX evidence bound to other runtime data.
    body["verification_requests"][0] |= {
        "tee": "tdx",
        "evidence": b64url(tdx_evidence(pccs_and_pki[1].quote(report_data=b"\x01" * 64))),
    }
    response = await kbs.http.post("/attestation", json=body)
    assert response.status_code == 500
    assert response.text == (
        "An internal error occured: \n0: attestation report evaluate\n"
        "1: Verifier evaluate failed: tdx report_data does not match the runtime data"
    )


async def test_content_type_and_syntax_errors(kbs):
    response = await kbs.http.post("/as/attestation", content=json.dumps(_sample_body()))
    assert (response.status_code, response.text) == (400, "Content type error")
    response = await kbs.http.post(
        "/as/attestation",
        content=json.dumps(_sample_body()),
        headers={"Content-Type": "application/vnd.example+json; charset=utf-8"},
    )
    assert response.status_code == 200
    response = await kbs.http.post(
        "/as/attestation", content=b'{"tee": NaN}', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.text.startswith("Json deserialize error: ")
    response = await kbs.http.post(
        "/as/attestation", content=b'{\n "tee":', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.text.endswith("at line 2 column 8")


async def test_body_limit(tmp_path, tdx_verifier):
    async with await _start(tmp_path, tdx_verifier, http_server={"payload_request_size": 1}) as kbs:
        response = await kbs.http.post(
            "/attestation",
            content=b" " * (1024 * 1024 + 1),
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 413
    assert response.text.startswith("JSON payload is larger than allowed")


# --------------------------------------------------------------------------- challenge


async def test_challenge(kbs):
    ok = await kbs.http.post("/as/challenge", json={"tee": "tdx", "tee_params": ""})
    assert (ok.status_code, ok.content) == (200, b"")
    # TNG >= v2.3 (OHTTP) sends {} and falls back on this text.
    empty = await kbs.http.post("/as/challenge", json={})
    assert empty.status_code == 500
    assert empty.text == "An internal error occured: \n0: Failed to get inner tee"
    no_params = await kbs.http.post("/as/challenge", json={"tee": "tdx"})
    assert no_params.text == "An internal error occured: \n0: Failed to get inner tee_params"
    not_string = await kbs.http.post("/as/challenge", json={"tee": "tdx", "tee_params": 1})
    assert not_string.status_code == 400
    assert "invalid type: integer `1`, expected a string" in not_string.text
    unknown = await kbs.http.post("/as/challenge", json={"tee": "xyz", "tee_params": ""})
    assert unknown.text == "An internal error occured: \n0: tee `xyz not supported`"
    disabled = await kbs.http.post("/as/challenge", json={"tee": "se", "tee_params": ""})
    assert disabled.text.endswith("1: tee 'se' is not enabled on this server")


# --------------------------------------------------------------------------- rate limit


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/as/attestation", _sample_body()),
        ("/challenge", {"tee": "sample", "tee_params": ""}),
    ],
)
async def test_rate_limit(tmp_path, tdx_verifier, path, body):
    limits = {"rate_limit": {"burst": 3, "requests_per_second": 0.5}}
    async with await _start(tmp_path, tdx_verifier, **limits) as kbs:
        await kbs.admin().set_reference_values(SAMPLE_REFERENCE_VALUES)
        for _ in range(3):
            assert (await kbs.http.post(path, json=body)).status_code == 200
        refused = await kbs.http.post(path, json=body)
        assert refused.status_code == 429
        assert without_request_id(refused.json()) == {
            "type": ERR + "TooManyRequests",
            "detail": "too many requests from this client",
        }
        assert refused.headers["retry-after"] == "2"
        # Another client address has its own bucket.
        other = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=kbs.app, client=("10.0.0.9", 4711)),
            base_url="http://kbs",
        )
        async with other:
            assert (await other.post(path, json=body)).status_code == 200
        # Two seconds later one token has come back.
        advance(kbs.clock, seconds=2)
        assert (await kbs.http.post(path, json=body)).status_code == 200
        assert (await kbs.http.post(path, json=body)).status_code == 429


# --------------------------------------------------------------------------- policies


async def test_policy_endpoints_need_the_admin_token(kbs, tmp_path):
    for method, path, kwargs in [
        ("POST", "/as/policy", {"json": {"policy_id": "x", "policy": ""}}),
        ("GET", "/as/policy", {}),
        ("GET", "/policies", {}),
        ("GET", "/as/policy/default_cpu", {}),
        ("DELETE", "/as/policy/default_cpu", {}),
    ]:
        missing = await kbs.http.request(method, path, **kwargs)
        assert missing.status_code == 401
        assert missing.json()["type"] == ERR + "AdminAuthAccess"
        stranger = make_admin_key(tmp_path, "stranger")
        wrong = AdminKey(private_pem=stranger.private_pem, public_path=stranger.public_path)
        headers = kbs.admin()._headers()
        forged = _admin_headers(wrong)
        assert headers != forged
        refused = await kbs.http.request(method, path, headers=forged, **kwargs)
        assert refused.status_code == 401
        assert "not signed by a trusted identity provider" in refused.json()["detail"]


def _admin_headers(key: AdminKey) -> dict[str, str]:
    from kbs.client.api import AdminClient  # noqa: PLC0415

    return AdminClient("http://kbs", private_key_pem=key.private_pem)._headers()


async def test_policy_endpoints_share_the_kbs_policy_store(kbs):
    headers = kbs.admin()._headers()
    deny = 'package policy\nimport rego.v1\ndefault executables := 33\ntrust_claims := {"executables": executables}\n'
    # Set through the AS API ...
    response = await kbs.http.post(
        "/as/policy",
        json={"type": "rego", "policy_id": "strict_cpu", "policy": b64url(deny.encode())},
        headers=headers,
    )
    assert (response.status_code, response.content) == (200, b"")
    listed = (await kbs.http.get("/as/policy", headers=headers)).json()
    assert {
        "policy-id": "strict_cpu",
        "policy-hash": hashlib.sha384(deny.encode()).hexdigest(),
    } in listed
    assert {entry["policy-id"] for entry in listed} >= {"default_cpu", "default_gpu", "strict_cpu"}
    got = await kbs.http.get("/as/policy/strict_cpu", headers=headers)
    assert got.text == deny
    # ... it is what /attestation applies ...
    body = _sample_body(policy_ids=["strict"])
    claims = jwt.decode(
        (await kbs.http.post("/attestation", json=body)).text, options={"verify_signature": False}
    )
    assert claims["submods"]["cpu0"]["ear.status"] == "warning"
    assert claims["submods"]["cpu0"]["ear.appraisal-policy-id"] == "strict"
    # ... and the KBS flow uses the same store: overwrite default_cpu through the AS API.
    await kbs.http.post(
        "/policy",
        json={"policy_id": "default_cpu", "policy": b64url(deny.encode())},
        headers=headers,
    )
    async with kbs.guest() as guest:
        token = await guest.attest()
    assert (
        jwt.decode(token, options={"verify_signature": False})["submods"]["cpu0"]["ear.status"]
        == "warning"
    )
    # A policy set through the KBS admin API shows up here.
    await kbs.admin().set_attestation_policy(deny, policy_id="via_kbs_cpu")
    assert (await kbs.http.get("/as/policy/via_kbs_cpu", headers=headers)).text == deny
    # Delete, then it is gone.
    deleted = await kbs.http.delete("/as/policy/strict_cpu", headers=headers)
    assert (deleted.status_code, deleted.content) == (200, b"")
    missing = await kbs.http.get("/as/policy/strict_cpu", headers=headers)
    assert missing.status_code == 500
    assert (
        missing.text
        == "An internal error occured: \n0: get policy\n1: policy 'strict_cpu' not found"
    )
    again = await kbs.http.delete("/as/policy/strict_cpu", headers=headers)
    assert again.text.endswith("1: policy 'strict_cpu' not found")


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"policy_id": "bad id", "policy": ""}, "0: set policy\n1: policy id must match"),
        (
            {"policy_id": "x", "policy": "!"},
            "0: set policy\n1: base64 decode policy\n2: Invalid symbol 33",
        ),
        ({"policy_id": "x", "policy": b64url(b"package other")}, "0: set policy\n1: "),
        (
            {"policy_id": "x", "policy": b64url(b"\xff\xfe")},
            "0: set policy\n1: policy is not UTF-8",
        ),
    ],
)
async def test_set_policy_errors(kbs, body, text):
    response = await kbs.http.post("/as/policy", json=body, headers=kbs.admin()._headers())
    assert response.status_code == 500
    assert response.text.startswith("An internal error occured: \n" + text), response.text


async def test_set_policy_missing_field(kbs):
    response = await kbs.http.post(
        "/as/policy", json={"policy": ""}, headers=kbs.admin()._headers()
    )
    assert response.status_code == 400
    assert response.text.startswith("Json deserialize error: missing field `policy_id`")


# --------------------------------------------------------------------------- keys


async def test_jwks_and_certificate_agree_across_apis(kbs):
    root = (await kbs.http.get("/.well-known/jwks.json")).json()
    under_as = (await kbs.http.get("/as/.well-known/jwks.json")).json()
    assert root == under_as
    assert [k["alg"] for k in root["keys"]] == ["ES256", "RS384"]
    pem = await kbs.http.get("/as/certificate")
    assert pem.headers["content-type"] == "application/x-pem-file"
    certs = x509.load_pem_x509_certificates(pem.content)
    assert len(certs) == 2
    for entry, cert in zip(root["keys"], certs, strict=True):
        # The JWK Set publishes x5c in standard base64 (RFC 7517) ...
        assert base64.b64decode(entry["x5c"][0]) == cert.public_bytes(serialization.Encoding.DER)
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
        with pytest.raises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    # ... and both profiles' tokens verify with the published keys.
    for profile in ("ear", "simple"):
        token = (await kbs.http.post("/attestation", json=_sample_body(token_type=profile))).text
        header = jwt.get_unverified_header(token)
        (entry,) = [k for k in root["keys"] if k["kid"] == header["kid"]]
        jwt.decode(token, jwt.PyJWK(entry).key, algorithms=[entry["alg"]])
    discovery = (await kbs.http.get("/as/.well-known/openid-configuration")).json()
    assert discovery["jwks_uri"] == "http://kbs/as/.well-known/jwks.json"
    assert discovery["issuer"] == "CoCo-Attestation-Service"
    assert (await kbs.http.get("/as/healthz")).status_code == 200


async def test_generated_keys_and_certificates_survive_a_restart(tmp_path, tdx_verifier):
    async with await _start(tmp_path, tdx_verifier) as first:
        before = (
            (await first.http.get("/certificate")).content,
            (await first.http.get("/.well-known/jwks.json")).json(),
        )
    async with await _start(tmp_path, tdx_verifier) as second:
        after = (
            (await second.http.get("/certificate")).content,
            (await second.http.get("/.well-known/jwks.json")).json(),
        )
    assert before == after


def _self_signed_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


async def test_configured_simple_signer_with_a_ca_chain(tmp_path, tdx_verifier):
    # TNG's CI shape: an RSA signer key and a CA-issued certificate chain.
    ca_key, ca = _self_signed_ca("AS token CA")
    signer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AS token signer")]))
        .issuer_name(ca.subject)
        .public_key(signer_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (tmp_path / "signer.key").write_bytes(
        signer_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "signer.pem").write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, ca))
    )
    overrides = {
        "attestation_service": {
            "attestation_token_broker": {
                "type": "Simple",
                "simple_signer": {
                    "key_path": str(tmp_path / "signer.key"),
                    "cert_path": str(tmp_path / "signer.pem"),
                },
            }
        }
    }
    async with await _start(tmp_path, tdx_verifier, **overrides) as kbs:
        await kbs.admin().set_reference_values(SAMPLE_REFERENCE_VALUES)
        pem = (await kbs.http.get("/certificate")).content
        assert leaf.public_bytes(serialization.Encoding.PEM) in pem
        assert ca.public_bytes(serialization.Encoding.PEM) in pem
        runtime = tng_runtime_data(REPORT)
        tng = Tng22Verifier(kbs.http, "http://kbs/as", ["default"], trusted_certs=[ca])
        token = await tng.verify(
            tee="sample",
            evidence=sample_evidence(report_data_for(runtime)),
            report=REPORT,
            now=_now(kbs),
        )
        assert len(jwt.get_unverified_header(token)["jwk"]["x5c"]) == 2


async def test_no_certificate_configured(tmp_path, tdx_verifier):
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for name, key in (("ear.key", ec_key), ("simple.key", rsa_key)):
        (tmp_path / name).write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    overrides = {
        "attestation_service": {
            "attestation_token_broker": {
                "signer": {"key_path": str(tmp_path / "ear.key")},
                "simple_signer": {"key_path": str(tmp_path / "simple.key")},
            }
        }
    }
    async with await _start(tmp_path, tdx_verifier, **overrides) as kbs:
        response = await kbs.http.get("/as/certificate")
    assert response.status_code == 404
    assert response.json() == {"error": "No certificate configured"}


# --------------------------------------------------------------------------- API selection


async def test_serving_only_the_attestation_service(tmp_path):
    async with running_kbs(settings_for(tmp_path, None), apis=["as"]) as as_only:
        assert (await as_only.http.post("/kbs/v0/auth", json={})).status_code == 404
        assert (await as_only.http.post("/as/attestation", json=_sample_body())).status_code == 200
        assert (await as_only.http.get("/.well-known/jwks.json")).status_code == 200
        assert (await as_only.http.get("/healthz")).status_code == 200
        assert (await as_only.http.get("/as/healthz")).status_code == 200
    async with running_kbs(settings_for(tmp_path, None), apis=["kbs"]) as kbs_only:
        assert (await kbs_only.http.post("/as/attestation", json=_sample_body())).status_code == 404
        assert (await kbs_only.http.post("/attestation", json=_sample_body())).status_code == 404
        auth = await kbs_only.http.post("/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample"})
        assert auth.status_code == 200


async def test_several_devices_one_token(kbs):
    # The CPU is affirming, the (sample) GPU is not: EAR says so per submodule, Simple
    # refuses outright.
    runtime = {"a": 1}
    body = {
        "verification_requests": [
            {
                "tee": "sample",
                "evidence": b64url(sample_evidence(report_data_for(runtime))),
                "runtime_data": {"structured": runtime},
            },
            {"tee": "sampledevice", "evidence": b64url(sample_evidence(b""))},
        ],
        "policy_ids": ["default"],
    }
    ear = await kbs.http.post("/attestation", json=body)
    submods = jwt.decode(ear.text, options={"verify_signature": False})["submods"]
    assert {name: s["ear.status"] for name, s in submods.items()} == {
        "cpu0": "affirming",
        "gpu0": "contraindicated",
    }
    simple = await kbs.http.post("/attestation", json={**body, "token_type": "simple"})
    assert simple.status_code == 500
    assert simple.text.endswith("1: Reject by policy default")


async def test_ear_signer_must_not_be_rsa(tmp_path, tdx_verifier):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "rsa.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    overrides = {
        "attestation_service": {
            "attestation_token_broker": {"signer": {"key_path": str(tmp_path / "rsa.key")}}
        }
    }
    with pytest.raises(ValueError, match="simple_signer"):
        async with await _start(tmp_path, tdx_verifier, **overrides):
            pass


def test_create_app_needs_known_apis(tmp_path):
    from kbs.app import create_app  # noqa: PLC0415

    for apis in ([], ["kbs", "admin"]):
        with pytest.raises(ValueError, match="apis"):
            create_app(settings_for(tmp_path, None), apis=apis)


async def test_openapi_document_lists_each_operation_once(kbs):
    # Warnings are errors here: a duplicate operation id would fail the request.
    schema = (await kbs.http.get("/openapi.json")).json()
    assert "/attestation" in schema["paths"]
    assert "/kbs/v0/auth" in schema["paths"]
    # The copy under /as is documented too, as an operation of its own.
    assert "/as/attestation" in schema["paths"]
    ids = [op["operationId"] for ops in schema["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
