# SPDX-License-Identifier: Apache-2.0
"""The guest-side TEE key: JWK export, PEM persistence, AAD re-serialization, decryption.

Server-produced JWEs are covered in test_jwe.py; here the client is checked on its own,
against kbs-types' published vectors and against jwcrypto as an independent encrypter.
"""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwcrypto import jwe as jwcrypto_jwe
from jwcrypto import jwk as jwcrypto_jwk

from kbs.client.tee_key import TeeKeyError, TeeKeyPair, reserialize_protected_header

KINDS = ["ec-p256", "ec-p521", "rsa-oaep-256", "rsa1_5"]


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(scope="module")
def keys() -> dict[str, TeeKeyPair]:
    return {kind: TeeKeyPair.generate(kind) for kind in KINDS}


def jwcrypto_encrypt(pair: TeeKeyPair, plaintext: bytes, protected: str) -> dict[str, str]:
    """Encrypt with jwcrypto (flattened JSON) to the pair's public JWK."""
    token = jwcrypto_jwe.JWE(plaintext, protected=protected)
    token.add_recipient(jwcrypto_jwk.JWK(**pair.public_jwk()))
    return json.loads(token.serialize())


# ---------------------------------------------------------------- JWK export


def test_default_kind_is_ec_p256():
    assert TeeKeyPair.generate().kind == "ec-p256"


@pytest.mark.parametrize(
    ("kind", "crv", "size"), [("ec-p256", "P-256", 32), ("ec-p521", "P-521", 66)]
)
def test_ec_public_jwk_matches_kbs_types(keys, kind, crv, size):
    jwk = keys[kind].public_jwk()
    # kbs-types TeePubKey::EC, internally tagged: kty, then crv, alg, x, y.
    assert list(jwk) == ["kty", "crv", "alg", "x", "y"]
    assert jwk["kty"] == "EC"
    assert jwk["crv"] == crv
    assert jwk["alg"] == "ECDH-ES+A256KW"
    x, y = b64url_decode(jwk["x"]), b64url_decode(jwk["y"])
    assert len(x) == len(y) == size
    curve = ec.SECP256R1() if crv == "P-256" else ec.SECP521R1()
    ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + x + y)


@pytest.mark.parametrize(("kind", "alg"), [("rsa-oaep-256", "RSA-OAEP-256"), ("rsa1_5", "RSA1_5")])
def test_rsa_public_jwk_matches_kbs_types(keys, kind, alg):
    jwk = keys[kind].public_jwk()
    assert list(jwk) == ["kty", "alg", "n", "e"]
    assert jwk["kty"] == "RSA"
    assert jwk["alg"] == alg
    assert jwk["e"] == "AQAB"  # 65537, minimal big-endian
    n = b64url_decode(jwk["n"])
    assert len(n) == 256
    assert n[0] & 0x80  # 2048-bit modulus, no leading zero octet
    assert "=" not in jwk["n"]


def test_repr_shows_no_key_material(keys):
    pair = keys["rsa-oaep-256"]
    assert repr(pair) == "TeeKeyPair(kind='rsa-oaep-256')"


def test_constructor_rejects_mismatched_kind():
    ec_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(TeeKeyError, match="needs an rsa key"):
        TeeKeyPair(ec_key, kind="rsa-oaep-256")
    with pytest.raises(TeeKeyError, match="needs a key on secp521r1"):
        TeeKeyPair(ec_key, kind="ec-p521")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(TeeKeyError, match="needs an ec key"):
        TeeKeyPair(rsa_key, kind="ec-p256")
    with pytest.raises(TeeKeyError, match="unknown key kind"):
        TeeKeyPair(rsa_key, kind="rsa-oaep")  # type: ignore[arg-type]
    with pytest.raises(TeeKeyError, match="unknown key kind"):
        TeeKeyPair.generate("x25519")  # type: ignore[arg-type]


# ---------------------------------------------------------------- PEM


@pytest.mark.parametrize("kind", KINDS)
def test_pem_round_trip(keys, kind):
    pair = keys[kind]
    pem = pair.to_pem()
    if kind.startswith("rsa"):
        assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")  # PKCS#1, as the reference
        loaded = TeeKeyPair.from_pem(pem, rsa_kind=kind)  # type: ignore[arg-type]
    else:
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, as the reference
        loaded = TeeKeyPair.from_pem(pem.decode())
    assert loaded.kind == kind
    assert loaded.public_jwk() == pair.public_jwk()


def test_from_pem_rsa_defaults_to_oaep(keys):
    assert TeeKeyPair.from_pem(keys["rsa1_5"].to_pem()).kind == "rsa-oaep-256"


