# SPDX-License-Identifier: Apache-2.0
"""Our key-admin endpoints: release policies, explain, the audit trail, and ``whoami``.

* ``GET /kbs/v0/release-policy`` — the release policies the caller may see (metadata);
  ``?prefix=<pattern>`` — one policy with its text (URL-safe base64) and allow list.
* ``POST /kbs/v0/release-policy`` — ``{"prefix": "cai/*", "policy": "<b64url rego>"}`` or
  ``{"prefix": "cai/*", "allow_list": {"mr_td": [...], ...}}``; needs ``policy`` on every
  path the pattern matches.
* ``DELETE /kbs/v0/release-policy?prefix=<pattern>``.
* ``POST /kbs/v0/explain`` — ``{"resource": "a/b/c", "token": "<EAR>"}`` or
  ``{"resource": ..., "claims": {...}}`` (optional ``"query"``): every policy's decision
  with the rule that failed, the trust vector with the rule that set each claim, and the
  input evaluated. Needs ``policy`` on the resource. Nothing is released or recorded.
* ``GET /kbs/v0/audit`` — records, filtered (``kind``, ``action``, ``outcome``, ``actor``,
  ``request_id``, ``resource`` pattern, ``since``/``until`` RFC 3339) and paged (``limit``,
  ``after``/``before`` sequence numbers, ``order=asc|desc``); ``audit`` on the resources
  concerned, or on ``*`` for everything.
* ``GET /kbs/v0/audit/verify`` — the chain check ``kbs audit verify`` runs (``audit`` on ``*``).
* ``GET /kbs/v0/admin/whoami`` — the caller's identity and grants.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
from typing import Any, Final

import jwt
from fastapi import APIRouter, Request, Response

from kbs.audit import AuditQuery, token_id, verify_chain
from kbs.deps import StateDep, json_response, read_json
from kbs.errors import (
    AdminAuthError,
    AdminRequestError,
    KbsError,
    ReleasePolicyError,
    ReleasePolicyNotFoundError,
    describe,
)
from kbs.release import explain
from kbs.release_policies import Kind, compile_allow_list, normalise_allow_list
from kbs.routes.admin import check_permission, require_admin
from kbs.routes.audit_hooks import failure_recorded, record_admin
from kbs.scopes import GLOBAL, PathPattern
from policy.defaults import policy_hash
from storage_backends.base import ResourceDesc

_logger = logging.getLogger(__name__)

__all__ = ["router"]

router = APIRouter()

_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    401: {"description": "Not authorised, or the request is invalid"},
    503: {"description": "The database or the audit trail is unavailable"},
}
#: Largest policy text accepted.
MAX_POLICY_BYTES: Final = 256 * 1024


def _prefix(value: Any) -> PathPattern:
    if not isinstance(value, str):
        raise ReleasePolicyError("prefix must be a resource path pattern such as cai/*")
    try:
        return PathPattern.parse(value)
    except ValueError as exc:
        raise ReleasePolicyError(f"prefix is not a path pattern: {exc}") from exc


def _b64url_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ReleasePolicyError("policy must be URL-safe base64 text")
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise ReleasePolicyError("policy is not URL-safe base64 UTF-8") from exc
    if len(raw) > MAX_POLICY_BYTES:
        raise ReleasePolicyError("policy is too large")
    return text


def _b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


# --------------------------------------------------------------------------- release policies


@router.get("/kbs/v0/release-policy", summary="Release policies (admin)", responses=_ERRORS)
async def get_release_policies(request: Request, state: StateDep) -> Response:
    """List release policies, or with ``?prefix=`` show one (text and allow list)."""
    at = state.clock.now()
    identity = await require_admin(request, state, endpoint="release-policy", at=at, action=None)
    prefix_text = request.query_params.get("prefix")
    if prefix_text is None:
        policies = await state.release_policies.all()
        return json_response(
            [
                p.summary()
                for p in policies
                if identity.permissions.touches(("policy", "read"), p.prefix)
            ]
        )
    prefix = _prefix(prefix_text)
    if not identity.permissions.touches(("policy", "read"), prefix):
        check_permission(identity, endpoint="release-policy", action="policy", scope=prefix)
    policy = await state.release_policies.get(prefix)
    if policy is None:
        raise ReleasePolicyNotFoundError(f"no release policy on {prefix}")
    body = policy.summary()
    body["policy"] = _b64url(policy.text)
    if policy.allow_list is not None:
        body["allow_list"] = policy.allow_list
    return json_response(body)


@router.post("/kbs/v0/release-policy", summary="Set a release policy (admin)", responses=_ERRORS)
async def set_release_policy(request: Request, state: StateDep) -> Response:
    """Compile and store a release policy (Rego or allow list) on a path pattern."""
    at = state.clock.now()
    body = await read_json(request, state.body_limit)
    if not isinstance(body, dict):
        raise ReleasePolicyError("body must be a JSON object")
    prefix = _prefix(body.get("prefix"))
    identity = await require_admin(
        request, state, endpoint="release-policy", at=at, action="policy", scope=prefix
    )
    if ("policy" in body) == ("allow_list" in body):
        raise ReleasePolicyError("give exactly one of policy (base64url Rego) and allow_list")
    allow_list = None
    kind: Kind
    if "allow_list" in body:
        allow_list = normalise_allow_list(body["allow_list"])
        text, kind = compile_allow_list(allow_list), "allow_list"
    else:
        text, kind = _b64url_text(body["policy"]), "rego"
    state.policy_engine.validate(text)
    before = await state.release_policies.get(prefix)
    await record_admin(
        state,
        request,
        identity,
        action="release-policy.set",
        resource=str(prefix),
        detail={
            "before": before.sha384 if before else None,
            "after": policy_hash(text),
            "kind": kind,
        },
    )
    async with failure_recorded(
        state, request, identity, action="release-policy.set", resource=str(prefix)
    ):
        stored = await state.release_policies.set(
            prefix, kind=kind, text=text, allow_list=allow_list, at=at, by=identity.actor
        )
    _logger.info("admin %s set the %s release policy on %s", identity.actor, kind, prefix)
    return json_response(stored.summary())


@router.delete(
    "/kbs/v0/release-policy", summary="Delete a release policy (admin)", responses=_ERRORS
)
async def delete_release_policy(request: Request, state: StateDep) -> Response:
    """Remove the release policy on ``?prefix=``."""
    at = state.clock.now()
    prefix = _prefix(request.query_params.get("prefix"))
    identity = await require_admin(
        request, state, endpoint="release-policy", at=at, action="policy", scope=prefix
    )
    before = await state.release_policies.get(prefix)
    if before is None:
        raise ReleasePolicyNotFoundError(f"no release policy on {prefix}")
    await record_admin(
        state,
        request,
        identity,
        action="release-policy.delete",
        resource=str(prefix),
        detail={"before": before.sha384, "after": None},
    )
    async with failure_recorded(
        state, request, identity, action="release-policy.delete", resource=str(prefix)
    ):
        await state.release_policies.delete(prefix)
    _logger.info("admin %s deleted the release policy on %s", identity.actor, prefix)
    return Response(status_code=200)


# --------------------------------------------------------------------------- explain


@router.post("/kbs/v0/explain", summary="Explain a release decision (admin)", responses=_ERRORS)
async def explain_release(request: Request, state: StateDep) -> Response:
    """Evaluate, without releasing, every policy for a token (or claims) and a resource."""
    at = state.clock.now()
    body = await read_json(request, state.body_limit)
    if not isinstance(body, dict):
        raise AdminRequestError("body must be a JSON object")
    resource = body.get("resource")
    if not isinstance(resource, str):
        raise AdminRequestError("resource must be <repository>/<type>/<tag>")
    desc = ResourceDesc.parse(resource.removeprefix("kbs:///"))
    await require_admin(request, state, endpoint="explain", at=at, action="policy", scope=desc)
    query = body.get("query", {})
    if not isinstance(query, dict) or not all(isinstance(v, str) for v in query.values()):
        raise AdminRequestError("query must be an object of strings")
    token_report: dict[str, Any] | None = None
    if "token" in body:
        token = body["token"]
        if not isinstance(token, str):
            raise AdminRequestError("token must be a JWT")
        claims, token_report = _token_claims(state, token, at)
    elif isinstance(body.get("claims"), dict):
        claims = body["claims"]
    else:
        raise AdminRequestError("give token (an attestation token) or claims (its claims)")
    out = await explain(state, desc, claims, query)
    if token_report is not None:
        out["token"] = token_report
    return json_response(out)


def _token_claims(state: StateDep, token: str, at: dt.datetime) -> tuple[Any, dict[str, Any]]:
    """The token's claims; a token that fails verification is explained all the same."""
    report: dict[str, Any] = {"token_id": token_id(token), "verified": True}
    try:
        return state.token_verifier.verify(token, at=at), report
    except KbsError as exc:
        report.update({"verified": False, "error": describe(exc).detail})
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise AdminRequestError("token is not a JWT") from exc
    if not isinstance(claims, dict):
        raise AdminRequestError("token claims are not an object")
    return claims, report


