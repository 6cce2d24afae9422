# SPDX-License-Identifier: Apache-2.0
"""A loopback fake PCCS serving the v4 endpoints from a test PKI's collateral.

A real HTTP server on 127.0.0.1 (ephemeral port) in a daemon thread, speaking what an
Intel PCCS speaks: DER PCK CRL with ``SGX-PCK-CRL-Issuer-Chain``, ``{"tcbInfo":...}``
with ``TCB-Info-Issuer-Chain``, ``{"enclaveIdentity":...}`` with
``SGX-Enclave-Identity-Issuer-Chain`` (chains URL-encoded), and the root CA CRL as hex
text. Switches: ``down`` (drop connections), ``status`` (answer every request with it),
``serve_rootcacrl`` (404 it, to exercise the CDP fallback), ``delay`` (seconds), and a
log of request paths.

Usage::

    with FakePccs({parts.fmspc: parts}) as pccs:
        fetcher = PccsFetcher(client, base_urls=[pccs.url], root_ca_der=pki.root_der)
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, quote, urlsplit

from support.tdx_pki import CollateralParts


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up mid-response (size caps, "down" mode) are expected


class FakePccs:
    """The server; its handler reads the attributes below on every request."""

    def __init__(self, parts: dict[str, CollateralParts], *, prefix: str = "") -> None:
        self.parts = dict(parts)
        self.prefix = prefix
        self.down = False
        self.status: int | None = None
        self.serve_rootcacrl = True
        self.delay = 0.0
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def origin(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        """The base URL to configure, in the usual ``.../sgx/certification/v4/`` form."""
        return f"{self.origin}{self.prefix}/sgx/certification/v4/"

    @property
    def cdp_url(self) -> str:
        """Where the root CA CRL is served as DER (use as the test root's CDP)."""
        return f"{self.origin}/root.crl"

    def count(self, fragment: str = "") -> int:
        with self._lock:
            return sum(fragment in r for r in self.requests)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def _log(self, path: str) -> None:
        with self._lock:
            self.requests.append(path)

    # ------------------------------------------------------------ responses

    def respond(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        return pccs_response(
            self.parts, path, query, prefix=self.prefix, serve_rootcacrl=self.serve_rootcacrl
        )


def pccs_response(  # noqa: PLR0911 (one return per route)
    parts_by_fmspc: dict[str, CollateralParts],
    path: str,
    query: dict[str, list[str]],
    *,
    prefix: str = "",
    serve_rootcacrl: bool = True,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) a PCCS would answer for ``path`` and ``query``."""

    def one(name: str) -> str:
        return query.get(name, [""])[0]

    route = path.removeprefix(prefix)
    any_parts = next(iter(parts_by_fmspc.values()))
    if route == "/sgx/certification/v4/pckcrl":
        parts = next((p for p in parts_by_fmspc.values() if p.ca == one("ca")), None)
        if parts is None:
            return 404, {}, b""
        chain = quote(parts.pck_crl_issuer_chain, safe="")
        return 200, {"SGX-PCK-CRL-Issuer-Chain": chain}, parts.pck_crl
    if route == "/tdx/certification/v4/tcb":
        parts = parts_by_fmspc.get(one("fmspc").upper())
        if parts is None:
            return 404, {}, b""
        body = f'{{"tcbInfo":{parts.tcb_info},"signature":"{parts.tcb_info_signature.hex()}"}}'
        chain = quote(parts.tcb_info_issuer_chain, safe="")
        return 200, {"TCB-Info-Issuer-Chain": chain}, body.encode()
    if route == "/tdx/certification/v4/qe/identity":
        body = (
            f'{{"enclaveIdentity":{any_parts.qe_identity},'
            f'"signature":"{any_parts.qe_identity_signature.hex()}"}}'
        )
        chain = quote(any_parts.qe_identity_issuer_chain, safe="")
        return 200, {"SGX-Enclave-Identity-Issuer-Chain": chain}, body.encode()
    if route == "/sgx/certification/v4/rootcacrl" and serve_rootcacrl:
        return 200, {}, any_parts.root_ca_crl.hex().encode()
    if path == "/root.crl":
        return 200, {"Content-Type": "application/pkix-crl"}, any_parts.root_ca_crl
    return 404, {}, json.dumps({"error": "not found"}).encode()


def _handler_for(pccs: FakePccs) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            pccs._log(self.path)
            if pccs.delay:
                time.sleep(pccs.delay)
            if pccs.down:
                self.close_connection = True
                self.connection.close()
                return
            split = urlsplit(self.path)
            if pccs.status is not None:
                status, headers, body = pccs.status, {}, b"unavailable"
            else:
                status, headers, body = pccs.respond(split.path, parse_qs(split.query))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler
