# SPDX-License-Identifier: Apache-2.0
r"""Request bodies of the attestation-service API (Trustee's ``restful-as``), and its errors.

No web framework here: JSON values in, :class:`~kbs.appraisal.VerificationRequest` out.

``POST /attestation`` comes in two shapes, told apart by their members:

* current (Trustee >= v0.14, Anolis >= v1.6, TNG >= v2.2.5, the attestation agent)::

    {"verification_requests": [{"tee", "evidence", "runtime_data"?,
      "runtime_data_hash_algorithm"?, "init_data"?}, ...], "policy_ids": [...]}

* legacy (Trustee <= v0.13, Anolis <= v1.5.2, **TNG <= v2.2.4**)::

    {"tee", "evidence", "runtime_data"?, "init_data"?, "runtime_data_hash_algorithm"?,
     "init_data_hash_algorithm"?, "policy_ids": [...]}

Both take an optional ``token_type`` (ours: ``"ear"`` or ``"simple"``); the reference
ignores unknown members, so clients that do not know it are unaffected.

Errors come in the reference's two kinds, because clients match on them:

* :class:`AsBodyError`: the body does not have the expected structure. Answered 400
  ``Json deserialize error: <serde-style message> at line L column C`` (TNG >= v2.3 looks
  for ``missing field `tee```).
* :class:`AsRequestError`: anything after that. Answered 500
  ``An internal error occured: \n0: <context>\n1: <cause>...`` (sic, as the reference).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import rfc8785

from attestation.base import MAX_EVIDENCE_BYTES, NOT_PROVIDED, TEE_CLASSES
from kbs.appraisal import VerificationRequest
from kbs.protocol import ProtocolError, parse_init_data_toml

_logger = logging.getLogger(__name__)

__all__ = [
    "AsBodyError",
    "AsRequestError",
    "AttestationCall",
    "b64url_decode",
    "loads",
    "parse_attestation",
    "parse_challenge",
    "parse_set_policy",
    "render_body_error",
    "render_request_error",
]

#: Most devices one ``/attestation`` call may carry (a CPU plus GPUs, NICs, switches).
MAX_VERIFICATION_REQUESTS: Final = 16
#: Most policy ids one ``/attestation`` call may name.
MAX_POLICY_IDS: Final = 16
#: The policy applied when a request names none (the reference's default).
DEFAULT_POLICY_ID: Final = "default"
#: The reference's default runtime-data hash.
DEFAULT_HASH_ALGORITHM: Final = "sha384"

#: Hash algorithms for runtime data (``sm3`` only where OpenSSL provides it).
HASH_ALGORITHMS: Final = tuple(
    name for name in ("sha256", "sha384", "sha512", "sm3") if name in hashlib.algorithms_available
)

#: TEE names the reference's API knows besides ours: older spellings and TEEs we have no
#: verifier for (they fail later as "not enabled", like a reference build without them).
_TEE_ALIASES: Final[Mapping[str, str]] = {"azsnpvtpm": "az-snp-vtpm", "aztdxvtpm": "az-tdx-vtpm"}
_OTHER_KNOWN_TEES: Final = frozenset({"sev", "system", "hygontpm"})

_B64_ALPHABET: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/"
)

TokenProfile = Literal["ear", "simple"]


class AsBodyError(ValueError):
    """The body is not the JSON the endpoint expects (serde-style message)."""

    def __init__(self, message: str, *, position: tuple[int, int] | None = None) -> None:
        """``position`` is serde's (line, column) when known (JSON syntax errors)."""
        super().__init__(message)
        self.position = position


class AsRequestError(Exception):
    """A request failed; ``causes`` is the reference's context chain, outermost first."""

    def __init__(self, *causes: str) -> None:
        """Record the chain (each entry a short, client-safe sentence)."""
        super().__init__(": ".join(causes))
        self.causes: tuple[str, ...] = causes


def render_request_error(causes: Sequence[str]) -> str:
    """The reference's 500 body: a fixed first line, then one numbered line per cause."""
    stack = "\n".join(f"{i}: {cause}" for i, cause in enumerate(causes))
    return f"An internal error occured: \n{stack}"


