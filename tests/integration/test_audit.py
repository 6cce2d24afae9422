# SPDX-License-Identifier: Apache-2.0
"""The audit trail over HTTP: what is recorded (never values), queries and paging, the hash
chain and ``kbs audit verify``, concurrent writers, and releases refused without a record."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import json
from pathlib import Path

import httpx
import pytest
import rfc8785
import sqlalchemy as sa

from kbs import db
from kbs.audit import GENESIS_HASH, AuditEvent, AuditLog, token_id
from kbs.client.api import KbsClientError
from kbs.client.tee_key import TeeKeyPair
from kbs.clock import SystemClock
from kbs.errors import AuditUnavailableError
from support.kbs_app import (
    SAMPLE_REFERENCE_VALUES,
    RunningKbs,
    make_admin_key,
    running_kbs,
    settings_for,
)
from support.processes import kbs_server, run_cli

ERR = "https://github.com/confidential-containers/kbs/errors/"
CAI = "cai/key/model"
SECRET = b"the model key 0123456789"


def _db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'data' / 'kbs.db'}"


async def _records(kbs: RunningKbs, **filters) -> list[dict]:
    return (await kbs.admin().audit(limit=500, order="asc", **filters))["records"]


async def test_what_is_recorded(affirming_kbs: RunningKbs) -> None:
    kbs = affirming_kbs
    admin = kbs.admin()
    await admin.set_resource(CAI, SECRET)
    await admin.set_resource(CAI, b"rotated value")
    async with kbs.guest() as guest:
        token = await guest.attest()
        assert await guest.get_resource(CAI) == b"rotated value"
        await guest._http.get("/kbs/v0/resource/cai/key/missing")
    await admin.set_resource_policy("package policy\ndefault allow := false\n")
    async with kbs.guest() as guest:
        await guest.attest()
        await guest._http.get(f"/kbs/v0/resource/{CAI}", headers={"X-Request-Id": "denied-1"})
    bad = kbs.new_http()
    async with bad:
        await bad.post(
            "/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample", "extra-params": ""}
        )
        await bad.post("/kbs/v0/attest", json={"runtime-data": {}, "tee-evidence": {}})
    await admin.rollback_resource(CAI, "1")

    records = await _records(kbs)
    text = json.dumps(records)
    assert SECRET.decode() not in text
    assert "rotated value" not in text
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    _check_admin_records(records)
    _check_guest_records(records, token)


def _check_admin_records(records: list[dict]) -> None:
    puts = [r for r in records if r["action"] == "resource.put"]
    assert len(puts) == 2
    assert all(r["kind"] == "admin" and r["outcome"] == "accepted" for r in puts)
    assert puts[0]["actor"] == "admin"
    assert puts[0]["detail"]["before"] is None
    assert puts[0]["detail"]["after"].startswith("hmac-sha256:")
    assert puts[1]["detail"]["before"] == puts[0]["detail"]["after"]
    [rollback] = [r for r in records if r["action"] == "resource.rollback"]
    assert rollback["detail"]["after"] == puts[0]["detail"]["after"]  # back to the first value
    assert rollback["detail"]["restored"] == "1"
    [policy_change] = [r for r in records if r["action"] == "resource-policy.set"]
    assert len(policy_change["detail"]["after"]) == 96  # SHA-384, as Trustee hashes policies


def _check_guest_records(records: list[dict], token: str) -> None:
    attestations = [r for r in records if r["kind"] == "attestation"]
    ok = [r for r in attestations if r["outcome"] == "ok"]
    assert ok[0]["detail"]["token_id"] == token_id(token)
    assert ok[0]["detail"]["tee"] == "sample"
    assert ok[0]["detail"]["devices"]["cpu0"]["measurements"] == {
        "svn": "1",
        "launch_digest": "abcde",
        "debug": False,
    }
    assert ok[0]["client"] == "127.0.0.1"
    [failed] = [r for r in attestations if r["outcome"] == "failed"]
    assert failed["detail"]["error"] == "AttestationError"
    assert "Attest failed" in failed["detail"]["reason"]

    releases = [r for r in records if r["kind"] == "release"]
    allowed = next(r for r in releases if r["outcome"] == "allowed")
    assert allowed["resource"] == CAI
    assert allowed["detail"]["version"] == "2"
    assert allowed["detail"]["token_id"] == token_id(token)
    assert allowed["detail"]["backend"] == "file"
    assert allowed["detail"]["policies"][0] == {
        **allowed["detail"]["policies"][0],
        "kind": "global",
        "allowed": True,
    }
    missing = next(r for r in releases if r["outcome"] == "failed")
    assert missing["detail"]["reason"] == "resource not found"
    denied = next(r for r in releases if r["outcome"] == "denied")
    assert denied["request_id"] == "denied-1"
    assert denied["detail"]["policies"][0]["allowed"] is False


async def test_query_filters_and_paging(affirming_kbs: RunningKbs) -> None:
    kbs = affirming_kbs
    admin = kbs.admin()
    for tag in ("a", "b", "c", "d"):
        await admin.set_resource(f"cai/key/{tag}", b"v")
    await admin.set_resource("default/aliyun/x", b"v")
    everything = await _records(kbs)
    puts = await _records(kbs, action="resource.put")
    assert len(puts) == 5
    assert [r["resource"] for r in await _records(kbs, resource="cai/*", kind="admin")] == [
        "cai/key/a",
        "cai/key/b",
        "cai/key/c",
        "cai/key/d",
    ]
    assert [r["resource"] for r in await _records(kbs, resource="*/aliyun/*")] == [
        "default/aliyun/x"
    ]
    # Newest first by default, two at a time.
    page = await admin.audit(action="resource.put", limit=2)
    assert [r["resource"] for r in page["records"]] == ["default/aliyun/x", "cai/key/d"]
    page = await admin.audit(action="resource.put", limit=2, before=page["next"])
    assert [r["resource"] for r in page["records"]] == ["cai/key/c", "cai/key/b"]
    page = await admin.audit(action="resource.put", limit=2, before=page["next"])
    assert [r["resource"] for r in page["records"]] == ["cai/key/a"]
    assert page["next"] is None
    assert page["head"]["seq"] == everything[-1]["seq"]
    assert page["head"]["hash"] == everything[-1]["hash"]
    # Times: everything happened at the frozen instant.
    at = everything[0]["at"]
    assert len(await _records(kbs, since=at)) == len(everything)
    assert await _records(kbs, until=at) == []
    for bad in ({"order": "sideways"}, {"limit": "-1"}, {"since": "yesterday"}, {"resource": "x"}):
        response = await kbs.http.get(
            "/kbs/v0/audit", params=bad, headers={"Authorization": f"Bearer {admin._bearer()}"}
        )
        assert response.status_code == 400, bad
        assert response.json()["type"] == ERR + "InvalidAdminRequest"


async def test_chain_detects_an_edited_row(tmp_path: Path, affirming_kbs: RunningKbs) -> None:
    kbs = affirming_kbs
    admin = kbs.admin()
    await admin.set_resource(CAI, SECRET)
    async with kbs.guest() as guest:
        assert await guest.get_resource(CAI) == SECRET
    report = await admin.audit_verify()
    assert report["ok"] is True
    head = f"{report['head']['seq']}:{report['head']['hash']}"
    url = _db_url(tmp_path)
    verified = run_cli("kbs", "audit", "verify", "--database-url", url, "--anchor", head)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "audit chain intact" in verified.stdout

    # Someone with database access hides which token got the key.
    async with kbs.app.state.kbs.engine.begin() as conn:
        release = (
            await conn.execute(sa.select(db.audit).where(db.audit.c.kind == "release"))
        ).first()
        detail = json.loads(release.detail)
        detail["token_id"] = "0" * 64
        await conn.execute(
            sa.update(db.audit)
            .where(db.audit.c.seq == release.seq)
            .values(detail=json.dumps(detail, sort_keys=True, separators=(",", ":")))
        )
    broken = run_cli("kbs", "audit", "verify", "--database-url", url, "--json")
    assert broken.returncode == 1
    report = json.loads(broken.stdout)
    assert report["ok"] is False
    assert report["first_bad_seq"] == release.seq
    assert f"record {release.seq}: contents do not match its hash (edited)" in report["problems"]
    assert (await admin.audit_verify())["first_bad_seq"] == release.seq


async def test_chain_detects_deleted_and_truncated_rows(
    tmp_path: Path, affirming_kbs: RunningKbs
) -> None:
    admin = affirming_kbs.admin()
    for tag in ("a", "b", "c", "d"):
        await admin.set_resource(f"cai/key/{tag}", b"v")
    url = _db_url(tmp_path)
    head = (await admin.audit_verify())["head"]
    engine = affirming_kbs.app.state.kbs.engine
    async with engine.begin() as conn:
        await conn.execute(sa.delete(db.audit).where(db.audit.c.seq == head["seq"]))
    truncated = json.loads(
        run_cli("kbs", "audit", "verify", "--database-url", url, "--json").stdout
    )
    assert truncated["ok"] is False
    assert any("head" in p for p in truncated["problems"])
    async with engine.begin() as conn:  # the tail cut, and the head rewritten to match
        last = (await conn.execute(sa.select(sa.func.max(db.audit.c.seq)))).scalar_one()
        last_hash = (
            await conn.execute(sa.select(db.audit.c.hash).where(db.audit.c.seq == last))
        ).scalar_one()
        await conn.execute(sa.update(db.audit_head).values(seq=last, hash=last_hash))
    consistent = run_cli("kbs", "audit", "verify", "--database-url", url)
    assert consistent.returncode == 0  # consistent in itself...
    anchored = run_cli(
        "kbs", "audit", "verify", "--database-url", url, "--anchor", f"{head['seq']}:{head['hash']}"
    )
    assert anchored.returncode == 1  # ...but the head kept elsewhere is gone
    assert "anchor" in anchored.stdout
    async with engine.begin() as conn:
        await conn.execute(sa.delete(db.audit).where(db.audit.c.seq == 2))
    gap = json.loads(run_cli("kbs", "audit", "verify", "--database-url", url, "--json").stdout)
    assert gap["first_bad_seq"] == 2
    assert "record 2 is missing (next is 3)" in gap["problems"]


async def test_audit_write_failure_blocks_release(
    tmp_path: Path, affirming_kbs: RunningKbs
) -> None:
    kbs = affirming_kbs
    admin = kbs.admin()
    await admin.set_resource(CAI, SECRET)
    async with kbs.guest() as guest:
        token = await guest.attest()
        assert await guest.get_resource(CAI) == SECRET
    async with kbs.app.state.kbs.engine.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE kbs_audit RENAME TO kbs_audit_gone"))
    response = await kbs.new_http().get(
        f"/kbs/v0/resource/{CAI}", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 503
    assert response.json()["type"] == ERR + "AuditUnavailable"
    assert SECRET not in response.content
    # Admin changes are refused too, and nothing changes.
    with pytest.raises(KbsClientError, match="AuditUnavailable"):
        await admin.set_resource(CAI, b"unaudited")
    async with kbs.app.state.kbs.engine.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE kbs_audit_gone RENAME TO kbs_audit"))
    assert await admin.get_resource_version(CAI, "1") == SECRET
    assert len((await admin.resource_versions(CAI))["history"]) == 1


async def test_insecure_release_without_audit(tmp_path: Path) -> None:
    admin_key = make_admin_key(tmp_path)
    settings = settings_for(
        tmp_path, admin_key, overrides={"audit": {"insecure_release_without_audit": True}}
    )
    async with running_kbs(settings, admin_key=admin_key) as kbs:
        await kbs.admin().set_reference_values(SAMPLE_REFERENCE_VALUES)
        await kbs.admin().set_resource(CAI, SECRET)
        async with kbs.app.state.kbs.engine.begin() as conn:
            await conn.execute(sa.text("ALTER TABLE kbs_audit RENAME TO kbs_audit_gone"))
        async with kbs.guest() as guest:
            assert await guest.get_resource(CAI) == SECRET


def test_insecure_release_without_audit_is_refused_in_production(tmp_path: Path) -> None:
    from kbs.settings import ConfigError, load_settings  # noqa: PLC0415

    with pytest.raises(ConfigError, match="insecure_release_without_audit is refused"):
        load_settings(None, overrides={"audit": {"insecure_release_without_audit": True}})


# --------------------------------------------------------------------------- concurrency


async def _append_from_two_pools(url: str) -> None:
    db.migrate(url)
    engines = [db.make_async_engine(url, pool_size=5), db.make_async_engine(url, pool_size=5)]
    try:
        logs = [AuditLog(engine, value_key=b"k" * 32) for engine in engines]
        at = SystemClock().now()

        async def append(n: int) -> None:
            event = AuditEvent(kind="admin", action="test", outcome="ok", detail={"n": n})
            await logs[n % 2].append(event, at=at)

        await asyncio.gather(*(append(n) for n in range(60)))
        with db.make_sync_engine(url).connect() as conn:
            from kbs.audit import verify_chain  # noqa: PLC0415

            report = verify_chain(conn)
        assert report.ok, report.problems
        assert report.records == 60
        assert report.head_seq == 60
    finally:
        for engine in engines:
            await engine.dispose()


async def test_concurrent_appends_sqlite(tmp_path: Path) -> None:
    await _append_from_two_pools(f"sqlite:///{tmp_path / 'audit.db'}")


@pytest.mark.postgres
async def test_concurrent_appends_postgres(pg_database_url: str) -> None:
    await _append_from_two_pools(pg_database_url)


async def _counting_log(url: str) -> tuple[AuditLog, list[int], sa.engine.Engine]:
    """An AuditLog on ``url`` that counts the records of each transaction it commits."""
    db.migrate(url)
    engine = db.make_async_engine(url, pool_size=5)
    log = AuditLog(engine, value_key=b"k" * 32)
    batches: list[int] = []
    transaction = log._sql.transaction

    async def counted(body):  # type: ignore[no-untyped-def]
        result = await transaction(body)
        batches.append(len(result))
        return result

    log._sql.transaction = counted  # type: ignore[method-assign]
    return log, batches, db.make_sync_engine(url)


async def test_appends_of_one_turn_share_a_transaction(tmp_path: Path) -> None:
    """Group commit: fewer transactions than records, one chain in append order."""
    log, batches, sync = await _counting_log(f"sqlite:///{tmp_path / 'audit.db'}")
    at = SystemClock().now()
    try:
        records = await asyncio.gather(
            *(
                log.append(
                    AuditEvent(kind="admin", action="t", outcome="ok", detail={"n": n}), at=at
                )
                for n in range(40)
            )
        )
        # Every caller got its own record, numbered in the order the appends were made.
        assert [r.seq for r in records] == list(range(1, 41))
        assert [r.detail["n"] for r in records] == list(range(40))
        assert sum(batches) == 40
        assert len(batches) < 40
        # A later append is a batch of its own, chained to the last one.
        last = await log.append(AuditEvent(kind="admin", action="t", outcome="ok"), at=at)
        assert (last.seq, last.prev_hash) == (41, records[-1].hash)
        with sync.connect() as conn:
            from kbs.audit import verify_chain  # noqa: PLC0415

            report = verify_chain(conn)
        assert report.ok, report.problems
        assert report.records == 41
    finally:
        await log._engine.dispose()


async def test_a_failed_batch_fails_every_caller_and_the_next_one_works(tmp_path: Path) -> None:
    log, _, sync = await _counting_log(f"sqlite:///{tmp_path / 'audit.db'}")
    at = SystemClock().now()
    event = AuditEvent(kind="admin", action="t", outcome="ok")
    try:
        with sync.begin() as conn:
            conn.execute(sa.text("DELETE FROM kbs_audit_head"))
        results = await asyncio.gather(
            *(log.append(event, at=at) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, AuditUnavailableError) for r in results), results
        with sync.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM kbs_audit")).scalar() == 0
        with sync.begin() as conn:
            conn.execute(sa.text(f"INSERT INTO kbs_audit_head VALUES (1, 0, '{GENESIS_HASH}')"))
        # A caller that gave up does not stop the others of its batch.
        first = asyncio.ensure_future(log.append(event, at=at))
        second = asyncio.ensure_future(log.append(event, at=at))
        await asyncio.sleep(0)  # both are waiting for the flusher now
        first.cancel()
        assert (await second).seq == 2
        assert first.cancelled()
        # The cancelled caller's record was still written (it was in the batch).
        assert (await log.append(event, at=at)).seq == 3
    finally:
        await log._engine.dispose()


def _release(url: str, token: str) -> int:
    return httpx.get(
        f"{url}/kbs/v0/resource/{CAI}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    ).status_code


def _attest(url: str) -> str:
    key = TeeKeyPair.generate()
    with httpx.Client(base_url=url, timeout=30) as http:
        nonce = http.post(
            "/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample", "extra-params": ""}
        ).json()["nonce"]
        runtime = {"tee-pubkey": key.public_jwk(), "nonce": nonce, "additional-evidence": ""}
        digest = hashlib.sha384(rfc8785.dumps(runtime)).digest()
        response = http.post(
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
        assert response.status_code == 200, response.text
        return str(response.json()["token"])


def _processes_share_one_chain(tmp_path: Path, database_url: str) -> None:
    admin_key = make_admin_key(tmp_path)
    (tmp_path / "key.pem").write_bytes(admin_key.private_pem)
    config = tmp_path / "kbs.toml"
    config.write_text(
        f"""
