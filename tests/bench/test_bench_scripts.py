# SPDX-License-Identifier: Apache-2.0
"""The bench/ scripts still run: ``--help``, and ``--quick`` against a real ``kbs serve``.

Checks that each script prints its figures as ``name: value`` lines that parse, that no
flow failed and that the figures are consistent with each other; never timing
thresholds (those are the scripts' business, on a quiet machine).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = ("flows.py", "resource.py", "scale.py", "loadtest.py")
LINE = re.compile(r"^(?P<name>[a-z0-9_.]+): (?P<value>\S+)$")
#: A --quick run takes a few seconds; this bounds a hung server.
RUN_TIMEOUT_S = 120


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def figures(script: str, *args: str) -> dict[str, str]:
    result = run(script, "--quick", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    out: dict[str, str] = {}
    for line in result.stdout.splitlines():
        match = LINE.match(line)
        assert match, f"not a 'name: value' line: {line!r}"
        assert match["name"] not in out, f"figure printed twice: {line!r}"
        out[match["name"]] = match["value"]
    return out


def number(found: dict[str, str], name: str) -> float:
    assert name in found, f"{name} missing from {sorted(found)}"
    value = float(found[name])
    assert math.isfinite(value), f"{name}: {found[name]}"
    return value


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str) -> None:
    result = run(script, "--help")
    assert result.returncode == 0, result.stderr
    assert "--kbs" in result.stdout
    assert "--quick" in result.stdout


def test_flows_tdx_quick() -> None:
    found = figures("flows.py", "--tee", "tdx")
    flows = number(found, "tdx.flows")
    assert flows > 0
    assert number(found, "tdx.errors") == 0
    assert number(found, "tdx.workers") == 2
    for name in ("flows_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_flow"):
        assert number(found, f"tdx.{name}") > 0
    parts = ("dcap_verify", "es256_sign", "es256_verify", "jwe_wrap")
    floor = number(found, "tdx.floor_total_ms")
    assert floor == pytest.approx(sum(number(found, f"tdx.floor_{p}_ms") for p in parts), abs=0.005)
    ratio = number(found, "tdx.server_cpu_over_floor")
    assert ratio == pytest.approx(number(found, "tdx.server_cpu_ms_per_flow") / floor, rel=0.05)
    # The collateral cache was warm: no PCCS request while measuring.
    assert number(found, "tdx.pccs_requests_during_run") == 0


def test_resource_quick_with_an_explicit_kbs_command() -> None:
    kbs = Path(sys.executable).with_name("kbs")
    found = figures("resource.py", "--kbs", str(kbs))
    assert number(found, "fetches") > 0
    assert number(found, "errors") == 0
    assert number(found, "workers") == 1
    cpu_ms = number(found, "server_cpu_ms_per_fetch")
    assert number(found, "fetches_per_s_per_core") == pytest.approx(1000 / cpu_ms, rel=0.01)
    assert found["tee"] == "sample"


def test_resource_tdx_quick() -> None:
    found = figures("resource.py", "--tee", "tdx")
    assert found["tee"] == "tdx"
    assert number(found, "fetches") > 0
    assert number(found, "errors") == 0
    # The token carries the TDX claims, event log included: tens of KB.
    assert number(found, "token_bytes") > 20_000


def test_loadtest_quick() -> None:
    found = figures("loadtest.py")
    assert number(found, "flows") > 0
    assert number(found, "errors") == 0
    assert found["tee"] == "sample"
    assert number(found, "rss_samples") >= 2
    first, last, peak = (number(found, f"rss_{n}_mib") for n in ("first", "last", "max"))
    assert 0 < first <= peak
    assert 0 < last <= peak
    number(found, "rss_growth_mark_to_end_mib")


def _check_scale(found: dict[str, str], db: str) -> None:
    assert number(found, f"{db}.resources") >= 1000
    for size in (100, 1000):
        prefix = f"{db}.sessions_{size}"
        assert number(found, f"{prefix}.stored") == size
        assert number(found, f"{prefix}.flows") == 20
        assert number(found, f"{prefix}.errors") == 0
        assert number(found, f"{prefix}.p99_ms") >= number(found, f"{prefix}.p50_ms") > 0
    growth = number(found, f"{db}.p50_growth_1000_vs_100")
    assert growth == pytest.approx(
        number(found, f"{db}.sessions_1000.p50_ms") / number(found, f"{db}.sessions_100.p50_ms"),
        rel=0.02,
    )
    assert number(found, f"{db}.server_cpu_growth_1000_vs_100") == pytest.approx(
        number(found, f"{db}.sessions_1000.server_cpu_ms_per_flow")
        / number(found, f"{db}.sessions_100.server_cpu_ms_per_flow"),
        rel=0.02,
    )


def test_scale_quick_sqlite() -> None:
    _check_scale(figures("scale.py", "--db", "sqlite"), "sqlite")


@pytest.mark.postgres
def test_scale_quick_postgres() -> None:
    url = os.environ.get("KBS_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("KBS_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail("KBS_TEST_REQUIRE_POSTGRES=1 but KBS_TEST_POSTGRES_URL is not set")
        pytest.skip("set KBS_TEST_POSTGRES_URL to run PostgreSQL tests")
    _check_scale(figures("scale.py", "--db", "postgres", "--postgres-url", url), "postgres")


def test_failed_flows_are_counted_and_fail_the_run(tmp_path: Path) -> None:
    # The server command given by --kbs turns the sample TEE off in the config it is
    # handed: every guest's /attest is refused, and the load test must count and fail.
    wrapper = tmp_path / "kbs"
    kbs = Path(sys.executable).with_name("kbs")
    wrapper.write_text(
        f"#!{sys.executable}\n"
        "import os, pathlib, sys\n"
        "config = pathlib.Path(sys.argv[sys.argv.index('--config') + 1])\n"
        "text = config.read_text().replace(\n"
        "    'insecure_allow_sample_evidence = true', 'insecure_allow_sample_evidence = false'\n"
        ")\n"
        "config.write_text(text)\n"
        f"os.execv({str(kbs)!r}, ['kbs', *sys.argv[1:]])\n"
    )
    wrapper.chmod(0o755)
    result = run("loadtest.py", "--quick", "--kbs", str(wrapper))
    assert result.returncode == 1, result.stdout + result.stderr
    found = dict(LINE.match(line).groups() for line in result.stdout.splitlines())  # type: ignore[union-attr]
    assert int(found["flows"]) == 0
    assert int(found["errors"]) > 0
    assert "attest: HTTP 401" in result.stderr