# --------------------------------------------------------------------------- audit


def _time_param(request: Request, name: str) -> dt.datetime | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError as exc:
        raise AdminRequestError(f"{name} must be an RFC 3339 time") from exc
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise AdminRequestError(f"{name} must be a non-negative integer")
    return int(raw)


@router.get("/kbs/v0/audit", summary="Query the audit trail (admin)", responses=_ERRORS)
async def query_audit(request: Request, state: StateDep) -> Response:
    """Records the caller may see, newest first unless ``order=asc``; ``next`` pages on."""
    at = state.clock.now()
    identity = await require_admin(request, state, endpoint="audit", at=at, action=None)
    visible = identity.permissions.visible("audit")
    if visible is not None and not visible:
        raise AdminAuthError("admin access denied for endpoint audit: no audit grant")
    params = request.query_params
    resource = params.get("resource")
    try:
        pattern = PathPattern.parse(resource) if resource else None
    except ValueError as exc:
        raise AdminRequestError(f"resource is not a path pattern: {exc}") from exc
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise AdminRequestError("order must be asc or desc")
    query = AuditQuery(
        kind=params.get("kind"),
        action=params.get("action"),
        outcome=params.get("outcome"),
        actor=params.get("actor"),
        request_id=params.get("request_id"),
        resource=pattern,
        since=_time_param(request, "since"),
        until=_time_param(request, "until"),
        after=_int_param(request, "after"),
        before=_int_param(request, "before"),
        limit=_int_param(request, "limit") or 100,
        descending=order == "desc",
    )
    records, cursor = await state.audit.query(query, permissions=identity.permissions)
    head_seq, head_hash = await state.audit.head()
    return json_response(
        {
            "records": [r.to_json() for r in records],
            "next": cursor,
            "head": {"seq": head_seq, "hash": head_hash},
        }
    )


@router.get("/kbs/v0/audit/verify", summary="Verify the audit chain (admin)", responses=_ERRORS)
async def verify_audit(request: Request, state: StateDep) -> Response:
    """Walk the whole chain (as ``kbs audit verify`` does) and report."""
    at = state.clock.now()
    await require_admin(request, state, endpoint="audit", at=at, action="audit", scope=GLOBAL)
    async with state.engine.connect() as conn:
        report = await conn.run_sync(verify_chain)
    return json_response(
        {
            "ok": report.ok,
            "records": report.records,
            "head": {"seq": report.head_seq, "hash": report.head_hash},
            "problems": list(report.problems),
            "first_bad_seq": report.first_bad_seq,
        }
    )


# --------------------------------------------------------------------------- whoami


@router.get("/kbs/v0/admin/whoami", summary="The caller's admin identity", responses=_ERRORS)
async def whoami(request: Request, state: StateDep) -> Response:
    """Who the token says the caller is, and what the grants let it do."""
    at = state.clock.now()
    identity = await require_admin(request, state, endpoint="whoami", at=at, action=None)
    return json_response(
        {
            "subject": identity.subject,
            "issuer": identity.issuer,
            "roles": list(identity.roles),
            "grants": identity.permissions.describe(),
        }
    )
