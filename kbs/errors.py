# SPDX-License-Identifier: Apache-2.0
"""Errors of the KBS and the one table that turns every error into an HTTP answer.

The body is the reference's ``{"type": ".../errors/<Variant>", "detail": "..."}``.
Status codes follow the reference (404 only for a bad path or an unknown plugin, 401 for
the guest's or the admin's faults) except that failures of our own dependencies
(database, secret backend, PCCS) are 503 with a type that says so, never a 401 that
blames the guest. Details name the failed check; they never carry secrets, evidence or
stack traces (those go to the log).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from attestation.errors import (
    CollateralUnavailableError,
    EvidenceInvalidError,
    UnsupportedTeeError,
    VerifierUnavailableError,
)
from policy.errors import PolicyEvaluationError, PolicyInvalidError, ReferenceValueError
from storage_backends.errors import (
    InvalidResourcePathError,
    ResourceConflictError,
    ResourceNotFoundError,
    ResourceTooLargeError,
    StorageUnavailableError,
    UnsupportedOperationError,
)

_logger = logging.getLogger(__name__)

__all__ = [
    "ERROR_TYPE_PREFIX",
    "AdminAuthError",
    "AdminRequestError",
    "AttestFailedError",
    "AttestationRejectedError",
    "AuditUnavailableError",
    "AuthFailedError",
    "DatabaseUnavailableError",
    "ErrorInfo",
    "InvalidRequestPathError",
    "JweError",
    "KbsError",
    "ParsePolicyError",
    "PayloadTooLargeError",
    "PluginNotFoundError",
    "PolicyDenyError",
    "RateLimitedError",
    "ReleasePolicyError",
    "ReleasePolicyNotFoundError",
    "RvpsError",
    "SerdeError",
    "TokenNotFoundError",
    "TokenVerifierError",
    "describe",
    "error_variants",
]

#: The reference's (non-resolvable) error type namespace.
ERROR_TYPE_PREFIX: Final = "https://github.com/confidential-containers/kbs/errors/"


class KbsError(Exception):
    """Root of the KBS's own errors. ``str(exc)`` is safe to show to the client."""


class AuthFailedError(KbsError):
    """``/auth`` could not open a session."""


class AttestFailedError(KbsError):
    """``/attest`` rejected the attestation (session, nonce, body, evidence)."""


class TokenNotFoundError(KbsError):
    """A resource request carried neither an attested session nor a Bearer token."""


class TokenVerifierError(KbsError):
    """An attestation token failed verification, or carries no usable TEE key."""


class PolicyDenyError(KbsError):
    """The resource policy did not allow the request."""


class PluginNotFoundError(KbsError):
    """No built-in endpoint or plugin by that name (or not for that method)."""


class InvalidRequestPathError(KbsError):
    """The request path is malformed (e.g. not ``<repo>/<type>/<tag>``)."""


class AdminAuthError(KbsError):
    """An admin request was not authenticated or not authorised."""


class ParsePolicyError(KbsError):
    """A policy upload is not in the expected encoding."""


class RvpsError(KbsError):
    """A reference value could not be registered or queried."""


class SerdeError(KbsError):
    """A request body is not the JSON the endpoint expects."""


class JweError(KbsError):
    """The released secret could not be wrapped to the TEE key."""


class PayloadTooLargeError(KbsError):
    """The request body exceeds the configured limit."""


class DatabaseUnavailableError(KbsError):
    """The database could not be reached or failed (our fault: 503)."""


class RateLimitedError(KbsError):
    """The client sent more requests than its rate limit allows (429)."""

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        """Carry the whole seconds after which a retry can succeed (``Retry-After``)."""
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AttestationRejectedError(KbsError):
    """A Simple-profile token was refused: a requested policy was not satisfied."""


class AuditUnavailableError(KbsError):
    """An audit record could not be written, so the operation was refused (503)."""


