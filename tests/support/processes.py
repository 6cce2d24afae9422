# SPDX-License-Identifier: Apache-2.0
"""Real ``kbs serve`` processes on loopback ports, for tests across process boundaries."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

#: How long a server gets to start answering /healthz.
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(
    module: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        check=False,
    )


@contextlib.contextmanager
def kbs_server(
    args: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Start ``python -m kbs serve <args> --listen 127.0.0.1:<port>``; yield (url, process)."""
    port = free_port()
    log = (cwd / f"kbs-{port}.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kbs", "serve", *args, "--listen", f"127.0.0.1:{port}"],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                log.flush()
                raise RuntimeError(
                    f"kbs serve exited with {proc.returncode}:\n{(cwd / f'kbs-{port}.log').read_text()}"
                )
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("kbs serve did not become healthy in time")
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@dataclass
class KbsProcess:
    """One ``kbs serve`` process started by :func:`kbs_servers`."""

    url: str
    proc: subprocess.Popen[str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as when a node or container dies: no graceful shutdown."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=15)


def _wait_healthy(server: KbsProcess, deadline: float) -> None:
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"kbs serve exited with {server.proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"kbs serve did not become healthy in time:\n{server.log()}")
        time.sleep(0.1)


@contextlib.contextmanager
def kbs_servers(
    count: int,
    args: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    command: Sequence[str] | None = None,
) -> Iterator[list[KbsProcess]]:
    """Start ``count`` servers at the same instant, then wait until all are healthy.

    Each runs ``python -m kbs serve <args> --listen 127.0.0.1:<port>`` (or ``command``
    followed by ``--listen``) in its own process group, so :meth:`KbsProcess.kill` also
    takes down uvicorn's worker processes.
    """
    servers: list[KbsProcess] = []
    logs = []
    try:
        for _ in range(count):
            port = free_port()
            log_path = cwd / f"kbs-{port}.log"
            log = log_path.open("w")
            logs.append(log)
            argv = [*(command or [sys.executable, "-m", "kbs", "serve"]), *args]
            proc = subprocess.Popen(
                [*argv, "--listen", f"127.0.0.1:{port}"],
                cwd=cwd,
                env={**os.environ, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            servers.append(KbsProcess(f"http://127.0.0.1:{port}", proc, log_path))
        deadline = time.monotonic() + START_TIMEOUT_S
        for server in servers:
            _wait_healthy(server, deadline)
        yield servers
    finally:
        for server in servers:
            if server.proc.poll() is None:
                server.proc.terminate()
        for server in servers:
            try:
                server.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.proc.pid, signal.SIGKILL)
                server.proc.wait()
        for log in logs:
            log.close()
