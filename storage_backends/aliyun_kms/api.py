# SPDX-License-Identifier: Apache-2.0
"""The contract between the Aliyun KMS backend and its two gateway clients.

Two gateways serve KMS secrets (research notes, aliyun-kms.md section 0):

* the **dedicated KMS instance gateway** (``<kst>.cryptoservice.kms.aliyuncs.com``, API
  ``dkms-gcs-0.2``), reached with an application access point (AAP) client key. It offers
  ``GetSecretValue`` and no secret management operation (see :mod:`.instance`);
* the **shared KMS gateway** (``kms.<region>.aliyuncs.com``, OpenAPI ``2016-01-20``), reached
  with RAM credentials. It offers the whole secret life cycle (see :mod:`.shared`).

Both clients raise one error type, :class:`KmsRequestError`, whose text carries only the
operation, an error class, the service's error code, the HTTP status and the request id:
never a credential, a secret value or a request URL (the shared gateway's v2 signature puts
the STS token in the query string, and third-party exceptions quote URLs).
"""

from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass, field
from typing import Final, Protocol

_logger = logging.getLogger(__name__)

__all__ = [
    "CODE_IN_DELETE_WINDOW",
    "CODE_NOT_FOUND",
    "CODE_RESOURCE_EXISTS",
    "CODE_THROTTLING",
    "ErrorKind",
    "KmsObserver",
    "KmsRequestError",
    "SecretDescription",
    "SecretManager",
    "SecretPage",
    "SecretReader",
    "SecretSummary",
    "SecretValue",
    "SecretVersion",
    "SecretVersionPage",
    "classify_response_error",
]

#: Error codes both gateways use (KMS API reference, CreateSecret / common error codes).
CODE_NOT_FOUND: Final = "Forbidden.ResourceNotFound"
CODE_RESOURCE_EXISTS: Final = "Rejected.ResourceExist"
CODE_IN_DELETE_WINDOW: Final = "Rejected.ResourceInDeleteWindow"
CODE_THROTTLING: Final = "Rejected.Throttling"

#: Server-side codes that mean "try again later" even when the HTTP status is 4xx.
_TRANSIENT_CODES: Final = frozenset(
    {
        CODE_THROTTLING,
        "ServiceUnavailableTemporary",
        "SerivceUnavailableTemporary",  # sic: the spelling on the KMS common error page
        "InternalFailure",
    }
)

#: Codes and request ids come from the network and end up in log lines and messages.
_UNSAFE_CHARS: Final = re.compile(r"[^A-Za-z0-9._:/-]")
_MAX_FIELD_LENGTH: Final = 64

_HTTP_TOO_MANY_REQUESTS: Final = 429
_HTTP_SERVER_ERROR: Final = 500


class ErrorKind(enum.Enum):
    """What a failed KMS call means to the backend."""

    #: ``Forbidden.ResourceNotFound``: no such secret (or version).
    NOT_FOUND = "not found"
    #: ``Rejected.ResourceExist``: CreateSecret on an existing name, or a reused version id.
    EXISTS = "already exists"
    #: ``Rejected.ResourceInDeleteWindow``: the secret is scheduled for deletion.
    IN_DELETE_WINDOW = "scheduled for deletion"
    #: HTTP 429 / ``Rejected.Throttling``: the QPS quota is exhausted.
    THROTTLED = "throttled"
    #: 5xx, connection failures, timeouts, malformed responses: may succeed later.
    UNAVAILABLE = "unavailable"
    #: Any other 4xx: signature, permission, parameter errors. Retrying will not help.
    REJECTED = "rejected"
    #: A failure inside the client itself (a bug or an unexpected SDK behaviour).
    INTERNAL = "internal error"

    @property
    def retryable(self) -> bool:
        """Whether a retry (with backoff) may succeed."""
        return self in {ErrorKind.THROTTLED, ErrorKind.UNAVAILABLE}


class KmsObserver(Protocol):
    """Told about every KMS call attempt (the application counts them; must not raise)."""

    def kms_request(self, action: str, *, error_kind: str | None) -> None:
        """One call of API ``action`` finished.

        ``error_kind`` is ``None`` on success, else the lowercase :class:`ErrorKind` name
        (``throttled``, ``unavailable``...).
        """
        ...


class NoKmsObserver:
    """The observer that ignores everything (the default)."""

    def kms_request(self, action: str, *, error_kind: str | None) -> None:
        """Ignore the call."""
        del action, error_kind


def observe_kms_call(observer: KmsObserver, action: str, error: KmsRequestError | None) -> None:
    """Tell ``observer`` about one finished call of ``action``."""
    observer.kms_request(action, error_kind=None if error is None else error.kind.name.lower())