class ReleasePolicyError(KbsError):
    """A release policy upload is malformed (bad prefix, allow list or encoding)."""


class ReleasePolicyNotFoundError(KbsError):
    """No release policy is attached to that path pattern."""


class AdminRequestError(KbsError):
    """An admin request (explain, audit query) is malformed (400)."""


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """How one error is answered."""

    status: int
    variant: str
    detail: str

    @property
    def type(self) -> str:
        """The full error type URI."""
        return ERROR_TYPE_PREFIX + self.variant


# Ordered: the first matching type wins, so subclasses come before their bases.
_TABLE: Final[tuple[tuple[type[BaseException], int, str, str | None], ...]] = (
    # (exception type, status, variant, fixed detail or None to use str(exc))
    (InvalidRequestPathError, 404, "InvalidRequestPath", None),
    (InvalidResourcePathError, 404, "InvalidRequestPath", None),
    (PluginNotFoundError, 404, "PluginNotFound", None),
    (ReleasePolicyNotFoundError, 404, "ReleasePolicyNotFound", None),
    (PayloadTooLargeError, 413, "PayloadTooLarge", None),
    (RateLimitedError, 429, "TooManyRequests", None),
    (DatabaseUnavailableError, 503, "DatabaseUnavailable", None),
    (AuditUnavailableError, 503, "AuditUnavailable", None),
    (StorageUnavailableError, 503, "StorageUnavailable", None),
    (CollateralUnavailableError, 503, "CollateralUnavailable", None),
    (VerifierUnavailableError, 503, "VerifierUnavailable", None),
    (AuthFailedError, 401, "AttestationError", None),
    (AttestFailedError, 401, "AttestationError", None),
    (AttestationRejectedError, 401, "AttestationError", None),
    (EvidenceInvalidError, 401, "AttestationError", None),
    (UnsupportedTeeError, 401, "AttestationError", None),
    (TokenNotFoundError, 401, "TokenNotFound", None),
    (TokenVerifierError, 401, "TokenVerifierError", None),
    (PolicyDenyError, 401, "PolicyDeny", None),
    (AdminAuthError, 401, "AdminAuthAccess", None),
    (ParsePolicyError, 401, "ParsePolicyError", None),
    (ReleasePolicyError, 401, "ParsePolicyError", None),
    (AdminRequestError, 400, "InvalidAdminRequest", None),
    (PolicyInvalidError, 401, "PolicyEngineError", None),
    (PolicyEvaluationError, 401, "PolicyEngineError", None),
    (ReferenceValueError, 401, "RvpsError", None),
    (RvpsError, 401, "RvpsError", None),
    (SerdeError, 401, "SerdeError", None),
    (JweError, 401, "JweError", None),
    (ResourceNotFoundError, 401, "PluginInternalError", "resource not found"),
    (UnsupportedOperationError, 401, "PluginInternalError", None),
    (ResourceTooLargeError, 401, "PluginInternalError", None),
    (ResourceConflictError, 409, "ResourceConflict", None),
)


def describe(exc: BaseException) -> ErrorInfo:
    """Return the status, variant and client-safe detail for ``exc``.

    Unknown exceptions become a 500 with a fixed detail; their text is never shown.
    """
    for exc_type, status, variant, fixed in _TABLE:
        if isinstance(exc, exc_type):
            detail = fixed if fixed is not None else str(exc)
            return ErrorInfo(status=status, variant=variant, detail=detail or variant)
    return ErrorInfo(status=500, variant="InternalError", detail="internal error")


def error_variants() -> dict[int, tuple[str, ...]]:
    """Every error variant this table can answer, by status (for the OpenAPI document)."""
    variants: dict[int, list[str]] = {500: ["InternalError"]}
    for _exc_type, status, variant, _fixed in _TABLE:
        if variant not in variants.setdefault(status, []):
            variants[status].append(variant)
    return {status: tuple(names) for status, names in variants.items()}
