# SPDX-License-Identifier: Apache-2.0
"""Aliyun KMS configurations in real ``kbs serve`` processes, driven with ``kbs-client``."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.kbs_app import SAMPLE_REFERENCE_VALUES, make_admin_key
from support.kms_app import kms_entry, kms_environment_names, trustee_keys
from support.kms_emulator import KmsEmulator
from support.kms_fixtures import (
    ACCESS_KEY_ID,
    ACCESS_KEY_SECRET,
    CLIENT_KEY_PASSWORD,
    ClientKeyMaterial,
    TlsPki,
    make_client_key,
    make_tls_pki,
)
from support.processes import kbs_server, run_cli

pytestmark = pytest.mark.slow

MODEL_KEY = "model key 0c4e9b from kms"


@pytest.fixture(autouse=True)
def _hermetic_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in kms_environment_names():
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def kms_pki(tmp_path_factory: pytest.TempPathFactory) -> TlsPki:
    return make_tls_pki(tmp_path_factory.mktemp("kms-pki"))


@pytest.fixture(scope="module")
def client_key() -> ClientKeyMaterial:
    return make_client_key(CLIENT_KEY_PASSWORD)


@pytest.fixture
def emulator(kms_pki: TlsPki, client_key: ClientKeyMaterial) -> Iterator[KmsEmulator]:
    with KmsEmulator(tls=kms_pki.server_context()) as emu:
        emu.add_client_key(client_key.key_id, client_key.public_key)
        emu.add_access_key(ACCESS_KEY_ID, ACCESS_KEY_SECRET)
        emu.create_secret("model-decryption-key", MODEL_KEY, instance_id=kms_pki.kms_instance_id)
        yield emu


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(str(value))


def _table(header: str, entry: dict[str, Any]) -> str:
    return header + "\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in entry.items())


def write_config(tmp_path: Path, plugin: dict[str, Any], mounts: list[dict[str, Any]]) -> Path:
    """A development configuration (sample TEE, admin key) with this resource plugin."""
    admin_pub = tmp_path / "admin.pub"
    config = tmp_path / "kbs.toml"
    text = f"""
environment = "development"
data_dir = "{tmp_path / "data"}"
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

"""
    text += _table("[[plugins]]", {"name": "resource", **plugin})
    for mount in mounts:
        text += _table("[[plugins.mounts]]", mount)
    config.write_text(text)
    return config


def _admin(tmp_path: Path) -> list[str]:
    key = make_admin_key(tmp_path)
    (tmp_path / "admin.key").write_bytes(key.private_pem)
    return ["config", "--auth-private-key", str(tmp_path / "admin.key")]


def _get_resource(url: str, uri: str) -> bytes:
    result = run_cli(
        "kbs.client", "--url", url, "get-resource", "--resource-uri", uri, "--attester", "sample"
    )
    assert result.returncode == 0, result.stderr
    return base64.b64decode(result.stdout.strip())


def test_trustee_style_config_in_a_real_server(tmp_path, emulator, kms_pki, client_key):
    # What the Helm chart renders for kbs.aliyunKms.enabled=true (the <= 1.0.1 `type` key),
    # plus the fork's `endpoint` so the test reaches the emulator.
    admin = _admin(tmp_path)
    plugin = {"type": "Aliyun", **trustee_keys(emulator, kms_pki, client_key)}
    config = write_config(tmp_path, plugin, [])
    values = tmp_path / "rv.json"
    values.write_text(json.dumps(SAMPLE_REFERENCE_VALUES))
    with kbs_server(["--config", str(config), "--workers", "1"], cwd=tmp_path) as (url, _):
        result = run_cli(
            "kbs.client", "--url", url, *admin, "set-reference-values", "--values-file", str(values)
        )
        assert result.returncode == 0, result.stderr
        uri = "kbs:///default/aliyun/model-decryption-key"
        assert _get_resource(url, uri) == MODEL_KEY.encode()
        log = next(tmp_path.glob("kbs-*.log")).read_text()
    assert "aliyun kms backend: reads via instance gateway" in log
    for secret in (CLIENT_KEY_PASSWORD, MODEL_KEY):
        assert secret not in log


def test_files_and_kms_mount_in_a_real_server_with_admin_writes(
    tmp_path, emulator, kms_pki, client_key
):
    admin = _admin(tmp_path)
    plugin = {"storage_backend_type": "LocalFs", "dir_path": str(tmp_path / "repository")}
    mount = {"path": "default/aliyun", **kms_entry(emulator, kms_pki, client_key)}
    config = write_config(tmp_path, plugin, [mount])
    values = tmp_path / "rv.json"
    values.write_text(json.dumps(SAMPLE_REFERENCE_VALUES))
    file_secret = tmp_path / "file-secret"
    file_secret.write_bytes(b"file secret")
    kms_secret = tmp_path / "kms-secret"
    kms_secret.write_bytes(b"written through kbs-client")
    with kbs_server(["--config", str(config), "--workers", "2"], cwd=tmp_path) as (url, _):
        for args in (
            ["set-reference-values", "--values-file", str(values)],
            ["set-resource", "--path", "cai/sample/password", "--resource-file", str(file_secret)],
            [
                "set-resource",
                "--path",
                "default/aliyun/new-key",
                "--resource-file",
                str(kms_secret),
            ],
        ):
            result = run_cli("kbs.client", "--url", url, *admin, *args)
            assert result.returncode == 0, result.stderr
        assert _get_resource(url, "kbs:///cai/sample/password") == b"file secret"
        assert _get_resource(url, "kbs:///default/aliyun/new-key") == b"written through kbs-client"
        assert _get_resource(url, "kbs:///default/aliyun/model-decryption-key") == (
            MODEL_KEY.encode()
        )
    assert emulator.current("new-key")[0] == "written through kbs-client"
    assert (tmp_path / "repository/cai/sample/password").read_bytes() == b"file secret"
    assert not (tmp_path / "repository/default/aliyun/new-key").exists()


@pytest.mark.parametrize("password_from", ["file", "environment"])
def test_wrong_client_key_password_stops_kbs_serve(
    tmp_path, emulator, kms_pki, client_key, password_from
):
    wrong_password = "wrong-password-6e1b"
    keys = trustee_keys(emulator, kms_pki, client_key)
    env: dict[str, str] = {}
    if password_from == "file":
        keys["password"] = wrong_password + "\n"
    else:
        # The fork's override wins over the (right) password in the file.
        env["KBS_RESOURCE_STORAGE_ALIYUN_PASSWORD"] = wrong_password
    plugin = {"storage_backend_type": "LocalFs", "dir_path": str(tmp_path / "repository")}
    mount = {"path": "default/aliyun", "storage_backend_type": "Aliyun", **keys}
    config = write_config(tmp_path, plugin, [mount])
    result = run_cli("kbs", "serve", "--config", str(config), "--workers", "2", env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"kbs serve: resource backend default/aliyun: aliyun kms client key "
        f"{client_key.key_id} could not be decrypted: wrong client key password or corrupt "
        "PKCS#12"
    )
    for secret in (wrong_password, CLIENT_KEY_PASSWORD):
        assert secret not in result.stderr + result.stdout
    assert emulator.requests == []
