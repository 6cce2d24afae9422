# SPDX-License-Identifier: Apache-2.0
"""The few protobuf (proto3) messages of the KMS instance API, encoded and decoded by hand.

Only two wire types occur in these messages: varint (``bool``, ``int32``) and
length-delimited (``string``, ``bytes``, ``repeated string``). The decoder also skips the
fixed-width types so that fields a newer server adds cannot break us, and rejects anything
malformed with :class:`ProtobufError`. Field numbers are those of the ``dkms-gcs`` SDK's
``api.proto`` (research notes section 2.4)::

    message GetSecretValueRequest  { string SecretName=1; string VersionStage=2;
                                     string VersionId=3; bool FetchExtendedConfig=4; }
    message GetSecretValueResponse { string SecretName=1; string SecretType=2;
        string SecretData=3; string SecretDataType=4; repeated string VersionStages=5;
        string VersionId=6; string CreateTime=7; string RequestId=8; ... }
    message Error { int32 StatusCode=1; string ErrorCode=2; string ErrorMessage=3;
                    string RequestId=4; }
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Final

_logger = logging.getLogger(__name__)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Fields",
    "ProtobufError",
    "decode",
    "encode",
    "get_int",
    "get_str",
    "get_strs",
]

#: Largest message we decode (a secret value is at most 30,720 bytes).
MAX_MESSAGE_BYTES: Final = 1024 * 1024
#: Longest varint: 10 bytes hold 64 bits.
_MAX_VARINT_BYTES: Final = 10

_VARINT: Final = 0
_I64: Final = 1
_LEN: Final = 2
_I32: Final = 5
_I64_SIZE: Final = 8
_I32_SIZE: Final = 4
_INT64_SIGN: Final = 1 << 63
_UINT64: Final = 1 << 64

#: Decoded message: field number -> values in wire order (ints for varints, bytes otherwise).
Fields = dict[int, list[int | bytes]]

#: A value we can encode: ``None``, ``""``, ``b""``, ``False`` and ``0`` are proto3 defaults
#: and are not written.
Value = str | bytes | bool | int | None


class ProtobufError(ValueError):
    """The bytes are not a well-formed protobuf message of the expected shape."""


def _varint(value: int) -> bytes:
    if value < 0:  # int32/int64 negatives are sent as 64-bit two's complement
        value += _UINT64
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def encode(fields: Iterable[tuple[int, Value]]) -> bytes:
    """Encode ``(field number, value)`` pairs; repeat a number for a repeated field."""
    out = bytearray()
    for number, value in fields:
        if value is None or value in {"", b""} or value is False or value == 0:
            continue
        if isinstance(value, bool | int):
            out += _varint(number << 3 | _VARINT) + _varint(int(value))
        else:
            raw = value.encode("utf-8") if isinstance(value, str) else value
            out += _varint(number << 3 | _LEN) + _varint(len(raw)) + raw
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    for index in range(_MAX_VARINT_BYTES):
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return result & (_UINT64 - 1), pos
    raise ProtobufError("varint too long")


def decode(data: bytes) -> Fields:
    """Decode one message into its fields.

    Raises:
        ProtobufError: truncated or malformed input, group wire types, or field number 0.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtobufError("message too large")
    fields: Fields = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 0x7
        if number == 0:
            raise ProtobufError("field number 0")
        if wire_type == _VARINT:
            value, pos = _read_varint(data, pos)
            fields.setdefault(number, []).append(value)
        elif wire_type == _LEN:
            length, pos = _read_varint(data, pos)
            if length > len(data) - pos:
                raise ProtobufError("truncated length-delimited field")
            fields.setdefault(number, []).append(data[pos : pos + length])
            pos += length
        elif wire_type in (_I64, _I32):
            size = _I64_SIZE if wire_type == _I64 else _I32_SIZE
            if size > len(data) - pos:
                raise ProtobufError("truncated fixed-width field")
            pos += size  # no message we read has fixed-width fields; skip unknown ones
        else:
            raise ProtobufError(f"unsupported wire type {wire_type}")
    return fields


def get_str(fields: Fields, number: int) -> str:
    """Return string field ``number`` (the last occurrence wins, as in protobuf); ``""`` if unset.

    Raises:
        ProtobufError: the field is not length-delimited or not UTF-8.
    """
    values = fields.get(number)
    if not values:
        return ""
    return _as_str(values[-1])


def get_strs(fields: Fields, number: int) -> list[str]:
    """Return every value of repeated string field ``number``.

    Raises:
        ProtobufError: a value is not length-delimited or not UTF-8.
    """
    return [_as_str(value) for value in fields.get(number, [])]


def get_int(fields: Fields, number: int) -> int:
    """Return int32/int64 varint field ``number`` as a signed integer; ``0`` if unset.

    Raises:
        ProtobufError: the field is not a varint.
    """
    values = fields.get(number)
    if not values:
        return 0
    value = values[-1]
    if not isinstance(value, int):
        raise ProtobufError(f"field {number} is not a varint")
    return value - _UINT64 if value & _INT64_SIGN else value


def _as_str(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise ProtobufError("string field is not length-delimited")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtobufError("string field is not UTF-8") from exc
