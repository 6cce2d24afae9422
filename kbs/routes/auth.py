# SPDX-License-Identifier: Apache-2.0
"""``POST /kbs/v0/auth``: open an RCAR session and hand out its challenge."""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import logging
from typing import Final

from fastapi import APIRouter, Request, Response

from kbs.deps import SESSION_COOKIE, StateDep, json_response, read_json
from kbs.errors import AuthFailedError, SerdeError
from kbs.metrics import metrics_of
from kbs.protocol import ProtocolError, parse_auth_request
from kbs.ratelimit import client_address
from kbs.sessions import SESSION_ID_BYTES

_logger = logging.getLogger(__name__)

__all__ = ["PATH", "router", "session_cookie"]

router = APIRouter()

#: The challenge nonce is 32 random bytes (standard base64 with padding on the wire).
NONCE_BYTES: Final = 32

#: The RCAR handshake's first step.
PATH: Final = "/kbs/v0/auth"
_AUTH_FAILED: Final = "Attestation error: RCAR handshake Auth failed"


def session_cookie(session_id: str, expires_at: dt.datetime) -> str:
    """The ``Set-Cookie`` value, exactly as the reference writes it."""
    expires = email.utils.format_datetime(expires_at, usegmt=True)
    return f"{SESSION_COOKIE}={session_id}; Expires={expires}"


@router.post(
    PATH,
    summary="Open an RCAR session (Request -> Challenge)",
    responses={
        200: {"description": "The challenge; the session id is in Set-Cookie"},
        401: {"description": "Unsupported protocol version or malformed request"},
        429: {"description": "Too many requests from this client, or unattested sessions"},
    },
)
async def auth(request: Request, state: StateDep) -> Response:
    """Answer a kbs-types ``Request`` with a ``Challenge`` and a session cookie."""
    metrics = metrics_of(request)
    metrics.auth_requests.inc()
    at = state.clock.now()
    # Unauthenticated and it writes a session row: one token of the client's budget.
    state.rate_limiter.check(client_address(request, state.trusted_proxies), at=at)
    try:
        body = await read_json(request, state.body_limit)
        req = parse_auth_request(body)
    except (ProtocolError, SerdeError) as exc:
        metrics.auth_errors.inc()
        raise AuthFailedError(f"{_AUTH_FAILED}: {exc}") from exc
    nonce = base64.b64encode(state.entropy(NONCE_BYTES)).decode()
    session_id = state.entropy(SESSION_ID_BYTES).hex()
    expires_at = at + dt.timedelta(minutes=state.settings.attestation_service.timeout)
    await state.sessions.create(
        session_id=session_id,
        protocol_version=req.version,
        tee=req.tee,
        nonce=nonce,
        request_extra_params=req.extra_params,
        expires_at=expires_at,
        at=at,
    )
    metrics.auth_successes.inc()
    _logger.info("auth: opened session for tee %s (protocol %s)", req.tee, req.version)
    return json_response(
        {"nonce": nonce, "extra-params": ""},
        headers={"set-cookie": session_cookie(session_id, expires_at)},
    )