def render_body_error(error: AsBodyError, raw: bytes) -> str:
    """The reference's 400 body for a body that does not deserialize.

    serde reports a missing field at the end of the object that lacks it; we report the
    end of the document, which is the same place for the top-level object.
    """
    position = error.position
    if position is None:
        text = raw.decode("utf-8", errors="replace").rstrip()
        line = text.count("\n") + 1
        column = len(text) - (text.rfind("\n") + 1)
        position = (line, column)
    return f"Json deserialize error: {error} at line {position[0]} column {position[1]}"


def loads(raw: bytes) -> Any:
    """Parse a JSON body strictly (no ``NaN``/``Infinity``, UTF-8 only).

    Raises:
        AsBodyError: not JSON, or nested too deeply; ``position`` carries serde's line
            and column.
    """

    def refuse(token: str) -> Any:
        raise ValueError(f"invalid number `{token}`")

    try:
        return json.loads(raw.decode("utf-8"), parse_constant=refuse)
    except UnicodeDecodeError as exc:
        raise AsBodyError("invalid unicode in the body") from exc
    except json.JSONDecodeError as exc:
        message = exc.msg[:1].lower() + exc.msg[1:]
        raise AsBodyError(message, position=(exc.lineno, exc.colno)) from exc
    except ValueError as exc:
        raise AsBodyError(str(exc)) from exc
    except RecursionError as exc:
        # serde_json's own limit (128 levels) gives the same message.
        raise AsBodyError("recursion limit exceeded") from exc


# --------------------------------------------------------------------------- serde-ish


def _unexpected(value: Any) -> str:
    """What serde says it found instead (``integer `5```, ``map``...)."""
    if isinstance(value, bool):
        found = f"boolean `{str(value).lower()}`"
    elif isinstance(value, int):
        found = f"integer `{value}`"
    elif isinstance(value, float):
        found = f"floating point `{value}`"
    elif isinstance(value, str):
        found = f'string "{value[:64]}"'
    else:
        found = "null" if value is None else "sequence" if isinstance(value, list) else "map"
    return found


def _expect_object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise AsBodyError(f"invalid type: {_unexpected(value)}, expected {what}")
    return value


def _required(obj: Mapping[str, Any], key: str) -> Any:
    if key not in obj:
        raise AsBodyError(f"missing field `{key}`")
    return obj[key]


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise AsBodyError(f"invalid type: {_unexpected(value)}, expected a string")
    return value


