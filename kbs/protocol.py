# SPDX-License-Identifier: Apache-2.0
"""The RCAR wire formats, every version we speak, and the runtime-data binding.

Protocol versions (``Request.version``) and what they change on the wire:

====== ===================================================== ===================
ver    attestation body                                      runtime data hashed
====== ===================================================== ===================
0.1.0  ``{"tee-pubkey", "tee-evidence": <value>}``           ``{nonce, tee-pubkey}``
0.1.1  same (EC keys allowed)                                same
0.2.0  same                                                  same
0.3.0  ``tee-evidence`` = ``{primary_evidence,                ``{additional-evidence,
       additional_evidence}``                                nonce, tee-pubkey}``
0.4.0  ``{init-data, runtime-data{nonce, tee-pubkey},        same as 0.3.0
       tee-evidence{primary_evidence, additional_evidence}}``
====== ===================================================== ===================

The digest is SHA-384 over the RFC 8785 (JCS) canonical JSON; the ``tee-pubkey`` inside
it is the key as the reference re-serialises it (only ``kty``/``crv``/``alg``/``x``/``y`` or
``kty``/``alg``/``n``/``e``), so unknown members a client adds do not change the digest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import rfc8785

from attestation.base import TEE_CLASSES

_logger = logging.getLogger(__name__)

__all__ = [
    "LEGACY_JWE_VERSIONS",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "AttestationBody",
    "AuthRequest",
    "InitData",
    "ProtocolError",
    "canonical_json",
    "init_data_digest",
    "normalise_tee_pubkey",
    "parse_attestation",
    "parse_auth_request",
    "runtime_data",
    "runtime_digest",
]

#: The version current guest clients speak.
PROTOCOL_VERSION: Final = "0.4.0"

#: Versions whose clients we still serve.
SUPPORTED_VERSIONS: Final = frozenset({"0.1.0", "0.1.1", "0.2.0", "0.3.0", "0.4.0"})

#: Versions whose clients expect the pre-RFC 7516 JWE (raw header, tag in ciphertext).
LEGACY_JWE_VERSIONS: Final = frozenset({"0.1.0", "0.1.1"})

#: Init-data bodies bigger than this are refused (Kata's limit is far lower).
MAX_INIT_DATA_BYTES: Final = 256 * 1024

#: Hash algorithms an init-data TOML may name (``sm3`` where OpenSSL provides it).
_INIT_DATA_ALGORITHMS: Final = {
    name: name
    for name in ("sha256", "sha384", "sha512", "sm3")
    if name in hashlib.algorithms_available
}


class ProtocolError(ValueError):
    """A request body does not follow the protocol; the message names the field."""


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """A parsed ``/auth`` request."""

    version: str
    tee: str
    extra_params: Any


@dataclass(frozen=True, slots=True)
class InitData:
    """A parsed ``init-data`` member: the raw TOML body and what it declares."""

    body: str
    digest: bytes
    algorithm: str
    claims: Any


@dataclass(frozen=True, slots=True)
class AttestationBody:
    """A parsed ``/attest`` body, whatever version it came in."""

    tee_pubkey: Mapping[str, Any]
    nonce: str | None
    init_data: InitData | None
    primary_evidence: Any
    additional_evidence: str


def _semver(value: str) -> tuple[int, int, int] | None:
    parts = value.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):  # noqa: PLR2004
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])


def parse_auth_request(body: Any) -> AuthRequest:
    """Parse a ``/auth`` body (kbs-types ``Request``).

    Raises:
        ProtocolError: missing members, unknown TEE, or an unsupported version.
    """
    if not isinstance(body, dict):
        raise ProtocolError("request body must be a JSON object")
    version = body.get("version")
    tee = body.get("tee")
    if not isinstance(version, str) or _semver(version) is None:
        raise ProtocolError("version must be a semantic version string")
    if not isinstance(tee, str):
        raise ProtocolError("tee must be a string")
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(sorted(SUPPORTED_VERSIONS))
        raise ProtocolError(
            f"KBS Client Protocol Version Mismatch: expect one of {supported} "
            f"while the request is {version}"
        )
    if tee not in TEE_CLASSES:
        raise ProtocolError(f"unknown tee {tee!r}")
    return AuthRequest(version=version, tee=tee, extra_params=body.get("extra-params", ""))


def _require_str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"{where}.{key} must be a string")
    return value


def normalise_tee_pubkey(jwk: Any) -> dict[str, Any]:
    """Return the TEE key as the reference re-serialises it (members in its order).

    Raises:
        ProtocolError: not an RSA or EC JWK with the required string members.
    """
    if not isinstance(jwk, dict):
        raise ProtocolError("tee-pubkey must be a JSON object")
    kty = jwk.get("kty")
    if kty == "EC":
        return {k: _require_str(jwk, k, "tee-pubkey") for k in ("kty", "crv", "alg", "x", "y")}
    if kty == "RSA":
        return {k: _require_str(jwk, k, "tee-pubkey") for k in ("kty", "alg", "n", "e")}
    if kty is None and "k-mod" in jwk:
        # Protocol 0.1.0 clients (kbs-types 0.2): {"alg", "k-mod", "k-exp"}; hashed as sent.
        return {k: _require_str(jwk, k, "tee-pubkey") for k in ("alg", "k-mod", "k-exp")}
    if kty is None and "n" in jwk:
        # kbs-types 0.3: {"alg", "n", "e"} without kty.
        return {k: _require_str(jwk, k, "tee-pubkey") for k in ("alg", "n", "e")}
    raise ProtocolError("tee-pubkey.kty must be RSA or EC")


def _parse_init_data(value: Any) -> InitData | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError("init-data must be an object or null")
    fmt = value.get("format")
    body = value.get("body")
    if fmt != "toml":
        raise ProtocolError("init-data.format must be 'toml'")
    if not isinstance(body, str):
        raise ProtocolError("init-data.body must be a string")
    return parse_init_data_toml(body)


def parse_init_data_toml(body: str) -> InitData:
    """Digest and claims of an init-data TOML document.

    The digest is taken over the exact body bytes with the document's own ``algorithm``.
    Claims are its ``data`` table, with ``cdh.toml``/``aa.toml`` parsed into objects and
    ``policy.rego`` replaced by ``agent_policy_claims`` (the JSON after
    ``policy_data := {``), as the reference does.

    Raises:
        ProtocolError: too large, not TOML, nested too deeply, or an unknown algorithm.
    """
    raw = body.encode()
    if len(raw) > MAX_INIT_DATA_BYTES:
        raise ProtocolError("init-data body is too large")
    try:
        return _parse_init_data_toml(body, raw)
    except RecursionError as exc:
        # Arrays or tables nested thousands deep exhaust the parser's stack.
        raise ProtocolError("init-data body is nested too deeply") from exc


def _parse_init_data_toml(body: str, raw: bytes) -> InitData:
    try:
        doc = tomllib.loads(body)
    except tomllib.TOMLDecodeError as exc:
        raise ProtocolError("init-data body is not valid TOML") from exc
    algorithm = doc.get("algorithm")
    if algorithm not in _INIT_DATA_ALGORITHMS:
        raise ProtocolError(
            "init-data algorithm must be one of " + ", ".join(sorted(_INIT_DATA_ALGORITHMS))
        )
    digest = hashlib.new(_INIT_DATA_ALGORITHMS[algorithm], raw).digest()
    data = doc.get("data", {})
    claims: Any = dict(data) if isinstance(data, dict) else data
    if isinstance(claims, dict):
        for key in ("cdh.toml", "aa.toml"):
            if isinstance(claims.get(key), str):
                try:
                    claims[key] = tomllib.loads(claims[key])
                except (tomllib.TOMLDecodeError, RecursionError):
                    _logger.debug("init-data %s is not TOML; kept as a string", key)
        rego = claims.get("policy.rego")
        if isinstance(rego, str):
            policy_data = _extract_policy_data(rego)
            if policy_data is not None:
                del claims["policy.rego"]
                claims["agent_policy_claims"] = policy_data
    return InitData(body=body, digest=digest, algorithm=algorithm, claims=_jsonable(claims))


def _extract_policy_data(rego: str) -> Any:
    marker = "policy_data := {"
    start = rego.find(marker)
    if start < 0:
        return None
    try:
        return json.loads(rego[start + len(marker) - 1 :])
    except (json.JSONDecodeError, RecursionError):
        return None


def _jsonable(value: Any) -> Any:
    # TOML dates/times have no JSON form; the reference renders them as strings.
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _parse_composite(value: Any, where: str) -> tuple[Any, str]:
    if not isinstance(value, dict) or "primary_evidence" not in value:
        raise ProtocolError(f"{where} must be an object with primary_evidence")
    additional = value.get("additional_evidence", "")
    if not isinstance(additional, str):
        raise ProtocolError(f"{where}.additional_evidence must be a string")
    return value["primary_evidence"], additional


def parse_attestation(body: Any, *, version: str) -> AttestationBody:
    """Parse a ``/attest`` body in the shape of protocol ``version``.

    Raises:
        ProtocolError: the body does not have that version's shape.
    """
    if not isinstance(body, dict):
        raise ProtocolError("attestation body must be a JSON object")
    if version == PROTOCOL_VERSION:
        runtime = body.get("runtime-data")
        if not isinstance(runtime, dict):
            raise ProtocolError("runtime-data must be an object")
        nonce = _require_str(runtime, "nonce", "runtime-data")
        primary, additional = _parse_composite(body.get("tee-evidence"), "tee-evidence")
        return AttestationBody(
            tee_pubkey=normalise_tee_pubkey(runtime.get("tee-pubkey")),
            nonce=nonce,
            init_data=_parse_init_data(body.get("init-data")),
            primary_evidence=primary,
            additional_evidence=additional,
        )
    tee_pubkey = normalise_tee_pubkey(body.get("tee-pubkey"))
    if "tee-evidence" not in body:
        raise ProtocolError("tee-evidence is missing")
    if version == "0.3.0":
        primary, additional = _parse_composite(body["tee-evidence"], "tee-evidence")
    else:
        primary, additional = body["tee-evidence"], ""
    return AttestationBody(
        tee_pubkey=tee_pubkey,
        nonce=None,
        init_data=None,
        primary_evidence=primary,
        additional_evidence=additional,
    )


def runtime_data(
    *, version: str, nonce: str, tee_pubkey: Mapping[str, Any], additional_evidence: str | None
) -> dict[str, Any]:
    """The runtime-data JSON the evidence must commit to.

    ``additional_evidence`` is the composite string for the primary TEE (the key is then
    present even when the string is empty) and ``None`` for an additional device or a
    pre-0.3.0 client.
    """
    data: dict[str, Any] = {"nonce": nonce, "tee-pubkey": dict(tee_pubkey)}
    if additional_evidence is not None and version in ("0.3.0", PROTOCOL_VERSION):
        data["additional-evidence"] = additional_evidence
    return data


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical JSON bytes."""
    return bytes(rfc8785.dumps(value))


def runtime_digest(value: Any) -> bytes:
    """SHA-384 of the canonical JSON of ``value`` (48 bytes)."""
    return hashlib.sha384(canonical_json(value)).digest()


def init_data_digest(body: str, algorithm: str) -> bytes:
    """Digest of an init-data body with a named algorithm.

    Raises:
        ProtocolError: unknown algorithm.
    """
    if algorithm not in _INIT_DATA_ALGORITHMS:
        raise ProtocolError("unknown init-data algorithm")
    return hashlib.new(_INIT_DATA_ALGORITHMS[algorithm], body.encode()).digest()
