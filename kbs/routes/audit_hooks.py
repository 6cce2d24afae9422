# SPDX-License-Identifier: Apache-2.0
"""Writing audit records from the routes (kbs/audit.py holds the trail itself).

* **Admin changes** are recorded *before* they are applied, with outcome ``accepted`` and
  the before/after digests; if that record cannot be written the change is refused (503
  ``AuditUnavailable``). A change that then fails adds a ``failed`` record (best effort).
* **Releases**: a release is recorded after the secret is wrapped and before it is sent;
  if the record cannot be written the release is refused, unless
  ``audit.insecure_release_without_audit``. Denials are recorded best effort.
* **Attestations** (:func:`audited_attestation`): every ``/attest`` outcome, best effort
  (a failed record is logged as an error; the token alone releases nothing).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final

import jwt
from fastapi import Request, Response

from kbs.admin_auth import AdminIdentity
from kbs.audit import AuditEvent, token_id
from kbs.deps import SESSION_COOKIE, get_state
from kbs.errors import AuditUnavailableError, describe
from kbs.ratelimit import client_address
from kbs.request_id import current_request_id
from kbs.state import KbsState

_logger = logging.getLogger(__name__)

__all__ = [
    "audited_attestation",
    "client_of",
    "failure_recorded",
    "record_admin",
    "record_admin_failure",
    "record_best_effort",
    "record_release",
    "remember_attestation",
]

#: Where the /attest route leaves what it already knows for the attestation record
#: (``request.state``), so the record costs no session read and no token decoding.
_ATTESTATION_STATE: Final = "kbs_audit_attestation"

#: Claims of annotated evidence worth keeping in an attestation record, per TEE.
_MEASUREMENTS: Final = {
    "tdx": (
        ("quote", "body", "mr_td"),
        ("quote", "body", "rtmr_0"),
        ("quote", "body", "rtmr_1"),
        ("quote", "body", "rtmr_2"),
        ("quote", "body", "rtmr_3"),
        ("quote", "body", "mr_config_id"),
        ("quote", "body", "tcb_svn"),
        ("tcb_status",),
        ("advisory_ids",),
        ("td_attributes", "debug"),
    ),
    "sample": (("launch_digest",), ("svn",), ("debug",)),
}


def client_of(request: Request) -> str | None:
    """The client's address (through trusted proxies, as for rate limits)."""
    if request.client is None:
        return None
    return client_address(request, get_state(request).trusted_proxies)


def _event(
    request: Request,
    *,
    kind: str,
    action: str,
    outcome: str,
    actor: str | None,
    resource: str | None,
    detail: Mapping[str, Any],
) -> AuditEvent:
    return AuditEvent(
        kind=kind,
        action=action,
        outcome=outcome,
        actor=actor,
        client=client_of(request),
        request_id=current_request_id(),
        resource=resource,
        detail=detail,
    )


async def record_admin(
    state: KbsState,
    request: Request,
    identity: AdminIdentity,
    *,
    action: str,
    resource: str | None,
    detail: Mapping[str, Any],
) -> None:
    """Record an admin change before it is applied.

    Raises:
        AuditUnavailableError: the record could not be written: do not apply the change.
    """
    event = _event(
        request,
        kind="admin",
        action=action,
        outcome="accepted",
        actor=identity.actor,
        resource=resource,
        detail={"roles": list(identity.roles), **detail},
    )
    await state.audit.append(event, at=state.clock.now())


async def record_admin_failure(
    state: KbsState,
    request: Request,
    identity: AdminIdentity,
    *,
    action: str,
    resource: str | None,
    error: BaseException,
) -> None:
    """Record that an accepted admin change failed (best effort)."""
    info = describe(error)
    await record_best_effort(
        state,
        _event(
            request,
            kind="admin",
            action=action,
            outcome="failed",
            actor=identity.actor,
            resource=resource,
            detail={"error": info.variant, "reason": info.detail},
        ),
    )


@contextlib.asynccontextmanager
async def failure_recorded(
    state: KbsState,
    request: Request,
    identity: AdminIdentity,
    *,
    action: str,
    resource: str | None,
) -> AsyncIterator[None]:
    """Around applying an accepted change: a failure adds a ``failed`` record."""
    try:
        yield
    except Exception as exc:
        await record_admin_failure(
            state, request, identity, action=action, resource=resource, error=exc
        )
        raise


async def record_best_effort(state: KbsState, event: AuditEvent) -> None:
    """Append ``event``; a failure is logged, not raised."""
    try:
        await state.audit.append(event, at=state.clock.now())
    except AuditUnavailableError:
        _logger.exception(
            "audit record %s/%s lost (request id %s)", event.kind, event.action, event.request_id
        )


