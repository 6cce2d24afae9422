# SPDX-License-Identifier: Apache-2.0
"""Fast JSON for attestation tokens and the JSON answers of the guest API.

A TDX attestation token carries its ~40 KB event log: the standard library spends about
0.6 ms encoding those claims to sign them and 0.4 ms decoding them at every resource
fetch; orjson needs a tenth and a half of that. The results do not depend on which
library ran:

- :func:`loads` gives what :func:`json.loads` gives, except that it refuses ``NaN``,
  ``Infinity`` and ``-Infinity``, which are not JSON (RFC 8259) and which Trustee's
  serde_json refuses too. orjson parses; text it refuses (lone surrogates, nesting deeper
  than 1024, UTF-16, a BOM) and text that may hold an integer of 19 or more digits
  (orjson turns integers beyond 64 bits into floats) go to :func:`json.loads`. Text that
  is mostly one long string (a base64 token or quote) parses as fast with the standard
  library, so only token payloads come here.
  ``tests/unit/kbs/test_jsoncodec.py`` compares both on arbitrary text. One difference
  is kept: nesting between the interpreter's recursion limit and orjson's 1024 levels
  parses instead of raising :class:`RecursionError`.
- :func:`dumps` writes compact UTF-8 JSON (``separators=(",", ":")``,
  ``ensure_ascii=False``). Values orjson cannot write (integers beyond 64 bits, non-string
  keys) go to :func:`json.dumps`. Values that are not JSON (``datetime``, dataclasses,
  sets, bytes) raise :class:`TypeError`, as :func:`json.dumps` does; orjson would convert
  the first two. A non-finite float, which :func:`loads` never returns, is written as
  ``null`` where :func:`json.dumps` would write ``NaN``, which is not JSON.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Final

import orjson

__all__ = ["dumps", "loads"]

#: orjson writes these natively; the standard library refuses them, and so do we.
_STRICT: Final = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
#: Byte classes for finding integers orjson may read as floats (2**63 has 19 digits):
#: digits become ``0``; what may come before a number (``:[,-`` and whitespace) becomes
#: ``B``; what may end one (``]}.eE``, and those of ``B``) becomes ``T``; the rest a space.
#: A number of 19 or more digits is then ``B0{19,}`` followed by ``B``, ``T`` or the end,
#: found with substring searches: a regular expression costs 20 times more on base64 text.
_BEFORE_NUMBER: Final = b":[,- \t\n\r"
_AFTER_NUMBER: Final = b"]}.eE"


def _byte_class(b: int) -> int:
    if b in b"0123456789":
        return ord("0")
    if b in _BEFORE_NUMBER:
        return ord("B")
    return ord("T") if b in _AFTER_NUMBER else ord(" ")


_CLASSES: Final = bytes(_byte_class(b) for b in range(256))
_LONG: Final = 19
_NUMBER_START: Final = b"B" + b"0" * _LONG
_NUMBER_END: Final = frozenset(b"BT")
_ZERO: Final = ord("0")


def _may_hold_a_long_integer(raw: bytes | bytearray) -> bool:
    """Whether ``raw`` may hold an integer of 19 or more digits outside a string.

    Never false when there is one; may be true when there is not (a string such as
    ``"1,00000000000000000000]"``), which only costs a parse by the standard library.
    """
    classes = raw.translate(_CLASSES)
    if classes.startswith(_NUMBER_START[1:]):
        return True
    at = classes.find(_NUMBER_START)
    while at >= 0:
        end = at + len(_NUMBER_START)
        while end < len(classes) and classes[end] == _ZERO:
            end += 1
        if end == len(classes) or classes[end] in _NUMBER_END:
            return True
        at = classes.find(_NUMBER_START, end)
    return False


def loads(data: bytes | bytearray | str) -> Any:
    """Parse JSON text.

    Raises:
        ValueError: not JSON (:class:`json.JSONDecodeError`, or
            :class:`UnicodeDecodeError` for bytes that are not text).
        RecursionError: nested too deeply for the standard library.
    """
    try:
        raw = data.encode() if isinstance(data, str) else data
    except UnicodeEncodeError:  # lone surrogates: the standard library's business
        return json.loads(data, parse_constant=_refuse_constant)
    if not _may_hold_a_long_integer(raw):
        with contextlib.suppress(orjson.JSONDecodeError):
            return orjson.loads(raw)
    return json.loads(data, parse_constant=_refuse_constant)


def dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    """Compact UTF-8 JSON of ``value``, with object keys sorted if ``sort_keys``.

    Raises:
        TypeError: ``value`` holds something that is not JSON.
    """
    option = _STRICT | orjson.OPT_SORT_KEYS if sort_keys else _STRICT
    try:
        return orjson.dumps(value, default=_refuse, option=option)
    except orjson.JSONEncodeError as exc:
        if isinstance(exc.__cause__, TypeError):
            raise exc.__cause__ from None
        # Integers beyond 64 bits, non-string keys: the standard library's rules.
        return json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys
        ).encode()


def _refuse(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _refuse_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)
