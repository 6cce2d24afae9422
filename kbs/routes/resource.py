# SPDX-License-Identifier: Apache-2.0
"""``/kbs/v0/resource``: release secrets to attested guests, and the resource life cycle.

Guest (Trustee): ``GET /kbs/v0/resource/<repository>/<type>/<tag>`` needs an attestation
token (the session's, else ``Authorization: Bearer``) and answers with the secret wrapped
to the TEE key in the token. It is released only if the global resource policy and every
matching release policy allow it, and only once the release is in the audit trail.

Admin (Trustee): ``POST`` (store; a ``X-Kbs-Resource-Version`` header names the new
version) and ``DELETE``. Ours, admin only:

* ``GET /kbs/v0/resource`` lists resources with metadata, never values, filtered to what
  the caller may ``read`` (``?prefix=cai/*``; ``?format=paths`` gives Trustee's list of
  path strings);
* ``GET /kbs/v0/resource/<path>?version=<id>`` reads a kept version (``read``): a request
  with ``version`` is an admin request and never reaches the guest path;
* ``DELETE /kbs/v0/resource/<path>?version=<id>`` deletes one kept version (``delete``);
* ``GET /kbs/v0/resource-versions/<path>``: metadata and kept versions (``read``);
* ``POST /kbs/v0/resource-rollback/<path>`` ``{"version": "<id>"}``: make a kept version
  current again (``write``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from fastapi import APIRouter, Request, Response

from kbs import jwe
from kbs.deps import SESSION_COOKIE, StateDep, json_response, read_body, read_json
from kbs.errors import (
    InvalidRequestPathError,
    JweError,
    PolicyDenyError,
    SerdeError,
    TokenNotFoundError,
    TokenVerifierError,
)
from kbs.metrics import metrics_of
from kbs.protocol import LEGACY_JWE_VERSIONS
from kbs.release import decide
from kbs.request_id import current_request_id
from kbs.routes.admin import require_admin
from kbs.routes.audit_hooks import record_admin, record_admin_failure, record_release
from kbs.scopes import PathPattern
from storage_backends.base import ResourceDesc, ResourceInfo, is_valid_version
from storage_backends.errors import ResourceNotFoundError, UnsupportedOperationError

_logger = logging.getLogger(__name__)

__all__ = ["GUEST_PATH", "router"]

router = APIRouter()

#: Guest fetch (GET) and the admin writes (POST, DELETE) of one resource.
GUEST_PATH: Final = "/kbs/v0/resource/{path:path}"
_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    401: {"description": "No/invalid token, policy denial, or resource not found"},
    404: {"description": "The path is not <repository>/<type>/<tag>"},
    503: {"description": "The secret backend, database or audit trail is unavailable"},
}
#: Header naming the version an admin call wrote or read.
VERSION_HEADER: Final = "X-Kbs-Resource-Version"
#: The query of a request without a query string.
_NO_QUERY: Final[Mapping[str, str]] = MappingProxyType({})


def _time(value: Any) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _info_json(info: ResourceInfo) -> dict[str, Any]:
    return {
        "path": str(info.desc),
        "backend": info.backend,
        "size": info.size,
        "created": _time(info.created),
        "updated": _time(info.updated),
        "version": info.version,
        "versions": info.versions,
    }


def _version_param(request: Request) -> str | None:
    version = request.query_params.get("version")
    if version is None:
        return None
    if not is_valid_version(version):
        raise InvalidRequestPathError("version is not a valid version id")
    return version


# --------------------------------------------------------------------------- listing


@router.get("/kbs/v0/resource", summary="List resources with metadata (admin)", responses=_ERRORS)
@router.get("/kbs/v0/resource/", include_in_schema=False)
async def list_resources(request: Request, state: StateDep) -> Response:
    """Every resource the caller may read: path, backend, size, times, version; no values."""
    at = state.clock.now()
    identity = await require_admin(request, state, endpoint="resource", at=at, action=None)
    prefix_text = request.query_params.get("prefix")
    try:
        prefix = PathPattern.parse(prefix_text) if prefix_text else None
    except ValueError as exc:
        raise InvalidRequestPathError(f"prefix is not a path pattern: {exc}") from exc
    infos, unlisted = await state.resources.list_info(
        visible=lambda desc: (
            identity.permissions.allows("read", desc) and (prefix is None or prefix.matches(desc))
        )
    )
    headers = {"X-Kbs-Unlisted-Backends": ",".join(unlisted)} if unlisted else None
    if request.query_params.get("format") == "paths":
        return json_response([str(info.desc) for info in infos], headers=headers)
    return json_response([_info_json(info) for info in infos], headers=headers)


# --------------------------------------------------------------------------- guest


@router.get(GUEST_PATH, summary="Fetch a secret, wrapped to the TEE key (JWE)", responses=_ERRORS)
async def get_resource(path: str, request: Request, state: StateDep) -> Response:
    """Release one resource to an attested guest (or, with ``?version=``, read a version)."""
    at = state.clock.now()
    # 1. The path names exactly one resource.
    desc = ResourceDesc.parse(path)
    # Nearly every guest request has no query string: skip parsing one.
    query = request.query_params if request.scope.get("query_string") else _NO_QUERY
    if "version" in query:
        return await _read_version(desc, request, state)
    # 2. The token: the attested session's, else a Bearer token.
    token, legacy_jwe = await _guest_token(request, state, at)
    # 3. Verified on every request, even when it came from the session. The digest is
    #    the audit trail's name for the token (token_id), and the policy engine's for
    #    its claims.
    claims, token_digest = state.token_verifier.verify_identified(token, at=at)
    digest = token_digest.hex()
    # 4. The global resource policy and every matching release policy must say true.
    metrics = metrics_of(request)
    metrics.policy_evaluations.inc()
    try:
        decision = await decide(state, desc, claims, query, token_id=digest)
    except Exception:
        metrics.policy_errors.inc()
        raise
    remembered = sum(o.remembered for o in decision.outcomes)
    if remembered:
        metrics.policy_remembered.inc(remembered)
    if not decision.allowed:
        metrics.policy_violations.inc()
        decision = decision.explain_denials(state.policy_engine, claims)
        _logger.info(
            "resource %s denied (request id %s): %s",
            desc,
            current_request_id(),
            decision.summary(),
        )
        await record_release(
            state,
            request,
            resource=str(desc),
            outcome="denied",
            token_digest=digest,
            detail={"policies": [o.to_json() for o in decision.outcomes]},
        )
        raise PolicyDenyError("Access denied by policy")
    metrics.policy_approvals.inc()
    # 5. The secret (and its version), then 6. wrapped to the key the token vouches for.
    try:
        value = await state.resources.read(desc)
    except ResourceNotFoundError:
        await record_release(
            state,
            request,
            resource=str(desc),
            outcome="failed",
            token_digest=digest,
            detail={"reason": "resource not found"},
        )
        raise
    envelope = _wrap(state, claims, value.data, legacy=legacy_jwe)
    # 7. On the record before it leaves (refused if the record cannot be written).
    await record_release(
        state,
        request,
        resource=str(desc),
        outcome="allowed",
        token_digest=digest,
        detail={
            "version": value.version,
            "backend": state.resources.backend_for(desc).kind,
            "policies": [o.to_json() for o in decision.outcomes],
        },
    )
    # Only now is the path a label: it exists and was released (bounded by the store).
    metrics.resource_reads.labels(str(desc)).inc()
    _logger.info(
        "released resource %s version %s (request id %s)", desc, value.version, current_request_id()
    )
    return json_response(envelope)


async def _guest_token(request: Request, state: StateDep, at: Any) -> tuple[str, bool]:
    """The attested session's token, else the Bearer token; and whether JWE is legacy."""
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        session = await state.sessions.get(session_id, at=at)
        if session is not None and session.attested and session.token is not None:
            return session.token, session.protocol_version in LEGACY_JWE_VERSIONS
    scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and bearer.strip():
        return bearer.strip(), False
    raise TokenNotFoundError("Attestation Token not found")


