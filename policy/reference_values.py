# SPDX-License-Identifier: Apache-2.0
"""Reference-value registration messages, as Trustee's RVPS accepts them.

A message is JSON::

    {"version": "0.1.0", "type": "sample", "payload": "<standard base64 of a JSON object>"}

For the ``sample`` type, every member of the decoded object becomes one reference value
named by its key, with any JSON value (usually the list of accepted digests). Like
Trustee's sample extractor, the payload is taken on trust (nothing is signed) and each
value expires twelve calendar months after registration, to the second.

Trustee's other provenance types (``swid`` for NVIDIA RIMs, ``corim``) are not supported
and are rejected by name.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import datetime as dt
import json
import logging
import re
from collections.abc import Mapping
from typing import Any, Final

from policy.base import ReferenceValue
from policy.errors import ReferenceValueError

_logger = logging.getLogger(__name__)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_NAME_CHARS",
    "MAX_VALUES_PER_MESSAGE",
    "MESSAGE_VERSION",
    "MONTHS_BEFORE_EXPIRATION",
    "SUPPORTED_TYPES",
    "parse_message",
    "validate_name",
]

#: The only message version Trustee's RVPS accepts (compared as an exact string).
MESSAGE_VERSION: Final = "0.1.0"
#: Provenance types we can extract.
SUPPORTED_TYPES: Final = frozenset({"sample"})
#: How long a registered value stays valid (Trustee's default for stored records).
MONTHS_BEFORE_EXPIRATION: Final = 12

#: Largest message accepted, in bytes of its JSON text (or of the base64 payload).
MAX_MESSAGE_BYTES: Final = 1_048_576
#: Most reference values one message may register.
MAX_VALUES_PER_MESSAGE: Final = 1024
#: Longest reference value name. Names are ids that policies pass to
#: query_reference_value() and that appear in admin URLs.
MAX_NAME_CHARS: Final = 256

# Printable ASCII without spaces: what policies and the admin API can name safely.
_NAME_PATTERN: Final = re.compile(r"[\x21-\x7e]+")


def validate_name(name: object) -> str:
    """Check a reference value name.

    Args:
        name: the candidate name.

    Returns:
        ``name``, unchanged.

    Raises:
        ReferenceValueError: not a string, empty, longer than :data:`MAX_NAME_CHARS`, or
            containing anything but printable ASCII without spaces.
    """
    if not isinstance(name, str) or not name:
        raise ReferenceValueError("reference value name must be a non-empty string")
    if len(name) > MAX_NAME_CHARS:
        raise ReferenceValueError(f"reference value name is longer than {MAX_NAME_CHARS}")
    if not _NAME_PATTERN.fullmatch(name):
        raise ReferenceValueError("reference value name must be printable ascii without spaces")
    return name


def parse_message(
    message: str | bytes | Mapping[str, Any], *, at: dt.datetime
) -> list[ReferenceValue]:
    """Parse an RVPS registration message into reference values.

    Checks, in order:

    1. The message is a JSON object (at most :data:`MAX_MESSAGE_BYTES`).
    2. ``version`` is exactly ``"0.1.0"`` (absent counts as ``"0.1.0"``, as in Trustee).
    3. ``type`` is a supported provenance type (``sample``).
    4. ``payload`` is a standard, padded base64 string decoding to a UTF-8 JSON object
       without duplicate members.
    5. Every member name passes :func:`validate_name`; at most
       :data:`MAX_VALUES_PER_MESSAGE` members.

    Args:
        message: the message as JSON text, or already decoded.
        at: the registration instant (timezone-aware); values expire twelve calendar
            months later, with sub-second precision dropped.

    Returns:
        One :class:`~policy.base.ReferenceValue` per payload member, in payload order.

    Raises:
        ReferenceValueError: the message fails one of the checks.
        ValueError: ``at`` is naive.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("at must be timezone-aware")
    expiration = _expiration(at)

    # 1. A JSON object of bounded size.
    fields = _decode_message(message)

    # 2. Version.
    version = fields.get("version", MESSAGE_VERSION)
    if version != MESSAGE_VERSION:
        raise ReferenceValueError(f"unsupported message version (need {MESSAGE_VERSION})")

    # 3. Provenance type.
    provenance_type = fields.get("type")
    if not isinstance(provenance_type, str):
        raise ReferenceValueError("message type must be a string")
    if provenance_type not in SUPPORTED_TYPES:
        raise ReferenceValueError(f"unsupported provenance type {provenance_type[:32]!r}")

    # 4. Payload: base64 of a JSON object.
    payload = _decode_sample_payload(fields.get("payload"))

    # 5. Names.
    if len(payload) > MAX_VALUES_PER_MESSAGE:
        raise ReferenceValueError(f"message registers more than {MAX_VALUES_PER_MESSAGE} values")
    values = [
        ReferenceValue(
            name=validate_name(name), value=value, expiration=expiration, version=MESSAGE_VERSION
        )
        for name, value in payload.items()
    ]
    _logger.debug("parsed %d reference values", len(values))
    return values


def _decode_message(message: str | bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(message, Mapping):
        return message
    if not isinstance(message, str | bytes):
        raise ReferenceValueError("message must be a json object")
    size = len(message) if isinstance(message, bytes) else len(message.encode("utf-8"))
    if size > MAX_MESSAGE_BYTES:
        raise ReferenceValueError(f"message is larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        fields = json.loads(message)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ReferenceValueError("message is not valid json") from exc
    if not isinstance(fields, dict):
        raise ReferenceValueError("message must be a json object")
    return fields


def _decode_sample_payload(payload: object) -> dict[str, Any]:
    if not isinstance(payload, str):
        raise ReferenceValueError("message payload must be a string")
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ReferenceValueError(f"payload is larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        # Standard alphabet, padding required, nothing else allowed (Rust STANDARD engine).
        raw = base64.b64decode(payload.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise ReferenceValueError("payload is not standard base64") from exc
    try:
        decoded = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_members)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ReferenceValueError("payload is not a json object") from exc
    if not isinstance(decoded, dict):
        raise ReferenceValueError("payload is not a json object")
    return decoded


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two values under one name would make the registered value depend on the parser.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate member")
        result[key] = value
    return result


def _expiration(at: dt.datetime) -> dt.datetime:
    """``at`` in UTC, truncated to the second, plus twelve calendar months.

    The day is clamped to the end of the target month (29 February -> 28 February),
    as chrono's ``checked_add_months`` does.
    """
    start = at.astimezone(dt.UTC).replace(microsecond=0)
    months = start.month - 1 + MONTHS_BEFORE_EXPIRATION
    year = start.year + months // 12
    month = months % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)
