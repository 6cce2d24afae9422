# SPDX-License-Identifier: Apache-2.0
"""Limits through the HTTP API: body sizes, trusted proxies, the unattested-session cap."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.kbs_app import (
    AdminKey,
    RunningKbs,
    advance,
    running_kbs,
    settings_for,
    without_request_id,
)

ERR = "https://github.com/confidential-containers/kbs/errors/"

#: ``payload_request_size = 1`` (MiB), the smallest configurable limit.
LIMIT = 1024 * 1024
CHUNK = 64 * 1024

#: Every route that reads a body, and who may call it: a guest, a guest with a
#: session cookie, or an admin. The attestation-service routes answer in the
#: reference AS's plain-text framing; the KBS routes with the KBS error body.
BODY_ROUTES = [
    ("/kbs/v0/auth", "guest"),
    ("/kbs/v0/attest", "session"),
    ("/kbs/v0/resource/a/b/c", "admin"),
    ("/kbs/v0/resource-rollback/a/b/c", "admin"),
    ("/kbs/v0/resource-policy", "admin"),
    ("/kbs/v0/attestation-policy", "admin"),
    ("/kbs/v0/reference-value", "admin"),
    ("/kbs/v0/release-policy", "admin"),
    ("/kbs/v0/explain", "admin"),
    ("/attestation", "guest"),
    ("/as/attestation", "guest"),
    ("/challenge", "guest"),
    ("/policy", "admin"),
]

_AS_ROUTES = {"/attestation", "/as/attestation", "/challenge", "/policy"}


async def _headers(kbs: RunningKbs, who: str) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if who == "admin":
        headers.update(kbs.admin()._headers())
    elif who == "session":
        auth = await kbs.http.post(
            "/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample", "extra-params": ""}
        )
        assert auth.status_code == 200
        headers["cookie"] = f"kbs-session-id={auth.cookies['kbs-session-id']}"
    return headers


def _assert_too_large(path: str, response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    if path in _AS_ROUTES:
        assert response.text == (
            f"JSON payload is larger than allowed (request body exceeds {LIMIT} bytes)"
        )
    else:
        assert without_request_id(response.json()) == {
            "type": ERR + "PayloadTooLarge",
            "detail": f"request body exceeds {LIMIT} bytes",
        }


@pytest.fixture
async def small_kbs(tmp_path: Path, admin_key: AdminKey) -> AsyncIterator[RunningKbs]:
    settings = settings_for(
        tmp_path,
        admin_key,
        overrides={"http_server": {"payload_request_size": 1}, "rate_limit": {"enabled": False}},
    )
    async with running_kbs(settings, admin_key=admin_key) as running:
        yield running


@pytest.mark.parametrize(("path", "who"), BODY_ROUTES)
async def test_declared_length_over_the_limit(small_kbs: RunningKbs, path: str, who: str) -> None:
    headers = await _headers(small_kbs, who)
    response = await small_kbs.http.post(path, content=b" " * (LIMIT + 1), headers=headers)
    _assert_too_large(path, response)


@pytest.mark.parametrize(("path", "who"), BODY_ROUTES)
async def test_endless_chunked_body_is_cut_at_the_limit(
    small_kbs: RunningKbs, path: str, who: str
) -> None:
    # No Content-Length: the body is streamed (chunked) and never ends. The answer
    # comes once the limit is passed, having pulled no more than the limit.
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        while True:
            pulled += CHUNK
            yield b" " * CHUNK

    headers = await _headers(small_kbs, who)
    response = await small_kbs.http.post(path, content=endless(), headers=headers)
    _assert_too_large(path, response)
    assert LIMIT < pulled <= LIMIT + CHUNK


async def test_chunked_body_at_the_limit_is_read(small_kbs: RunningKbs) -> None:
    document = json.dumps({"version": "0.4.0", "tee": "sample", "extra-params": ""}).encode()
    padded = document + b" " * (LIMIT - len(document))

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(padded), CHUNK):
            yield padded[start : start + CHUNK]

    response = await small_kbs.http.post("/kbs/v0/auth", content=chunks())
    assert response.status_code == 200
    assert "content-length" not in response.request.headers
    over = await small_kbs.http.post("/kbs/v0/auth", content=padded + b" ")
    _assert_too_large("/kbs/v0/auth", over)


# --------------------------------------------------------------------------- proxies


def _client(kbs: RunningKbs, peer: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=kbs.app, client=(peer, 4711)), base_url="http://kbs"
    )


async def _auth(http: httpx.AsyncClient, forwarded_for: str | None = None) -> int:
    headers = {"x-forwarded-for": forwarded_for} if forwarded_for is not None else {}
    response = await http.post(
        "/kbs/v0/auth",
        json={"version": "0.4.0", "tee": "sample", "extra-params": ""},
        headers=headers,
    )
    if response.status_code == 429:
        assert without_request_id(response.json())["type"] == ERR + "TooManyRequests"
    return response.status_code


@pytest.fixture
async def proxied_kbs(tmp_path: Path, admin_key: AdminKey) -> AsyncIterator[RunningKbs]:
    settings = settings_for(
        tmp_path,
        admin_key,
        overrides={
            "http_server": {"trusted_proxies": ["10.0.0.0/8"]},
            "rate_limit": {"burst": 2, "requests_per_second": 1},
        },
    )
    async with running_kbs(settings, admin_key=admin_key) as running:
        yield running


async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(
    proxied_kbs: RunningKbs,
) -> None:
    async with _client(proxied_kbs, "192.0.2.50") as attacker:
        # A new made-up address each time does not give the peer a new bucket.
        codes = [await _auth(attacker, f"203.0.113.{n}") for n in range(4)]
    assert codes == [200, 200, 429, 429]


async def test_clients_behind_a_trusted_proxy_get_their_own_buckets(
    proxied_kbs: RunningKbs,
) -> None:
    async with _client(proxied_kbs, "10.0.0.2") as alb:
        first = [await _auth(alb, "198.51.100.1") for _ in range(3)]
        second = [await _auth(alb, "198.51.100.2") for _ in range(3)]
        # A client prepending addresses to its header stays in its own bucket.
        spoofed = await _auth(alb, "198.51.100.77, 198.51.100.1")
        # A malformed header: the balancer's own bucket, not a fresh one per value.
        malformed = [await _auth(alb, "not-an-ip") for _ in range(3)]
    assert first == [200, 200, 429]
    assert second == [200, 200, 429]
    assert spoofed == 429
    assert malformed == [200, 200, 429]


async def test_audit_records_the_forwarded_client(proxied_kbs: RunningKbs) -> None:
    admin = proxied_kbs.admin()
    async with _client(proxied_kbs, "10.0.0.2") as alb:
        response = await alb.post(
            "/kbs/v0/resource/a/b/c",
            content=b"secret",
            headers={**admin._headers(), "x-forwarded-for": "198.51.100.9"},
        )
        assert response.status_code == 200
    query = await proxied_kbs.http.get("/kbs/v0/audit", headers=admin._headers())
    assert query.status_code == 200
    clients = {event["client"] for event in query.json()["records"]}
    assert "198.51.100.9" in clients
    assert "10.0.0.2" not in clients


# --------------------------------------------------------------------------- sessions


async def _capped(tmp_path: Path, admin_key: AdminKey, database_url: str | None, cap: int) -> Any:
    settings = settings_for(
        tmp_path,
        admin_key,
        database_url=database_url,
        overrides={
            "attestation_service": {"max_unattested_sessions": cap},
            "rate_limit": {"enabled": False},
        },
    )
    return running_kbs(settings, admin_key=admin_key)


async def _session_cap_through_http(
    tmp_path: Path, admin_key: AdminKey, database_url: str | None
) -> None:
    async with (
        await _capped(tmp_path, admin_key, database_url, 3) as one,
        await _capped(tmp_path, admin_key, database_url, 3) as two,
    ):
        # Two replicas on one database: the cap counts the sessions of both.
        assert [await _auth(one.http) for _ in range(2)] == [200, 200]
        # The second replica counts the first one's sessions.
        assert [await _auth(two.http) for _ in range(2)] == [200, 429]
        # The first recounts once its count is a second old (the documented overshoot
        # is what other replicas open within that second), and sees the cap reached.
        advance(one.clock, seconds=1)
        refused = await one.http.post(
            "/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample", "extra-params": ""}
        )
        assert refused.status_code == 429
        assert without_request_id(refused.json()) == {
            "type": ERR + "TooManyRequests",
            "detail": "too many sessions awaiting attestation",
        }
        assert refused.headers["retry-after"] == "1"
        assert "set-cookie" not in refused.headers
        # Once the sessions expire (timeout: 5 minutes) they no longer count.
        advance(one.clock, minutes=5, seconds=1)
        assert await _auth(one.http) == 200


async def test_unattested_session_cap_sqlite(tmp_path: Path, admin_key: AdminKey) -> None:
    await _session_cap_through_http(tmp_path, admin_key, f"sqlite:///{tmp_path / 'kbs.db'}")


@pytest.mark.postgres
async def test_unattested_session_cap_postgres(
    tmp_path: Path, admin_key: AdminKey, pg_database_url: str
) -> None:
    await _session_cap_through_http(tmp_path, admin_key, pg_database_url)
