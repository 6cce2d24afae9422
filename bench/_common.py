# SPDX-License-Identifier: Apache-2.0
"""Shared parts of the bench/ scripts: a real ``kbs serve``, guests, the load loop, /proc.

Not a benchmark itself. Every script prints its figures as plain ``name: value`` lines
(:func:`figure`), so a test can parse them and a person can diff two runs.

The server command is configurable (``--kbs /path/to/other/venv/bin/kbs``) so the same
scripts measure an older checkout; the configs written here use only keys that exist
on the main branch since issue 7.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
# bench/resource.py would shadow the standard library's ``resource`` (which
# prometheus_client imports): once this module is loaded, bench/ leaves the path.
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))  # the test PKI and fake PCCS live in tests/support

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import psycopg  # noqa: E402
import rfc8785  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from kbs.client.api import AdminClient  # noqa: E402
from kbs.client.tee_key import TeeKeyPair  # noqa: E402

#: The one resource every flow fetches, and its value.
RESOURCE_PATH = "bench/key/one"
SECRET = b"benchmark model key"

#: Reference values that make the sample TEE's evidence affirming under the default policy.
SAMPLE_REFERENCE_VALUES: dict[str, Any] = {
    "launch_digest": ["abcde"],
    "svn": ["1"],
    "major_version": 1,
    "minimum_minor_version": 4,
}

#: The real cloud event log (CCEL + AAEL, 87 events) the TDX guest sends.
TDX_EVENT_LOG = "eventlog-CCEL_AAEL_alibabacloud"

#: Where --db postgres creates its database unless $KBS_TEST_POSTGRES_URL says otherwise.
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"

#: How long a server gets to answer /healthz.
START_TIMEOUT_S = 60.0


def figure(name: str, value: float | str, fmt: str = ".2f") -> None:
    """Print one ``name: value`` line (the only output format tests parse)."""
    text = value if isinstance(value, str) else format(value, fmt)
    print(f"{name}: {text}", flush=True)


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """``--kbs`` and ``--quick``, shared by every script."""
    parser.add_argument(
        "--kbs",
        default=None,
        help="the server command to benchmark, e.g. /path/to/old/.venv/bin/kbs "
        "(default: this interpreter's `python -m kbs`)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds in all: checks that the script works, its figures mean little",
    )


def add_database_args(parser: argparse.ArgumentParser) -> None:
    """``--db`` and ``--postgres-url``."""
    parser.add_argument(
        "--db",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="the server's database (postgres: a database created and dropped by the script)",
    )
    add_postgres_url_arg(parser)


def add_postgres_url_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("KBS_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="PostgreSQL server on which a kbs_bench_<pid> database is created and dropped; "
        "the database named in the URL is only connected to "
        "(default: $KBS_TEST_POSTGRES_URL or %(default)s)",
    )


@contextlib.contextmanager
def bench_database(db: str, work: Path, postgres_url: str) -> Iterator[str]:
    """Yield the URL of a fresh database: a SQLite file in ``work``, or a new PostgreSQL one.

    The PostgreSQL database ``kbs_bench_<pid>`` is created on ``postgres_url``'s server
    and dropped afterwards, so tests using the database in the URL are never disturbed.
    """
    if db == "sqlite":
        yield f"sqlite:///{work / 'kbs.db'}"
        return
    parsed = make_url(postgres_url).set(drivername="postgresql")
    admin_dsn = parsed.render_as_string(hide_password=False)
    name = f"kbs_bench_{os.getpid()}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield parsed.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_command(kbs: str | None) -> list[str]:
    """The argv prefix that runs the ``kbs`` command line."""
    return [kbs] if kbs else [sys.executable, "-m", "kbs"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------ /proc


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (uvicorn's workers, their helpers)."""
    pids = [pid]
    i = 0
    while i < len(pids):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pids[i]}/task").iterdir():
                children = (task / "children").read_text().split()
                pids += [int(c) for c in children if int(c) not in pids]
        i += 1
    return pids


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its live descendants, seconds."""
    return cpu_seconds_of(process_tree(pid))


def cpu_seconds_of(pids: Sequence[int]) -> float:
    """utime + stime of the live processes among ``pids``, seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` and its live descendants, bytes."""
    total = 0
    for p in process_tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


# ------------------------------------------------------------------------------ server


@dataclass
class Admin:
    """An Ed25519 admin key the server trusts (its public key file is in the config)."""

    public_path: Path
    private_pem: bytes

    @classmethod
    def create(cls, work: Path) -> Admin:
        key = ed25519.Ed25519PrivateKey.generate()
        public_path = work / "admin.pub"
        public_path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cls(public_path, pem)


def write_config(
    work: Path,
    admin: Admin,
    *,
    database_url: str | None = None,
    tdx: tuple[Path, str] | None = None,
) -> Path:
    """A development config: SQLite (or ``database_url``), resources in the database.

    Sample evidence is allowed; with ``tdx = (root_ca_path, pccs_url)`` the TDX verifier
    trusts that root and fetches collateral from that PCCS. The rate limiter is off: the
    load generator is one client address.
    """
    database_url = database_url or f"sqlite:///{work / 'kbs.db'}"
    dcap = ""
    if tdx is not None:
        dcap = f"""
[attestation_service.verifier_config.dcap_verifier]
collateral_services = ["{tdx[1]}"]
insecure_root_ca_path = "{tdx[0]}"
"""
    config = work / "kbs.toml"
    config.write_text(
        f"""
environment = "development"
data_dir = "{work / "data"}"
[database]
url = "{database_url}"
[http_server]
insecure_http = true
[rate_limit]
enabled = false
[attestation_service]
insecure_allow_sample_evidence = true
{dcap}
[admin]
authorization_mode = "AuthenticatedAuthorization"
[admin.authentication.bearer_jwt]
identity_providers = [{{ public_key_uri = "{admin.public_path}" }}]
[admin.authorization.regex_acl]
acls = [{{ role = "admin", allowed_endpoints = "^/kbs/.*$" }}]
[[plugins]]
name = "resource"
storage_backend_type = "kvstorage"
"""
    )
    return config


@contextlib.contextmanager
def kbs_serve(
    kbs: str | None, config: Path, *, workers: int, work: Path
) -> Iterator[tuple[str, int]]:
    """``kbs serve --config --workers`` on a loopback port; yields (url, server pid).

    The server runs in its own process group, so stopping it also stops its workers.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = work / f"kbs-{port}.log"
    argv = [
        *server_command(kbs),
        *("--log-level", "warning", "serve", "--config", str(config)),
        *("--workers", str(workers), "--listen", f"127.0.0.1:{port}"),
    ]
    with log_path.open("w") as log:
        server = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, cwd=work, start_new_session=True
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"kbs serve did not start:\n{log_path.read_text()}")
                time.sleep(0.2)
            # /healthz answered from one worker; give the others time to import and bind.
            _wait_workers(server.pid, workers, deadline)
            yield url, server.pid
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait()


def _wait_workers(pid: int, workers: int, deadline: float) -> None:
    """Wait until ``workers`` descendants exist and the tree's CPU use settles."""
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if (workers <= 1 or len(process_tree(pid)) > workers) and now - last < 0.05:
            return
        last = now


async def provision(url: str, admin: Admin, reference_values: dict[str, Any]) -> None:
    """Store the benchmark resource and the reference values through the admin API."""
    client = AdminClient(url, private_key_pem=admin.private_pem)
    try:
        await client.set_resource(RESOURCE_PATH, SECRET)
        await client.set_reference_values(reference_values)
    finally:
        await client.aclose()


# ------------------------------------------------------------------------------ guests


class SampleGuest:
    """The sample TEE: evidence is JSON carrying the REPORT_DATA, no signature."""

    tee = "sample"

    def reference_values(self) -> dict[str, Any]:
        return SAMPLE_REFERENCE_VALUES

    def evidence(self, digest: bytes) -> Any:
        return {"svn": "1", "report_data": base64.b64encode(digest).decode()}


class TdxGuest:
    """A TDX guest on the private test PKI: a fresh signed quote bound to each nonce.

    Each quote has a fresh attestation key (as a real QE's is per boot) and carries the
    Alibaba Cloud CCEL+AAEL event log, whose replay gives RTMR 1-4.
    """

    tee = "tdx"

    def __init__(self, pki: Any) -> None:
        from support.tdx_guest import ccel, tdx_reference_values  # noqa: PLC0415

        self.pki = pki
        raw, self.rtmrs = ccel(SHARED, TDX_EVENT_LOG)
        self.ccel_b64 = base64.b64encode(raw).decode()
        self._reference_values = tdx_reference_values(self.rtmrs)

    def reference_values(self) -> dict[str, Any]:
        return self._reference_values

    def quote(self, digest: bytes) -> bytes:
        return bytes(self.pki.quote(report_data=digest.ljust(64, b"\x00"), rtmrs=self.rtmrs))

    def evidence(self, digest: bytes) -> Any:
        quote = self.quote(digest)
        return {"quote": base64.b64encode(quote).decode(), "cc_eventlog": self.ccel_b64}


@dataclass
class TdxWorld:
    """The test PKI, a loopback fake PCCS serving its collateral, and the root CA file."""

    pki: Any
    pccs: Any
    root_path: Path

    @classmethod
    @contextlib.contextmanager
    def open(cls, work: Path) -> Iterator[TdxWorld]:
        from support.fake_pccs import FakePccs  # noqa: PLC0415
        from support.tdx_pki import TestPki  # noqa: PLC0415

        with FakePccs({}) as pccs:
            pki = TestPki.create(root_cdp=pccs.cdp_url)
            parts = pki.collateral_parts(dt.datetime.now(dt.UTC))  # noqa: TID251
            pccs.parts = {parts.fmspc: parts}
            root_path = work / "test-root-ca.der"
            root_path.write_bytes(pki.root_der)
            yield cls(pki, pccs, root_path)


# ------------------------------------------------------------------------------ flows


class FlowError(Exception):
    """A guest flow got a non-2xx answer or a wrong secret."""


async def _expect(resp: aiohttp.ClientResponse, step: str) -> None:
    if resp.status // 100 != 2:
        body = (await resp.text())[:200]
        raise FlowError(f"{step}: HTTP {resp.status}: {body}")


async def auth_attest(
    session: aiohttp.ClientSession, url: str, guest: Any, key: TeeKeyPair
) -> tuple[str, str]:
    """``/auth`` then ``/attest`` as Trustee's guest does; returns (cookie, token)."""
    async with session.post(
        f"{url}/kbs/v0/auth", json={"version": "0.4.0", "tee": guest.tee, "extra-params": ""}
    ) as resp:
        await _expect(resp, "auth")
        cookie = resp.headers["set-cookie"].split(";", 1)[0]
        nonce = (await resp.json())["nonce"]
    jwk = key.public_jwk()
    # REPORT_DATA as Trustee's guest builds it: SHA-384 of the JCS runtime data.
    runtime = {"tee-pubkey": jwk, "nonce": nonce, "additional-evidence": ""}
    digest = hashlib.sha384(rfc8785.dumps(runtime)).digest()
    body = {
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {"primary_evidence": guest.evidence(digest), "additional_evidence": ""},
    }
    async with session.post(f"{url}/kbs/v0/attest", json=body, headers={"Cookie": cookie}) as resp:
        await _expect(resp, "attest")
        token = (await resp.json())["token"]
    return cookie, token


async def get_resource(
    session: aiohttp.ClientSession, url: str, key: TeeKeyPair, headers: dict[str, str]
) -> None:
    """Fetch the benchmark resource and decrypt it with the guest's key."""
    async with session.get(f"{url}/kbs/v0/resource/{RESOURCE_PATH}", headers=headers) as resp:
        await _expect(resp, "resource")
        envelope = await resp.json()
    if key.decrypt(envelope) != SECRET:
        raise FlowError("resource: wrong secret")


async def full_flow(session: aiohttp.ClientSession, url: str, guest: Any) -> None:
    """auth -> attest -> resource with a fresh TEE key, as a booting guest."""
    key = TeeKeyPair.generate("ec-p256")
    cookie, _ = await auth_attest(session, url, guest, key)
    await get_resource(session, url, key, {"Cookie": cookie})


@dataclass
class LoadResult:
    """What a load run saw."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def flows(self) -> int:
        return len(self.latencies)


def new_session(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=60),
    )


async def run_load(
    flow: Any,
    *,
    seconds: float,
    concurrency: int,
    max_flows: int | None = None,
) -> LoadResult:
    """``concurrency`` guests loop ``flow(session)`` for ``seconds`` (or ``max_flows``).

    Every exception or non-2xx answer counts as an error; the guest then carries on.
    """
    result = LoadResult()
    started = time.perf_counter()
    stop = started + seconds
    begun = 0
    async with new_session(concurrency) as session:

        async def guest() -> None:
            nonlocal begun
            while time.perf_counter() < stop:
                if max_flows is not None and begun >= max_flows:
                    return
                begun += 1
                t0 = time.perf_counter()
                try:
                    await flow(session)
                except Exception as exc:  # noqa: BLE001 (every failure is counted)
                    result.errors += 1
                    if len(result.first_errors) < 5:
                        result.first_errors.append(f"{type(exc).__name__}: {exc}"[:300])
                else:
                    result.latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(guest() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


def percentiles(latencies: Sequence[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    if len(latencies) < 2:
        only = latencies[0] * 1000 if latencies else float("nan")
        return only, only
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return q[49] * 1000, q[98] * 1000


def temp_dir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix=prefix)
