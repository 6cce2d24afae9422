# SPDX-License-Identifier: Apache-2.0
"""Errors specific to TDX evidence.

All of them are :class:`~attestation.errors.EvidenceInvalidError` subclasses: a quote or
event log that does not parse is the guest's fault. "We could not check" is
:class:`~attestation.errors.CollateralUnavailableError`, raised by the collateral sources.
"""

from __future__ import annotations

import logging

from attestation.errors import EvidenceInvalidError

_logger = logging.getLogger(__name__)

__all__ = [
    "EventLogParseError",
    "EventLogReplayError",
    "PckChainError",
    "QuoteParseError",
]


class QuoteParseError(EvidenceInvalidError):
    """The bytes are not a well-formed TDX quote (v4 or v5)."""


class PckChainError(EvidenceInvalidError):
    """The PCK certificate chain inside the quote is malformed or not from the trusted root."""


class EventLogParseError(EvidenceInvalidError):
    """The CC event log is not a well-formed TCG2 crypto-agile log."""


class EventLogReplayError(EvidenceInvalidError):
    """Replaying the CC event log does not give the RTMR values of the quote."""
