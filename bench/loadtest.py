# SPDX-License-Identifier: Apache-2.0
"""Load test: 200 concurrent guests for 60 s of full flows against ``kbs serve --workers 2``.

Each guest loops auth -> attest -> resource (fresh TEE key per flow, evidence bound to
the nonce, secret decrypted) with the sample TEE, or with ``--tee tdx`` test-PKI quotes
(collateral from a loopback fake PCCS). Every non-2xx answer, wrong secret or exception
counts as an error. The server's resident memory (server and workers, from /proc) is
sampled every second: first, last, max, and the growth from the ``--mark`` second (10 by
default, after warm-up allocations) to the end, to show that memory stays flat.

    .venv/bin/python bench/loadtest.py [--tee sample|tdx] [--seconds 60]
        [--concurrency 200] [--workers 2] [--db sqlite|postgres]
        [--kbs /path/to/other/venv/bin/kbs] [--quick]

Output: ``<figure>: <value>`` lines. Exit status 1 if any flow failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import _common as c

MIB = 1024 * 1024


class RssSampler(threading.Thread):
    """Samples the server tree's RSS every ``interval`` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        start = time.perf_counter()
        while True:
            self.samples.append((time.perf_counter() - start, c.rss_bytes(self.pid)))
            if self._stop_event.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.samples.append((self.samples[-1][0] if self.samples else 0.0, c.rss_bytes(self.pid)))

    def at(self, second: float) -> int:
        """The first sample taken at or after ``second``."""
        for when, rss in self.samples:
            if when >= second:
                return rss
        return self.samples[-1][1]


def report(args: argparse.Namespace, result: c.LoadResult, cpu: float, sampler: RssSampler) -> None:
    """Print the run's figures."""
    p50, p99 = c.percentiles(result.latencies)
    rss = [r for _, r in sampler.samples]
    c.figure("tee", args.tee)
    c.figure("workers", args.workers, "d")
    c.figure("concurrency", args.concurrency, "d")
    c.figure("seconds", result.seconds)
    c.figure("flows", result.flows, "d")
    c.figure("errors", result.errors, "d")
    c.figure("flows_per_s", result.flows / result.seconds, ".1f")
    c.figure("p50_ms", p50, ".1f")
    c.figure("p99_ms", p99, ".1f")
    c.figure("server_cpu_ms_per_flow", cpu * 1000 / max(result.flows, 1))
    c.figure("rss_samples", len(rss), "d")
    c.figure("rss_first_mib", rss[0] / MIB, ".1f")
    c.figure("rss_last_mib", rss[-1] / MIB, ".1f")
    c.figure("rss_max_mib", max(rss) / MIB, ".1f")
    c.figure("rss_mark_s", args.mark, ".0f")
    c.figure("rss_growth_mark_to_end_mib", (rss[-1] - sampler.at(args.mark)) / MIB, ".1f")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(__doc__ or "").split("\n", 2)[2],
    )
    parser.add_argument("--tee", choices=["sample", "tdx"], default="sample")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the run")
    parser.add_argument("--concurrency", type=int, default=200, help="concurrent guests")
    parser.add_argument("--workers", type=int, default=2, help="kbs serve --workers")
    parser.add_argument(
        "--mark", type=float, default=10.0, help="RSS growth is measured from this second"
    )
    c.add_database_args(parser)
    c.add_server_args(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.concurrency, args.mark = 2.5, 20, 1.0
    c.figure("host_cpus", os.cpu_count() or 0, "d")
    c.figure("db", args.db)
    with (
        c.temp_dir("kbs-bench-load-") as tmp,
        c.bench_database(args.db, Path(tmp), args.postgres_url) as database_url,
    ):
        work = Path(tmp)
        admin = c.Admin.create(work)
        world_cm: Any = c.TdxWorld.open(work) if args.tee == "tdx" else contextlib.nullcontext()
        with world_cm as world:
            guest: Any = c.TdxGuest(world.pki) if world is not None else c.SampleGuest()
            tdx = (world.root_path, world.pccs.url) if world is not None else None
            config = c.write_config(work, admin, tdx=tdx, database_url=database_url)
            with c.kbs_serve(args.kbs, config, workers=args.workers, work=work) as (url, pid):
                asyncio.run(c.provision(url, admin, guest.reference_values()))

                async def flow(session: Any) -> None:
                    await c.full_flow(session, url, guest)

                sampler = RssSampler(pid)
                cpu_before = c.cpu_seconds(pid)
                sampler.start()
                try:
                    result = asyncio.run(
                        c.run_load(flow, seconds=args.seconds, concurrency=args.concurrency)
                    )
                finally:
                    sampler.stop()
                cpu = c.cpu_seconds(pid) - cpu_before
    report(args, result, cpu, sampler)
    for error in result.first_errors:
        print(f"# error: {error}", file=sys.stderr)
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
