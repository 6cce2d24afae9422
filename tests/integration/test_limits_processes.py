# SPDX-License-Identifier: Apache-2.0
"""Limits of a real ``kbs serve``: large Bearer tokens pass, absurd heads get 431, bodies 413."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from pathlib import Path

import httpx
import pytest

from support.processes import kbs_server

pytestmark = pytest.mark.slow

ERR = "https://github.com/confidential-containers/kbs/errors/"
#: The default ``[http_server] request_header_size`` (KiB).
HEADER_LIMIT = 128 * 1024


def _raw(url: str, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; return everything the server answers."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        # The server may answer and close before taking everything.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def _status_and_body(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _request(header_bytes: int, *, end: bool = True) -> bytes:
    token = b"A" * header_bytes
    request = b"GET /kbs/v0/resource/a/b/c HTTP/1.1\r\nHost: kbs\r\nAuthorization: Bearer " + token
    return request + (b"\r\n\r\n" if end else b"")


def _assert_431(answer: bytes) -> None:
    status, body = _status_and_body(answer)
    assert status == 431
    assert json.loads(body) == {
        "type": ERR + "RequestHeaderTooLarge",
        "detail": f"request headers exceed {HEADER_LIMIT} bytes",
    }


def test_header_and_body_limits_of_kbs_serve(tmp_path: Path) -> None:
    with kbs_server(
        ["--dev", "--data-dir", str(tmp_path / "data"), "--workers", "1"], cwd=tmp_path
    ) as (url, proc):
        # 1. A 32 KiB Bearer token reaches the application (which refuses the token).
        big = "Bearer " + "A" * (32 * 1024)
        response = httpx.get(f"{url}/kbs/v0/resource/a/b/c", headers={"Authorization": big})
        assert response.status_code == 401
        assert response.json()["type"].startswith(ERR)
        # So does a head just under the limit, sent complete in one read.
        status, _ = _status_and_body(_raw(url, _request(HEADER_LIMIT - 1024)))
        assert status == 401
        # 2. A complete head just over the limit: 431 with the error body.
        _assert_431(_raw(url, _request(HEADER_LIMIT + 1)))
        # A long request target counts too.
        _assert_431(_raw(url, b"GET /" + b"a" * HEADER_LIMIT + b" HTTP/1.1\r\nHost: k\r\n\r\n"))
        # 3. A head that never ends is cut off once past the limit (nothing more is read).
        _assert_431(_raw(url, _request(HEADER_LIMIT + 4096, end=False)))
        # 4. An absurd 1 MiB header: refused; the server reads and drops the rest for a
        # moment after answering, so the answer is not lost to a connection reset.
        _assert_431(_raw(url, _request(1024 * 1024)))
        # 5. A declared body over the limit is refused before it is sent.
        status, body = _status_and_body(
            _raw(
                url,
                b"POST /kbs/v0/auth HTTP/1.1\r\nHost: kbs\r\nContent-Type: application/json\r\n"
                b"Content-Length: 10485760\r\n\r\n",
            )
        )
        assert status == 413
        assert json.loads(body)["type"] == ERR + "PayloadTooLarge"
        # The server is still up and serving.
        assert proc.poll() is None
        assert httpx.get(f"{url}/healthz").status_code == 200
        auth = httpx.post(
            f"{url}/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample", "extra-params": ""}
        )
        assert auth.status_code == 200


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_slow_request_heads_are_cut_off(tmp_path: Path) -> None:
    # Two workers: the timeout travels to the worker processes with the server config.
    with kbs_server(
        ["--dev", "--data-dir", str(tmp_path / "data"), "--workers", "2"],
        cwd=tmp_path,
        env={"KBS_HTTP_SERVER__REQUEST_HEADER_TIMEOUT_S": "1"},
    ) as (url, proc):
        host, _, port = url.removeprefix("http://").rpartition(":")
        address = (host, int(port))
        # 1. A connection that never sends a byte is closed, without an answer.
        with socket.create_connection(address, timeout=10) as sock:
            assert _read_all(sock) == b""
        # 2. A head that stops half-way: 408 with the error body, then closed.
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: kbs\r\n")
            status, body = _status_and_body(_read_all(sock))
        assert status == 408
        assert json.loads(body) == {
            "type": ERR + "RequestTimeout",
            "detail": "request headers not received within 1 s",
        }
        # 3. A head trickled a byte at a time, each within any per-read timeout.
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            for byte in b"X-Slow: " + b"a" * 100:
                # Stop once the server has answered (sending on would reset the connection).
                if select.select([sock], [], [], 0.05)[0]:
                    break
                sock.sendall(bytes([byte]))
            answer = _read_all(sock)
        assert _status_and_body(answer)[0] == 408
        # 4. Requests that come in time are served, several on one connection with
        # pauses between them (each head gets its own time).
        with socket.create_connection(address, timeout=10) as sock:
            for _ in range(3):
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: kbs\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
                time.sleep(0.7)
        assert proc.poll() is None
        assert httpx.get(f"{url}/healthz").status_code == 200
