# SPDX-License-Identifier: Apache-2.0
"""Key documents fetched over HTTP(S) are bounded in size and in time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kbs import uris


class _Endless(BaseHTTPRequestHandler):
    """Answers 200 and then sends body bytes until the client goes away."""

    delay_s = 0.0

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        try:
            while True:
                self.wfile.write(b"x" * 4096)
                if self.delay_s:
                    time.sleep(self.delay_s)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


class _Dripping(_Endless):
    delay_s = 0.05


def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def endless() -> Iterator[str]:
    yield from _serve(_Endless)


@pytest.fixture
def dripping() -> Iterator[str]:
    yield from _serve(_Dripping)


def test_an_endless_document_is_refused_at_the_size_cap(endless: str) -> None:
    with pytest.raises(ValueError, match="is too large"):
        uris.read_uri(endless)


def test_a_dripping_server_is_given_up_on(dripping: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uris, "FETCH_DEADLINE_S", 0.5)
    # 4 KiB every 50 ms stays under the size cap for ~12 s: only the deadline stops it.
    with pytest.raises(ValueError, match="no complete answer within 0.5 s"):
        uris.read_uri(dripping)
