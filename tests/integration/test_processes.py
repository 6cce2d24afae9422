# SPDX-License-Identifier: Apache-2.0
"""Real server processes: the README workflow with kbs-client, and sessions across processes."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import httpx
import pytest
import rfc8785

from kbs.client.tee_key import TeeKeyPair
from support.kbs_app import SAMPLE_REFERENCE_VALUES
from support.processes import kbs_server, run_cli

pytestmark = pytest.mark.slow


def test_dev_profile_with_kbs_client_cli(tmp_path: Path) -> None:
    with kbs_server(
        ["--dev", "--data-dir", str(tmp_path / "data"), "--workers", "1"], cwd=tmp_path
    ) as (url, _):
        # The seed's connectivity check.
        auth = httpx.post(
            f"{url}/kbs/v0/auth", json={"version": "0.1.0", "tee": "tdx", "extra-params": "foo"}
        )
        assert auth.status_code == 200
        assert auth.json()["extra-params"] == ""
        secret = tmp_path / "password"
        secret.write_bytes(b"my model key")
        admin = [
            "--url",
            url,
            "config",
            "--auth-private-key",
            str(tmp_path / "data/admin/admin.key"),
        ]
        result = run_cli(
            "kbs.client",
            *admin,
            "set-resource",
            "--path",
            "cai/sample/password",
            "--resource-file",
            str(secret),
        )
        assert result.returncode == 0, result.stderr
        values = tmp_path / "rv.json"
        values.write_text(json.dumps(SAMPLE_REFERENCE_VALUES))
        result = run_cli("kbs.client", *admin, "set-reference-values", "--values-file", str(values))
        assert result.returncode == 0, result.stderr
        result = run_cli("kbs.client", *admin, "get-reference-value", "--id", "svn")
        assert json.loads(result.stdout) == ["1"]
        for key_type in ("ec-p256", "rsa-oaep-256"):
            result = run_cli(
                "kbs.client",
                "--url",
                url,
                "get-resource",
                "--resource-uri",
                "kbs:///cai/sample/password",
                "--attester",
                "sample",
                "--tee-key-type",
                key_type,
            )
            assert result.returncode == 0, result.stderr
            assert base64.b64decode(result.stdout.strip()) == b"my model key"
        # An admin call without the key is refused, and the CLI says why.
        result = run_cli(
            "kbs.client",
            "--url",
            url,
            "config",
            "--admin-token-file",
            str(secret),
            "get-resource-policy",
        )
        assert result.returncode == 1
        assert "AdminAuthAccess" in result.stderr
    # The file landed where Trustee's layout puts it.
    assert (tmp_path / "data/repository/cai/sample/password").read_bytes() == b"my model key"


def test_kbs_serve_refuses_bad_configuration(tmp_path: Path) -> None:
    config = tmp_path / "kbs.toml"
    config.write_text('[http_server]\ninsecure_http = true\nsockets = ["127.0.0.1:1"]\nbogus = 1\n')
    result = run_cli("kbs", "serve", "--config", str(config))
    assert result.returncode == 2
    assert "http_server.bogus: unknown key" in result.stderr
    result = run_cli("kbs", "serve")
    assert result.returncode == 2
    assert "--config" in result.stderr


def _flow(urls: list[str], key: TeeKeyPair) -> bytes:
    """auth, attest and resource each on the next process in ``urls``, one cookie jar."""
    jar = httpx.Cookies()
    auth = httpx.post(
        f"{urls[0]}/kbs/v0/auth",
        json={"version": "0.4.0", "tee": "sample", "extra-params": ""},
        cookies=jar,
    )
    assert auth.status_code == 200
    jar.update(auth.cookies)
    nonce = auth.json()["nonce"]
    runtime = {"tee-pubkey": key.public_jwk(), "nonce": nonce, "additional-evidence": ""}
    digest = hashlib.sha384(rfc8785.dumps(runtime)).digest()
    attest = httpx.post(
        f"{urls[1]}/kbs/v0/attest",
        json={
            "runtime-data": {"nonce": nonce, "tee-pubkey": key.public_jwk()},
            "tee-evidence": {
                "primary_evidence": {"svn": "1", "report_data": base64.b64encode(digest).decode()},
                "additional_evidence": "",
            },
        },
        cookies=jar,
    )
    assert attest.status_code == 200, attest.text
    resource = httpx.get(f"{urls[2]}/kbs/v0/resource/shared/key/one", cookies=jar)
    assert resource.status_code == 200, resource.text
    return key.decrypt(resource.json())


def test_two_processes_share_sessions_through_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    admin_pub = tmp_path / "admin.pub"
    from support.kbs_app import make_admin_key  # noqa: PLC0415

    admin_key = make_admin_key(tmp_path)
    assert admin_key.public_path == admin_pub
    config = tmp_path / "kbs.toml"
    config.write_text(
        f"""
