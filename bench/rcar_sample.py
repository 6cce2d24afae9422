# SPDX-License-Identifier: Apache-2.0
"""Full sample-TEE guest flows (auth -> attest -> resource) against a real ``kbs serve``.

For 1 and 2 worker processes: starts the server on loopback (SQLite, file backend, the
sample TEE), runs N concurrent guests for a fixed time, and prints flows per second,
latency percentiles and the server's CPU milliseconds per flow (user + system time of
the server processes, read from /proc, divided by completed flows).

    .venv/bin/python bench/rcar_sample.py [--seconds 10] [--concurrency 16] [--workers 1 2]

The load generator shares the machine with the server: flows/s is a whole-system figure
on this host; CPU ms per flow is the server's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from kbs.client.api import AdminClient
from kbs.client.tee_key import TeeKeyPair

REFERENCE_VALUES = {
    "launch_digest": ["abcde"],
    "svn": ["1"],
    "major_version": 1,
    "minimum_minor_version": 4,
}
SECRET = b"benchmark model key"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its live children, seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _write_config(work: Path, admin_pub: Path) -> Path:
    config = work / "kbs.toml"
    config.write_text(
        f"""
environment = "development"
data_dir = "{work / "data"}"
[http_server]
insecure_http = true
[rate_limit]
enabled = false  # one load generator address; the limiter would throttle it
[attestation_service]
insecure_allow_sample_evidence = true
[admin]
authorization_mode = "AuthenticatedAuthorization"
[admin.authentication.bearer_jwt]
identity_providers = [{{ public_key_uri = "{admin_pub}" }}]
[admin.authorization.regex_acl]
acls = [{{ role = "admin", allowed_endpoints = "^/kbs/.*$" }}]
[[plugins]]
name = "resource"
type = "LocalFs"
dir_path = "{work / "repository"}"
"""
    )
    return config


async def _one_flow(session: aiohttp.ClientSession, url: str, key: TeeKeyPair, jwk: dict) -> float:
    started = time.perf_counter()
    async with session.post(
        f"{url}/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample", "extra-params": ""}
    ) as resp:
        assert resp.status == 200, await resp.text()
        cookie = resp.headers["set-cookie"].split(";", 1)[0]
        nonce = (await resp.json())["nonce"]
    runtime = {"tee-pubkey": jwk, "nonce": nonce, "additional-evidence": ""}
    digest = hashlib.sha384(rfc8785.dumps(runtime)).digest()
    body = {
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {
            "primary_evidence": {"svn": "1", "report_data": base64.b64encode(digest).decode()},
            "additional_evidence": "",
        },
    }
    headers = {"Cookie": cookie}
    async with session.post(f"{url}/kbs/v0/attest", json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()
    async with session.get(f"{url}/kbs/v0/resource/bench/key/one", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        envelope = await resp.json()
    assert key.decrypt(envelope) == SECRET
    return time.perf_counter() - started


async def _load(url: str, *, seconds: float, concurrency: int) -> list[float]:
    keys = [TeeKeyPair.generate("ec-p256") for _ in range(concurrency)]
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:

        async def guest(i: int) -> None:
            key = keys[i]
            jwk = key.public_jwk()
            while time.perf_counter() < stop:
                latencies.append(await _one_flow(session, url, key, jwk))

        await asyncio.gather(*(guest(i) for i in range(concurrency)))
    return latencies


def _run(workers: int, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="kbs-bench-") as tmp:
        work = Path(tmp)
        admin_key = ed25519.Ed25519PrivateKey.generate()
        admin_pub = work / "admin.pub"
        admin_pub.write_bytes(
            admin_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        config = _write_config(work, admin_pub)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log = (work / "server.log").open("w")
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kbs",
                "--log-level",
                "warning",
                "serve",
                "--config",
                str(config),
                "--workers",
                str(workers),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((work / "server.log").read_text())
                time.sleep(0.2)
            time.sleep(1.0)  # let every worker finish starting

            async def setup() -> None:
                pem = admin_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                admin = AdminClient(url, private_key_pem=pem)
                await admin.set_resource("bench/key/one", SECRET)
                await admin.set_reference_values(REFERENCE_VALUES)
                await admin.aclose()

            asyncio.run(setup())
            asyncio.run(_load(url, seconds=2, concurrency=args.concurrency))  # warm-up
            cpu_before = _proc_cpu_seconds(server.pid)
            wall_before = time.perf_counter()
            latencies = asyncio.run(_load(url, seconds=args.seconds, concurrency=args.concurrency))
            wall = time.perf_counter() - wall_before
            cpu = _proc_cpu_seconds(server.pid) - cpu_before
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()
    flows = len(latencies)
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "workers": workers,
        "flows": flows,
        "seconds": wall,
        "flows_per_s": flows / wall,
        "server_cpu_ms_per_flow": cpu * 1000 / flows,
        "p50_ms": quantiles[49] * 1000,
        "p99_ms": quantiles[98] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(
        f"host: {os.cpu_count()} CPUs; concurrency {args.concurrency}; {args.seconds:.0f} s per run"
    )
    results = [_run(w, args) for w in args.workers]
    for r in results:
        print(
            f"workers={r['workers']} flows={r['flows']} flows_per_s={r['flows_per_s']:.1f} "
            f"server_cpu_ms_per_flow={r['server_cpu_ms_per_flow']:.2f} "
            f"p50_ms={r['p50_ms']:.1f} p99_ms={r['p99_ms']:.1f}"
        )
    if len(results) > 1:
        print(
            f"flows_per_s ratio {results[-1]['workers']}w/{results[0]['workers']}w: "
            f"{results[-1]['flows_per_s'] / results[0]['flows_per_s']:.2f}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