environment = "development"
[database]
url = "{database_url}"
[http_server]
insecure_http = true
[attestation_service]
insecure_allow_sample_evidence = true
[admin]
authorization_mode = "AuthenticatedAuthorization"
[admin.authentication.bearer_jwt]
identity_providers = [{{ public_key_uri = "{admin_key.public_path}" }}]
[admin.authorization.regex_acl]
acls = [{{ role = "admin", allowed_endpoints = "^/kbs/.*$" }}]
[[plugins]]
name = "resource"
storage_backend_type = "kvstorage"
"""
    )
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    values = tmp_path / "rv.json"
    values.write_text(json.dumps(SAMPLE_REFERENCE_VALUES))
    args = ["--config", str(config), "--workers", "2"]
    with kbs_server(args, cwd=tmp_path) as (a, _), kbs_server(args, cwd=tmp_path) as (b, _):
        admin = ["config", "--auth-private-key", str(tmp_path / "key.pem")]
        put = ["set-resource", "--path", CAI, "--resource-file", str(secret)]
        assert run_cli("kbs.client", "--url", a, *admin, *put).returncode == 0
        rvs = ["set-reference-values", "--values-file", str(values)]
        assert run_cli("kbs.client", "--url", b, *admin, *rvs).returncode == 0
        tokens = [_attest(a), _attest(b)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
            statuses = list(
                pool.map(
                    lambda n: _release((a, b)[n % 2], tokens[n % 2]),
                    range(48),
                )
            )
        assert statuses == [200] * 48
    verified = run_cli("kbs", "audit", "verify", "--database-url", database_url, "--json")
    report = json.loads(verified.stdout)
    assert report["ok"], report["problems"]
    # 1 put, 1 reference-value change, 2 attestations, 48 releases.
    assert report["records"] == 52
    assert report["head"]["seq"] == 52
    assert report["head"]["hash"] != GENESIS_HASH


@pytest.mark.slow
def test_processes_share_one_chain_sqlite(tmp_path: Path) -> None:
    _processes_share_one_chain(tmp_path, f"sqlite:///{tmp_path / 'shared.db'}")


@pytest.mark.slow
@pytest.mark.postgres
def test_processes_share_one_chain_postgres(tmp_path: Path, pg_database_url: str) -> None:
    _processes_share_one_chain(tmp_path, pg_database_url)


async def test_an_accepted_change_that_fails_is_recorded(affirming_kbs: RunningKbs) -> None:
    admin = affirming_kbs.admin()
    version = await admin.set_resource(CAI, SECRET)
    assert version is not None
    with pytest.raises(KbsClientError, match="ResourceConflict"):
        await admin.delete_resource(CAI, version=version)
    records = await _records(affirming_kbs, action="resource.delete-version")
    assert [r["outcome"] for r in records] == ["accepted", "failed"]
    assert records[1]["detail"] == {
        "error": "ResourceConflict",
        "reason": "cannot delete the current version",
    }
    assert records[0]["request_id"] == records[1]["request_id"]