def _wrap(state: StateDep, claims: Any, data: bytes, *, legacy: bool) -> Any:
    """The secret as a JWE to the TEE key the token vouches for."""
    try:
        key = jwe.parse_tee_pubkey(state.token_verifier.tee_pubkey(claims))
    except jwe.JweError as exc:
        raise TokenVerifierError(f"token tee-pubkey is unusable: {exc}") from exc
    try:
        if legacy:
            return jwe.wrap_legacy(key, data, entropy=state.entropy)
        return jwe.wrap(key, data, entropy=state.entropy)
    except jwe.JweError as exc:
        raise JweError(f"JWE failed: {exc}") from exc


async def _read_version(desc: ResourceDesc, request: Request, state: StateDep) -> Response:
    """Admin: the raw value of one kept version (never the guest path)."""
    at = state.clock.now()
    identity = await require_admin(
        request, state, endpoint="resource", at=at, action="read", scope=desc
    )
    version = _version_param(request)
    assert version is not None
    data = await state.resources.get_version(desc, version)
    _logger.info("admin %s read version %s of %s", identity.actor, version, desc)
    return Response(
        content=data,
        media_type="application/octet-stream",
        headers={VERSION_HEADER: version, "Cache-Control": "no-store"},
    )


# --------------------------------------------------------------------------- admin writes


async def _digest_of_current(state: StateDep, desc: ResourceDesc) -> str | None:
    try:
        return state.audit.value_digest((await state.resources.read(desc)).data)
    except (ResourceNotFoundError, UnsupportedOperationError):
        return None


