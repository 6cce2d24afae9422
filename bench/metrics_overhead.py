# SPDX-License-Identifier: Apache-2.0
"""What recording request metrics costs per request, in one process and with several.

Drives ``kbs.metrics.MetricsMiddleware`` around a trivial ASGI app (no network, no
framework) and prints the extra microseconds per request over the bare app, once with the
in-memory registry (one worker) and once with ``PROMETHEUS_MULTIPROC_DIR`` set (several
workers: values live in memory-mapped files). Also the cost of one labelled counter
increment, as the routes do for auth/attest/policy/resource counters.

    .venv/bin/python bench/metrics_overhead.py [--requests 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

_MODE_ENV = "KBS_BENCH_METRICS_MODE"


def _measure(requests: int) -> tuple[float, float, float]:
    from kbs.metrics import Metrics, MetricsMiddleware  # noqa: PLC0415 - after the env is set

    class _Route:
        path = "/kbs/v0/resource/{path:path}"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        del receive
        scope["route"] = _Route
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * 700})

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        del message

    metrics = Metrics()
    wrapped = MetricsMiddleware(app, metrics=metrics)
    scope = {"type": "http", "method": "GET", "path": "/kbs/v0/resource/a/b/c", "headers": []}

    async def run(target: Any) -> float:
        started = time.perf_counter()
        for _ in range(requests):
            await target(dict(scope), receive, send)
        return (time.perf_counter() - started) / requests * 1e6

    bare = asyncio.run(run(app))
    with_metrics = asyncio.run(run(wrapped))
    started = time.perf_counter()
    for _ in range(requests):
        metrics.resource_reads.labels("cai/sample/password").inc()
    counter = (time.perf_counter() - started) / requests * 1e6
    return bare, with_metrics, counter


def main() -> None:
    """Print the figures for both modes (each in a fresh interpreter)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    args = parser.parse_args()
    mode = os.environ.get(_MODE_ENV)
    if mode is not None:
        bare, with_metrics, counter = _measure(args.requests)
        print(
            f"{mode}: middleware overhead {with_metrics - bare:.1f} us/request "
            f"(bare app {bare:.1f} us, with metrics {with_metrics:.1f} us); "
            f"labelled counter inc {counter:.2f} us"
        )
        return
    for mode in ("one process", "multiprocess"):
        env = {**os.environ, _MODE_ENV: mode}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with tempfile.TemporaryDirectory(prefix="kbs-bench-metrics-") as directory:
            if mode == "multiprocess":
                env["PROMETHEUS_MULTIPROC_DIR"] = directory
            subprocess.run(
                [sys.executable, __file__, "--requests", str(args.requests)], env=env, check=True
            )


if __name__ == "__main__":
    main()
