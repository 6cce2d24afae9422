# SPDX-License-Identifier: Apache-2.0
"""Unauthenticated service endpoints: health, readiness, the token signer's JWKS."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Response

from kbs.deps import StateDep, json_response
from kbs.errors import describe

_logger = logging.getLogger(__name__)

__all__ = ["router"]

router = APIRouter()


@router.get("/healthz", summary="Liveness")
async def healthz() -> Response:
    """The process is serving requests."""
    return Response(status_code=200)


@router.get("/readyz", summary="Readiness: database, secret backends, DCAP collateral freshness")
async def readyz(state: StateDep) -> Response:
    """Check the database, every secret backend, and DCAP collateral per platform."""
    at = state.clock.now()
    checks: dict[str, str] = {}
    ready = True
    try:
        await state.sessions.count_live(at=at)
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - readiness reports any failure
        checks["database"] = describe(exc).detail
        ready = False
    try:
        await state.resources.check()
        checks["resources"] = "ok"
    except Exception as exc:  # noqa: BLE001 - readiness reports any failure
        checks["resources"] = describe(exc).detail
        ready = False
    body: dict[str, Any] = {"checks": checks}
    if state.tdx is not None:
        # DCAP collateral per platform; absent collateral is fine (nothing seen yet),
        # collateral that is no longer valid is not (its quotes would get 503s).
        collateral = state.tdx.readiness(at)
        checks["collateral"] = collateral.summary
        body["collateral"] = collateral.entries
        ready = ready and collateral.ready
    return json_response(
        {"status": "ready" if ready else "unavailable", **body},
        status_code=200 if ready else 503,
    )


@router.get("/.well-known/jwks.json", summary="Public keys of the attestation token signers")
async def jwks(state: StateDep) -> Response:
    """The JWK Set of this deployment's token signing keys (EAR and Simple)."""
    return json_response(state.published_jwks())
