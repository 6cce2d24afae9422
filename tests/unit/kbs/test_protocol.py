# SPDX-License-Identifier: Apache-2.0
"""Wire formats of every protocol version and the runtime-data binding."""

from __future__ import annotations

import hashlib

import pytest

from kbs.protocol import (
    ProtocolError,
    normalise_tee_pubkey,
    parse_attestation,
    parse_auth_request,
    parse_init_data_toml,
    runtime_data,
    runtime_digest,
)

EC = {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "xx", "y": "yy"}


def test_hash_vector_from_the_reference() -> None:
    # SHA-384 of the JCS form of {"b":1,"a":"test","c":{"d":"e"}}.
    assert (
        runtime_digest({"b": 1, "a": "test", "c": {"d": "e"}}).hex()
        == "e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c4597480a186427c813ca941da78870c3"
    )


def test_primary_runtime_data_has_additional_evidence_even_empty() -> None:
    data = runtime_data(version="0.4.0", nonce="n", tee_pubkey=EC, additional_evidence="")
    assert data == {"nonce": "n", "tee-pubkey": EC, "additional-evidence": ""}
    device = runtime_data(version="0.4.0", nonce="n", tee_pubkey=EC, additional_evidence=None)
    assert "additional-evidence" not in device
    legacy = runtime_data(version="0.2.0", nonce="n", tee_pubkey=EC, additional_evidence="")
    assert "additional-evidence" not in legacy


def test_unknown_jwk_members_do_not_change_the_digest() -> None:
    assert normalise_tee_pubkey({**EC, "use": "enc", "kid": "1"}) == EC
    rsa = {"kty": "RSA", "alg": "RSA-OAEP-256", "n": "nn", "e": "AQAB", "ext": True}
    assert list(normalise_tee_pubkey(rsa)) == ["kty", "alg", "n", "e"]
    with pytest.raises(ProtocolError, match="kty"):
        normalise_tee_pubkey({"kty": "OKP"})
    with pytest.raises(ProtocolError, match="tee-pubkey.x"):
        normalise_tee_pubkey({**EC, "x": 1})


def test_auth_request() -> None:
    req = parse_auth_request({"version": "0.4.0", "tee": "tdx", "extra-params": {"a": 1}})
    assert (req.version, req.tee, req.extra_params) == ("0.4.0", "tdx", {"a": 1})
    for bad in (
        [],
        {"tee": "tdx"},
        {"version": "x", "tee": "tdx"},
        {"version": "0.4.0", "tee": "sev"},
        {"version": "0.9.0", "tee": "tdx"},
        {"version": "0.4.0", "tee": 1},
    ):
        with pytest.raises(ProtocolError):
            parse_auth_request(bad)


def test_attestation_shapes() -> None:
    body = {
        "runtime-data": {"nonce": "n", "tee-pubkey": EC},
        "tee-evidence": {"primary_evidence": {"q": 1}, "additional_evidence": ""},
    }
    parsed = parse_attestation(body, version="0.4.0")
    assert parsed.nonce == "n"
    assert parsed.init_data is None
    old = parse_attestation({"tee-pubkey": EC, "tee-evidence": "{}"}, version="0.1.1")
    assert old.nonce is None
    assert old.primary_evidence == "{}"
    composite = parse_attestation(
        {"tee-pubkey": EC, "tee-evidence": {"primary_evidence": 1, "additional_evidence": "{}"}},
        version="0.3.0",
    )
    assert composite.additional_evidence == "{}"
    with pytest.raises(ProtocolError, match="runtime-data"):
        parse_attestation({"tee-pubkey": EC, "tee-evidence": {}}, version="0.4.0")
    with pytest.raises(ProtocolError, match="additional_evidence"):
        parse_attestation(
            {**body, "tee-evidence": {"primary_evidence": 1, "additional_evidence": {}}},
            version="0.4.0",
        )
    with pytest.raises(ProtocolError, match="format"):
        parse_attestation({**body, "init-data": {"format": "json", "body": "{}"}}, version="0.4.0")


def test_init_data_digest_and_claims() -> None:
    text = (
        'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n'
        '"policy.rego" = """\npackage agent_policy\npolicy_data := {\n  "containers": [{"OCI": {"Version": "1"}}]\n}\n"""\n'
        '"cdh.toml" = "socket = \'unix:///run/cdh.sock\'"\n'
        'other = "kept"\n'
    )
    init = parse_init_data_toml(text)
    assert init.digest == hashlib.sha256(text.encode()).digest()
    assert init.claims["agent_policy_claims"] == {"containers": [{"OCI": {"Version": "1"}}]}
    assert "policy.rego" not in init.claims
    assert init.claims["cdh.toml"] == {"socket": "unix:///run/cdh.sock"}
    assert init.claims["other"] == "kept"
    with pytest.raises(ProtocolError, match="algorithm"):
        parse_init_data_toml('algorithm = "md5"\n')
    with pytest.raises(ProtocolError, match="TOML"):
        parse_init_data_toml("= nope")
