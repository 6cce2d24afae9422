# SPDX-License-Identifier: Apache-2.0
"""The verifier interface every TEE plugs into.

A verifier takes the guest's evidence plus the values it must be bound to and returns
claims, or raises. The binding inputs have no defaults: a caller that skips a check has
to write :data:`NOT_PROVIDED` at the call site.
"""

from __future__ import annotations

import abc
import datetime as dt
import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from attestation.errors import AttestationError, EvidenceInvalidError

_logger = logging.getLogger(__name__)

__all__ = [
    "MAX_EVIDENCE_BYTES",
    "NOT_PROVIDED",
    "TEE_CLASSES",
    "NotProvided",
    "VerifiedClaims",
    "Verifier",
    "tee_class",
]

#: Upper bound on one piece of decoded evidence; anything bigger is rejected unparsed.
#: A TDX quote is ~5 KiB and a CC event log rarely exceeds 1 MiB (GCP logs reach 2 MiB).
MAX_EVIDENCE_BYTES: Final = 4 * 1024 * 1024


class NotProvided(enum.Enum):
    """Marker for "this binding is deliberately not checked"."""

    MARKER = "not-provided"


NOT_PROVIDED: Final = NotProvided.MARKER

#: TEE name (as on the wire) -> class of the device, which names its EAR submodule.
TEE_CLASSES: Final[Mapping[str, str]] = {
    "tdx": "cpu",
    "sgx": "cpu",
    "snp": "cpu",
    "az-snp-vtpm": "cpu",
    "az-tdx-vtpm": "cpu",
    "cca": "cpu",
    "csv": "cpu",
    "se": "cpu",
    "tpm": "cpu",
    "sample": "cpu",
    "sampledevice": "gpu",
    "nvidia": "gpu",
    "hygondcu": "dcu",
}


def tee_class(tee: str) -> str:
    """Return the device class (``cpu``, ``gpu``, ...) of a TEE name.

    Raises:
        EvidenceInvalidError: the TEE name is unknown.
    """
    try:
        return TEE_CLASSES[tee]
    except KeyError:
        raise EvidenceInvalidError(f"unknown tee {tee!r}") from None


@dataclass(frozen=True, slots=True)
class VerifiedClaims:
    """What a verifier vouches for.

    Attributes:
        tee: the TEE name, as the client sent it (``tdx``, ``sample``...).
        tee_class: the device class (``cpu``, ``gpu``...).
        claims: the verifier's JSON claims. ``report_data`` and ``init_data`` keys, when
            present, are lifted to the top of the annotated evidence by the appraisal.
    """

    tee: str
    tee_class: str
    claims: Mapping[str, Any] = field(default_factory=dict)


class Verifier(abc.ABC):
    """Base class of every verifier.

    Subclasses implement :meth:`_verify`. The public :meth:`verify` adds what all
    verifiers share: a size cap on the evidence and wrapping of parse errors, so callers
    only ever see :class:`~attestation.errors.AttestationError` subclasses.
    """

    #: The TEE name this verifier handles, as on the wire.
    tee: str

    async def verify(
        self,
        evidence: Any,
        *,
        report_data: bytes | Literal[NotProvided.MARKER],
        init_data_hash: bytes | Literal[NotProvided.MARKER],
        at: dt.datetime,
    ) -> VerifiedClaims:
        """Verify ``evidence`` and return its claims.

        Args:
            evidence: the TEE-specific evidence JSON value, as the client sent it.
            report_data: the runtime-data digest the evidence must commit to, unpadded
                (the verifier pads it to its field size), or :data:`NOT_PROVIDED`.
            init_data_hash: the init-data digest the evidence must commit to, or
                :data:`NOT_PROVIDED`.
            at: the instant of the request; certificate and collateral validity are
                judged at this time, never at the wall clock.

        Raises:
            EvidenceInvalidError: the evidence is malformed or does not verify.
            BindingMismatchError: the evidence is not bound to ``report_data`` or
                ``init_data_hash``.
            VerifierUnavailableError: a dependency needed to decide is unavailable.
        """
        if at.tzinfo is None:
            raise ValueError("verification time must be timezone-aware")
        try:
            return await self._verify(
                evidence, report_data=report_data, init_data_hash=init_data_hash, at=at
            )
        except AttestationError:
            raise
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            # Parse errors deep in a verifier are the evidence's fault; fail closed.
            _logger.info("%s evidence rejected: %s", self.tee, exc, exc_info=True)
            raise EvidenceInvalidError(f"malformed {self.tee} evidence") from exc

    @abc.abstractmethod
    async def _verify(
        self,
        evidence: Any,
        *,
        report_data: bytes | Literal[NotProvided.MARKER],
        init_data_hash: bytes | Literal[NotProvided.MARKER],
        at: dt.datetime,
    ) -> VerifiedClaims:
        """Implementation hook of :meth:`verify`; same contract."""
