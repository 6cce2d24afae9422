# SPDX-License-Identifier: Apache-2.0
r"""The attestation-service API, wire-compatible with Trustee's ``restful-as``.

Mounted at the root and under ``/as`` (a load balancer sends ``/<release>/as/...``), with
repeated slashes collapsed (the attestation agent sends ``.../as//attestation``). The
framing is the reference's, because clients match on it:

* success: 200, the body as is (a bare compact JWS for ``/attestation``, no newline, no
  ``Content-Type``); policy and challenge writes answer an empty body;
* a body that does not deserialize: 400 ``Json deserialize error: ...`` (text);
* a body that is not JSON by its content type: 400 ``Content type error``;
* every other failure: 500 ``An internal error occured: \n0: ...`` (text), including
  rejected evidence and, for the Simple profile, an unsatisfied policy.

Our additions: the policy endpoints need the KBS's admin authentication (authorised as
``/kbs/v0/attestation-policy``; 401 with the KBS error body), ``/attestation`` and
``/challenge`` are rate-limited per client (429 with the KBS error body), and the
certificate endpoint serves the chains of both token signers.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Awaitable
from typing import Any, Final

from fastapi import APIRouter, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from attestation.errors import AttestationError, UnsupportedTeeError
from kbs.admin_auth import AdminIdentity
from kbs.as_requests import (
    AsBodyError,
    AsRequestError,
    b64url_decode,
    loads,
    parse_attestation,
    parse_challenge,
    parse_set_policy,
    render_body_error,
    render_request_error,
)
from kbs.deps import StateDep, json_response, read_body
from kbs.errors import KbsError, PayloadTooLargeError, describe
from kbs.ratelimit import client_address
from kbs.routes.admin import MAX_POLICY_BYTES, POLICY_ID_PATTERN
from kbs.state import KbsState
from kbs.stores import ATTESTATION_NAMESPACE
from policy.errors import PolicyError
from storage_backends.errors import StorageError

_logger = logging.getLogger(__name__)

__all__ = ["POLICY_ADMIN_URI", "PREFIX", "CollapseSlashesMiddleware", "prefixed_router", "router"]

#: The API, served at the root and under :data:`PREFIX`.
router = APIRouter()
#: Endpoints the root already has from ``wellknown`` (the same answers), under the prefix.
prefixed_router = APIRouter()

#: Where the API is mounted besides the root.
PREFIX: Final = "/as"

#: The admin URI the policy endpoints are authorised as (the KBS's own policy endpoint),
#: so one ACL entry governs attestation policies whichever API sets them.
POLICY_ADMIN_URI: Final = "/kbs/v0/attestation-policy"

_TEXT: Final = "text/plain; charset=utf-8"
_PEM: Final = "application/x-pem-file"
_SLASHES: Final = re.compile(r"/{2,}")
_RAW_SLASHES: Final = re.compile(rb"/{2,}")
_KBS_PATH: Final = re.compile(r"/kbs/v0(/|$)")


class CollapseSlashesMiddleware:
    """Collapse repeated slashes in request paths, except in the KBS's ``/kbs/v0/`` paths.

    The attestation agent builds ``{url}/attestation`` without trimming, so a ``url``
    ending in ``/`` yields ``.../as//attestation``; nginx merges such slashes and clients
    rely on it. KBS paths keep their exact meaning (an empty segment there stays a 404).
    """

    def __init__(self, app: ASGIApp) -> None:
        """Wrap ``app``."""
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Rewrite ``path`` and ``raw_path`` of HTTP requests, then call the app."""
        if scope["type"] == "http" and "//" in scope["path"]:
            collapsed = _SLASHES.sub("/", scope["path"])
            if not _KBS_PATH.search(collapsed):
                scope = dict(scope)
                scope["path"] = collapsed
                raw = scope.get("raw_path")
                if isinstance(raw, bytes):
                    scope["raw_path"] = _RAW_SLASHES.sub(b"/", raw)
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------- framing


class _ContentTypeError(Exception):
    """The request's content type is not JSON."""


async def _json_body(request: Request, state: KbsState) -> Any:
    # actix's JSON extractor: application/json or any +json type, else 400.
    mime = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if mime != "application/json" and not mime.endswith("+json"):
        raise _ContentTypeError
    raw = await read_body(request, state.body_limit)
    request.state.as_raw_body = raw  # for the position in a 400 answer
    return loads(raw)


def _text(body: str, status_code: int) -> Response:
    return Response(content=body.encode(), status_code=status_code, media_type=_TEXT)


async def _framed(request: Request, context: str, work: Awaitable[Response]) -> Response:
    """Run ``work``; answer any failure in the reference's framing (400, 413 or 500 text)."""
    try:
        return await work
    except Exception as exc:  # noqa: BLE001 - every failure is framed as the reference does
        return _failure(exc, context=context, request=request)