@router.post(GUEST_PATH, summary="Store a secret (admin)", responses=_ERRORS)
async def set_resource(path: str, request: Request, state: StateDep) -> Response:
    """Store the raw request body as the resource's new value (the old one is kept)."""
    at = state.clock.now()
    desc = ResourceDesc.parse(path)
    identity = await require_admin(
        request, state, endpoint="resource", at=at, action="write", scope=desc
    )
    data = await read_body(request, state.body_limit)
    await record_admin(
        state,
        request,
        identity,
        action="resource.put",
        resource=str(desc),
        detail={
            "before": await _digest_of_current(state, desc),
            "after": state.audit.value_digest(data),
            "size": len(data),
        },
    )
    try:
        version = await state.resources.put(desc, data)
    except Exception as exc:
        await record_admin_failure(
            state, request, identity, action="resource.put", resource=str(desc), error=exc
        )
        raise
    metrics_of(request).resource_writes.labels(str(desc)).inc()
    _logger.info(
        "admin %s stored resource %s (%d bytes, version %s)",
        identity.actor,
        desc,
        len(data),
        version,
    )
    headers = {VERSION_HEADER: version} if version is not None else None
    return Response(status_code=200, media_type="text/xml", headers=headers)


@router.delete(
    GUEST_PATH, summary="Delete a secret, or one kept version (admin)", responses=_ERRORS
)
async def delete_resource(path: str, request: Request, state: StateDep) -> Response:
    """Delete the resource and its kept versions, or with ``?version=`` one kept version."""
    at = state.clock.now()
    desc = ResourceDesc.parse(path)
    identity = await require_admin(
        request, state, endpoint="resource", at=at, action="delete", scope=desc
    )
    version = _version_param(request)
    action = "resource.delete" if version is None else "resource.delete-version"
    await record_admin(
        state,
        request,
        identity,
        action=action,
        resource=str(desc),
        detail={"before": await _digest_of_current(state, desc), "version": version},
    )
    try:
        if version is None:
            await state.resources.delete(desc)
        else:
            await state.resources.delete_version(desc, version)
    except Exception as exc:
        await record_admin_failure(
            state, request, identity, action=action, resource=str(desc), error=exc
        )
        raise
    metrics_of(request).resource_deletes.labels(str(desc)).inc()
    _logger.info("admin %s deleted resource %s (version %s)", identity.actor, desc, version)
    return Response(status_code=200, media_type="text/xml")


@router.get(
    "/kbs/v0/resource-versions/{path:path}",
    summary="A resource's metadata and kept versions (admin)",
    responses=_ERRORS,
)
async def resource_versions(path: str, request: Request, state: StateDep) -> Response:
    """Metadata of the resource and of each kept version, newest first; never values."""
    at = state.clock.now()
    desc = ResourceDesc.parse(path)
    await require_admin(
        request, state, endpoint="resource-versions", at=at, action="read", scope=desc
    )
    info = await state.resources.describe(desc)
    body = _info_json(info)
    try:
        versions = await state.resources.list_versions(desc)
    except UnsupportedOperationError as exc:
        body["versioning"] = str(exc)
        body["history"] = None
    else:
        body["history"] = [
            {
                "version": v.version,
                "size": v.size,
                "created": _time(v.created),
                "current": v.current,
            }
            for v in versions
        ]
    return json_response(body)


@router.post(
    "/kbs/v0/resource-rollback/{path:path}",
    summary='Make a kept version current again: {"version": "<id>"} (admin)',
    responses=_ERRORS,
)
async def rollback_resource(path: str, request: Request, state: StateDep) -> Response:
    """Roll a resource back to a kept version; answers ``{"path", "version", "restored"}``."""
    at = state.clock.now()
    desc = ResourceDesc.parse(path)
    identity = await require_admin(
        request, state, endpoint="resource-rollback", at=at, action="write", scope=desc
    )
    body = await read_json(request, state.body_limit)
    version = body.get("version") if isinstance(body, dict) else None
    if not is_valid_version(version):
        raise SerdeError('body must be {"version": "<version id>"}')
    assert isinstance(version, str)
    old_value = await state.resources.get_version(desc, version)
    await record_admin(
        state,
        request,
        identity,
        action="resource.rollback",
        resource=str(desc),
        detail={
            "before": await _digest_of_current(state, desc),
            "after": state.audit.value_digest(old_value),
            "restored": version,
        },
    )
    try:
        current = await state.resources.restore_version(desc, version)
    except Exception as exc:
        await record_admin_failure(
            state, request, identity, action="resource.rollback", resource=str(desc), error=exc
        )
        raise
    metrics_of(request).resource_writes.labels(str(desc)).inc()
    _logger.info(
        "admin %s rolled %s back to version %s (now version %s)",
        identity.actor,
        desc,
        version,
        current,
    )
    return json_response({"path": str(desc), "version": current, "restored": version})