def _optional_string(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return None if value is None else _string(value)


def _string_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise AsBodyError(f"invalid type: {_unexpected(value)}, expected a sequence")
    return [_string(item) for item in value]


def _variant(value: Any, variants: Sequence[str], what: str) -> tuple[str, Any] | None:
    """An externally tagged enum (``{"raw": ...}``); ``None`` for null or absent."""
    if value is None:
        return None
    obj = _expect_object(value, f"enum {what}")
    if len(obj) != 1:
        raise AsBodyError(f"invalid length {len(obj)}, expected map with a single key")
    ((tag, inner),) = obj.items()
    if tag not in variants:
        expected = " or ".join(f"`{v}`" for v in variants)
        raise AsBodyError(f"unknown variant `{tag}`, expected {expected}")
    return tag, inner


def b64url_decode(value: str) -> bytes:
    """Decode the reference's URL-safe, unpadded base64, also taking padded or standard.

    Raises:
        ValueError: the text is not base64 (the message names the first bad symbol).
    """
    text = value.rstrip("=")
    for offset, char in enumerate(text):
        if char not in _B64_ALPHABET:
            raise ValueError(f"Invalid symbol {ord(char)}, offset {offset}.")
    if len(text) % 4 == 1:
        raise ValueError("Invalid input length.")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("Invalid base64 text.") from exc


# --------------------------------------------------------------------------- /attestation


@dataclass(frozen=True, slots=True)
class _RawDevice:
    """One verification request after the structural parse, before any decoding."""

    tee: str
    evidence: str
    runtime_data: tuple[str, Any] | None
    runtime_data_hash_algorithm: str | None
    init_data: tuple[str, Any] | None
    init_data_hash_algorithm: str | None


@dataclass(frozen=True, slots=True)
class AttestationCall:
    """A parsed ``/attestation`` request."""

    requests: tuple[VerificationRequest, ...]
    policy_ids: tuple[str, ...]
    token_profile: TokenProfile | None
    legacy: bool


_RUNTIME_VARIANTS: Final = ("raw", "structured")
_INIT_VARIANTS: Final = ("init_data_digest", "init_data_toml")
_LEGACY_INIT_VARIANTS: Final = ("raw", "structured")


def _raw_device(obj: Mapping[str, Any], *, legacy: bool) -> _RawDevice:
    tee = _string(_required(obj, "tee"))
    evidence = _string(_required(obj, "evidence"))
    runtime = _variant(obj.get("runtime_data"), _RUNTIME_VARIANTS, "RuntimeData")
    # Either body may carry either init-data form (the reference accepts one each).
    init_variants = (*_INIT_VARIANTS, *_LEGACY_INIT_VARIANTS)
    init = _variant(obj.get("init_data"), init_variants, "InitDataInput")
    if runtime is not None and runtime[0] == "raw":
        _string(runtime[1])
    if init is not None and init[0] != "structured":
        _string(init[1])
    return _RawDevice(
        tee=tee,
        evidence=evidence,
        runtime_data=runtime,
        runtime_data_hash_algorithm=_optional_string(obj, "runtime_data_hash_algorithm"),
        init_data=init,
        init_data_hash_algorithm=(
            _optional_string(obj, "init_data_hash_algorithm") if legacy else None
        ),
    )


def _token_profile(value: Any) -> TokenProfile | None:
    if value is None:
        return None
    name = _string(value).lower()
    if name == "ear":
        return "ear"
    if name == "simple":
        return "simple"
    raise AsBodyError(f"unknown variant `{value}`, expected `ear` or `simple`")


def parse_attestation(body: Any) -> AttestationCall:
    """Parse either ``/attestation`` body into verification requests.

    Raises:
        AsBodyError: the body has neither shape (400).
        AsRequestError: a field does not decode, or names an unknown TEE or hash (500).
    """
    # 1. Structure (what serde checks): the shape is chosen by its members.
    obj = _expect_object(body, "struct AttestationRequest")
    legacy = "verification_requests" not in obj and "tee" in obj
    if legacy:
        raw_devices = [_raw_device(obj, legacy=True)]
    else:
        items = _required(obj, "verification_requests")
        if not isinstance(items, list):
            raise AsBodyError(f"invalid type: {_unexpected(items)}, expected a sequence")
        raw_devices = [
            _raw_device(_expect_object(item, "struct IndividualAttestationRequest"), legacy=False)
            for item in items
        ]
    policy_ids = _string_list(_required(obj, "policy_ids"))
    profile = _token_profile(obj.get("token_type"))
    # 2. Limits, before any decoding work.
    if len(raw_devices) > MAX_VERIFICATION_REQUESTS:
        raise AsRequestError(
            "attestation report evaluate",
            f"too many verification requests (at most {MAX_VERIFICATION_REQUESTS})",
        )
    if len(policy_ids) > MAX_POLICY_IDS:
        raise AsRequestError(
            "attestation report evaluate", f"too many policy ids (at most {MAX_POLICY_IDS})"
        )
    # 3. Each device, in the reference's order of checks.
    requests = tuple(_device(raw) for raw in raw_devices)
    if not requests:
        raise AsRequestError("attestation report evaluate", "No verification requests provided.")
    return AttestationCall(
        requests=requests,
        policy_ids=tuple(policy_ids) or (DEFAULT_POLICY_ID,),
        token_profile=profile,
        legacy=legacy,
    )


def _tee_name(name: str) -> str:
    if name in TEE_CLASSES or name in _OTHER_KNOWN_TEES:
        return name
    if name in _TEE_ALIASES:
        return _TEE_ALIASES[name]
    # The reference's message, backticks and all.
    raise AsRequestError(f"tee `{name} not supported`")


def _hash(name: str | None, *, context: str) -> str:
    if name is None:
        return DEFAULT_HASH_ALGORITHM
    if name.lower() not in HASH_ALGORITHMS:
        raise AsRequestError(
            context,
            f"unsupported hash algorithm `{name[:32]}`; expected one of "
            + ", ".join(HASH_ALGORITHMS),
        )
    return name.lower()


def _digest_structured(value: Any, algorithm: str, *, what: str) -> bytes:
    try:
        canonical = bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, ValueError, TypeError, RecursionError) as exc:
        raise AsRequestError(
            "attestation report evaluate",
            f"parse {what}",
            "parse JSON structured data",
            "value cannot be canonicalized (RFC 8785)",
        ) from exc
    return hashlib.new(algorithm, canonical).digest()


