# SPDX-License-Identifier: Apache-2.0
"""Explain over HTTP: every policy's decision with the failing rule, the trust vector with
the rule that set each claim, the evaluated input; and request ids on every answer."""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from kbs.client.api import AdminClient, KbsClientError
from support.kbs_app import (
    SAMPLE_REFERENCE_VALUES,
    RunningKbs,
    advance,
    make_admin_key,
    running_kbs,
    settings_for,
)

ERR = "https://github.com/confidential-containers/kbs/errors/"
CAI = "cai/key/model"


def _by_kind(explained: dict, kind: str) -> list[dict]:
    return [p for p in explained["policies"] if p["kind"] == kind]


async def test_explain_names_the_failing_rule(affirming_kbs: RunningKbs) -> None:
    admin = affirming_kbs.admin()
    await admin.set_resource(CAI, b"secret")
    await admin.set_release_policy(
        "cai/*", allow_list={"tee": ["tdx"], "ear_status": ["affirming"]}
    )
    async with affirming_kbs.guest() as guest:
        token = await guest.attest()
    explained = await admin.explain(CAI, token=token)
    assert explained["decision"] == "deny"
    assert explained["token"]["verified"] is True
    [global_policy] = _by_kind(explained, "global")
    assert global_policy["allowed"] is True
    assert global_policy["failing_rules"] == []
    [release] = _by_kind(explained, "release")
    assert release["id"] == "cai/*"
    assert release["policy_kind"] == "allow_list"
    assert release["allowed"] is False
    failing = {f["rule"]: f for f in release["failing_rules"]}
    # The allow-list member that failed, and the condition inside it.
    assert set(failing) == {"allow", "tee_allowed"}
    assert failing["allow"]["failed"][0]["condition"] == "tee_allowed"
    [condition] = failing["tee_allowed"]["failed"]
    assert 'a["ear.veraison.annotated-evidence"][tee]' in condition["condition"]
    rules = {r["rule"]: r for r in release["rules"]}
    assert rules["ear_status_allowed"]["value"] is True
    assert rules["allow"]["set_by"]["kind"] == "default"
    # The input that was evaluated.
    assert explained["input"]["submods"]["cpu0"]["ear.status"] == "affirming"
    assert explained["data"] == {
        "plugin": "resource",
        "resource-path": ["cai", "key", "model"],
        "query": {},
    }


async def test_trust_vector_names_the_rule_behind_each_claim(kbs: RunningKbs) -> None:
    # No reference values: the sample evidence is contraindicated.
    admin = kbs.admin()
    async with kbs.guest() as guest:
        token = await guest.attest()
    explained = await admin.explain(CAI, token=token)
    [global_policy] = _by_kind(explained, "global")
    assert global_policy["allowed"] is False
    [failing] = global_policy["failing_rules"]
    assert failing["rule"] == "allow"
    assert 'appraisal["ear.status"] == "affirming"' in failing["failed"][0]["condition"]
    cpu0 = explained["appraisals"]["cpu0"]
    assert cpu0["policy_id"] == "default_cpu"
    assert cpu0["token_status"] == "contraindicated"
    assert cpu0["status"] == "contraindicated"
    hardware = cpu0["trust_vector"]["hardware"]
    assert hardware["value"] == 97
    assert hardware["rule"]["set_by"]["kind"] == "default"
    sample_body = next(
        b
        for b in hardware["rule"]["bodies"]
        if "input.sample" in b.get("failed", {}).get("condition", "")
        or b.get("failed", {}).get("condition", "").startswith("input.sample.svn")
    )
    assert 'query_reference_value("svn")' in sample_body["failed"]["condition"]
    assert cpu0["input"]["sample"]["svn"] == "1"

    # With reference values the claims come from the sample bodies.
    await admin.set_reference_values(SAMPLE_REFERENCE_VALUES)
    explained = await admin.explain(CAI, token=token)
    cpu0 = explained["appraisals"]["cpu0"]
    assert cpu0["token_status"] == "contraindicated"  # what the token said
    assert cpu0["status"] == "affirming"  # what the policies say now
    executables = cpu0["trust_vector"]["executables"]
    assert executables["value"] == 3
    assert executables["rule"]["set_by"]["kind"] == "body"
    line = executables["rule"]["set_by"]["line"]
    holding = [b for b in executables["rule"]["bodies"] if b["holds"]]
    assert [b["line"] for b in holding] == [line]
    assert cpu0["trust_vector"]["instance-identity"]["value"] == 0


