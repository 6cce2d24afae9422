# SPDX-License-Identifier: Apache-2.0
"""Long schemathesis run over the whole application's OpenAPI document (in-process).

Usage::

    .venv/bin/python tools/fuzz_api.py [--examples 1000] [--match /kbs/v0/resource]

The same checks as tests/integration/test_openapi_schemathesis.py (no server fault, the
status, content type, body and headers of every answer as documented, admin operations
refuse a request without the admin token), with many more cases per operation. Prints
one line per operation with its request count, then the totals and every failure; exits
1 if there was any.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fuzz driver lives in tests/support

from support.api_fuzz import fuzzable_app, run  # noqa: E402

_logger = logging.getLogger(__name__)


def main() -> int:
    """Run the campaign and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--examples", type=int, default=1000, help="cases per operation")
    parser.add_argument("--match", default="", help="only operations whose path contains this")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    started = time.monotonic()
    with fuzzable_app() as (app, key):
        report = run(
            app,
            key,
            max_examples=args.examples,
            operations=lambda _method, path: args.match in path,
            on_case=lambda label: print(f"done {label}", flush=True),
        )
    elapsed = time.monotonic() - started
    for label, count in sorted(report.requests.items()):
        print(f"requests {label}: {count}")
    statuses = " ".join(f"{s}={n}" for s, n in sorted(report.statuses.items()))
    print(f"operations: {len(report.requests)}")
    print(f"requests: {report.total} in {elapsed:.1f} s ({report.total / elapsed:.0f}/s)")
    print(f"statuses: {statuses}")
    print(f"failures: {len(report.failures)}")
    for failure in report.failures:
        print(f"---\n{failure}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