environment = "development"
[database]
url = "sqlite:///{db}"
[http_server]
insecure_http = true
[attestation_service]
insecure_allow_sample_evidence = true
[admin]
authorization_mode = "AuthenticatedAuthorization"
[admin.authentication.bearer_jwt]
identity_providers = [{{ public_key_uri = "{admin_pub}" }}]
[admin.authorization.regex_acl]
acls = [{{ role = "admin", allowed_endpoints = "^/kbs/.*$" }}]
[[plugins]]
name = "resource"
storage_backend_type = "kvstorage"
"""
    )
    (tmp_path / "key.pem").write_bytes(admin_key.private_pem)
    secret = tmp_path / "secret"
    secret.write_bytes(b"shared-secret")
    values = tmp_path / "rv.json"
    values.write_text(json.dumps(SAMPLE_REFERENCE_VALUES))
    args = ["--config", str(config), "--workers", "1"]
    with kbs_server(args, cwd=tmp_path) as (a, _), kbs_server(args, cwd=tmp_path) as (b, _):
        admin = ["config", "--auth-private-key", str(tmp_path / "key.pem")]
        assert (
            run_cli(
                "kbs.client",
                "--url",
                a,
                *admin,
                "set-resource",
                "--path",
                "shared/key/one",
                "--resource-file",
                str(secret),
            ).returncode
            == 0
        )
        assert (
            run_cli(
                "kbs.client",
                "--url",
                b,
                *admin,
                "set-reference-values",
                "--values-file",
                str(values),
            ).returncode
            == 0
        )
        for urls in ([a, b, a], [b, a, b], [a, a, b]):
            assert _flow(urls, TeeKeyPair.generate()) == b"shared-secret"


def test_attestation_service_and_kbs_in_separate_processes(tmp_path: Path) -> None:
    # `kbs serve --api as` and `kbs serve --api kbs` on one database: a guest attests at
    # the attestation service, then fetches a secret from the KBS with the token.
    data = ["--dev", "--data-dir", str(tmp_path / "data"), "--workers", "1"]
    with (
        kbs_server([*data, "--api", "as"], cwd=tmp_path) as (as_url, _),
        kbs_server([*data, "--api", "kbs"], cwd=tmp_path) as (kbs_url, _),
    ):
        assert httpx.post(f"{as_url}/kbs/v0/auth", json={}).status_code == 404
        assert httpx.post(f"{kbs_url}/as/attestation", json={}).status_code == 404
        admin = [
            "--url",
            kbs_url,
            "config",
            "--auth-private-key",
            str(tmp_path / "data/admin/admin.key"),
        ]
        secret = tmp_path / "secret"
        secret.write_bytes(b"across processes")
        result = run_cli(
            "kbs.client", *admin, "set-resource", "--path", "a/b/c", "--resource-file", str(secret)
        )
        assert result.returncode == 0, result.stderr
        values = tmp_path / "rv.json"
        values.write_text(json.dumps(SAMPLE_REFERENCE_VALUES))
        result = run_cli("kbs.client", *admin, "set-reference-values", "--values-file", str(values))
        assert result.returncode == 0, result.stderr
        # Both processes publish the same keys.
        assert (
            httpx.get(f"{as_url}/.well-known/jwks.json").json()
            == httpx.get(f"{kbs_url}/.well-known/jwks.json").json()
        )
        for profile in ("ear", "simple"):
            key = TeeKeyPair.generate()
            runtime = {"tee-pubkey": key.public_jwk()}
            digest = hashlib.sha384(rfc8785.dumps(runtime)).digest()
            evidence = json.dumps({"svn": "1", "report_data": base64.b64encode(digest).decode()})
            token = httpx.post(
                f"{as_url}/as//attestation",
                json={
                    "verification_requests": [
                        {
                            "tee": "sample",
                            "evidence": base64.urlsafe_b64encode(evidence.encode())
                            .rstrip(b"=")
                            .decode(),
                            "runtime_data": {"structured": runtime},
                        }
                    ],
                    "policy_ids": [],
                    "token_type": profile,
                },
            )
            assert token.status_code == 200, token.text
            resource = httpx.get(
                f"{kbs_url}/kbs/v0/resource/a/b/c",
                headers={"Authorization": f"Bearer {token.text}"},
            )
            assert resource.status_code == 200, resource.text
            assert key.decrypt(resource.json()) == b"across processes"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_kbs_serve_exits_non_zero_when_start_up_fails(tmp_path: Path, workers: str) -> None:
    # The configuration is valid but the database cannot be reached: the app's start-up
    # (not the configuration check) fails, in every worker.
    config = tmp_path / "kbs.toml"
    config.write_text(
        '[database]\nurl = "postgresql://postgres@127.0.0.1:1/none"\ntimeout_s = 2\n'
        "[http_server]\ninsecure_http = true\n"
    )
    result = run_cli("kbs", "serve", "--config", str(config), "--workers", workers)
    assert result.returncode == 3, result.stderr


def test_every_worker_tunes_its_garbage_collector(tmp_path: Path) -> None:
    data = ["--dev", "--data-dir", str(tmp_path / "data"), "--workers", "2"]
    with kbs_server(data, cwd=tmp_path) as (url, _):
        auth = httpx.post(
            f"{url}/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample", "extra-params": ""}
        )
        assert auth.status_code == 200
        log_path = tmp_path / f"kbs-{url.rsplit(':', 1)[1]}.log"
        # /healthz answered once one worker was up; the other may still be starting.
        deadline = time.monotonic() + 30
        while True:
            log = log_path.read_text()
            tuned = [line for line in log.splitlines() if "gc tuned for serving" in line]
            if len(tuned) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert len(tuned) == 2, log
    assert all("thresholds (10000, 20, 20)" in line for line in tuned), tuned
