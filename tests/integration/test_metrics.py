# SPDX-License-Identifier: Apache-2.0
"""GET /metrics: bounded labels in one process, every worker's counts with several."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from support.kbs_app import RunningKbs
from support.processes import kbs_servers


def _samples(text: str, name: str) -> dict[tuple[str, str, str], float]:
    found = {}
    pattern = re.compile(rf'^{name}\{{method="([^"]*)",route="([^"]*)",status="([^"]*)"\}} (\S+)$')
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            found[match.group(1), match.group(2), match.group(3)] = float(match.group(4))
    return found


async def test_requests_are_counted_by_route_template(kbs: RunningKbs) -> None:
    await kbs.http.post("/kbs/v0/auth", json={})
    await kbs.http.get("/kbs/v0/resource/secret-repo/secret-type/secret-tag")
    await kbs.http.get("/no/such/path")
    response = await kbs.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    counts = _samples(response.text, "kbs_http_requests_total")
    assert counts[("POST", "/kbs/v0/auth", "401")] == 1
    assert counts[("GET", "<unmatched>", "404")] == 1
    # Route templates only: nothing a guest sent ends up in a label.
    assert "secret-repo" not in response.text
    assert "/no/such/path" not in response.text
    assert "kbs_http_request_duration_seconds_bucket" in response.text


@pytest.mark.slow
def test_several_workers_are_added_up(tmp_path: Path) -> None:
    args = ["--dev", "--data-dir", str(tmp_path / "data"), "--workers", "2"]
    with kbs_servers(1, args, cwd=tmp_path) as [server]:
        for _ in range(20):
            # A new connection each time, so both workers get some.
            assert httpx.post(f"{server.url}/kbs/v0/auth", json={}).status_code == 401
        for _ in range(3):  # whichever worker answers the scrape
            text = httpx.get(f"{server.url}/metrics").text
            counts = _samples(text, "kbs_http_requests_total")
            assert counts[("POST", "/kbs/v0/auth", "401")] == 20
