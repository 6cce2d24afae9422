# SPDX-License-Identifier: Apache-2.0
"""``/kbs/v0/resource/<repository>/<type>/<tag>``: release secrets to attested guests.

``GET`` needs an attestation token (the session's, else ``Authorization: Bearer``) and
answers with the secret wrapped to the TEE key in the token. ``POST`` (store) and
``DELETE`` are admin calls.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from fastapi import APIRouter, Request, Response

from kbs import jwe
from kbs.deps import SESSION_COOKIE, StateDep, json_response, read_body
from kbs.errors import JweError, PolicyDenyError, TokenNotFoundError, TokenVerifierError
from kbs.protocol import LEGACY_JWE_VERSIONS
from kbs.routes.admin import require_admin
from kbs.stores import RESOURCE_NAMESPACE
from policy.defaults import DEFAULT_RESOURCE_POLICY, DEFAULT_RESOURCE_POLICY_ID
from storage_backends.base import ResourceDesc

_logger = logging.getLogger(__name__)

__all__ = ["router"]

router = APIRouter()

_PATH: Final = "/kbs/v0/resource/{path:path}"
_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    401: {"description": "No/invalid token, policy denial, or resource not found"},
    404: {"description": "The path is not <repository>/<type>/<tag>"},
    503: {"description": "The secret backend or database is unavailable"},
}


@router.get(_PATH, summary="Fetch a secret, wrapped to the TEE key (JWE)", responses=_ERRORS)
async def get_resource(path: str, request: Request, state: StateDep) -> Response:
    """Release one resource to an attested guest."""
    at = state.clock.now()
    # 1. The path names exactly one resource.
    desc = ResourceDesc.parse(path)
    # 2. The token: the attested session's, else a Bearer token.
    token = None
    legacy_jwe = False
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        session = await state.sessions.get(session_id, at=at)
        if session is not None and session.attested:
            token = session.token
            legacy_jwe = session.protocol_version in LEGACY_JWE_VERSIONS
    if token is None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            token = value.strip()
    if token is None:
        raise TokenNotFoundError("Attestation Token not found")
    # 3. Verified on every request, even when it came from the session.
    claims = state.token_verifier.verify(token, at=at)
    # 4. The resource policy must say literally true.
    text = await state.policies.get(RESOURCE_NAMESPACE, DEFAULT_RESOURCE_POLICY_ID)
    decision = state.policy_engine.allow(
        text if text is not None else DEFAULT_RESOURCE_POLICY,
        input_=claims,
        data={
            "plugin": "resource",
            "resource-path": list(desc.segments),
            "query": dict(request.query_params),
        },
    )
    if not decision.allowed:
        _logger.info("resource %s denied by policy: %s", desc, decision.reason)
        raise PolicyDenyError("Access denied by policy")
    # 5. The secret, then 6. wrapped to the key the token vouches for.
    data = await state.resources.get(desc)
    try:
        key = jwe.parse_tee_pubkey(state.token_verifier.tee_pubkey(claims))
    except jwe.JweError as exc:
        raise TokenVerifierError(f"token tee-pubkey is unusable: {exc}") from exc
    try:
        if legacy_jwe:
            envelope = jwe.wrap_legacy(key, data, entropy=state.entropy)
        else:
            envelope = jwe.wrap(key, data, entropy=state.entropy)
    except jwe.JweError as exc:
        raise JweError(f"JWE failed: {exc}") from exc
    _logger.info("released resource %s", desc)
    return json_response(envelope)


@router.post(_PATH, summary="Store a secret (admin)", responses=_ERRORS)
async def set_resource(path: str, request: Request, state: StateDep) -> Response:
    """Store the raw request body as the resource's value."""
    at = state.clock.now()
    desc = ResourceDesc.parse(path)
    identity = await require_admin(
        request, state, endpoint="resource", at=at, action="write", scope=desc
    )
    data = await read_body(request, state.body_limit)
    await state.resources.put(desc, data)
    _logger.info("admin %s stored resource %s (%d bytes)", identity.subject, desc, len(data))
    return Response(status_code=200, media_type="text/xml")


@router.delete(_PATH, summary="Delete a secret (admin)", responses=_ERRORS)
async def delete_resource(path: str, request: Request, state: StateDep) -> Response:
    """Delete the resource."""
    at = state.clock.now()
    desc = ResourceDesc.parse(path)
    identity = await require_admin(
        request, state, endpoint="resource", at=at, action="delete", scope=desc
    )
    await state.resources.delete(desc)
    _logger.info("admin %s deleted resource %s", identity.subject, desc)
    return Response(status_code=200, media_type="text/xml")