def _device(raw: _RawDevice) -> VerificationRequest:
    # a. Evidence: base64url of the evidence JSON text.
    try:
        evidence_bytes = b64url_decode(raw.evidence)
    except ValueError as exc:
        raise AsRequestError("base64 decode evidence", str(exc)) from exc
    if len(evidence_bytes) > MAX_EVIDENCE_BYTES:
        raise AsRequestError("failed to parse evidence as JSON", "evidence is too large")
    try:
        evidence = json.loads(evidence_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise AsRequestError("failed to parse evidence as JSON", "not a JSON document") from exc
    # b. The TEE must be one the API knows (an enabled verifier is checked later).
    tee = _tee_name(raw.tee)
    # c. Runtime data: raw bytes are the expected report data as is; structured JSON
    #    is hashed over its canonical form (and echoed into the token).
    raw_runtime: bytes | None = None
    if raw.runtime_data is not None and raw.runtime_data[0] == "raw":
        try:
            raw_runtime = b64url_decode(raw.runtime_data[1])
        except ValueError as exc:
            raise AsRequestError(
                "decode given Runtime Data", "base64 decode raw runtime data", str(exc)
            ) from exc
    # d. Init data: a digest as is, or a TOML document (or, legacy, raw/structured).
    init_digest_raw: bytes | None = None
    if raw.init_data is not None and raw.init_data[0] in ("init_data_digest", "raw"):
        try:
            init_digest_raw = b64url_decode(raw.init_data[1])
        except ValueError as exc:
            raise AsRequestError(
                "decode given Init Data", "base64 decode raw init data", str(exc)
            ) from exc
    algorithm = _hash(
        raw.runtime_data_hash_algorithm, context="parse runtime data HashAlgorithm failed"
    )
    # e. What the verifier must find in the evidence.
    report_data: bytes | None = raw_runtime
    runtime_claims: Any = None
    if raw.runtime_data is not None and raw.runtime_data[0] == "structured":
        runtime_claims = raw.runtime_data[1]
        report_data = _digest_structured(runtime_claims, algorithm, what="runtime data")
    init_hash, init_claims = _init_data(raw, init_digest_raw)
    return VerificationRequest(
        tee=tee,
        evidence=evidence,
        report_data=NOT_PROVIDED if report_data is None else report_data,
        runtime_data_claims=runtime_claims,
        init_data_hash=NOT_PROVIDED if init_hash is None else init_hash,
        init_data_claims=init_claims,
    )


def _init_data(raw: _RawDevice, digest: bytes | None) -> tuple[bytes | None, Any]:
    if raw.init_data is None:
        return None, None
    tag, value = raw.init_data
    if digest is not None:
        return digest, None
    if tag == "init_data_toml":
        try:
            parsed = parse_init_data_toml(value)
        except ProtocolError as exc:
            raise AsRequestError(
                "attestation report evaluate",
                "parse init data",
                "parse TOML structured data",
                str(exc),
            ) from exc
        return parsed.digest, parsed.claims
    # Legacy structured init data: hashed like structured runtime data.
    algorithm = _hash(raw.init_data_hash_algorithm, context="parse init data HashAlgorithm failed")
    return _digest_structured(value, algorithm, what="init data"), value


# --------------------------------------------------------------------------- /challenge


def parse_challenge(body: Any) -> tuple[str, str]:
    """Parse ``{"tee": ..., "tee_params": ...}`` (a map of strings) into its two values.

    Raises:
        AsBodyError: not a map of strings (400).
        AsRequestError: ``tee`` or ``tee_params`` is missing (500, the reference's text).
    """
    obj = _expect_object(body, "a map")
    for value in obj.values():
        _string(value)
    if "tee" not in obj:
        raise AsRequestError("Failed to get inner tee")
    if "tee_params" not in obj:
        raise AsRequestError("Failed to get inner tee_params")
    return _tee_name(obj["tee"]), obj["tee_params"]


# --------------------------------------------------------------------------- /policy


def parse_set_policy(body: Any) -> tuple[str, str]:
    """Parse ``{"policy_id": ..., "policy": "<base64url Rego>"}`` (``type`` is ignored).

    Returns the id and the still-encoded policy.

    Raises:
        AsBodyError: a member is missing or not a string (400).
    """
    obj = _expect_object(body, "struct SetPolicyInput")
    return _string(_required(obj, "policy_id")), _string(_required(obj, "policy"))
