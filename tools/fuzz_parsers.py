# SPDX-License-Identifier: Apache-2.0
"""Long property-test run of the parsers that see untrusted input.

Usage::

    .venv/bin/python tools/fuzz_parsers.py [--examples 100000] [-k quote]

Runs the suite's property tests (TDX quote, event log, PCK chain, TEE key JWK, RCAR
bodies, init-data TOML, RVPS messages, tokens, resource paths over HTTP, path patterns,
restful-as bodies, allow lists) with ``--examples`` cases each instead of the suite's
few hundred, and prints how many examples each test ran and passed. Exits with pytest's
status (non-zero if any input gave a foreign exception or broke a property).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The property-test modules (each reads KBS_FUZZ_EXAMPLES or TDX_FUZZ_EXAMPLES).
MODULES = (
    "tests/unit/attestation/tdx/test_tdx_parsers_property.py",
    "tests/unit/attestation/tdx/test_tdx_corpus_property.py",
    "tests/unit/kbs/test_parsers_property.py",
    "tests/unit/kbs/test_admin_parsers_property.py",
    "tests/unit/storage_backends/test_resource_desc.py",
    "tests/integration/test_resource_path_property.py",
)

_TEST = re.compile(r"^(tests/\S+::\S+):$")
_COUNTS = re.compile(r"- (\d+) passing, (\d+) failing, and (\d+) invalid")


def main() -> int:
    """Run the campaign and print one line per test, then the totals."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--examples", type=int, default=100_000, help="cases per property")
    parser.add_argument("-k", dest="keyword", default=None, help="pytest -k expression")
    args = parser.parse_args()
    env = dict(os.environ)
    env["KBS_FUZZ_EXAMPLES"] = env["TDX_FUZZ_EXAMPLES"] = str(args.examples)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--hypothesis-show-statistics",
        *MODULES,
    ]
    if args.keyword:
        command += ["-k", args.keyword]
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    test = None
    totals = [0, 0, 0]
    per_test: dict[str, list[int]] = {}
    for line in result.stdout.splitlines():
        if match := _TEST.match(line.strip()):
            test = match.group(1)
        elif (match := _COUNTS.search(line)) and test is not None:
            counts = per_test.setdefault(test, [0, 0, 0])
            for i in range(3):
                counts[i] += int(match.group(i + 1))
    for name, (passing, failing, invalid) in sorted(per_test.items()):
        print(f"examples {name}: {passing} passing, {failing} failing, {invalid} invalid")
        totals = [totals[0] + passing, totals[1] + failing, totals[2] + invalid]
    print(f"properties: {len(per_test)}")
    print(f"examples: {totals[0]} passing, {totals[1]} failing, {totals[2]} invalid")
    print(f"elapsed: {elapsed:.0f} s")
    summary = [line for line in result.stdout.splitlines() if " passed" in line or "failed" in line]
    print(f"pytest: {summary[-1] if summary else 'no summary'} (exit {result.returncode})")
    if result.returncode != 0:
        print(result.stdout[-20000:])
        print(result.stderr[-5000:])
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
