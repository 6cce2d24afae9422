# SPDX-License-Identifier: Apache-2.0
"""Metrics move with guest and admin flows, with bounded labels; JSON logs carry request ids."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kbs import __version__
from kbs.client.api import (
    GET_RESOURCE_MAX_ATTEMPTS,
    AdminClient,
    KbsClient,
    KbsClientError,
    SampleAttester,
)
from kbs.client.tee_key import TeeKeyPair
from support.kbs_app import RunningKbs, running_kbs, settings_for
from support.processes import kbs_servers

SECRET = b"observability-secret-\x07-value"
DENY_ALL = "package policy\ndefault allow := false\n"
ALLOW_ALL = "package policy\ndefault allow := true\n"


class Scrape:
    """One /metrics answer, parsed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sample ``name`` whose labels include ``labels`` (0 when there is none)."""
        found = [
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        assert len(found) <= 1, f"{name}{labels} is ambiguous: {found}"
        return found[0] if found else 0.0

    def label_values(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if s.name == name and label in s.labels}


async def scrape(kbs: RunningKbs) -> Scrape:
    response = await kbs.http.get("/metrics")
    assert response.status_code == 200
    return Scrape(response.text)


async def _auth(http: httpx.AsyncClient) -> str:
    response = await http.post(
        "/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample", "extra-params": ""}
    )
    assert response.status_code == 200
    nonce: str = response.json()["nonce"]
    return nonce


async def _attest(http: httpx.AsyncClient, nonce: str, report_data: bytes) -> httpx.Response:
    key = TeeKeyPair.generate()
    body = {
        "init-data": None,
        "runtime-data": {"nonce": nonce, "tee-pubkey": key.public_jwk()},
        "tee-evidence": {
            "primary_evidence": {"svn": "1", "report_data": base64.b64encode(report_data).decode()},
            "additional_evidence": "",
        },
    }
    return await http.post("/kbs/v0/attest", json=body)


# --------------------------------------------------------------------------- guest flows


async def test_full_flow_moves_the_reference_counters(affirming_kbs: RunningKbs) -> None:
    kbs = affirming_kbs
    await kbs.admin().set_resource("cai/sample/password", SECRET)
    async with kbs.guest() as guest:
        assert await guest.get_resource("kbs:///cai/sample/password") == SECRET
    m = await scrape(kbs)
    assert m.value("kbs_auth_requests_total") == 1
    assert m.value("kbs_auth_successes_total") == 1
    assert m.value("kbs_auth_errors_total") == 0
    assert m.value("kbs_attestation_requests_total") == 1
    assert m.value("kbs_attestation_successes_total", tee_type="sample") == 1
    assert m.value("kbs_attestation_failures_total", tee_type="sample") == 0
    assert m.value("kbs_attestation_errors_total") == 0
    assert m.value("kbs_policy_evaluations_total") == 1
    assert m.value("kbs_policy_approvals_total") == 1
    assert m.value("kbs_policy_violations_total") == 0
    assert m.value("kbs_resource_writes_total", resource_path="cai/sample/password") == 1
    assert m.value("kbs_resource_reads_total", resource_path="cai/sample/password") == 1
    # The HTTP family: sizes and durations per route template, no request in flight.
    attest = {"method": "POST", "route": "/kbs/v0/attest"}
    assert m.value("kbs_http_requests_total", status="200", **attest) == 1
    assert m.value("kbs_http_request_size_bytes_count", **attest) == 1
    assert m.value("kbs_http_request_size_bytes_sum", **attest) > 100
    assert m.value("kbs_http_response_size_bytes_sum", **attest) > 100  # the token
    assert m.value("kbs_http_request_duration_seconds_count", **attest) == 1
    assert m.value("kbs_http_active_connections") == 0
    # Every guest route under its template, the fast path's included (kbs/fastpath.py).
    for method, route in (
        ("POST", "/kbs/v0/auth"),
        ("GET", "/kbs/v0/resource/{path:path}"),
    ):
        assert m.value("kbs_http_requests_total", method=method, route=route, status="200") == 1
    assert m.value("kbs_evidence_verification_seconds_count", tee="sample", outcome="ok") == 1
    assert m.value("kbs_build_info", version=__version__) == 1
    # The scrape itself is not counted (as in the reference).
    assert "/metrics" not in m.label_values("kbs_http_requests_total", "route")


async def test_wrong_nonce_is_an_attestation_failure(affirming_kbs: RunningKbs) -> None:
    async with affirming_kbs.new_http() as http:
        await _auth(http)
        response = await _attest(http, "not-the-session-nonce", b"\x00" * 48)
    assert response.status_code == 401
    m = await scrape(affirming_kbs)
    assert m.value("kbs_attestation_requests_total") == 1
    assert m.value("kbs_attestation_failures_total", tee_type="sample") == 1
    assert m.value("kbs_attestation_successes_total", tee_type="sample") == 0
    assert m.value("kbs_attestation_errors_total") == 0


async def test_evidence_not_bound_to_the_nonce_is_a_failure(affirming_kbs: RunningKbs) -> None:
    async with affirming_kbs.new_http() as http:
        nonce = await _auth(http)
        response = await _attest(http, nonce, b"\x01" * 48)  # report_data of something else
    assert response.status_code == 401
    m = await scrape(affirming_kbs)
    assert m.value("kbs_attestation_failures_total", tee_type="sample") == 1
    assert m.value("kbs_attestation_errors_total") == 0
    assert m.value("kbs_evidence_verification_seconds_count", tee="sample", outcome="rejected") == 1


async def test_attest_without_session_or_body_is_an_error(affirming_kbs: RunningKbs) -> None:
    async with affirming_kbs.new_http() as http:
        assert (await http.post("/kbs/v0/attest", json={})).status_code == 401  # no cookie
        await _auth(http)
        assert (await http.post("/kbs/v0/attest", content=b"{not json")).status_code == 401
    m = await scrape(affirming_kbs)
    assert m.value("kbs_attestation_requests_total") == 2
    assert m.value("kbs_attestation_errors_total") == 2
    assert m.label_values("kbs_attestation_failures_total", "tee_type") == set()


async def test_auth_errors_are_counted(kbs: RunningKbs) -> None:
    bad = [{}, {"version": "9.9.9", "tee": "sample"}, {"version": "0.4.0", "tee": "nope"}]
    for body in bad:
        assert (await kbs.http.post("/kbs/v0/auth", json=body)).status_code == 401
    m = await scrape(kbs)
    assert m.value("kbs_auth_requests_total") == 3
    assert m.value("kbs_auth_errors_total") == 3
    assert m.value("kbs_auth_successes_total") == 0
    # A TEE name the guest made up never becomes a label.
    assert "nope" not in m.text


async def test_denied_resource_is_a_policy_violation(affirming_kbs: RunningKbs) -> None:
    kbs = affirming_kbs
    admin = kbs.admin()
    await admin.set_resource("cai/sample/password", SECRET)
    await admin.set_resource_policy(DENY_ALL)
    async with kbs.guest() as guest:
        with pytest.raises(KbsClientError) as denied:
            await guest.get_resource("kbs:///cai/sample/password")
    assert denied.value.status == 401
    m = await scrape(kbs)
    # The client re-attests and retries after a 401, as the reference client does.
    assert m.value("kbs_policy_evaluations_total") == GET_RESOURCE_MAX_ATTEMPTS
    assert m.value("kbs_policy_violations_total") == GET_RESOURCE_MAX_ATTEMPTS
    assert m.value("kbs_policy_approvals_total") == 0
    # Denied: no read is counted, so the path is not a read label.
    assert m.label_values("kbs_resource_reads_total", "resource_path") == set()


async def test_paths_guests_make_up_never_become_labels(affirming_kbs: RunningKbs) -> None:
    kbs = affirming_kbs
    await kbs.admin().set_resource_policy(ALLOW_ALL)
    async with kbs.guest() as guest:
        for i in range(5):
            with pytest.raises(KbsClientError):
                await guest.get_resource(f"kbs:///made-up/path/n{i}")
    m = await scrape(kbs)
    # Allowed, then not found (and retried by the client).
    assert m.value("kbs_policy_approvals_total") == 5 * GET_RESOURCE_MAX_ATTEMPTS
    assert m.label_values("kbs_resource_reads_total", "resource_path") == set()
    assert "made-up" not in m.text


async def test_admin_writes_and_deletes_are_counted(kbs: RunningKbs) -> None:
    admin = kbs.admin()
    await admin.set_resource("a/b/c", b"1")
    await admin.set_resource("a/b/c", b"2")
    await admin.delete_resource("a/b/c")
    # An unauthenticated write is refused and counted nowhere.
    assert (await kbs.http.post("/kbs/v0/resource/x/y/z", content=b"v")).status_code == 401
    m = await scrape(kbs)
    assert m.value("kbs_resource_writes_total", resource_path="a/b/c") == 2
    assert m.value("kbs_resource_deletes_total", resource_path="a/b/c") == 1
    assert "x/y/z" not in m.text


async def test_made_up_methods_and_paths_share_labels(kbs: RunningKbs) -> None:
    for i in range(3):
        response = await kbs.http.request(f"BREW{i}", f"/made-up-{i}")
        assert response.status_code == 404
    m = await scrape(kbs)
    assert m.value("kbs_http_requests_total", method="other", route="<unmatched>") == 3
    assert "BREW" not in m.text
    assert "made-up" not in m.text


async def test_rate_limited_requests_are_counted(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, None, overrides={"rate_limit": {"burst": 1, "requests_per_second": 0.001}}
    )
    async with running_kbs(settings) as kbs:
        body = {"version": "0.4.0", "tee": "sample", "extra-params": ""}
        assert (await kbs.http.post("/kbs/v0/auth", json=body)).status_code == 200
        refused = await kbs.http.post("/kbs/v0/auth", json=body)
        assert refused.status_code == 429
        m = await scrape(kbs)
    assert m.value("kbs_http_rate_limited_total", route="/kbs/v0/auth") == 1
    assert m.value("kbs_http_requests_total", route="/kbs/v0/auth", status="429") == 1


# --------------------------------------------------------------------------- processes


@pytest.mark.slow
def test_two_workers_add_up_reference_counters(tmp_path: Path) -> None:
    args = ["--dev", "--data-dir", str(tmp_path / "data"), "--workers", "2"]
    with kbs_servers(1, args, cwd=tmp_path) as [server]:
        body = {"version": "0.4.0", "tee": "sample", "extra-params": ""}
        for _ in range(12):
            # A new connection each time, so both workers get some.
            assert httpx.post(f"{server.url}/kbs/v0/auth", json=body).status_code == 200
        for _ in range(3):  # whichever worker answers the scrape
            m = Scrape(httpx.get(f"{server.url}/metrics").text)
            assert m.value("kbs_auth_requests_total") == 12
            assert m.value("kbs_auth_successes_total") == 12
            assert m.value("kbs_http_active_connections") == 0
            # One build_info sample for the deployment, not one per worker.
            assert m.value("kbs_build_info", version=__version__) == 1


@pytest.mark.slow
async def test_json_logs_carry_the_request_id_and_no_secret(tmp_path: Path) -> None:
    args = ["--dev", "--data-dir", str(tmp_path / "data"), "--workers", "1"]
    args += ["--log-format", "json"]
    request_id = "obs-test.request-42"
    # At debug level: the most the server ever logs.
    command = [sys.executable, "-m", "kbs", "--log-level", "debug", "serve"]
    with kbs_servers(1, args, cwd=tmp_path, command=command) as [server]:
        headers = {"X-Request-Id": request_id}
        key_pem = (tmp_path / "data/admin/admin.key").read_bytes()
        async with httpx.AsyncClient(headers=headers, timeout=30) as http:
            admin = AdminClient(server.url, private_key_pem=key_pem, http=http)
            await admin.set_resource("cai/sample/password", SECRET)
            await admin.set_reference_values(
                {"launch_digest": ["abcde"], "svn": ["1"], "major_version": 1}
            )
            guest = KbsClient(server.url, attester=SampleAttester(), http=http)
            assert await guest.get_resource("kbs:///cai/sample/password") == SECRET
            token = guest.token
            # A failing request logs too (at info), with the same id.
            assert (await http.post(f"{server.url}/kbs/v0/auth", json={})).status_code == 401
    assert token
    log = server.log()
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    for line in lines:
        assert set(line) >= {"time", "level", "logger", "message", "request_id"}
        assert line["time"].endswith("Z")
    # The harness polls /healthz without an id: those requests get ids of their own.
    probes = {
        line["request_id"]
        for line in lines
        if line["logger"] == "uvicorn.access" and "/healthz" in line["message"]
    }
    served = [line for line in lines if line["request_id"] not in (None, *probes)]
    access = [line for line in served if line["logger"] == "uvicorn.access"]
    # set-resource, set-reference-values, auth, attest, resource, the failing auth.
    assert len(access) >= 6
    assert {line["request_id"] for line in served} == {request_id}
    assert any(line["logger"] == "kbs.app" and "-> 401" in line["message"] for line in served)
    # Neither the secret (in any encoding) nor the token is ever logged.
    for needle in (
        SECRET.decode("latin-1"),
        base64.b64encode(SECRET).decode(),
        base64.urlsafe_b64encode(SECRET).decode().rstrip("="),
        token,
        token.split(".")[2],
    ):
        assert needle not in log
