# SPDX-License-Identifier: Apache-2.0
"""TDX verification inline vs in the process pool, against a real ``kbs serve``.

Usage::

    .venv/bin/python bench/verify_offload.py [--seconds 10] [--concurrency 8]
        [--workers 1 2] [--verify-processes 0 1] [--probe-interval-ms 10]
        [--verifications 800] [--skip-in-process] [--skip-flows]

For every server worker count (``--workers``) and every ``verify_processes`` (0: inline
on the event loop; N: N verification processes per server worker), one run of full TDX
RCAR flows (auth -> attest with a fresh test-PKI quote bound to the session and the
87-event Alibaba Cloud event log -> resource -> JWE decrypt; warm collateral cache, the
same flow as bench/tdx_verify.py) from ``--concurrency`` guests for ``--seconds``, with a
``GET /healthz`` probe every ``--probe-interval-ms`` from a *separate process* (so the
load generator's own CPU work does not delay it; a new connection per probe, so with
several workers it lands on any of them). Printed, one line per run:

* flows/s, p50/p99 flow latency;
* server CPU ms per flow: utime+stime of the whole server process tree (supervisor,
  workers, their forkservers and verification processes) over the run;
* the /healthz probe's latency p50 / p99 / max: how long a light request waits behind
  the work the serving process does (the event-loop stall), and the same probe with the
  server idle, before the load, as the baseline.

The load generator (which also signs every quote) shares the machine's CPUs with the
server, as in bench/tdx_verify.py.

First, in-process (``--verifications`` per case, no HTTP): ``TdxVerifier.verify`` on
distinct test-PKI quotes with the event log, inline vs through a one-process
``VerificationPool``, 1 and 8 concurrent streams: verifications/s, CPU ms per
verification of the calling process (what holds its event loop: evidence parsing,
claims, pickling, and the checks themselves when inline) and of the pool process.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tdx_verify  # bench/tdx_verify.py: the flow, the config, kbs serve
from tdx_verify import (
    FakePccs,
    FlowGuest,
    TestPki,
    c,  # bench/_common.py (importing it first would drop bench/ from sys.path)
)

VERIFY_PROCESSES_ENV = "KBS_ATTESTATION_SERVICE__VERIFIER_CONFIG__DCAP_VERIFIER__VERIFY_PROCESSES"


async def in_process_section(args: argparse.Namespace) -> None:
    from attestation.base import NOT_PROVIDED  # noqa: PLC0415
    from attestation.tdx.pool import VerificationPool  # noqa: PLC0415
    from attestation.tdx.verifier import TdxVerifier  # noqa: PLC0415

    at, pki, collateral, ccel, digests, quotes = tdx_verify._test_pki_world(256)  # noqa: SLF001
    source = await tdx_verify.warm_source(collateral, pki.root_der, at)
    ccel_b64 = base64.b64encode(ccel).decode()
    evidences = [{"quote": base64.b64encode(q).decode(), "cc_eventlog": ccel_b64} for q in quotes]
    pool = VerificationPool(1)
    pids = await asyncio.to_thread(pool.warm)
    n = args.verifications
    try:
        for name, executor in (("inline", None), ("pool", pool)):
            verifier = TdxVerifier(collateral=source, root_ca_der=pki.root_der, executor=executor)

            async def one(i: int, verifier: TdxVerifier = verifier) -> object:
                k = i % len(quotes)
                return await verifier.verify(
                    evidences[k], report_data=digests[k], init_data_hash=NOT_PROVIDED, at=at
                )

            await one(0)
            for streams in (1, 8):

                async def stream(first: int, streams: int = streams) -> None:
                    for i in range(first, n, streams):
                        await one(i)

                cpu0, pool0 = time.process_time(), c.cpu_seconds_of(pids)
                wall0 = time.perf_counter()
                await asyncio.gather(*(stream(k) for k in range(streams)))
                wall = time.perf_counter() - wall0
                cpu = time.process_time() - cpu0
                pool_cpu = c.cpu_seconds_of(pids) - pool0
                print(
                    f"in-process {name} streams={streams}: {n / wall:.0f} verifications/s, "
                    f"caller CPU {cpu / n * 1e3:.3f} ms, pool process CPU "
                    f"{pool_cpu / n * 1e3:.3f} ms per verification"
                )
    finally:
        pool.shutdown()


def _tree_pss_mib(pid: int) -> float:
    """Proportional set size of ``pid`` and its live descendants, MiB (shared pages split)."""
    total = 0
    for p in c.process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total / 1024


def _probe(port: int, interval: float, ready, stop, out) -> None:  # in its own process
    latencies: list[float] = []
    while not stop.is_set():
        if latencies:
            ready.set()
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                latencies.append(time.perf_counter() - started)
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(max(0.0, interval - (time.perf_counter() - started)))
    out.put(latencies)


@contextlib.contextmanager
def probing(port: int, interval: float):
    """Probe /healthz from another process; yields a list filled with latencies at exit."""
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    out = context.Queue()
    process = context.Process(target=_probe, args=(port, interval, ready, stop, out), daemon=True)
    process.start()
    if not ready.wait(timeout=60):
        raise RuntimeError("the /healthz probe never got an answer")
    results: list[float] = []
    try:
        yield results
    finally:
        stop.set()
        results.extend(out.get(timeout=60))
        process.join(timeout=10)


def _stall(latencies: list[float]) -> str:
    if len(latencies) < 2:
        return "no probe answered"
    q = statistics.quantiles(latencies, n=100)
    return (
        f"p50 {q[49] * 1e3:.1f} ms, p99 {q[98] * 1e3:.1f} ms, "
        f"max {max(latencies) * 1e3:.1f} ms ({len(latencies)} probes)"
    )


def run(workers: int, verify_processes: int, args: argparse.Namespace) -> None:
    from kbs.clock import SystemClock  # noqa: PLC0415

    os.environ[VERIFY_PROCESSES_ENV] = str(verify_processes)  # inherited by kbs serve
    os.environ["KBS_RATE_LIMIT__ENABLED"] = "false"  # every guest is 127.0.0.1 here
    interval = args.probe_interval_ms / 1000
    with tempfile.TemporaryDirectory(prefix="kbs-bench-offload-") as tmp, FakePccs({}) as pccs:
        work = Path(tmp)
        pki = TestPki.create(root_cdp=pccs.cdp_url)
        parts = pki.collateral_parts(SystemClock().now())
        pccs.parts = {parts.fmspc: parts}
        guest = FlowGuest(pki)
        admin = c.Admin.create(work)
        admin_pub, admin_pem = admin.public_path, admin.private_pem
        config = tdx_verify._write_config(work, pki, pccs.url, admin_pub)  # noqa: SLF001
        with tdx_verify.kbs_serve(config, workers, work) as (url, server):
            port = int(url.rsplit(":", 1)[1])
            asyncio.run(tdx_verify._provision(url, admin_pem, guest))  # noqa: SLF001
            asyncio.run(tdx_verify.load(url, guest, 2.0, args.concurrency))  # warm-up
            with probing(port, interval) as idle:
                time.sleep(2.0)
            cpu_before = c.cpu_seconds(server.pid)
            wall_before = time.perf_counter()
            with probing(port, interval) as loaded:
                latencies = asyncio.run(tdx_verify.load(url, guest, args.seconds, args.concurrency))
            wall = time.perf_counter() - wall_before
            cpu = c.cpu_seconds(server.pid) - cpu_before
            pss = _tree_pss_mib(server.pid)
    mode = "inline" if verify_processes == 0 else f"pool {verify_processes}/worker"
    q = statistics.quantiles(latencies, n=100)
    label = f"workers={workers} {mode} concurrency={args.concurrency}"
    print(
        f"{label}: {len(latencies) / wall:.1f} TDX flows/s ({len(latencies)} in {wall:.1f} s), "
        f"server CPU {cpu * 1e3 / len(latencies):.2f} ms/flow, "
        f"p50 {q[49] * 1e3:.1f} ms, p99 {q[98] * 1e3:.1f} ms, server PSS {pss:.0f} MiB"
    )
    print(f"{label}: /healthz under load {_stall(loaded)}")
    print(f"{label}: /healthz idle {_stall(idle)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--verify-processes", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--probe-interval-ms", type=float, default=10.0)
    parser.add_argument("--verifications", type=int, default=800)
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument("--skip-flows", action="store_true")
    args = parser.parse_args()
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    if not args.skip_in_process:
        asyncio.run(in_process_section(args))
    if args.skip_flows:
        return
    for workers in args.workers:
        for verify_processes in args.verify_processes:
            run(workers, verify_processes, args)


if __name__ == "__main__":
    main()