def _failure(exc: Exception, *, context: str, request: Request) -> Response:
    what = f"{request.method} {request.url.path}"
    if isinstance(exc, _ContentTypeError):
        return _text("Content type error", 400)
    if isinstance(exc, AsBodyError):
        _logger.info("%s -> 400: %s", what, exc)
        raw = getattr(request.state, "as_raw_body", b"")
        return _text(render_body_error(exc, raw), 400)
    if isinstance(exc, PayloadTooLargeError):
        return _text(f"JSON payload is larger than allowed ({exc})", 413)
    if isinstance(exc, AsRequestError):
        causes: tuple[str, ...] = exc.causes
    elif isinstance(exc, KbsError | AttestationError | PolicyError | StorageError):
        info = describe(exc)
        detail = info.detail
        if isinstance(exc, AttestationError) and not isinstance(exc, UnsupportedTeeError):
            detail = f"Verifier evaluate failed: {detail}"
        causes = (context, detail)
        if info.status >= 500:  # noqa: PLR2004 - a dependency of ours failed
            _logger.error("%s failed: %s", what, info.variant, exc_info=exc)
    else:
        _logger.error("%s failed unexpectedly", what, exc_info=exc)
        causes = (context, "internal error")
    _logger.info("%s -> 500: %s", what, " / ".join(causes))
    return _text(render_request_error(causes), 500)


def _authorize_policy_admin(request: Request, state: KbsState, *, at: dt.datetime) -> AdminIdentity:
    """The KBS's admin authentication; raises ``AdminAuthError`` (401, KBS error body)."""
    return state.admin.authorize(
        uri=POLICY_ADMIN_URI,
        authorization=request.headers.get("authorization"),
        endpoint="attestation-policy",
        at=at,
    )


# --------------------------------------------------------------------------- attestation


@router.post(
    "/attestation",
    summary="Verify evidence and issue an attestation token (bare JWT body)",
    responses={
        200: {"description": "The token (compact JWS), without Content-Type"},
        400: {"description": "Json deserialize error / Content type error (text)"},
        429: {"description": "Too many requests from this client (KBS error body)"},
        500: {"description": "An internal error occured: ... (text)"},
    },
)
async def attestation(request: Request, state: StateDep) -> Response:
    """Verify the evidence of every device and answer with one EAR or Simple token."""
    at = state.clock.now()
    # 1. Unauthenticated and costly: one token of the client's rate budget.
    state.rate_limiter.check(client_address(request, state.trusted_proxies), at=at)
    return await _framed(request, "attestation report evaluate", _attest(request, state, at))


async def _attest(request: Request, state: KbsState, at: dt.datetime) -> Response:
    # 2. Either body shape, decoded in the reference's order.
    call = parse_attestation(await _json_body(request, state))
    # 3. The request's profile, else the configured one; then verify, appraise, sign.
    broker = state.settings.attestation_service.attestation_token_broker
    profile = call.token_profile or broker.default_profile
    if profile == "simple":
        issued = await state.attestation.evaluate_simple(
            call.requests, policy_ids=call.policy_ids, at=at, entropy=state.entropy
        )
    else:
        issued = await state.attestation.evaluate(call.requests, policy_ids=call.policy_ids, at=at)
    _logger.info(
        "attestation: issued a %s token for %s (policies %s)",
        profile,
        ", ".join(r.tee for r in call.requests),
        ", ".join(call.policy_ids),
    )
    # 4. The bare token: no quotes, no newline, no Content-Type.
    return Response(content=issued.token.encode(), status_code=200)


@router.post(
    "/challenge",
    summary="Supplemental challenge of a TEE (empty for every TEE served here)",
    responses={429: {"description": "Too many requests from this client"}},
)
async def challenge(request: Request, state: StateDep) -> Response:
    """Answer ``{"tee", "tee_params"}`` with the TEE's challenge: empty, as no TEE here has one.

    Only IBM Secure Execution has a supplemental challenge in the reference, and it is
    not supported here.
    """
    at = state.clock.now()
    state.rate_limiter.check(client_address(request, state.trusted_proxies), at=at)
    return await _framed(request, "generate challenge", _challenge(request, state))


async def _challenge(request: Request, state: KbsState) -> Response:
    tee, _params = parse_challenge(await _json_body(request, state))
    if tee not in state.attestation.verifiers:
        raise AsRequestError("generate challenge", f"tee {tee!r} is not enabled on this server")
    return Response(status_code=200)


# --------------------------------------------------------------------------- policies


@router.post("/policy", summary="Set an attestation policy (admin)")
async def set_policy(request: Request, state: StateDep) -> Response:
    """Compile and store ``{"policy_id", "policy": "<base64url Rego>"}``."""
    at = state.clock.now()
    identity = _authorize_policy_admin(request, state, at=at)
    return await _framed(request, "set policy", _set_policy(request, state, identity, at))