class KmsRequestError(Exception):
    """A KMS call failed; the text is safe to log (no credentials, values or URLs)."""

    def __init__(
        self,
        *,
        gateway: str,
        operation: str,
        kind: ErrorKind,
        code: str | None = None,
        http_status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        detail: str | None = None,
    ) -> None:
        """Record what failed.

        Args:
            gateway: ``"instance"`` or ``"shared"``.
            operation: the KMS API name (``GetSecretValue``...).
            kind: the error class.
            code: the service's error code, when the service answered.
            http_status: the HTTP status, when the service answered.
            request_id: the service's request id, for support tickets.
            retry_after: seconds the service asked us to wait, if it said.
            detail: a short fixed description (never third-party exception text).
        """
        self.gateway = gateway
        self.operation = operation
        self.kind = kind
        self.code = _clean(code)
        self.http_status = http_status
        self.request_id = _clean(request_id)
        self.retry_after = retry_after
        self.detail = detail
        super().__init__(self._describe())

    def _describe(self) -> str:
        parts = [f"{self.gateway} gateway {self.operation}: {self.kind.value}"]
        if self.detail:
            parts.append(self.detail)
        if self.code:
            parts.append(f"code={self.code}")
        if self.http_status is not None:
            parts.append(f"http={self.http_status}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return ", ".join(parts)


def _clean(value: str | None) -> str | None:
    """Keep a server-supplied identifier printable and short (no log injection)."""
    if not value:
        return None
    return _UNSAFE_CHARS.sub("?", value[:_MAX_FIELD_LENGTH])


def classify_response_error(code: str | None, http_status: int | None) -> ErrorKind:
    """Map a KMS error answer (code and HTTP status) to an :class:`ErrorKind`.

    The code decides first (research section 7: the status of a missing secret is not
    documented for every operation); the status decides for unknown codes.
    """
    if code == CODE_NOT_FOUND:
        return ErrorKind.NOT_FOUND
    if code == CODE_RESOURCE_EXISTS:
        return ErrorKind.EXISTS
    if code == CODE_IN_DELETE_WINDOW:
        return ErrorKind.IN_DELETE_WINDOW
    if code == CODE_THROTTLING or http_status == _HTTP_TOO_MANY_REQUESTS:
        return ErrorKind.THROTTLED
    if code in _TRANSIENT_CODES or (http_status is not None and http_status >= _HTTP_SERVER_ERROR):
        return ErrorKind.UNAVAILABLE
    return ErrorKind.REJECTED


@dataclass(frozen=True, slots=True)
class SecretValue:
    """One version of a secret as a gateway returned it."""

    name: str
    #: ``SecretData`` exactly as returned (for ``binary`` secrets: base64 text).
    data: str = field(repr=False)
    #: ``text`` or ``binary``.
    data_type: str
    version_id: str | None = None


@dataclass(frozen=True, slots=True)
class SecretSummary:
    """One entry of a ListSecrets page."""

    name: str
    #: Set when the secret is scheduled for deletion (it no longer counts as stored).
    planned_delete_time: str | None = None
    #: ``CreateTime`` / ``UpdateTime`` as the service wrote them (ISO 8601), if present.
    create_time: str | None = None
    update_time: str | None = None


@dataclass(frozen=True, slots=True)
class SecretDescription:
    """DescribeSecret: the secret's metadata (no value)."""

    name: str
    create_time: str | None = None
    update_time: str | None = None
    planned_delete_time: str | None = None


@dataclass(frozen=True, slots=True)
class SecretVersion:
    """One entry of a ListSecretVersionIds page."""

    version_id: str
    create_time: str | None
    #: Stage labels (``ACSCurrent``, ``ACSPrevious``, custom); empty: deprecated.
    stages: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SecretVersionPage:
    """One ListSecretVersionIds page."""

    versions: tuple[SecretVersion, ...]
    total_count: int


@dataclass(frozen=True, slots=True)
class SecretPage:
    """One ListSecrets page."""

    secrets: tuple[SecretSummary, ...]
    total_count: int


class SecretReader(Protocol):
    """Reads the current version of a secret (both gateways)."""

    gateway: str

    async def get_secret_value(self, name: str) -> SecretValue:
        """Return the ``ACSCurrent`` version of secret ``name``.

        Raises:
            KmsRequestError: the call failed (``kind`` says how).
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class SecretManager(SecretReader, Protocol):
    """The secret life cycle (shared gateway only)."""

    async def create_secret(
        self,
        name: str,
        *,
        data: str,
        data_type: str,
        version_id: str,
        kms_instance_id: str | None,
        encryption_key_id: str | None,
    ) -> None:
        """Create generic secret ``name`` with an initial version.

        Raises:
            KmsRequestError: the call failed (``EXISTS`` when the name is taken).
        """
        ...

    async def put_secret_value(
        self, name: str, *, data: str, data_type: str, version_id: str
    ) -> None:
        """Store a new version of ``name`` and mark it ``ACSCurrent``.

        Raises:
            KmsRequestError: the call failed (``NOT_FOUND`` when there is no such secret).
        """
        ...

    async def delete_secret(self, name: str, *, force: bool, recovery_window_days: int) -> None:
        """Schedule ``name`` for deletion, or delete it at once when ``force``.

        Raises:
            KmsRequestError: the call failed.
        """
        ...

    async def restore_secret(self, name: str) -> None:
        """Cancel the scheduled deletion of ``name``.

        Raises:
            KmsRequestError: the call failed.
        """
        ...

    async def list_secrets(
        self, *, page_number: int, page_size: int, kms_instance_id: str | None
    ) -> SecretPage:
        """Return one page of secret names (optionally only those in one KMS instance).

        Raises:
            KmsRequestError: the call failed.
        """
        ...

    async def get_secret_version(self, name: str, *, version_id: str) -> SecretValue:
        """Return one version of ``name`` by id (GetSecretValue with ``VersionId``).

        Raises:
            KmsRequestError: the call failed (``NOT_FOUND`` for an unknown version).
        """
        ...

    async def list_secret_versions(
        self, name: str, *, page_number: int, page_size: int
    ) -> SecretVersionPage:
        """Return one page of the versions of ``name``, deprecated ones included.

        Raises:
            KmsRequestError: the call failed.
        """
        ...

    async def move_current_stage(
        self, name: str, *, to_version: str, from_version: str | None
    ) -> None:
        """Move the ``ACSCurrent`` stage from one version to another (UpdateSecretVersionStage).

        Raises:
            KmsRequestError: the call failed.
        """
        ...

    async def describe_secret(self, name: str) -> SecretDescription:
        """Return the metadata of ``name`` (DescribeSecret).

        Raises:
            KmsRequestError: the call failed.
        """
        ...
