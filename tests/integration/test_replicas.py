# SPDX-License-Identifier: Apache-2.0
"""Several replicas, really: two ``kbs serve`` processes on one PostgreSQL database.

What a Deployment with ``replicas: 2`` behind an ALB without sticky sessions does: each
call of a guest may land on either pod, a pod may die between two calls of one guest,
and both pods start at once against an empty database on the first install.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import rfc8785
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory

from kbs.client.tee_key import TeeKeyPair
from support.kbs_app import SAMPLE_REFERENCE_VALUES, make_admin_key
from support.processes import KbsProcess, kbs_servers, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

#: The ALB path the users' guide gives; both processes serve under it (no rewrite).
PREFIX = "/trustee"
SECRET = b"model decryption key"


def _head_revision() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parents[2] / "kbs/migrations"))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def _write_config(tmp_path: Path) -> tuple[Path, Path]:
    """A production-shaped config except for the sample TEE; the DSN comes from the
    environment (KBS_DATABASE__URL), as the Helm chart passes it from a Secret."""
    admin_key = make_admin_key(tmp_path)
    key_path = tmp_path / "admin.key"
    key_path.write_bytes(admin_key.private_pem)
    config = tmp_path / "kbs.toml"
    config.write_text(
        f"""
environment = "development"
data_dir = "{tmp_path / "data"}"
[http_server]
insecure_http = true
path_prefix = "{PREFIX}"
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
    return config, key_path


@dataclass
class Balancer:
    """What the ALB does: send a call where it is told, or to a live replica if that
    one is gone. Counts the calls each replica answered and the fail-overs."""

    servers: list[KbsProcess]
    served: dict[str, int] = field(default_factory=dict)
    failovers: int = 0

    def call(
        self, method: str, path: str, *, to: int, cookies: httpx.Cookies, **kw
    ) -> httpx.Response:
        order = [to, *[i for i in range(len(self.servers)) if i != to]]
        for index in order:
            server = self.servers[index]
            try:
                response = httpx.request(
                    method, f"{server.url}{PREFIX}{path}", cookies=cookies, timeout=10, **kw
                )
            except httpx.TransportError:
                self.failovers += 1
                continue
            self.served[server.url] = self.served.get(server.url, 0) + 1
            cookies.update(response.cookies)
            return response
        raise AssertionError("no replica answered")


@dataclass
class Guest:
    """One guest's RCAR flow, one call at a time, with its own cookie jar."""

    key: TeeKeyPair = field(default_factory=TeeKeyPair.generate)
    cookies: httpx.Cookies = field(default_factory=httpx.Cookies)
    nonce: str | None = None
    secret: bytes | None = None

    def auth(self, lb: Balancer, to: int) -> None:
        response = lb.call(
            "POST",
            "/kbs/v0/auth",
            to=to,
            cookies=self.cookies,
            json={"version": "0.4.0", "tee": "sample", "extra-params": ""},
        )
        assert response.status_code == 200, response.text
        self.nonce = response.json()["nonce"]

    def attest(self, lb: Balancer, to: int) -> None:
        assert self.nonce is not None
        jwk = self.key.public_jwk()
        runtime = {"tee-pubkey": jwk, "nonce": self.nonce, "additional-evidence": ""}
        digest = hashlib.sha384(rfc8785.dumps(runtime)).digest()
        evidence = {"svn": "1", "report_data": base64.b64encode(digest).decode()}
        response = lb.call(
            "POST",
            "/kbs/v0/attest",
            to=to,
            cookies=self.cookies,
            json={
                "runtime-data": {"nonce": self.nonce, "tee-pubkey": jwk},
                "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
            },
        )
        assert response.status_code == 200, response.text

    def resource(self, lb: Balancer, to: int) -> None:
        response = lb.call(
            "GET", "/kbs/v0/resource/cai/sample/password", to=to, cookies=self.cookies
        )
        assert response.status_code == 200, response.text
        self.secret = self.key.decrypt(response.json())


def _admin(url: str, key: Path, *args: str) -> None:
    result = run_cli(
        "kbs.client", "--url", url + PREFIX, "config", "--auth-private-key", str(key), *args
    )
    assert result.returncode == 0, result.stderr


