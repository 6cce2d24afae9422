# SPDX-License-Identifier: Apache-2.0
"""deploy/Dockerfile: its shape, and its commands run here as the image runs them.

No Docker engine runs on this project's machines, so the image is not built in the suite.
Instead: the Dockerfile is parsed and checked (pinned base, stages, user, health check),
and the image's ENTRYPOINT with its CMD, with docker-compose.yml's commands, and its
HEALTHCHECK are run with this checkout's ``kbs`` (the console script the image puts on
PATH), only paths and the listening port mapped to the test's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from support.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy/Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
BIN = Path(sys.executable).parent
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _exec_form(stage: list[tuple[str, str]], name: str) -> list[str]:
    [args] = [a for i, a in stage if i == name]
    value: list[str] = json.loads(args)
    return value


def test_base_image_is_pinned_by_digest_and_shared_by_both_stages() -> None:
    args = dict(a.split("=", 1) for i, a in _instructions() if i == "ARG" and "=" in a)
    assert DIGEST.search(args["PYTHON_IMAGE"]), args["PYTHON_IMAGE"]
    assert args["PYTHON_IMAGE"].startswith("python:3.11-")  # the version the lock is for
    stages = _stages()
    assert len(stages) == 2
    assert stages[0][0] == ("FROM", "${PYTHON_IMAGE} AS build")
    assert stages[1][0] == ("FROM", "${PYTHON_IMAGE}")


def test_build_stage_installs_the_lock_with_hashes() -> None:
    runs = [a for i, a in _stages()[0] if i == "RUN"]
    assert any("--require-hashes" in r and "requirements.lock" in r for r in runs)
    assert any("pip uninstall --yes pip" in r for r in runs)
    copies = [a.split()[0] for i, a in _stages()[0] if i == "COPY"]
    for source in copies:
        assert (ROOT / source).exists(), source
    # Every package the wheel contains is copied in.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert set(pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]) <= set(copies)
    # ... and is let through .dockerignore.
    ignore = (ROOT / ".dockerignore").read_text().split()
    for source in copies:
        assert f"!{source}" in ignore or f"!{source}/" in ignore, source


def test_final_stage_is_non_root_with_no_build_tools_and_a_healthcheck() -> None:
    final = _stages()[1]
    text = " ".join(a for _, a in final)
    assert not re.search(r"apt-get|apk |gcc|build-essential|make ", text)
    assert [a for i, a in final if i == "COPY"] == ["--from=build /opt/venv /opt/venv"]
    assert any("pip uninstall --yes pip setuptools wheel" in a for i, a in final if i == "RUN")
    [user] = [a for i, a in final if i == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    [health] = [a for i, a in final if i == "HEALTHCHECK"]
    assert health.split("CMD", 1)[1].strip() == '["kbs", "healthcheck"]'
    assert _exec_form(final, "ENTRYPOINT") == ["kbs"]
    assert _exec_form(final, "CMD") == ["serve", "--config", "/etc/trustee/kbs.toml"]


def _healthcheck(url: str) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command (its default URL is 127.0.0.1:8080)."""
    [health] = [a for i, a in _stages()[1] if i == "HEALTHCHECK"]
    argv = json.loads(health.split("CMD", 1)[1])
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:], "--url", f"{url}/healthz"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@contextlib.contextmanager
def _container(
    argv: list[str],
    *,
    paths: dict[str, Path],
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Iterator[str]:
    """Run ENTRYPOINT + argv as the container would: container paths mapped to the
    test's directories and the listen address to a free loopback port. Ready when the
    HEALTHCHECK command says so."""
    port = port or free_port()
    mapped: list[str] = []
    for arg in argv:
        value = arg
        for container_path, local in paths.items():
            value = value.replace(container_path, str(local))
        mapped.append(value.replace("0.0.0.0:8080", f"127.0.0.1:{port}"))
    entrypoint = _exec_form(_stages()[1], "ENTRYPOINT")
    workdir = next(iter(paths.values())).parent
    log_path = workdir / "container.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(BIN / entrypoint[0]), *entrypoint[1:], *mapped],
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while _healthcheck(url).returncode != 0:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    assert _healthcheck(url).returncode == 1  # and unhealthy once it is gone


def _connectivity_check(url: str) -> None:
    response = httpx.post(
        f"{url}/kbs/v0/auth", json={"version": "0.1.0", "tee": "tdx", "extra-params": "foo"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["nonce"]


pytestmark = pytest.mark.slow


def test_image_default_command_with_a_mounted_config(tmp_path: Path) -> None:
    """ENTRYPOINT + CMD as they are: `kbs serve --config /etc/trustee/kbs.toml`, with a
    production configuration mounted there (listening where the test can reach it)."""
    port = free_port()
    etc, data = tmp_path / "etc-trustee", tmp_path / "var-lib-trustee"
    etc.mkdir()
    (etc / "kbs.toml").write_text(
        f'data_dir = "{data}"\n'
        "[http_server]\n"
        f'sockets = ["127.0.0.1:{port}"]\n'
        "insecure_http = true\n"
        "worker_count = 1\n"
    )
    command = _exec_form(_stages()[1], "CMD")
    with _container(command, paths={"/etc/trustee": etc}, port=port) as url:
        _connectivity_check(url)
        # Production: no [admin] section, so the admin API is closed.
        assert httpx.get(f"{url}/kbs/v0/resource-policy").status_code == 401
    assert (data / "kbs.db").is_file()


def test_compose_development_service_runs_as_written(tmp_path: Path) -> None:
    command = yaml.safe_load(COMPOSE.read_text())["services"]["kbs"]["command"]
    data = tmp_path / "var-lib-trustee"
    with _container(command, paths={"/var/lib/trustee": data}) as url:
        _connectivity_check(url)
        # The development admin key lands in the data volume, where the file says.
        assert (data / "admin/admin.key").is_file()
        assert (data / "kbs.db").is_file()
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200


@pytest.mark.postgres
def test_compose_ha_service_runs_on_postgresql(tmp_path: Path, pg_database_url: str) -> None:
    service = yaml.safe_load(COMPOSE.read_text())["services"]["kbs-pg-1"]
    env = dict(service["environment"])
    assert env["KBS_DATABASE__URL"].startswith("postgresql://kbs:kbs-dev-only@postgres:5432/")
    env["KBS_DATABASE__URL"] = pg_database_url  # the test's server stands in for "postgres"
    data = tmp_path / "var-lib-trustee"
    with _container(service["command"], paths={"/var/lib/trustee": data}, env=env) as url:
        _connectivity_check(url)
    assert not (data / "kbs.db").exists()  # the sessions went to PostgreSQL