async def record_release(
    state: KbsState,
    request: Request,
    *,
    resource: str,
    outcome: str,
    token_digest: str,
    detail: Mapping[str, Any],
) -> None:
    """Record a release decision; ``token_digest`` is :func:`kbs.audit.token_id` of the token.

    Raises:
        AuditUnavailableError: an ``allowed`` record could not be written and the
            configuration refuses releases without one.
    """
    event = _event(
        request,
        kind="release",
        action="release",
        outcome=outcome,
        actor=None,
        resource=resource,
        detail={"token_id": token_digest, **detail},
    )
    if outcome != "allowed":
        await record_best_effort(state, event)
        return
    try:
        await state.audit.append(event, at=state.clock.now())
    except AuditUnavailableError:
        if not state.settings.audit.insecure_release_without_audit:
            raise
        _logger.error(  # noqa: TRY400 - append() already logged the trace
            "releasing %s WITHOUT an audit record (audit.insecure_release_without_audit)",
            resource,
        )


def _dig(value: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def attestation_summary(claims: Mapping[str, Any]) -> dict[str, Any]:
    """Per device: EAR status, trust vector and the key measurements (no evidence)."""
    devices: dict[str, Any] = {}
    submods = claims.get("submods")
    for name, submod in (submods if isinstance(submods, dict) else {}).items():
        if not isinstance(submod, dict):
            continue
        annotated = submod.get("ear.veraison.annotated-evidence")
        annotated = annotated if isinstance(annotated, dict) else {}
        tee = next((t for t in annotated if t not in _ANNOTATION_KEYS), None)
        measurements = {}
        for path in _MEASUREMENTS.get(tee or "", ()):
            value = _dig(annotated.get(tee), path)
            if value is not None:
                measurements[".".join(path)] = value
        devices[str(name)] = {
            "tee": tee,
            "ear.status": submod.get("ear.status"),
            "ear.trustworthiness-vector": submod.get("ear.trustworthiness-vector"),
            "measurements": measurements,
        }
    return devices


_ANNOTATION_KEYS: Final = frozenset(
    {"report_data", "runtime_data_claims", "init_data", "init_data_claims"}
)


def remember_attestation(
    request: Request, *, tee: str, token: str | None = None, claims: Any = None
) -> None:
    """Tell :func:`audited_attestation` the session's TEE and, once issued, the token.

    ``claims`` are the claims ``token`` was signed over (for the record's summary).
    """
    setattr(request.state, _ATTESTATION_STATE, (tee, token, claims))


def _remembered(request: Request) -> tuple[str, str | None, Any] | None:
    found: tuple[str, str | None, Any] | None = getattr(request.state, _ATTESTATION_STATE, None)
    return found


def audited_attestation(
    endpoint: Callable[..., Awaitable[Response]],
) -> Callable[..., Awaitable[Response]]:
    """Record every outcome of the ``/attest`` route it wraps (best effort)."""

    @functools.wraps(endpoint)
    async def wrapper(**kwargs: Any) -> Response:
        request: Request = kwargs["request"]
        state: KbsState = kwargs["state"]
        try:
            response = await endpoint(**kwargs)
        except Exception as exc:
            info = describe(exc)
            tee = await _session_tee(state, request)
            await record_best_effort(
                state,
                _event(
                    request,
                    kind="attestation",
                    action="attest",
                    outcome="failed" if info.status < 500 else "error",  # noqa: PLR2004
                    actor=None,
                    resource=None,
                    detail={"tee": tee, "error": info.variant, "reason": info.detail},
                ),
            )
            raise
        await _record_success(state, request, response)
        return response

    return wrapper


async def _session_tee(state: KbsState, request: Request) -> str | None:
    remembered = _remembered(request)
    if remembered is not None:
        return remembered[0]
    session_id = request.cookies.get(SESSION_COOKIE)
    if not session_id:
        return None
    try:
        session = await state.sessions.get(session_id, at=state.clock.now())
    except Exception:  # noqa: BLE001 - only for the record
        return None
    return session.tee if session is not None else None


async def _record_success(state: KbsState, request: Request, response: Response) -> None:
    remembered = _remembered(request)
    try:
        token = json.loads(bytes(response.body))["token"]
        if remembered is not None and remembered[1] == token and remembered[2] is not None:
            claims = remembered[2]  # the claims the route just signed into this token
        else:
            claims = jwt.decode(token, options={"verify_signature": False})
    except (ValueError, KeyError, TypeError, jwt.PyJWTError):
        _logger.warning("attest answered without a readable token; not audited")
        return
    tee = await _session_tee(state, request)
    await record_best_effort(
        state,
        _event(
            request,
            kind="attestation",
            action="attest",
            outcome="ok",
            actor=None,
            resource=None,
            detail={
                "tee": tee,
                "token_id": token_id(token),
                "devices": attestation_summary(claims),
            },
        ),
    )
