# SPDX-License-Identifier: Apache-2.0
"""``POST /kbs/v0/attest``: verify the guest's evidence and issue its attestation token."""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any, Final

from fastapi import APIRouter, Request, Response

from attestation.base import NOT_PROVIDED
from attestation.errors import EvidenceInvalidError, UnsupportedTeeError
from kbs.appraisal import VerificationRequest
from kbs.deps import SESSION_COOKIE, StateDep, json_response, read_json
from kbs.errors import AttestFailedError, SerdeError
from kbs.metrics import attestation_failed, counted_attestation, metrics_of
from kbs.protocol import (
    ProtocolError,
    parse_attestation,
    runtime_data,
    runtime_digest,
)
from kbs.routes.audit_hooks import audited_attestation, remember_attestation
from kbs.routes.auth import session_cookie

_logger = logging.getLogger(__name__)

__all__ = ["PATH", "router"]

router = APIRouter()

#: The RCAR handshake's second step.
PATH: Final = "/kbs/v0/attest"
_ATTEST_FAILED: Final = "Attestation error: RCAR handshake Attest failed"
#: Most additional devices one attestation may carry.
MAX_ADDITIONAL_DEVICES: Final = 16


def _additional_devices(additional: str) -> dict[str, Any]:
    if not additional:
        return {}
    try:
        devices = json.loads(additional)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise AttestFailedError(f"{_ATTEST_FAILED}: additional_evidence is not JSON") from exc
    if not isinstance(devices, dict):
        raise AttestFailedError(f"{_ATTEST_FAILED}: additional_evidence must be a JSON object")
    if len(devices) > MAX_ADDITIONAL_DEVICES:
        raise AttestFailedError(f"{_ATTEST_FAILED}: too many additional devices")
    return devices


@router.post(
    PATH,
    summary="Submit evidence for the session's challenge (Attestation -> token)",
    responses={
        200: {"description": '{"token": "<EAR JWT>"}; the session cookie is re-sent'},
        401: {"description": "No session, wrong nonce, or evidence rejected"},
        503: {"description": "The evidence could not be checked (e.g. no DCAP collateral)"},
    },
)
@audited_attestation
@counted_attestation
async def attest(request: Request, state: StateDep) -> Response:
    """Verify the attestation against the session's challenge and return a token."""
    at = state.clock.now()
    # 1. The session named by the cookie, alive.
    session_id = request.cookies.get(SESSION_COOKIE)
    if not session_id:
        raise AttestFailedError(f"{_ATTEST_FAILED}: no {SESSION_COOKIE} cookie")
    session = await state.sessions.get(session_id, at=at)
    if session is None:
        raise AttestFailedError(f"{_ATTEST_FAILED}: session not found or expired")
    remember_attestation(request, tee=session.tee)
    cookie = {"set-cookie": session_cookie(session.id, session.expires_at)}
    # 2. An attested session answers with the token it already holds.
    if session.attested and session.token is not None:
        return json_response({"token": session.token}, headers=cookie)
    # 3. The body, in the shape of the version the session was opened with.
    try:
        body = parse_attestation(
            await read_json(request, state.body_limit), version=session.protocol_version
        )
    except (ProtocolError, SerdeError) as exc:
        raise AttestFailedError(f"{_ATTEST_FAILED}: {exc}") from exc
    # 4. The nonce must be this session's challenge.
    nonce = body.nonce if body.nonce is not None else session.nonce
    if not hmac.compare_digest(nonce.encode(), session.nonce.encode()):
        attestation_failed(request, session.tee)
        raise AttestFailedError(f"{_ATTEST_FAILED}: nonce does not match the session")
    # 5. One verification request for the primary TEE, one per additional device.
    primary_runtime = runtime_data(
        version=session.protocol_version,
        nonce=nonce,
        tee_pubkey=body.tee_pubkey,
        additional_evidence=body.additional_evidence,
    )
    init = body.init_data
    requests = [
        VerificationRequest(
            tee=session.tee,
            evidence=body.primary_evidence,
            report_data=runtime_digest(primary_runtime),
            runtime_data_claims=primary_runtime,
            init_data_hash=init.digest if init is not None else NOT_PROVIDED,
            init_data_claims=init.claims if init is not None else None,
        )
    ]
    device_runtime = runtime_data(
        version=session.protocol_version,
        nonce=nonce,
        tee_pubkey=body.tee_pubkey,
        additional_evidence=None,
    )
    for tee, evidence in _additional_devices(body.additional_evidence).items():
        requests.append(
            VerificationRequest(
                tee=tee,
                evidence=evidence,
                report_data=runtime_digest(device_runtime),
                runtime_data_claims=device_runtime,
                init_data_hash=NOT_PROVIDED,
                init_data_claims=None,
            )
        )
    # 6. Verify, appraise, sign (503s from verifiers pass through untouched).
    try:
        issued = await state.attestation.evaluate(requests, policy_ids=["default"], at=at)
    except (EvidenceInvalidError, UnsupportedTeeError) as exc:
        _logger.info("attest: evidence rejected for tee %s: %s", session.tee, exc)
        attestation_failed(request, session.tee)
        raise AttestFailedError(f"{_ATTEST_FAILED}: {exc}") from exc
    # 7. The session now holds the token (the first of concurrent attests wins).
    session = await state.sessions.mark_attested(session, issued.token)
    remember_attestation(request, tee=session.tee, token=issued.token, claims=issued.claims)
    metrics_of(request).attestation_successes.labels(session.tee).inc()
    return json_response({"token": session.token}, headers=cookie)
