# SPDX-License-Identifier: Apache-2.0
"""A loopback identity provider for admin-token tests: JWKS, OIDC discovery, signing.

One real HTTP server on ``127.0.0.1`` (ephemeral port, background thread) serves

* ``/.well-known/openid-configuration`` — ``{"issuer", "jwks_uri"}``;
* ``/jwks.json`` — the public keys currently published, each with its ``kid``;

and the object signs tokens with its private keys. Tests rotate keys (``rotate()``),
withdraw them, make the server slow or failing, and count fetches.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

__all__ = ["LoopbackIdp"]


@dataclass
class _Key:
    kid: str
    private: Any
    alg: str


class LoopbackIdp:
    """An OpenID provider on loopback that publishes a JWKS and signs admin tokens."""

    def __init__(self, *, issuer: str | None = None, alg: str = "ES256") -> None:
        self._lock = threading.Lock()
        self._keys: list[_Key] = []
        self._alg = alg
        self._counter = 0
        self.fetches: dict[str, int] = {"jwks": 0, "discovery": 0}
        self.delay_s = 0.0
        self.fail_status: int | None = None
        self.discovery_issuer: str | None = None  # overrides the issuer in discovery
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                del format, args

            def do_GET(self) -> None:
                idp._serve(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.issuer = issuer or self.url
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.add_key()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def jwks_uri(self) -> str:
        return f"{self.url}/jwks.json"

    @property
    def discovery_uri(self) -> str:
        return f"{self.url}/.well-known/openid-configuration"

    # ------------------------------------------------------------------ keys

    def add_key(self) -> str:
        """Publish a new key (it becomes the signing key); return its kid."""
        with self._lock:
            self._counter += 1
            kid = f"key-{self._counter}"
            if self._alg.startswith("ES"):
                private: Any = ec.generate_private_key(ec.SECP256R1())
            else:
                private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self._keys.append(_Key(kid, private, self._alg))
            return kid

    def rotate(self) -> str:
        """Publish a new signing key and withdraw every older one; return the new kid."""
        kid = self.add_key()
        with self._lock:
            self._keys = [k for k in self._keys if k.kid == kid]
        return kid

    def withdraw(self, kid: str) -> None:
        with self._lock:
            self._keys = [k for k in self._keys if k.kid != kid]

    @property
    def current_kid(self) -> str:
        with self._lock:
            return self._keys[-1].kid

    def private_key(self, kid: str | None = None) -> Any:
        with self._lock:
            return next(k for k in reversed(self._keys) if kid is None or k.kid == kid).private

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            keys = list(self._keys)
        entries = []
        for key in keys:
            algorithm = ECAlgorithm if key.alg.startswith("ES") else RSAAlgorithm
            jwk = json.loads(algorithm.to_jwk(key.private.public_key()))
            jwk.update({"kid": key.kid, "use": "sig", "alg": key.alg})
            entries.append(jwk)
        return {"keys": entries}

    # ------------------------------------------------------------------ tokens

    def token(
        self,
        *,
        kid: str | None = None,
        private: Any = None,
        lifetime_s: int = 300,
        at: dt.datetime | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """Sign an admin token (``iss`` = this issuer, ``sub`` = ``admin``, 5 minutes)."""
        now = int((at or dt.datetime.now(dt.UTC)).timestamp())
        kid = kid or self.current_kid
        body: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "admin",
            "iat": now,
            "exp": now + lifetime_s,
            **claims,
        }
        return jwt.encode(
            {k: v for k, v in body.items() if v is not None},
            private if private is not None else self.private_key(kid),
            algorithm=self._alg,
            headers={"kid": kid, **(headers or {})},
        )

    # ------------------------------------------------------------------ serving

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        path = handler.path.split("?", 1)[0]
        if path == "/jwks.json":
            self.fetches["jwks"] += 1
            body: Any = self.jwks()
        elif path == "/.well-known/openid-configuration":
            self.fetches["discovery"] += 1
            body = {
                "issuer": self.discovery_issuer or self.issuer,
                "jwks_uri": self.jwks_uri,
                "id_token_signing_alg_values_supported": [self._alg],
            }
        else:
            handler.send_response(404)
            handler.end_headers()
            return
        status = self.fail_status or 200
        data = json.dumps(body).encode() if status == 200 else b"{}"
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout tests)