def test_from_pem_rejects_other_keys():
    with pytest.raises(TeeKeyError, match="pem does not hold"):
        TeeKeyPair.from_pem(b"not a pem")
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(TeeKeyError, match="not on P-256 or P-521"):
        TeeKeyPair.from_pem(p384)
    ed25519 = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(TeeKeyError, match="neither an rsa nor an ec key"):
        TeeKeyPair.from_pem(ed25519)


# ---------------------------------------------------------------- AAD re-serialization


def test_reserialize_kbs_types_aad_vector():
    # kbs-types src/lib.rs test `protected_header_generate_aad`.
    header = {"alg": "fakealg", "enc": "fakeenc"}
    assert reserialize_protected_header(header) == "eyJhbGciOiJmYWtlYWxnIiwiZW5jIjoiZmFrZWVuYyJ9"


def test_reserialize_kbs_types_extra_field_vector():
    # kbs-types src/lib.rs test `serialize_response`.
    header = {"fakefield": "fakevalue", "enc": "fakeenc", "alg": "fakealg"}
    assert reserialize_protected_header(header) == (
        "eyJhbGciOiJmYWtlYWxnIiwiZW5jIjoiZmFrZWVuYyIsImZha2VmaWVsZCI6ImZha2V2YWx1ZSJ9"
    )


def test_reserialize_sorts_other_and_nested_members():
    # kbs-types test `parse_response_nested_protected_header` sends epk as kty, crv, x
    # (and a trailing newline); re-serialization sorts it and drops the whitespace.
    received = (
        "eyJhbGciOiJmYWtlYWxnIiwiZW5jIjoiZmFrZWVuYyIsImVwayI6eyJrdHkiOiJPS1AiLCJjcnYiOiJYMjU1"
        "MTkiLCJ4IjoiaFNEd0NZa3dwMVIwaTMzY3RENzNXZzJfT2cwbU9CcjA2NlNwanFxYlRtbyJ9fQo"
    )
    header = json.loads(b64url_decode(received))
    assert b64url_decode(reserialize_protected_header(header)).decode() == (
        '{"alg":"fakealg","enc":"fakeenc","epk":{"crv":"X25519","kty":"OKP",'
        '"x":"hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"}}'
    )


def test_reserialize_keeps_non_ascii_raw():
    header = {"alg": "a", "enc": "e", "zz": "é/\n"}
    text = b64url_decode(reserialize_protected_header(header)).decode("utf-8")
    assert text == '{"alg":"a","enc":"e","zz":"é/\\n"}'  # serde_json: no \u, no \/


def test_reserialize_sorts_objects_inside_arrays():
    header = {"alg": "a", "enc": "e", "list": [{"b": 1, "a": [2, {"d": 0, "c": None}]}, True]}
    text = b64url_decode(reserialize_protected_header(header)).decode()
    assert text == '{"alg":"a","enc":"e","list":[{"a":[2,{"c":null,"d":0}],"b":1},true]}'


def test_reserialize_needs_alg_and_enc():
    with pytest.raises(TeeKeyError, match="string 'alg' and 'enc'"):
        reserialize_protected_header({"alg": "x"})


# ---------------------------------------------------------------- decrypting jwcrypto output


def test_decrypts_jwcrypto_rsa_oaep_256(keys):
    pair = keys["rsa-oaep-256"]
    response = jwcrypto_encrypt(pair, b"from jwcrypto", '{"alg":"RSA-OAEP-256","enc":"A256GCM"}')
    assert pair.decrypt(response) == b"from jwcrypto"


def test_header_in_other_order_fails_like_the_reference(keys):
    # Valid RFC 7516 JWE, but the reference client recomputes the AAD from the re-sorted
    # header, so a server that writes "enc" first cannot be decrypted by a real guest.
    pair = keys["rsa-oaep-256"]
    response = jwcrypto_encrypt(pair, b"x", '{"enc":"A256GCM","alg":"RSA-OAEP-256"}')
    with pytest.raises(TeeKeyError, match="aes-gcm authentication failed"):
        pair.decrypt(response)


def test_epk_outside_protected_header_is_not_seen(keys):
    # jwcrypto puts the ECDH-ES epk into the unprotected `header` member, which
    # kbs-types' Response does not have: the reference guest cannot decrypt it.
    pair = keys["ec-p256"]
    response = jwcrypto_encrypt(pair, b"x", '{"alg":"ECDH-ES+A256KW","enc":"A256GCM"}')
    assert "epk" in response["header"]
    with pytest.raises(TeeKeyError, match="no 'epk' object"):
        pair.decrypt(response)


