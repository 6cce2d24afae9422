# SPDX-License-Identifier: Apache-2.0
"""deploy/systemd: the unit's paths and hardening, checked by systemd-analyze and by running
the server the way the unit does (its config, its commands, W^X memory enforced)."""

from __future__ import annotations

import base64
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kbs.cli import build_parser
from kbs.settings import load_settings
from support.kbs_app import SAMPLE_REFERENCE_VALUES, make_admin_key
from support.processes import free_port, run_cli

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy/systemd"
UNIT = SYSTEMD / "trustee.service"
KBS = Path(sys.executable).parent / "kbs"
#: systemd-analyze security's scale: 0 (locked down) .. 10 (exposed); "OK" is below 2.
MAX_EXPOSURE = 2.0

PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def _unit() -> dict[str, list[str]]:
    """Every key of the unit, values in order (keys may repeat)."""
    options: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=")
        options.setdefault(key, []).append(value)
    return options


def test_unit_paths_are_the_install_layout() -> None:
    unit = _unit()
    assert unit["ExecStart"] == ["/opt/trustee/venv/bin/kbs serve --config /etc/trustee/kbs.toml"]
    assert unit["ExecStartPre"] == [
        "/opt/trustee/venv/bin/kbs migrate --config /etc/trustee/kbs.toml"
    ]
    assert unit["StateDirectory"] == ["trustee"]  # /var/lib/trustee
    assert unit["ConfigurationDirectory"] == ["trustee"]  # /etc/trustee
    assert unit["ReadWritePaths"] == ["/opt/trustee/kbs/repository"]
    assert unit["User"] == ["trustee"]
    # The commands are ones our CLI takes.
    for command in unit["ExecStart"] + unit["ExecStartPre"]:
        argv = shlex.split(command)
        assert argv[0].endswith("/kbs")
        build_parser().parse_args(argv[1:])


def test_unit_hardening_options() -> None:
    unit = _unit()
    expected = {
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "MemoryDenyWriteExecute": "yes",
        "LockPersonality": "yes",
        "UMask": "0077",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }
    for key, value in expected.items():
        assert unit.get(key) == [value], key
    assert "@system-service" in unit["SystemCallFilter"]


def test_sysusers_and_tmpfiles_make_the_user_and_repository() -> None:
    sysusers = (SYSTEMD / "trustee.sysusers").read_text()
    assert "u trustee - " in sysusers
    tmpfiles = [
        line.split()
        for line in (SYSTEMD / "trustee.tmpfiles").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert ["d", "/opt/trustee/kbs/repository", "0750", "trustee", "trustee", "-"] in tmpfiles


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False
    )


needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


@needs_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify also checks that the programs exist: point them at this checkout's kbs,
    # changing nothing else in the unit.
    unit = tmp_path / "trustee.service"
    unit.write_text(UNIT.read_text().replace("/opt/trustee/venv/bin/kbs", str(KBS)))
    result = _analyze("verify", str(unit))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


@needs_analyze
def test_systemd_analyze_security_exposure(tmp_path: Path) -> None:
    unit = tmp_path / "trustee.service"
    unit.write_text(UNIT.read_text())
    result = _analyze("security", "--offline=true", "--no-pager", str(unit))
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if "Overall exposure level" in x)
    exposure = float(line.split(":")[1].split()[0])
    assert exposure <= MAX_EXPOSURE, line


#: Runs argv[1:] with NoNewPrivileges and MemoryDenyWriteExecute, as the unit asks systemd
#: for (systemd >= 253 uses this very prctl for the latter; both survive execve).
LOCKED_DOWN = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    f"assert libc.prctl({PR_SET_NO_NEW_PRIVS}, 1, 0, 0, 0) == 0, 'no_new_privs'\n"
    f"assert libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) == 0, 'mdwe'\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


def _locked_down(argv: list[str]) -> list[str]:
    return [sys.executable, "-c", LOCKED_DOWN, *argv]


def test_locked_down_launcher_refuses_writable_executable_memory() -> None:
    probe = (
        "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"
    )
    result = subprocess.run(
        _locked_down([sys.executable, "-c", probe]), capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "Permission denied" in result.stderr


def _example_config(tmp_path: Path, port: int) -> tuple[Path, Path, Path]:
    """deploy/systemd/kbs.toml with its paths under tmp_path; plain HTTP and the sample
    TEE (the example asks for certificates and real TEEs). Returns (etc, state, repo)."""
    state, repository, etc = tmp_path / "var-lib-trustee", tmp_path / "repository", tmp_path / "etc"
    etc.mkdir()
    config = (
        (SYSTEMD / "kbs.toml")
        .read_text()
        .replace("/var/lib/trustee", str(state))
        .replace("/opt/trustee/kbs/repository", str(repository))
        .replace("/etc/trustee/admin/admin.pub", str(etc / "admin.pub"))
        .replace('sockets = ["0.0.0.0:8080"]', f'sockets = ["127.0.0.1:{port}"]')
        .replace('environment = "production"', 'environment = "development"')
        .replace("insecure_http = false", "insecure_http = true")
        .replace(
            "[attestation_service]", "[attestation_service]\ninsecure_allow_sample_evidence = true"
        )
    )
    config = "\n".join(
        line for line in config.splitlines() if not line.startswith(("private_key", "certificate"))
    )
    (etc / "kbs.toml").write_text(config)
    return etc, state, repository


@pytest.mark.slow
def test_server_runs_as_the_unit_runs_it(tmp_path: Path) -> None:
    """The example /etc/trustee/kbs.toml, the unit's ExecStartPre and ExecStart, with W^X
    memory enforced; the admin copies a file into the repository and a guest gets it."""
    port = free_port()
    etc, state, repository = _example_config(tmp_path, port)
    admin_key = make_admin_key(etc)  # etc/admin.pub, as `kbs admin-keygen` would
    settings = load_settings(etc / "kbs.toml")
    assert settings.resource_plugin is not None
    assert settings.resource_plugin.dir_path == repository

    unit = _unit()
    argv_pre = shlex.split(unit["ExecStartPre"][0].replace("/etc/trustee", str(etc)))
    argv = shlex.split(unit["ExecStart"][0].replace("/etc/trustee", str(etc)))
    argv_pre[0] = argv[0] = str(KBS)
    pre = subprocess.run(
        _locked_down(argv_pre), capture_output=True, text=True, timeout=60, check=False
    )
    assert pre.returncode == 0, pre.stderr
    # The seed workflow: an admin copies the password file into the repository.
    (repository / "cai/sample").mkdir(parents=True)
    (repository / "cai/sample/password").write_bytes(b"copied by an admin")
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(_locked_down(argv), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        values = tmp_path / "rv.json"
        values.write_text(json.dumps(SAMPLE_REFERENCE_VALUES))
        key = tmp_path / "admin.key"
        key.write_bytes(admin_key.private_pem)
        admin = ["--url", url, "config", "--auth-private-key", str(key)]
        result = run_cli("kbs.client", *admin, "set-reference-values", "--values-file", str(values))
        assert result.returncode == 0, result.stderr
        result = run_cli(
            "kbs.client",
            "--url",
            url,
            "get-resource",
            "--resource-uri",
            "kbs:///cai/sample/password",
            "--attester",
            "sample",
        )
        assert result.returncode == 0, result.stderr
        assert base64.b64decode(result.stdout.strip()) == b"copied by an admin"
        assert (state / "kbs.db").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()