def test_two_replicas_on_postgres_alternate_and_survive_a_kill(
    tmp_path: Path, pg_database_url: str
) -> None:
    config, admin_key = _write_config(tmp_path)
    env = {"KBS_DATABASE__URL": pg_database_url}
    args = ["--config", str(config), "--workers", "1"]
    # Both start at the same instant against an empty database: both run the
    # migrations and both try to create the token signing key.
    with kbs_servers(2, args, cwd=tmp_path, env=env) as servers:
        a, b = servers
        # 1. One schema, at head; one signing key, served by both.
        engine = sa.create_engine(pg_database_url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
            keys = {row[0] for row in conn.execute(sa.text("SELECT name FROM kbs_signing_keys"))}
        engine.dispose()
        assert versions == [(_head_revision(),)]
        # One row per key name (the EAR signer, and the attestation service's Simple
        # signer and certificates): both replicas agreed on every generated key.
        assert "ear-token-signer" in keys
        jwks = [httpx.get(f"{s.url}{PREFIX}/.well-known/jwks.json").json() for s in servers]
        assert jwks[0] == jwks[1]
        for server in servers:
            assert "Traceback" not in server.log()

        # 2. Admin writes through either replica are seen by both.
        secret = tmp_path / "password"
        secret.write_bytes(SECRET)
        values = tmp_path / "rv.json"
        values.write_text(json.dumps(SAMPLE_REFERENCE_VALUES))
        _admin(
            a.url,
            admin_key,
            "set-resource",
            "--path",
            "cai/sample/password",
            "--resource-file",
            str(secret),
        )
        _admin(b.url, admin_key, "set-reference-values", "--values-file", str(values))

        # 3. Guests whose calls alternate between the replicas.
        lb = Balancer(servers)
        for guest_no in range(4):
            guest = Guest()
            first = guest_no % 2
            guest.auth(lb, first)
            guest.attest(lb, 1 - first)
            guest.resource(lb, first)
            assert guest.secret == SECRET
        assert lb.served == {a.url: 6, b.url: 6}
        assert lb.failovers == 0

        # 4. Guests caught mid-flow when replica A dies: sessions opened (and attested)
        #    on A are finished on B.
        opened, attested = [Guest() for _ in range(3)], [Guest() for _ in range(3)]
        for guest in opened:
            guest.auth(lb, 0)
        for guest in attested:
            guest.auth(lb, 1)
            guest.attest(lb, 0)
        a.kill()
        assert a.proc.poll() is not None
        for guest in opened:
            guest.attest(lb, 0)
            guest.resource(lb, 0)
        for guest in attested:
            guest.resource(lb, 0)
        assert all(g.secret == SECRET for g in opened + attested)
        # Every post-kill call aimed at A was answered by B.
        assert lb.failovers == len(opened) * 2 + len(attested)

        # 5. New guests after the kill, and B is still ready.
        for _ in range(2):
            guest = Guest()
            guest.auth(lb, 0)
            guest.attest(lb, 1)
            guest.resource(lb, 0)
            assert guest.secret == SECRET
        ready = httpx.get(f"{b.url}{PREFIX}/readyz")
        assert ready.status_code == 200, ready.text
        assert {k: ready.json()["checks"][k] for k in ("database", "resources")} == {
            "database": "ok",
            "resources": "ok",
        }


def test_concurrent_migrate_commands_on_an_empty_database(
    tmp_path: Path, pg_database_url: str
) -> None:
    """``kbs migrate`` (the chart's init container) in several pods at once."""
    config = tmp_path / "kbs.toml"
    config.write_text("[http_server]\ninsecure_http = true\n")
    env = {**os.environ, "KBS_DATABASE__URL": pg_database_url}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "kbs", "migrate", "--config", str(config)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [(p.wait(timeout=60), *p.communicate()) for p in procs]
    for returncode, stdout, stderr in results:
        assert returncode == 0, stderr
        assert "database schema is current" in stdout
    engine = sa.create_engine(pg_database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        tables = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    assert versions == [(_head_revision(),)]
    assert {"kbs_sessions", "kbs_policies", "kbs_signing_keys"} <= tables
