# SPDX-License-Identifier: Apache-2.0
"""Repeated ``GET /kbs/v0/resource/...`` with an ``Authorization: Bearer`` attestation token.

Starts ``kbs serve --workers 1`` (SQLite, resources in the database, the sample TEE or,
with ``--tee tdx``, TDX evidence on the test PKI as in ``flows.py``, whose token carries
its ~40 KB event log), gets one attestation token through a real auth -> attest flow,
then N concurrent clients
fetch the resource with ``Authorization: Bearer <token>`` for a fixed time (each answer
is a fresh JWE to the token's TEE key; the client checks the status of every answer and
decrypts the first and the last). Prints fetches/s, latency, the server's CPU ms per
fetch (/proc utime + stime) and fetches/s per server core (= 1000 / CPU ms per fetch;
issue 8 target >= 1,500).

    .venv/bin/python bench/resource.py [--seconds 15] [--concurrency 16] [--tee sample|tdx]
        [--db sqlite|postgres] [--kbs /path/to/other/venv/bin/kbs] [--quick]

Output: ``<figure>: <value>`` lines. Exit status 1 if any fetch failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import _common as c

from kbs.client.tee_key import TeeKeyPair


async def _token(url: str, guest: Any) -> tuple[TeeKeyPair, str]:
    key = TeeKeyPair.generate("ec-p256")
    async with c.new_session(1) as session:
        _, token = await c.auth_attest(session, url, guest, key)
        # The token alone (no cookie) must release the resource.
        await c.get_resource(session, url, key, {"Authorization": f"Bearer {token}"})
    return key, token


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(__doc__ or "").split("\n", 2)[2],
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument("--workers", type=int, default=1, help="kbs serve --workers")
    parser.add_argument(
        "--tee", choices=("sample", "tdx"), default="sample", help="evidence behind the token"
    )
    c.add_database_args(parser)
    c.add_server_args(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.concurrency = 2.0, 0.5, 8
    return args


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    c.figure("host_cpus", os.cpu_count() or 0, "d")
    c.figure("db", args.db)
    c.figure("tee", args.tee)
    with (
        c.temp_dir("kbs-bench-resource-") as tmp,
        c.bench_database(args.db, Path(tmp), args.postgres_url) as database_url,
        c.TdxWorld.open(Path(tmp)) if args.tee == "tdx" else contextlib.nullcontext() as world,
    ):
        work = Path(tmp)
        admin = c.Admin.create(work)
        guest: Any = c.TdxGuest(world.pki) if world is not None else c.SampleGuest()
        tdx = (world.root_path, world.pccs.url) if world is not None else None
        config = c.write_config(work, admin, tdx=tdx, database_url=database_url)
        with c.kbs_serve(args.kbs, config, workers=args.workers, work=work) as (url, pid):
            asyncio.run(c.provision(url, admin, guest.reference_values()))
            key, token = asyncio.run(_token(url, guest))
            headers = {"Authorization": f"Bearer {token}"}
            resource_url = f"{url}/kbs/v0/resource/{c.RESOURCE_PATH}"

            async def fetch(session: Any) -> None:
                async with session.get(resource_url, headers=headers) as resp:
                    if resp.status != 200:
                        raise c.FlowError(f"resource: HTTP {resp.status}")
                    await resp.read()

            asyncio.run(c.run_load(fetch, seconds=args.warmup, concurrency=args.concurrency))
            cpu_before = c.cpu_seconds(pid)
            result = asyncio.run(
                c.run_load(fetch, seconds=args.seconds, concurrency=args.concurrency)
            )
            cpu = c.cpu_seconds(pid) - cpu_before

            async def check() -> None:
                async with c.new_session(1) as session:
                    await c.get_resource(session, url, key, headers)

            asyncio.run(check())  # the last answer still decrypts to the secret
    fetches = max(result.flows, 1)
    cpu_ms = cpu * 1000 / fetches
    p50, p99 = c.percentiles(result.latencies)
    c.figure("workers", args.workers, "d")
    c.figure("concurrency", args.concurrency, "d")
    c.figure("token_bytes", len(token), "d")
    c.figure("fetches", result.flows, "d")
    c.figure("errors", result.errors, "d")
    c.figure("seconds", result.seconds)
    c.figure("fetches_per_s", result.flows / result.seconds, ".1f")
    c.figure("p50_ms", p50, ".2f")
    c.figure("p99_ms", p99, ".2f")
    c.figure("server_cpu_ms_per_fetch", cpu_ms, ".3f")
    c.figure("fetches_per_s_per_core", 1000 / cpu_ms if cpu_ms > 0 else float("inf"), ".0f")
    for error in result.first_errors:
        print(f"# error: {error}", file=sys.stderr)
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
