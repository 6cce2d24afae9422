# SPDX-License-Identifier: Apache-2.0
"""Per-resource release policies over HTTP: management, and release decisions where the
global policy and every matching release policy must all allow."""

from __future__ import annotations

import base64
import logging

import pytest

from kbs.client.api import KbsClientError
from policy.defaults import DEFAULT_RESOURCE_POLICY
from support.kbs_app import RunningKbs

ERR = "https://github.com/confidential-containers/kbs/errors/"
CAI = "cai/key/model"
OTHER = "default/key/other"
MRTD = "ab" * 48


def _headers(kbs: RunningKbs) -> dict[str, str]:
    return {"Authorization": f"Bearer {kbs.admin()._bearer()}"}


async def test_manage_release_policies(kbs: RunningKbs) -> None:
    admin = kbs.admin()
    rego = 'package policy\nimport rego.v1\ndefault allow := false\nallow if input.submods.cpu0["ear.status"] == "affirming"\n'
    stored = await admin.set_release_policy("cai/*/*", rego=rego)
    assert stored["prefix"] == "cai/*"  # canonical form
    assert stored["kind"] == "rego"
    stored = await admin.set_release_policy(
        CAI, allow_list={"mr_td": [MRTD.upper()], "tcb_status": ["UpToDate"]}
    )
    assert stored["kind"] == "allow_list"
    assert [p["prefix"] for p in await admin.list_release_policies()] == ["cai/*", CAI]
    got = await admin.get_release_policy("cai/*")
    assert got["rego"] == rego
    got = await admin.get_release_policy(CAI)
    assert got["allow_list"] == {"mr_td": [MRTD], "tcb_status": ["UpToDate"]}
    assert "mr_td_allowed if" in got["rego"]
    assert "updated_by" in got
    await admin.delete_release_policy("cai/*")
    with pytest.raises(KbsClientError, match="ReleasePolicyNotFound"):
        await admin.get_release_policy("cai/*")
    with pytest.raises(KbsClientError, match="ReleasePolicyNotFound"):
        await admin.delete_release_policy("cai/*")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"prefix": "cai", "allow_list": {"tee": ["tdx"]}}, "not a path pattern"),
        ({"prefix": "cai/*", "allow_list": {"colour": ["red"]}}, "not known"),
        ({"prefix": "cai/*", "allow_list": {"mr_td": ["abcd"]}}, "48-byte hex"),
        ({"prefix": "cai/*", "allow_list": {"tee": []}}, "list of strings"),
        ({"prefix": "cai/*", "policy": "%%%"}, "base64"),
        ({"prefix": "cai/*"}, "exactly one"),
        (
            {"prefix": "cai/*", "policy": "x", "allow_list": {"tee": ["tdx"]}},
            "exactly one",
        ),
    ],
)
async def test_invalid_release_policies(kbs: RunningKbs, body: dict, detail: str) -> None:
    response = await kbs.http.post("/kbs/v0/release-policy", json=body, headers=_headers(kbs))
    assert response.status_code == 401
    assert response.json()["type"] == ERR + "ParsePolicyError"
    assert detail in response.json()["detail"]


async def test_uncompilable_rego_is_refused(kbs: RunningKbs) -> None:
    policy = base64.urlsafe_b64encode(b"package policy\nallow if {").decode()
    response = await kbs.http.post(
        "/kbs/v0/release-policy",
        json={"prefix": "cai/*", "policy": policy},
        headers=_headers(kbs),
    )
    assert response.status_code == 401
    assert response.json()["type"] == ERR + "PolicyEngineError"


async def test_release_policy_denies_while_the_global_policy_allows(
    affirming_kbs: RunningKbs, caplog: pytest.LogCaptureFixture
) -> None:
    kbs = affirming_kbs
    admin = kbs.admin()
    await admin.set_resource(CAI, b"cai secret")
    await admin.set_resource(OTHER, b"other secret")
    async with kbs.guest() as guest:
        assert await guest.get_resource(CAI) == b"cai secret"  # the global policy allows
    await admin.set_release_policy("cai/*", allow_list={"tee": ["tdx"]})
    async with kbs.guest() as guest:
        await guest.attest()
        with caplog.at_level(logging.INFO, logger="kbs.routes.resource"):
            denied = await guest._http.get(
                f"/kbs/v0/resource/{CAI}", headers={"X-Request-Id": "support-ticket-42"}
            )
        # Paths the release policy does not cover are unaffected.
        assert await guest.get_resource(OTHER) == b"other secret"
    assert denied.status_code == 401
    body = denied.json()
    assert body["type"] == ERR + "PolicyDeny"
    assert body["request_id"] == "support-ticket-42"
    assert denied.headers["x-request-id"] == "support-ticket-42"
    assert body["detail"] == "Access denied by policy (request id support-ticket-42)"
    # The request id finds the explanation in the log: which policy, which rule.
    [line] = [r.getMessage() for r in caplog.records if "support-ticket-42" in r.getMessage()]
    assert "global policy resource-policy allowed" in line
    assert "release policy cai/* denied" in line
    assert "tee_allowed" in line
    # Removing the release policy releases again.
    await admin.delete_release_policy("cai/*")
    async with kbs.guest() as guest:
        assert await guest.get_resource(CAI) == b"cai secret"


