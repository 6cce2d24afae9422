# SPDX-License-Identifier: Apache-2.0
"""Several application instances sharing one database serve one guest interchangeably."""

from __future__ import annotations

import base64
import contextlib
import hashlib
from pathlib import Path

import httpx
import pytest
import rfc8785
from support.kbs_app import (
    SAMPLE_REFERENCE_VALUES,
    make_admin_key,
    now_clock,
    running_kbs,
    settings_for,
)

from kbs.client.tee_key import TeeKeyPair


async def _alternating_flow(a, b, key: TeeKeyPair) -> bytes:
    """auth on A, attest on B, resource on A, with one cookie jar."""
    jar = httpx.Cookies()
    http_a = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=a.app), base_url="http://kbs", cookies=jar
    )
    http_b = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=b.app), base_url="http://kbs", cookies=jar
    )
    async with http_a, http_b:
        auth = await http_a.post(
            "/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample", "extra-params": ""}
        )
        nonce = auth.json()["nonce"]
        http_b.cookies = http_a.cookies
        runtime = {"tee-pubkey": key.public_jwk(), "nonce": nonce, "additional-evidence": ""}
        digest = hashlib.sha384(rfc8785.dumps(runtime)).digest()
        attest = await http_b.post(
            "/kbs/v0/attest",
            json={
                "runtime-data": {"nonce": nonce, "tee-pubkey": key.public_jwk()},
                "tee-evidence": {
                    "primary_evidence": {
                        "svn": "1",
                        "report_data": base64.b64encode(digest).decode(),
                    },
                    "additional_evidence": "",
                },
            },
        )
        assert attest.status_code == 200, attest.text
        http_a.cookies = http_b.cookies
        resource = await http_a.get("/kbs/v0/resource/shared/key/one")
        assert resource.status_code == 200, resource.text
        return key.decrypt(resource.json())


async def _two_instances(tmp_path: Path, url: str) -> None:
    admin_key = make_admin_key(tmp_path)
    clock = now_clock()
    # The resources live in the shared database too (kvstorage on [database]).
    overrides = {"plugins": [{"name": "resource", "storage_backend_type": "kvstorage"}]}
    settings = settings_for(tmp_path, admin_key, database_url=url, overrides=overrides)
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(running_kbs(settings, clock=clock, admin_key=admin_key))
        b = await stack.enter_async_context(running_kbs(settings, clock=clock, admin_key=admin_key))
        # Admin writes through A are visible through B, and one signing key serves both.
        await a.admin().set_reference_values(SAMPLE_REFERENCE_VALUES)
        await b.admin().set_resource("shared/key/one", b"shared-secret")
        assert a.app.state.kbs.signer.kid == b.app.state.kbs.signer.kid
        for _ in range(3):
            assert await _alternating_flow(a, b, TeeKeyPair.generate()) == b"shared-secret"
            assert await _alternating_flow(b, a, TeeKeyPair.generate()) == b"shared-secret"


async def test_two_instances_on_one_sqlite_file(tmp_path: Path) -> None:
    await _two_instances(tmp_path, f"sqlite:///{tmp_path / 'shared.db'}")


@pytest.mark.postgres
async def test_two_instances_on_one_postgres_database(tmp_path: Path, pg_database_url: str) -> None:
    await _two_instances(tmp_path, pg_database_url)