async def test_explain_an_expired_token_and_bare_claims(affirming_kbs: RunningKbs) -> None:
    # An admin token that outlives the jump of the server's clock below.
    key = serialization.load_pem_private_key(affirming_kbs.admin_key.private_pem, password=None)
    now = int(time.time())
    admin = AdminClient(
        "http://kbs",
        token=jwt.encode({"role": "admin", "exp": now + 7200}, key, algorithm="EdDSA"),
        http=affirming_kbs.http,
    )
    async with affirming_kbs.guest() as guest:
        token = await guest.attest()
    advance(affirming_kbs.clock, hours=1)
    explained = await admin.explain(CAI, token=token)
    assert explained["token"]["verified"] is False
    assert "expired" in explained["token"]["error"]
    assert explained["decision"] == "allow"  # the policies would allow; the token would not
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["submods"]["cpu0"]["ear.status"] = "warning"
    explained = await admin.explain(CAI, claims=claims)
    assert explained["decision"] == "deny"
    assert "token" not in explained


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"resource": "a/b"},
        {"resource": CAI},
        {"resource": CAI, "token": 5},
        {"resource": CAI, "token": "x.y"},
    ],
)
async def test_malformed_explain_requests(kbs: RunningKbs, body: dict) -> None:
    response = await kbs.http.post(
        "/kbs/v0/explain", json=body, headers={"Authorization": f"Bearer {kbs.admin()._bearer()}"}
    )
    assert response.status_code in (400, 404)
    assert response.json()["type"] in (ERR + "InvalidAdminRequest", ERR + "InvalidRequestPath")


async def test_explain_needs_an_admin(kbs: RunningKbs) -> None:
    response = await kbs.http.post("/kbs/v0/explain", json={"resource": CAI, "claims": {}})
    assert response.status_code == 401
    assert response.json()["type"] == ERR + "AdminAuthAccess"
    with pytest.raises(KbsClientError):
        await kbs.admin(role="viewer").explain(CAI, claims={})


# --------------------------------------------------------------------------- request ids


async def test_request_ids(kbs: RunningKbs) -> None:
    ok = await kbs.http.get("/healthz")
    generated = ok.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert (await kbs.http.get("/healthz")).headers["x-request-id"] != generated
    echoed = await kbs.http.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    for hostile in (b"a b", b"x" * 129, b"semi;colon", "\u00fcml".encode("latin-1")):
        replaced = await kbs.http.get("/healthz", headers={b"X-Request-Id": hostile})
        assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"]), hostile
    # Admin errors carry it as a member, guest errors also in the detail.
    admin_error = await kbs.http.get("/kbs/v0/resource-policy")
    assert admin_error.json()["request_id"] == admin_error.headers["x-request-id"]
    assert "request id" not in admin_error.json()["detail"]
    attest_error = await kbs.http.post("/kbs/v0/attest", json={}, headers={"X-Request-Id": "r-1"})
    assert attest_error.json()["detail"].endswith("(request id r-1)")


async def test_request_ids_come_from_the_injected_entropy(tmp_path: Path) -> None:
    counter = itertools.count()

    def entropy(n: int) -> bytes:
        return next(counter).to_bytes(n, "big")

    admin_key = make_admin_key(tmp_path)
    async with running_kbs(
        settings_for(tmp_path, admin_key), admin_key=admin_key, entropy=entropy
    ) as kbs:
        first = int((await kbs.http.get("/healthz")).headers["x-request-id"], 16)
        second = int((await kbs.http.get("/healthz")).headers["x-request-id"], 16)
    assert second == first + 1
