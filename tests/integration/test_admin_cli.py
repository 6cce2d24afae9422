# SPDX-License-Identifier: Apache-2.0
"""The key-admin workflow with the real commands: ``kbs admin-keygen`` bootstraps an
admin, ``kbs-client admin ...`` drives every key-admin endpoint of a ``kbs serve``
process, ``kbs audit verify`` checks the chain."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from support.kbs_app import SAMPLE_REFERENCE_VALUES
from support.processes import kbs_server, run_cli

pytestmark = pytest.mark.slow

CAI = "cai/key/model"


def _config(tmp_path: Path, jwks: Path) -> Path:
    config = tmp_path / "kbs.toml"
    config.write_text(
        f"""
environment = "development"
keep_resource_versions = 3
[database]
url = "sqlite:///{tmp_path / "kbs.db"}"
[http_server]
insecure_http = true
[attestation_service]
insecure_allow_sample_evidence = true
[admin]
authorization_mode = "AuthenticatedAuthorization"
[admin.authentication.bearer_jwt]
role_claim = "groups"
identity_providers = [{{ issuer = "bootstrap", jwk_set_uri = "file://{jwks}" }}]
[[admin.authorization.grants]]
role = "key-admins"
actions = ["read", "write", "delete", "policy", "audit"]
resources = ["*"]
[[plugins]]
name = "resource"
type = "LocalFs"
dir_path = "{tmp_path / "repository"}"
"""
    )
    return config


def test_key_admin_workflow(tmp_path: Path) -> None:
    # 1. Bootstrap: a key pair (PEM and JWKS) and a short-lived token.
    made = run_cli(
        "kbs",
        "admin-keygen",
        "--out-dir",
        str(tmp_path / "admin"),
        "--role",
        "key-admins",
        "--role-claim",
        "groups",
        "--roles-as-list",
        "--issuer",
        "bootstrap",
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    token_file = tmp_path / "admin-token"
    token_file.write_text(token)
    assert oct((tmp_path / "admin/admin.key").stat().st_mode & 0o777) == "0o600"
    config = _config(tmp_path, tmp_path / "admin/admin.jwks.json")
    secret = tmp_path / "secret"
    values = tmp_path / "rv.json"
    values.write_text(json.dumps(SAMPLE_REFERENCE_VALUES))

    with kbs_server(["--config", str(config), "--workers", "1"], cwd=tmp_path) as (url, _):

        def admin(*args: str, ok: bool = True) -> str:
            result = run_cli(
                "kbs.client", "--url", url, "admin", "--admin-token-file", str(token_file), *args
            )
            assert (result.returncode == 0) == ok, result.stdout + result.stderr
            return result.stdout

        assert json.loads(admin("whoami"))["roles"] == ["key-admins"]
        admin("set-reference-values", "--values-file", str(values))
        for value in (b"good", b"bad"):
            secret.write_bytes(value)
            admin("set-resource", "--path", CAI, "--resource-file", str(secret))
        [listed] = json.loads(admin("list-resources"))
        assert (listed["path"], listed["version"], listed["size"]) == (CAI, "2", 3)
        history = json.loads(admin("resource-versions", "--path", CAI))["history"]
        assert [v["version"] for v in history] == ["2", "1"]
        assert (
            base64.b64decode(admin("get-resource-version", "--path", CAI, "--version", "1"))
            == b"good"
        )
        assert (
            json.loads(admin("rollback-resource", "--path", CAI, "--version", "1"))["version"]
            == "3"
        )

        # A guest gets the rolled-back value, until a release policy says no.
        guest = ["kbs.client", "--url", url, "get-resource", "--path", CAI, "--attester", "sample"]
        got = run_cli(*guest)
        assert base64.b64decode(got.stdout.strip()) == b"good", got.stderr
        admin(
            "set-release-policy",
            "--prefix",
            "cai/*",
            "--mr-td",
            "ab" * 48,
            "--tcb-status",
            "UpToDate",
        )
        assert json.loads(admin("list-release-policies"))[0]["prefix"] == "cai/*"
        assert "mr_td_allowed" in admin("get-release-policy", "--prefix", "cai/*", "--text")
        denied = run_cli(*guest)
        assert denied.returncode == 1
        assert "PolicyDeny" in denied.stderr
        assert "request id" in denied.stderr

        # Explain, from a guest's token.
        attested = run_cli("kbs.client", "--url", url, "attest", "--attester", "sample")
        (tmp_path / "guest-token").write_text(attested.stdout.strip())
        explained = json.loads(
            admin("explain", "--path", CAI, "--token-file", str(tmp_path / "guest-token"))
        )
        assert explained["decision"] == "deny"
        [release] = [p for p in explained["policies"] if p["kind"] == "release"]
        assert {f["rule"] for f in release["failing_rules"]} >= {"mr_td_allowed"}
        assert "input" not in explained

        admin("delete-release-policy", "--prefix", "cai/*")
        admin("delete-resource", "--path", CAI, "--version", "2")
        records = json.loads(admin("audit", "--kind", "admin", "--all", "--order", "asc"))[
            "records"
        ]
        assert [r["action"] for r in records] == [
            "reference-value.set",
            "resource.put",
            "resource.put",
            "resource.rollback",
            "release-policy.set",
            "release-policy.delete",
            "resource.delete-version",
        ]
        assert {r["actor"] for r in records} == {"bootstrap-admin@bootstrap"}
        assert json.loads(admin("audit-verify"))["ok"] is True

    verified = run_cli("kbs", "audit", "verify", "--config", str(config))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "audit chain intact" in verified.stdout


def test_admin_token_from_an_existing_key(tmp_path: Path) -> None:
    assert run_cli("kbs", "admin-keygen", "--out-dir", str(tmp_path)).returncode == 0
    again = run_cli("kbs", "admin-keygen", "--out-dir", str(tmp_path))
    assert again.returncode == 2
    assert "--force" in again.stderr
    token = run_cli(
        "kbs", "admin-token", "--key", str(tmp_path / "admin.key"), "--token-minutes", "5"
    )
    assert token.returncode == 0
    import jwt  # noqa: PLC0415

    header = jwt.get_unverified_header(token.stdout.strip())
    claims = jwt.decode(token.stdout.strip(), options={"verify_signature": False})
    jwks = json.loads((tmp_path / "admin.jwks.json").read_text())
    assert header["kid"] == jwks["keys"][0]["kid"]
    assert claims["role"] == "admin"
    assert claims["exp"] - claims["iat"] == 300
    bad = run_cli("kbs", "admin-token", "--key", str(tmp_path / "admin.pub"))
    assert bad.returncode == 2