async def _set_policy(
    request: Request, state: KbsState, identity: AdminIdentity, at: dt.datetime
) -> Response:
    policy_id, encoded = parse_set_policy(await _json_body(request, state))
    if not POLICY_ID_PATTERN.fullmatch(policy_id):
        raise AsRequestError("set policy", "policy id must match [A-Za-z0-9_.-]{1,255}")
    try:
        text_bytes = b64url_decode(encoded)
    except ValueError as exc:
        raise AsRequestError("set policy", "base64 decode policy", str(exc)) from exc
    if len(text_bytes) > MAX_POLICY_BYTES:
        raise AsRequestError("set policy", "policy is too large")
    try:
        text = text_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AsRequestError("set policy", "policy is not UTF-8") from exc
    state.policy_engine.validate(text)
    await state.policies.set(ATTESTATION_NAMESPACE, policy_id, text, at=at)
    _logger.info("admin %s set attestation policy %s (AS API)", identity.subject, policy_id)
    return Response(status_code=200)


async def _list_policies(request: Request, state: KbsState) -> Response:
    _authorize_policy_admin(request, state, at=state.clock.now())

    async def work() -> Response:
        listed = await state.policies.list_with_hashes(ATTESTATION_NAMESPACE)
        return json_response([{"policy-id": pid, "policy-hash": h} for pid, h in listed])

    return await _framed(request, "get policies", work())


@router.get("/policy", summary="List attestation policies (admin)")
async def list_policies(request: Request, state: StateDep) -> Response:
    """Answer ``[{"policy-id", "policy-hash"}]`` (SHA-384 hex of each text)."""
    return await _list_policies(request, state)


@router.get("/policies", summary="List attestation policies (admin; Anolis gateway alias)")
async def list_policies_alias(request: Request, state: StateDep) -> Response:
    """The same as ``GET /policy``."""
    return await _list_policies(request, state)


@router.get("/policy/{policy_id}", summary="Read one attestation policy (admin)")
async def get_policy(policy_id: str, request: Request, state: StateDep) -> Response:
    """Answer with the policy's Rego text."""
    _authorize_policy_admin(request, state, at=state.clock.now())

    async def work() -> Response:
        text = await state.policies.get(ATTESTATION_NAMESPACE, policy_id)
        if text is None:
            raise AsRequestError("get policy", f"policy {policy_id[:255]!r} not found")
        return Response(content=text.encode(), status_code=200)

    return await _framed(request, "get policy", work())


@router.delete("/policy/{policy_id}", summary="Delete an attestation policy (admin)")
async def delete_policy(policy_id: str, request: Request, state: StateDep) -> Response:
    """Delete the policy (a deleted shipped default comes back at the next start)."""
    identity = _authorize_policy_admin(request, state, at=state.clock.now())

    async def work() -> Response:
        if not await state.policies.delete(ATTESTATION_NAMESPACE, policy_id):
            raise AsRequestError("delete policy", f"policy {policy_id[:255]!r} not found")
        _logger.info("admin %s deleted attestation policy %s", identity.subject, policy_id)
        return Response(status_code=200)

    return await _framed(request, "delete policy", work())


# --------------------------------------------------------------------------- keys, health


@router.get("/certificate", summary="PEM certificate chains of the token signers")
async def certificate(state: StateDep) -> Response:
    """Every token signer's chain, leaf first (TNG >= v2.4 uses them as trust anchors)."""
    pem = state.token_certificates_pem()
    if not pem:
        return json_response({"error": "No certificate configured"}, status_code=404)
    return Response(content=pem.encode(), status_code=200, media_type=_PEM)


@prefixed_router.get("/.well-known/jwks.json", summary="Public keys of the token signers")
async def jwks(state: StateDep) -> Response:
    """The JWK Set of both token signers (the same document as the KBS's)."""
    return json_response(state.published_jwks())


@router.get("/.well-known/openid-configuration", summary="Discovery document (JWKS location)")
async def openid_configuration(request: Request, state: StateDep) -> Response:
    """Name the issuer and where its keys are, for relying parties that discover keys."""
    here = str(request.url.replace(query="", fragment=""))
    base = here[: here.rindex("/.well-known/")]
    broker = state.settings.attestation_service.attestation_token_broker
    return json_response(
        {
            "issuer": broker.issuer_name,
            "jwks_uri": f"{base}/.well-known/jwks.json",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256", "RS384"],
        }
    )


@prefixed_router.get("/healthz", summary="Liveness")
async def healthz() -> Response:
    """The process is serving requests (200, empty body)."""
    return Response(status_code=200)
