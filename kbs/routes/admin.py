# SPDX-License-Identifier: Apache-2.0
"""Trustee-compatible admin endpoints: policies and reference values.

Policies travel as URL-safe base64 without padding (padding is tolerated); reference
values as RVPS messages. Every call is authorised by the ``[admin]`` configuration and,
when grants are configured, needs the ``policy`` action on ``*`` (kbs/scopes.py).

:func:`require_admin` is how routes authorise admins: authentication and Trustee's regex
ACL first, then the action on the resource scope.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import logging
import re
from typing import Any, Final

from fastapi import APIRouter, Request, Response

from kbs.admin_auth import AdminIdentity
from kbs.deps import StateDep, json_response, read_json
from kbs.errors import AdminAuthError, ParsePolicyError, RvpsError
from kbs.routes.audit_hooks import failure_recorded, record_admin
from kbs.scopes import GLOBAL, PathPattern
from kbs.state import KbsState
from kbs.stores import ATTESTATION_NAMESPACE, RESOURCE_NAMESPACE
from policy.defaults import DEFAULT_RESOURCE_POLICY_ID, policy_hash
from policy.reference_values import parse_message as parse_rvps_message
from storage_backends.base import ResourceDesc

_logger = logging.getLogger(__name__)

__all__ = ["admin_identity", "check_permission", "require_admin", "router"]

router = APIRouter()

#: Policy ids are short names (``default_cpu``, ``default_gpu``...).
POLICY_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,255}")
#: Largest policy text accepted.
MAX_POLICY_BYTES: Final = 256 * 1024

_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    401: {"description": "Not authorised, or the upload is invalid"}
}


def _uri(request: Request) -> str:
    uri = request.url.path
    if request.url.query:
        uri = f"{uri}?{request.url.query}"
    return uri


def check_permission(
    identity: AdminIdentity,
    *,
    endpoint: str,
    action: str,
    scope: ResourceDesc | PathPattern = GLOBAL,
) -> None:
    """Refuse unless ``identity`` holds ``action`` on ``scope``.

    Raises:
        AdminAuthError: the action is not granted there.
    """
    if not identity.permissions.allows(action, scope):
        raise AdminAuthError(
            f"admin access denied for endpoint {endpoint}: role "
            f"{','.join(identity.roles) or '-'} may not {action} {scope}"
        )


def admin_identity(
    request: Request,
    state: KbsState,
    *,
    endpoint: str,
    at: dt.datetime,
    action: str = "policy",
    scope: ResourceDesc | PathPattern = GLOBAL,
) -> AdminIdentity:
    """Authorise an admin request with the keys at hand, or raise ``AdminAuthError``.

    Prefer :func:`require_admin`, which also fetches identity provider keys when a token
    names an unknown key id. Without ``action``, an endpoint is a global ``policy`` one.
    """
    identity = state.admin.authorize(
        uri=_uri(request),
        authorization=request.headers.get("authorization"),
        endpoint=endpoint,
        at=at,
    )
    check_permission(identity, endpoint=endpoint, action=action, scope=scope)
    return identity


async def require_admin(
    request: Request,
    state: KbsState,
    *,
    endpoint: str,
    at: dt.datetime,
    action: str | None,
    scope: ResourceDesc | PathPattern = GLOBAL,
) -> AdminIdentity:
    """Authenticate an admin request and check ``action`` on ``scope``.

    ``action=None`` only authenticates (and applies the regex ACL): the caller filters
    what it shows by the identity's permissions (listings).

    Raises:
        AdminAuthError: not authenticated, not allowed by the ACL, or not granted.
    """
    identity = await state.admin.authorize_async(
        uri=_uri(request),
        authorization=request.headers.get("authorization"),
        endpoint=endpoint,
        at=at,
    )
    if action is not None:
        check_permission(identity, endpoint=endpoint, action=action, scope=scope)
    return identity


def _sha384(text: str | None) -> str | None:
    return None if text is None else policy_hash(text)


def _decode_policy(value: Any) -> str:
    if not isinstance(value, str):
        raise ParsePolicyError("Failed to parse policy: policy must be a base64url string")
    try:
        padded = value + "=" * (-len(value) % 4)
        raw = base64.b64decode(padded, altchars=b"-_", validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise ParsePolicyError("Failed to parse policy: not URL-safe base64 UTF-8") from exc
    if len(raw) > MAX_POLICY_BYTES:
        raise ParsePolicyError("Failed to parse policy: policy is too large")
    return text


@router.post("/kbs/v0/resource-policy", summary="Set the resource policy", responses=_ERRORS)
async def set_resource_policy(request: Request, state: StateDep) -> Response:
    """Compile and store ``{"policy": "<base64url rego>"}`` as the resource policy."""
    at = state.clock.now()
    identity = await require_admin(
        request, state, endpoint="resource-policy", at=at, action="policy"
    )
    body = await read_json(request, state.body_limit)
    if not isinstance(body, dict):
        raise ParsePolicyError("Failed to parse policy: body must be a JSON object")
    text = _decode_policy(body.get("policy"))
    state.policy_engine.validate(text)
    before = await state.policies.get(RESOURCE_NAMESPACE, DEFAULT_RESOURCE_POLICY_ID)
    await record_admin(
        state,
        request,
        identity,
        action="resource-policy.set",
        resource=None,
        detail={"before": _sha384(before), "after": _sha384(text)},
    )
    async with failure_recorded(
        state, request, identity, action="resource-policy.set", resource=None
    ):
        await state.policies.set(RESOURCE_NAMESPACE, DEFAULT_RESOURCE_POLICY_ID, text, at=at)
    _logger.info("admin %s set the resource policy", identity.subject)
    return Response(status_code=200)


@router.get("/kbs/v0/resource-policy", summary="List resource policy ids", responses=_ERRORS)
async def get_resource_policy(request: Request, state: StateDep) -> Response:
    """Answer with the ids of the stored resource policies (v0.19+ behaviour)."""
    at = state.clock.now()
    await require_admin(request, state, endpoint="resource-policy", at=at, action="policy")
    return json_response(await state.policies.list(RESOURCE_NAMESPACE))


@router.post("/kbs/v0/attestation-policy", summary="Set an attestation policy", responses=_ERRORS)
async def set_attestation_policy(request: Request, state: StateDep) -> Response:
    """Compile and store ``{"type": "rego", "policy_id": ..., "policy": ...}``."""
    at = state.clock.now()
    identity = await require_admin(
        request, state, endpoint="attestation-policy", at=at, action="policy"
    )
    body = await read_json(request, state.body_limit)
    if not isinstance(body, dict):
        raise ParsePolicyError("Failed to parse policy: body must be a JSON object")
    policy_id = body.get("policy_id")
    if not isinstance(policy_id, str) or not POLICY_ID_PATTERN.fullmatch(policy_id):
        raise ParsePolicyError("Failed to parse policy: policy_id is missing or invalid")
    text = _decode_policy(body.get("policy"))
    state.policy_engine.validate(text)
    before = await state.policies.get(ATTESTATION_NAMESPACE, policy_id)
    await record_admin(
        state,
        request,
        identity,
        action="attestation-policy.set",
        resource=None,
        detail={"policy_id": policy_id, "before": _sha384(before), "after": _sha384(text)},
    )
    async with failure_recorded(
        state, request, identity, action="attestation-policy.set", resource=None
    ):
        await state.policies.set(ATTESTATION_NAMESPACE, policy_id, text, at=at)
    _logger.info("admin %s set attestation policy %s", identity.subject, policy_id)
    return Response(status_code=200)


@router.post("/kbs/v0/reference-value", summary="Register reference values", responses=_ERRORS)
async def set_reference_value(request: Request, state: StateDep) -> Response:
    """Register the reference values of an RVPS message."""
    at = state.clock.now()
    identity = await require_admin(
        request, state, endpoint="reference-value", at=at, action="policy"
    )
    message = await read_json(request, state.body_limit)
    values = parse_rvps_message(message, at=at)
    await record_admin(
        state,
        request,
        identity,
        action="reference-value.set",
        resource=None,
        detail={
            "values": {
                rv.name: hashlib.sha256(
                    json.dumps(rv.value, sort_keys=True, separators=(",", ":")).encode()
                ).hexdigest()
                for rv in values
            }
        },
    )
    async with failure_recorded(
        state, request, identity, action="reference-value.set", resource=None
    ):
        await state.reference_values.put(values, at=at)
    _logger.info(
        "admin %s registered reference values %s",
        identity.subject,
        ", ".join(v.name for v in values),
    )
    return Response(status_code=200, media_type="application/json")


@router.get(
    "/kbs/v0/reference-value/{rv_id:path}", summary="Read a reference value", responses=_ERRORS
)
async def get_reference_value(rv_id: str, request: Request, state: StateDep) -> Response:
    """Answer with the stored value JSON."""
    at = state.clock.now()
    await require_admin(request, state, endpoint="reference-value", at=at, action="policy")
    found, value = await state.reference_values.get(rv_id, at=at)
    if not found:
        raise RvpsError(f"RVPS configuration failed: reference value {rv_id!r} not found")
    return json_response(value)