# ---------------------------------------------------------------- malformed responses


@pytest.fixture(scope="module")
def good_rsa_response(keys) -> dict[str, str]:
    pair = keys["rsa-oaep-256"]
    return jwcrypto_encrypt(pair, b"payload", '{"alg":"RSA-OAEP-256","enc":"A256GCM"}')


@pytest.mark.parametrize("member", ["protected", "encrypted_key", "iv", "ciphertext", "tag"])
def test_missing_member(keys, good_rsa_response, member):
    response = dict(good_rsa_response)
    del response[member]
    with pytest.raises(TeeKeyError, match=f"'{member}' is missing"):
        keys["rsa-oaep-256"].decrypt(response)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("AAAAAAAAAAAAAAA=", id="padding"),
        pytest.param("AAAAAAAAAAAAAAA*", id="bad-char"),
        pytest.param("AAAAAAAAAAAAAAA+", id="std-alphabet"),
        pytest.param("AAAAAAAAAAAAAAAAA", id="length-mod-4-is-1"),
        pytest.param("AAAAAAAA AAAAAAA", id="space"),
    ],
)
def test_bad_base64(keys, good_rsa_response, value):
    response = dict(good_rsa_response, iv=value)
    with pytest.raises(TeeKeyError, match="'iv' is not base64url without padding"):
        keys["rsa-oaep-256"].decrypt(response)


def test_non_canonical_base64(keys, good_rsa_response):
    response = dict(good_rsa_response)
    response["tag"] = "AB"  # 'B' leaves non-zero trailing bits
    with pytest.raises(TeeKeyError, match="not canonical"):
        keys["rsa-oaep-256"].decrypt(response)


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (b"not json", "not json"),
        (b"[1]", "not a json object"),
        (b'{"alg":"RSA-OAEP-256"}', "string 'alg' and 'enc'"),
        (b'{"alg":1,"enc":"A256GCM"}', "string 'alg' and 'enc'"),
        (b'{"alg":"RSA-OAEP-256","alg":"RSA1_5","enc":"A256GCM"}', "not json"),
        (b'{"alg":"RSA-OAEP-256","enc":"A256GCM","n":NaN}', "not json"),
        (b"\xff", "not json"),
        (b'{"alg":"RSA-OAEP","enc":"A256GCM"}', "unsupported key-management alg"),
        (b'{"alg":"dir","enc":"A256GCM"}', "unsupported key-management alg"),
    ],
)
def test_bad_protected_header(keys, good_rsa_response, header, match):
    response = dict(good_rsa_response, protected=b64url(header))
    with pytest.raises(TeeKeyError, match=match):
        keys["rsa-oaep-256"].decrypt(response)


def test_aad_member_must_be_a_string_and_is_ignored(keys, good_rsa_response):
    pair = keys["rsa-oaep-256"]
    assert pair.decrypt(dict(good_rsa_response, aad="whatever")) == b"payload"
    with pytest.raises(TeeKeyError, match="'aad' is not a string"):
        pair.decrypt(dict(good_rsa_response, aad=None))


def test_not_a_mapping(keys):
    with pytest.raises(TeeKeyError, match="not a json object"):
        keys["ec-p256"].decrypt(["protected"])  # type: ignore[arg-type]
    with pytest.raises(TeeKeyError, match="not a json object"):
        keys["rsa1_5"].decrypt_legacy("x")  # type: ignore[arg-type]


def test_wrong_key_type_for_alg(keys, good_rsa_response):
    with pytest.raises(TeeKeyError, match="not an rsa key"):
        keys["ec-p256"].decrypt(good_rsa_response)


def test_other_rsa_key_fails(keys, good_rsa_response):
    with pytest.raises(TeeKeyError, match="rsa decryption of the cek failed"):
        keys["rsa1_5"].decrypt(good_rsa_response)


def test_wrong_iv_and_tag_lengths(keys, good_rsa_response):
    pair = keys["rsa-oaep-256"]
    with pytest.raises(TeeKeyError, match="iv is not 12 bytes"):
        pair.decrypt(dict(good_rsa_response, iv=b64url(bytes(16))))
    with pytest.raises(TeeKeyError, match="aes-gcm authentication failed"):
        pair.decrypt(dict(good_rsa_response, tag=b64url(bytes(16))))
    short = dict(good_rsa_response, ciphertext="", tag=b64url(bytes(8)))
    with pytest.raises(TeeKeyError, match="too short"):
        pair.decrypt(short)
