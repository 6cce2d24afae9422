# SPDX-License-Identifier: Apache-2.0
"""A real ``kbs serve`` with the TDX verifier, and ``kbs-client --attester tdx`` as the guest.

The server reads a TOML file (test root through ``insecure_root_ca_path``, the loopback
fake PCCS as ``collateral_services``); the guest is the ``kbs-client`` command line run
in this process on a fake configfs-tsm tree and a CCEL file.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kbs.client import cli
from kbs.client.tdx_attester import TdxAttester
from support.fake_pccs import FakePccs
from support.fake_tsm import FakeTsm
from support.kbs_app import make_admin_key, now_clock
from support.processes import kbs_server, run_cli
from support.tdx_guest import INIT_DATA_DIGEST, INIT_DATA_TOML, ccel, tdx_reference_values
from support.tdx_pki import TestPki

pytestmark = pytest.mark.slow

SECRET = b"model key from a real server"


@dataclass
class Served:
    url: str
    pki: TestPki
    pccs: FakePccs
    rtmrs: tuple[bytes, ...]
    ccel_table: Path


def write_config(tmp_path: Path, pki: TestPki, pccs_url: str) -> Path:
    """A development config whose TDX verifier trusts ``pki`` and asks ``pccs_url``."""
    admin_key = make_admin_key(tmp_path)
    (tmp_path / "admin.key").write_bytes(admin_key.private_pem)
    root = tmp_path / "test-root-ca.der"
    root.write_bytes(pki.root_der)
    config = tmp_path / "kbs.toml"
    config.write_text(
        f"""
environment = "development"
[database]
url = "sqlite:///{tmp_path / "kbs.db"}"
[http_server]
insecure_http = true
[attestation_service.verifier_config.dcap_verifier]
collateral_services = ["{pccs_url}"]
insecure_root_ca_path = "{root}"
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
    return config


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, shared_dir: Path, verify_processes: int
) -> Iterator[Served]:
    # verify_processes: the server verifies inline, then in its process pool.
    tmp_path = tmp_path_factory.mktemp("kbs-serve")
    raw, rtmrs = ccel(shared_dir)
    ccel_table = tmp_path / "CCEL"
    ccel_table.write_bytes(raw + b"\xff" * 1024)
    with FakePccs({}) as pccs:
        pki = TestPki.create(root_cdp=pccs.cdp_url)
        parts = pki.collateral_parts(now_clock().now())
        pccs.parts = {parts.fmspc: parts}
        config = write_config(tmp_path, pki, pccs.url)
        with kbs_server(["--config", str(config), "--workers", "1"], cwd=tmp_path) as (url, _):
            admin = ["--url", url, "config", "--auth-private-key", str(tmp_path / "admin.key")]
            (tmp_path / "secret").write_bytes(SECRET)
            (tmp_path / "rv.json").write_text(json.dumps(tdx_reference_values(rtmrs)))
            for args in (
                ["set-resource", "--path", "cai/tdx/key", "--resource-file", "secret"],
                ["set-reference-values", "--values-file", "rv.json"],
            ):
                result = run_cli("kbs.client", *admin, *args, cwd=tmp_path)
                assert result.returncode == 0, result.stderr
            yield Served(url, pki, pccs, rtmrs, ccel_table)


def _fake_tsm(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTsm:
    return FakeTsm(
        tmp_path / "tsm",
        lambda rd: served.pki.quote(
            report_data=rd, mr_config_id=INIT_DATA_DIGEST.ljust(48, b"\x00"), rtmrs=served.rtmrs
        ),
    ).install(monkeypatch)


def _get_resource(served: Served, tsm: FakeTsm, tmp_path: Path, attester: str) -> list[str]:
    init_data = tmp_path / "init-data.toml"
    init_data.write_text(INIT_DATA_TOML)
    return [
        "--url",
        served.url,
        "get-resource",
        "--resource-uri",
        "kbs:///cai/tdx/key",
        "--attester",
        attester,
        "--init-data",
        str(init_data),
        "--tdx-tsm-report-dir",
        str(tsm.root),
        "--tdx-ccel",
        str(served.ccel_table),
        "--tdx-aa-eventlog",
        str(tmp_path / "no-aa-eventlog"),
    ]


def test_kbs_client_attester_tdx_against_kbs_serve(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    tsm = _fake_tsm(served, tmp_path, monkeypatch)
    assert cli.main(_get_resource(served, tsm, tmp_path, "tdx")) == 0
    out, err = capsys.readouterr()
    assert base64.b64decode(out.strip()) == SECRET, err
    assert len(tsm.report_data) == 1
    # The server process reports the platform's collateral.
    ready = httpx.get(f"{served.url}/readyz").json()
    assert ready["checks"]["collateral"] == "ok"
    assert ready["collateral"][0]["fmspc"] == served.pki.fmspc
    # A second guest on the same platform: warm cache, no PCCS request.
    served.pccs.reset()
    assert cli.main(_get_resource(served, tsm, tmp_path, "tdx")) == 0
    assert served.pccs.count() == 0


def test_kbs_client_auto_picks_tdx_inside_a_td(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    tsm = _fake_tsm(served, tmp_path, monkeypatch)
    monkeypatch.setattr(TdxAttester, "detect", classmethod(lambda _cls, **_: True))
    assert cli.main(_get_resource(served, tsm, tmp_path, "auto")) == 0
    out, err = capsys.readouterr()
    assert base64.b64decode(out.strip()) == SECRET
    assert "sample" not in err
    assert len(tsm.report_data) == 1


def test_kbs_client_auto_outside_a_td_falls_back_to_sample_with_a_warning(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    tsm = _fake_tsm(served, tmp_path, monkeypatch)
    monkeypatch.setattr(TdxAttester, "detect", classmethod(lambda _cls, **_: False))
    # The server does not allow the sample TEE (no insecure_allow_sample_evidence): refused.
    assert cli.main(_get_resource(served, tsm, tmp_path, "auto")) == 1
    err = capsys.readouterr().err
    assert "no TEE detected; using the insecure sample attester" in err
    assert "not enabled" in err
    assert tsm.report_data == []


def test_kbs_client_reports_a_missing_tsm(served: Served, tmp_path: Path, capsys) -> None:
    args = [
        "--url",
        served.url,
        "attest",
        "--attester",
        "tdx",
        "--tdx-tsm-report-dir",
        str(tmp_path / "no-configfs"),
    ]
    assert cli.main(args) == 1
    assert "configfs-tsm report entry" in capsys.readouterr().err
