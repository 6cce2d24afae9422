# SPDX-License-Identifier: Apache-2.0
"""The software-only ``sample`` and ``sampledevice`` TEEs.

They prove nothing: the evidence is a JSON object the guest writes itself. They exist so
the protocol can be exercised without hardware, and are only registered when the
deployment opts in with ``insecure_allow_sample_evidence``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import json
import logging
from typing import Any, Literal

from attestation.base import NotProvided, VerifiedClaims, Verifier
from attestation.errors import BindingMismatchError, EvidenceInvalidError

_logger = logging.getLogger(__name__)

__all__ = ["SampleDeviceVerifier", "SampleVerifier"]


def _parse(evidence: Any, tee: str) -> tuple[str, str]:
    if isinstance(evidence, str):
        # Old clients sent the evidence as a JSON string.
        try:
            evidence = json.loads(evidence)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise EvidenceInvalidError(f"{tee} evidence is not JSON") from exc
    if not isinstance(evidence, dict):
        raise EvidenceInvalidError(f"{tee} evidence must be a JSON object")
    svn = evidence.get("svn")
    report_data = evidence.get("report_data", "")
    if not isinstance(svn, str) or not isinstance(report_data, str):
        raise EvidenceInvalidError(f"{tee} evidence needs string svn and report_data")
    return svn, report_data


def _check_report_data(
    report_data_b64: str, expected: bytes | Literal[NotProvided.MARKER], tee: str
) -> None:
    if expected is NotProvided.MARKER:
        return
    try:
        got = base64.b64decode(report_data_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EvidenceInvalidError(f"{tee} report_data is not base64") from exc
    # The sample TEE compares without padding: exact bytes (reference behaviour).
    if not hmac.compare_digest(got, expected):
        raise BindingMismatchError(f"{tee} report_data does not match the runtime data")


class SampleVerifier(Verifier):
    """Verifier for ``tee = "sample"`` (class ``cpu``)."""

    tee = "sample"

    async def _verify(
        self,
        evidence: Any,
        *,
        report_data: bytes | Literal[NotProvided.MARKER],
        init_data_hash: bytes | Literal[NotProvided.MARKER],
        at: dt.datetime,
    ) -> VerifiedClaims:
        del at  # nothing in sample evidence expires
        svn, report_data_b64 = _parse(evidence, self.tee)
        _check_report_data(report_data_b64, report_data, self.tee)
        claims: dict[str, Any] = {
            "svn": svn,
            "report_data": report_data_b64,
            "launch_digest": "abcde",
            "platform_version": {"major": 1, "minor": 4},
            "debug": False,
        }
        if init_data_hash is not NotProvided.MARKER:
            # Nothing in sample evidence can commit to init-data; echo it for policies.
            claims["init_data"] = base64.b64encode(init_data_hash).decode()
        return VerifiedClaims(tee=self.tee, tee_class="cpu", claims=claims)


class SampleDeviceVerifier(Verifier):
    """Verifier for ``tee = "sampledevice"`` (class ``gpu``), used as additional evidence."""

    tee = "sampledevice"

    async def _verify(
        self,
        evidence: Any,
        *,
        report_data: bytes | Literal[NotProvided.MARKER],
        init_data_hash: bytes | Literal[NotProvided.MARKER],
        at: dt.datetime,
    ) -> VerifiedClaims:
        del at, init_data_hash
        svn, report_data_b64 = _parse(evidence, self.tee)
        _check_report_data(report_data_b64, report_data, self.tee)
        return VerifiedClaims(
            tee=self.tee, tee_class="gpu", claims={"svn": svn, "report_data": report_data_b64}
        )
