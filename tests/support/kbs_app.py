# SPDX-License-Identifier: Apache-2.0
"""Run the KBS application in-process for tests: settings, lifespan, HTTP client, admin key."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from fastapi import FastAPI

from attestation.base import Verifier
from kbs.app import create_app
from kbs.client.api import AdminClient, KbsClient, SampleAttester
from kbs.client.tee_key import TeeKeyPair
from kbs.clock import FrozenClock, SystemClock
from kbs.settings import KbsSettings, load_settings

#: Reference values that make sample evidence "affirming" under the default CPU policy.
SAMPLE_REFERENCE_VALUES: Mapping[str, Any] = {
    "launch_digest": ["abcde"],
    "svn": ["1"],
    "major_version": 1,
    "minimum_minor_version": 4,
}


@dataclass
class AdminKey:
    private_pem: bytes
    public_path: Path


def make_admin_key(directory: Path, name: str = "admin") -> AdminKey:
    key = ed25519.Ed25519PrivateKey.generate()
    public_path = directory / f"{name}.pub"
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return AdminKey(private_pem=private_pem, public_path=public_path)


def settings_for(
    tmp_path: Path,
    admin_key: AdminKey | None,
    *,
    database_url: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> KbsSettings:
    data: dict[str, Any] = {
        "environment": "development",
        "data_dir": str(tmp_path / "data"),
        "http_server": {"insecure_http": True},
        "attestation_service": {"insecure_allow_sample_evidence": True},
        "plugins": [
            {"name": "resource", "type": "LocalFs", "dir_path": str(tmp_path / "repository")}
        ],
    }
    if admin_key is not None:
        data["admin"] = {
            "authorization_mode": "AuthenticatedAuthorization",
            "authentication": {
                "bearer_jwt": {
                    "identity_providers": [{"public_key_uri": str(admin_key.public_path)}]
                }
            },
            "authorization": {
                "regex_acl": {"acls": [{"role": "admin", "allowed_endpoints": "^/kbs/.*$"}]}
            },
        }
    if database_url is not None:
        data["database"] = {"url": database_url}
    return load_settings(None, overrides=_merge(data, dict(overrides or {})))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def now_clock() -> FrozenClock:
    """A frozen clock at the real current instant (admin tokens are signed with real time)."""
    return FrozenClock(SystemClock().now().replace(microsecond=0))


@dataclass
class RunningKbs:
    app: FastAPI
    clock: FrozenClock
    http: httpx.AsyncClient
    admin_key: AdminKey | None

    def admin(self, **kwargs: Any) -> AdminClient:
        assert self.admin_key is not None
        return AdminClient(
            "http://kbs", private_key_pem=self.admin_key.private_pem, http=self.http, **kwargs
        )

    def guest(self, *, tee_key: TeeKeyPair | None = None, **kwargs: Any) -> KbsClient:
        """A guest with its own cookie jar (a fresh HTTP client on the same app)."""
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://kbs")
        kwargs.setdefault("attester", SampleAttester())
        return _OwnedKbsClient("http://kbs", http=http, tee_key=tee_key, **kwargs)

    def new_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://kbs")


class _OwnedKbsClient(KbsClient):
    async def aclose(self) -> None:
        await self._http.aclose()


@contextlib.asynccontextmanager
async def running_kbs(
    settings: KbsSettings,
    *,
    clock: FrozenClock | None = None,
    admin_key: AdminKey | None = None,
    extra_verifiers: Sequence[Verifier] = (),
    entropy: Any = None,
    apis: Sequence[str] | None = None,
) -> AsyncIterator[RunningKbs]:
    clock = clock or now_clock()
    kwargs: dict[str, Any] = {"clock": clock, "extra_verifiers": extra_verifiers}
    if entropy is not None:
        kwargs["entropy"] = entropy
    if apis is not None:
        kwargs["apis"] = apis
    app = create_app(settings, **kwargs)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kbs") as http,
    ):
        yield RunningKbs(app=app, clock=clock, http=http, admin_key=admin_key)


def advance(clock: FrozenClock, **delta: float) -> None:
    clock.advance(dt.timedelta(**delta))


_REQUEST_ID_SUFFIX = re.compile(r" \(request id [0-9A-Za-z._:-]+\)$")


def without_request_id(body: Any) -> Any:
    """An error body without its per-request parts (``request_id``, the detail suffix)."""
    if not isinstance(body, dict):
        return body
    out = {k: v for k, v in body.items() if k != "request_id"}
    if isinstance(out.get("detail"), str):
        out["detail"] = _REQUEST_ID_SUFFIX.sub("", out["detail"])
    return out
