# SPDX-License-Identifier: Apache-2.0
"""``http_server.path_prefix``: the same flows under ``/trustee/...`` as at the root.

An ALB that routes ``/trustee/kbs/...`` here without its rewrite annotation forwards the
prefixed path; with the annotation it forwards ``/kbs/...``. Both must work.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from kbs.client.api import AdminClient, KbsClient, SampleAttester
from kbs.client.tee_key import TeeKeyPair
from support.kbs_app import (
    SAMPLE_REFERENCE_VALUES,
    AdminKey,
    RunningKbs,
    running_kbs,
    settings_for,
)

PREFIX = "/trustee"


@pytest.fixture
async def prefixed(tmp_path: Path, admin_key: AdminKey) -> AsyncIterator[RunningKbs]:
    settings = settings_for(
        tmp_path, admin_key, overrides={"http_server": {"path_prefix": PREFIX + "/"}}
    )
    async with running_kbs(settings, admin_key=admin_key) as running:
        yield running


async def test_guest_and_admin_flows_under_the_prefix(prefixed: RunningKbs) -> None:
    """kbs-client pointed at http://host/trustee: admin writes, RCAR, resource release."""
    assert prefixed.admin_key is not None
    admin = AdminClient(
        "http://kbs" + PREFIX, private_key_pem=prefixed.admin_key.private_pem, http=prefixed.http
    )
    await admin.set_reference_values(SAMPLE_REFERENCE_VALUES)
    await admin.set_resource("cai/sample/password", b"prefixed secret")
    for _ in range(2):
        # A fresh cookie jar per guest: the session cookie (no Path attribute) is scoped
        # to /trustee/kbs/v0 by the jar and must come back on attest and resource.
        async with prefixed.new_http() as http:
            guest = KbsClient(
                "http://kbs" + PREFIX,
                attester=SampleAttester(),
                tee_key=TeeKeyPair.generate(),
                http=http,
            )
            assert await guest.get_resource("kbs:///cai/sample/password") == b"prefixed secret"
            cookies = list(http.cookies.jar)
            assert [c.name for c in cookies] == ["kbs-session-id"]
            assert cookies[0].path == PREFIX + "/kbs/v0"
    # The same secret is reachable without the prefix (an ALB that rewrites the path).
    async with prefixed.new_http() as http:
        guest = KbsClient("http://kbs", attester=SampleAttester(), http=http)
        assert await guest.get_resource("cai/sample/password") == b"prefixed secret"


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}:]+(:path)?\}", "x", path)


async def test_every_route_answers_the_same_with_and_without_the_prefix(
    prefixed: RunningKbs,
) -> None:
    """Generic: each route in the app's OpenAPI document (present and future ones, such as
    the attestation-service routes under /as) is reachable both ways and gives the same
    answer to the same request (invalid or unauthenticated, so deterministic)."""
    paths = prefixed.app.openapi()["paths"]
    assert "/kbs/v0/auth" in paths
    assert "/healthz" in paths
    checked = 0
    for template, operations in paths.items():
        path = _concrete(template)
        for method in operations:
            # A fixed request id, so both answers carry the same one.
            kwargs: dict = {"headers": {"X-Request-Id": "same-request"}}
            if method in ("post", "put", "patch"):
                kwargs["content"] = b"{}"
            bare = await prefixed.http.request(method.upper(), path, **kwargs)
            under = await prefixed.http.request(method.upper(), PREFIX + path, **kwargs)
            if template == "/metrics":
                # The exposition counts these very requests: the status is what matches.
                assert under.status_code == bare.status_code == 200
            else:
                assert (under.status_code, under.content) == (bare.status_code, bare.content), (
                    method,
                    path,
                )
            # The KBS's catch-all (/kbs/v0/ and /kbs/v0/{plugin}...) answers 404 by design.
            assert bare.status_code != 404 or "{" in template or template == "/kbs/v0/", (
                method,
                path,
                bare.text,
            )
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize(
    "path",
    [
        "/trustee/kbs/v0/auth",
        "/trustee/as/anything",
        "/trustee/healthz",
        "/trustee/readyz",
        "/trustee/.well-known/jwks.json",
    ],
)
async def test_prefixed_paths_map_onto_root_routes(prefixed: RunningKbs, path: str) -> None:
    headers = {"X-Request-Id": "same-request"}
    bare = await prefixed.http.get(path.removeprefix(PREFIX), headers=headers)
    under = await prefixed.http.get(path, headers=headers)
    assert under.status_code == bare.status_code
    assert under.content == bare.content


async def test_other_prefixes_are_not_routes(prefixed: RunningKbs) -> None:
    for path in ("/other/kbs/v0/auth", "/trusteex/kbs/v0/auth", "/trustee/trustee/kbs/v0/auth"):
        response = await prefixed.http.post(
            path, json={"version": "0.4.0", "tee": "sample", "extra-params": ""}
        )
        assert response.status_code == 404, path


async def test_without_a_prefix_configured_prefixed_paths_are_unknown(kbs: RunningKbs) -> None:
    response = await kbs.http.post(
        "/trustee/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample", "extra-params": ""}
    )
    assert response.status_code == 404
    assert (await kbs.http.get("/healthz")).status_code == 200


async def test_admin_acl_matches_the_path_without_the_prefix(
    tmp_path: Path, admin_key: AdminKey
) -> None:
    """An ACL written for Trustee paths (^/kbs/v0/resource/...) applies under the prefix,
    and a prefix in the ACL is not what is matched."""
    admin = {
        "authorization_mode": "AuthenticatedAuthorization",
        "authentication": {
            "bearer_jwt": {"identity_providers": [{"public_key_uri": str(admin_key.public_path)}]}
        },
        "authorization": {
            "regex_acl": {
                "acls": [{"role": "admin", "allowed_endpoints": "^/kbs/v0/resource/cai/.+$"}]
            }
        },
    }
    settings = settings_for(
        tmp_path,
        admin_key,
        overrides={"http_server": {"path_prefix": PREFIX}, "admin": admin},
    )
    async with running_kbs(settings, admin_key=admin_key) as running:
        client = AdminClient(
            "http://kbs" + PREFIX, private_key_pem=admin_key.private_pem, http=running.http
        )
        await client.set_resource("cai/sample/password", b"ok")
        with pytest.raises(Exception, match="AdminAuth"):
            await client.set_resource("other/sample/password", b"no")


async def test_prefixed_requests_log_the_stripped_path(
    prefixed: RunningKbs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="kbs.app")
    response = await prefixed.http.get(PREFIX + "/kbs/v0/resource/a/b/c")
    assert response.status_code == 401
    assert "GET /kbs/v0/resource/a/b/c -> 401" in caplog.text


def test_httpx_is_the_client_under_test() -> None:
    # The cookie-path assertion above depends on httpx following RFC 6265 default-path.
    jar = httpx.Cookies()
    response = httpx.Response(
        200,
        headers={"set-cookie": "kbs-session-id=abc"},
        request=httpx.Request("POST", "http://kbs/trustee/kbs/v0/auth"),
    )
    jar.extract_cookies(response)
    assert next(iter(jar.jar)).path == "/trustee/kbs/v0"