async def test_every_matching_policy_must_allow(affirming_kbs: RunningKbs) -> None:
    kbs = affirming_kbs
    admin = kbs.admin()
    await admin.set_resource(CAI, b"cai secret")
    # A broad policy that allows and a narrower one that allows: released.
    await admin.set_release_policy("cai/*", allow_list={"tee": ["sample"]})
    await admin.set_release_policy(CAI, allow_list={"ear_status": ["affirming"]})
    async with kbs.guest() as guest:
        assert await guest.get_resource(CAI) == b"cai secret"
    # The narrower one cannot widen what the broader one denies...
    await admin.set_release_policy("cai/*", allow_list={"tee": ["tdx"]})
    async with kbs.guest() as guest:
        await guest.attest()
        assert (await guest._http.get(f"/kbs/v0/resource/{CAI}")).status_code == 401
    # ...and release policies cannot widen what the global policy denies.
    await admin.set_release_policy("cai/*", allow_list={"tee": ["sample"]})
    await admin.set_resource_policy("package policy\ndefault allow := false\n")
    async with kbs.guest() as guest:
        await guest.attest()
        response = await guest._http.get(f"/kbs/v0/resource/{CAI}")
    assert response.status_code == 401
    assert response.json()["type"] == ERR + "PolicyDeny"


async def test_rego_release_policy_sees_the_request(affirming_kbs: RunningKbs) -> None:
    kbs = affirming_kbs
    admin = kbs.admin()
    await admin.set_resource("cai/key/a", b"a")
    await admin.set_resource("cai/key/b", b"b")
    await admin.set_release_policy(
        "cai/key/*",
        rego='package policy\nimport rego.v1\ndefault allow := false\nallow if data["resource-path"][2] == "a"\n',
    )
    async with kbs.guest() as guest:
        assert await guest.get_resource("cai/key/a") == b"a"
        response = await guest._http.get("/kbs/v0/resource/cai/key/b")
    assert response.json()["type"] == ERR + "PolicyDeny"


def _remembered(metrics: str) -> float:
    (value,) = [
        float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("kbs_policy_outcomes_remembered_total ")
    ]
    return value


async def test_remembered_decisions_follow_every_policy_change(affirming_kbs: RunningKbs) -> None:
    """One token asks again and again while admins change policies: each change counts."""
    kbs = affirming_kbs
    admin = kbs.admin()
    await admin.set_resource(CAI, b"cai secret")
    async with kbs.guest() as guest:
        await guest.attest()
        bearer = {"Authorization": f"Bearer {guest.token}"}

        async def status() -> int:
            response = await kbs.http.get(f"/kbs/v0/resource/{CAI}", headers=bearer)
            if response.status_code != 200:
                assert response.json()["type"] == ERR + "PolicyDeny"
            return response.status_code

        async def remembered() -> float:
            return _remembered((await kbs.http.get("/metrics")).text)

        assert [await status(), await status()] == [200, 200]
        assert await remembered() == 1  # the second answer came from memory
        # A release policy added, then removed.
        await admin.set_release_policy("cai/*", allow_list={"tee": ["tdx"]})
        assert [await status(), await status()] == [401, 401]
        await admin.delete_release_policy("cai/*")
        assert await status() == 200
        # The global policy changed to deny, then back.
        await admin.set_resource_policy("package policy\ndefault allow := false\n")
        assert await status() == 401
        await admin.set_resource_policy(DEFAULT_RESOURCE_POLICY)
        assert await status() == 200
        # Another query is another question.
        before = await remembered()
        response = await kbs.http.get(f"/kbs/v0/resource/{CAI}?x=1", headers=bearer)
        assert response.status_code == 200
        assert await remembered() == before
        # A policy that reads the clock is evaluated every time.
        await admin.set_resource_policy("package policy\nallow if time.now_ns() > 0\n")
        before = await remembered()
        assert [await status(), await status()] == [200, 200]
        assert await remembered() == before
        assert await status() == 200
    # Every request was audited, remembered or not: 8 releases and 3 denials.
    records = (await admin.audit(kind="release", limit=500))["records"]
    assert [r["outcome"] for r in records].count("allowed") == 8
    assert [r["outcome"] for r in records].count("denied") == 3


async def test_the_query_string_reaches_the_policy(affirming_kbs: RunningKbs) -> None:
    kbs = affirming_kbs
    admin = kbs.admin()
    await admin.set_resource(CAI, b"cai secret")
    await admin.set_release_policy(
        "cai/*", rego='package policy\ndefault allow := false\nallow if data.query.ok == "1"\n'
    )
    async with kbs.guest() as guest:
        await guest.attest()
        bearer = {"Authorization": f"Bearer {guest.token}"}
        statuses = [
            (await kbs.http.get(f"/kbs/v0/resource/{CAI}{query}", headers=bearer)).status_code
            for query in ("?ok=1", "", "?ok=2", "?", "?ok=1")
        ]
    assert statuses == [200, 401, 401, 401, 200]
