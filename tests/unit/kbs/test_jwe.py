# SPDX-License-Identifier: Apache-2.0
"""Server-side JWE: TEE key parsing, exact header bytes, and decryption by two clients.

Every response is opened by our guest-side client (which re-serializes the header the
way the reference guest does) and, independently, by jwcrypto.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import struct

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st
from jwcrypto import jwe as jwcrypto_jwe
from jwcrypto import jwk as jwcrypto_jwk

from kbs import jwe
from kbs.client.tee_key import TeeKeyError, TeeKeyPair, reserialize_protected_header
from kbs.jwe import JweError, TeePublicKey, concat_kdf, parse_tee_pubkey, wrap, wrap_legacy

KINDS = ["ec-p256", "ec-p521", "rsa-oaep-256", "rsa1_5"]
RESPONSE_KEYS = ["protected", "encrypted_key", "iv", "ciphertext", "tag"]
B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def header_text(response: dict[str, str]) -> str:
    return b64url_decode(response["protected"]).decode()


class CountingEntropy:
    """Deterministic entropy: 0x01.., 0x02.., ... so CEK and IV are known to the test."""

    def __init__(self) -> None:
        self.drawn: list[bytes] = []
        self._counter = itertools.count(1)

    def __call__(self, n: int) -> bytes:
        value = bytes([next(self._counter)]) * n
        self.drawn.append(value)
        return value


@pytest.fixture(scope="module")
def keys() -> dict[str, TeeKeyPair]:
    return {kind: TeeKeyPair.generate(kind) for kind in KINDS}


def jwcrypto_decrypt(pair: TeeKeyPair, response: dict[str, str], algs: list[str]) -> bytes:
    key = jwcrypto_jwk.JWK.from_pem(pair.to_pem())
    token = jwcrypto_jwe.JWE(algs=[*algs, "A256GCM"])
    token.deserialize(json.dumps(response), key=key)
    return bytes(token.payload)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("plaintext", [b"", b"secret", os.urandom(100_000)], ids=["0", "6", "100k"])
def test_round_trip_through_our_client(keys, kind, plaintext):
    pair = keys[kind]
    response = wrap(parse_tee_pubkey(pair.public_jwk()), plaintext, entropy=os.urandom)
    assert list(response) == RESPONSE_KEYS
    assert all(B64URL.fullmatch(v) for v in response.values())
    assert pair.decrypt(response) == plaintext


@pytest.mark.parametrize(
    ("kind", "alg"),
    [
        ("rsa-oaep-256", "RSA-OAEP-256"),
        ("rsa1_5", "RSA1_5"),  # not in jwcrypto's default allow-list: enabled explicitly
        ("ec-p256", "ECDH-ES+A256KW"),
        ("ec-p521", "ECDH-ES+A256KW"),
    ],
)
def test_jwcrypto_decrypts_our_jwe(keys, kind, alg):
    pair = keys[kind]
    response = wrap(parse_tee_pubkey(pair.public_jwk()), b"independent check", entropy=os.urandom)
    assert jwcrypto_decrypt(pair, response, [alg]) == b"independent check"


def test_jwcrypto_refuses_rsa1_5_unless_enabled(keys):
    pair = keys["rsa1_5"]
    response = wrap(parse_tee_pubkey(pair.public_jwk()), b"x", entropy=os.urandom)
    token = jwcrypto_jwe.JWE()
    with pytest.raises(jwcrypto_jwe.InvalidJWEData):
        token.deserialize(json.dumps(response), key=jwcrypto_jwk.JWK.from_pem(pair.to_pem()))


# ---------------------------------------------------------------- exact bytes


@pytest.mark.parametrize(("kind", "alg"), [("rsa-oaep-256", "RSA-OAEP-256"), ("rsa1_5", "RSA1_5")])
def test_rsa_header_bytes(keys, kind, alg):
    response = wrap(parse_tee_pubkey(keys[kind].public_jwk()), b"x", entropy=os.urandom)
    assert header_text(response) == f'{{"alg":"{alg}","enc":"A256GCM"}}'


@pytest.mark.parametrize(
    ("kind", "crv", "size"), [("ec-p256", "P-256", 32), ("ec-p521", "P-521", 66)]
)
def test_ec_header_bytes(keys, kind, crv, size):
    response = wrap(parse_tee_pubkey(keys[kind].public_jwk()), b"x", entropy=os.urandom)
    epk = json.loads(header_text(response))["epk"]
    assert len(b64url_decode(epk["x"])) == len(b64url_decode(epk["y"])) == size
    assert header_text(response) == (
        '{"alg":"ECDH-ES+A256KW","enc":"A256GCM",'
        f'"epk":{{"crv":"{crv}","kty":"EC","x":"{epk["x"]}","y":"{epk["y"]}"}}}}'
    )
    assert len(b64url_decode(response["encrypted_key"])) == 40  # A256KW of a 32-byte CEK


def test_ec_coordinates_keep_leading_zero_bytes(keys, monkeypatch):
    # An ephemeral key whose x-coordinate starts with a zero byte must still be sent as
    # 32 bytes: the reference client converts into [u8; 32] and fails otherwise.
    for d in itertools.count(1):
        candidate = ec.derive_private_key(d, ec.SECP256R1())
        if candidate.public_key().public_numbers().x < 1 << 248:
            break

    def fixed_ephemeral(curve: ec.EllipticCurve) -> ec.EllipticCurvePrivateKey:
        assert isinstance(curve, ec.SECP256R1)
        return candidate

    monkeypatch.setattr(jwe.ec, "generate_private_key", fixed_ephemeral)
    pair = keys["ec-p256"]
    response = wrap(parse_tee_pubkey(pair.public_jwk()), b"zero", entropy=os.urandom)
    x = json.loads(header_text(response))["epk"]["x"]
    assert len(x) == 43
    assert b64url_decode(x)[0] == 0
    assert pair.decrypt(response) == b"zero"


def test_kbs_types_aad_vector():
    assert (
        jwe.serialize_protected_header("fakealg", "fakeenc", {})
        == "eyJhbGciOiJmYWtlYWxnIiwiZW5jIjoiZmFrZWVuYyJ9"
    )
    assert jwe.serialize_protected_header("fakealg", "fakeenc", {"fakefield": "fakevalue"}) == (
        "eyJhbGciOiJmYWtlYWxnIiwiZW5jIjoiZmFrZWVuYyIsImZha2VmaWVsZCI6ImZha2V2YWx1ZSJ9"
    )


def test_serialize_protected_header_sorts_and_refuses_duplicates():
    text = b64url_decode(jwe.serialize_protected_header("a", "e", {"z": 1, "b": {"y": 1, "x": 2}}))
    assert text == b'{"alg":"a","enc":"e","b":{"x":2,"y":1},"z":1}'
    with pytest.raises(ValueError, match="must not repeat"):
        jwe.serialize_protected_header("a", "e", {"alg": "b"})


def test_entropy_supplies_cek_and_iv_and_aad_is_protected(keys):
    pair = keys["rsa-oaep-256"]
    entropy = CountingEntropy()
    response = wrap(parse_tee_pubkey(pair.public_jwk()), b"known", entropy=entropy)
    cek, iv = entropy.drawn
    assert (len(cek), len(iv)) == (32, 12)
    assert b64url_decode(response["iv"]) == iv
    private_key = serialization.load_pem_private_key(pair.to_pem(), password=None)
    assert isinstance(private_key, rsa.RSAPrivateKey)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    assert private_key.decrypt(b64url_decode(response["encrypted_key"]), oaep) == cek
    sealed = b64url_decode(response["ciphertext"]) + b64url_decode(response["tag"])
    assert len(b64url_decode(response["tag"])) == 16
    # AAD = the ASCII bytes of the `protected` member itself.
    assert AESGCM(cek).decrypt(iv, sealed, response["protected"].encode()) == b"known"


def test_entropy_of_wrong_length_is_refused(keys):
    key = parse_tee_pubkey(keys["ec-p256"].public_jwk())
    with pytest.raises(ValueError, match="entropy returned 31 bytes, expected 32"):
        wrap(key, b"x", entropy=lambda n: bytes(n - 1))


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(KINDS), plaintext=st.binary(max_size=256))
def test_header_survives_client_reserialization(keys, kind, plaintext):
    # Property: b64url(reserialize(parse(protected))) == protected, for fresh ephemeral keys.
    pair = keys[kind]
    response = wrap(parse_tee_pubkey(pair.public_jwk()), plaintext, entropy=os.urandom)
    parsed = json.loads(b64url_decode(response["protected"]))
    assert reserialize_protected_header(parsed) == response["protected"]
    assert pair.decrypt(response) == plaintext


# ---------------------------------------------------------------- Concat KDF


# RFC 7518 Appendix C: Alice's ephemeral key and Bob's static key (P-256).
RFC_ALICE_D = "0_NxaRPUMQoAJt50Gz8YiTr8gRTwyEaCumd-MToTmIo"
RFC_BOB_X = "weNJy2HscCSM6AEDTDg04biOvhFhyyWvOHQfeF_PxMQ"
RFC_BOB_Y = "e8lnCO-AlStT-NJVX-crhB7QRYhiix03illJOVAOyck"
RFC_Z = bytes(
    [158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156,
     251, 49, 110, 163, 218, 128, 106, 72, 246, 218, 167, 121, 140, 254, 144, 196]
)  # fmt: skip


def test_concat_kdf_rfc7518_appendix_c():
    # The vector is for direct ECDH-ES with A128GCM (AlgorithmID "A128GCM", apu "Alice",
    # apv "Bob", keydatalen 128); our KDF takes those as parameters.
    alice = ec.derive_private_key(int.from_bytes(b64url_decode(RFC_ALICE_D)), ec.SECP256R1())
    bob = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), b"\x04" + b64url_decode(RFC_BOB_X) + b64url_decode(RFC_BOB_Y)
    )
    assert alice.exchange(ec.ECDH(), bob) == RFC_Z
    derived = concat_kdf(
        RFC_Z, algorithm_id="A128GCM", key_bits=128, party_u_info=b"Alice", party_v_info=b"Bob"
    )
    assert b64url(derived) == "VqqN6vgjbSBcIijNcacQGg"


def test_concat_kdf_for_ecdh_es_a256kw_is_one_sha256_round():
    z = bytes(range(32))
    expected = hashlib.sha256(
        struct.pack(">I", 1)
        + z
        + struct.pack(">I", 14)
        + b"ECDH-ES+A256KW"
        + struct.pack(">II", 0, 0)
        + struct.pack(">I", 256)
    ).digest()
    assert concat_kdf(z, algorithm_id="ECDH-ES+A256KW", key_bits=256) == expected


@pytest.mark.parametrize("bits", [0, -8, 12])
def test_concat_kdf_rejects_odd_lengths(bits):
    with pytest.raises(ValueError, match="multiple of 8"):
        concat_kdf(RFC_Z, algorithm_id="x", key_bits=bits)


# ---------------------------------------------------------------- tampering


def flip(text: str, index: int = 0) -> str:
    raw = bytearray(b64url_decode(text))
    raw[index] ^= 0x01
    return b64url(bytes(raw))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("member", ["ciphertext", "tag", "iv", "encrypted_key"])
def test_tampering_fails(keys, kind, member):
    pair = keys[kind]
    response = wrap(parse_tee_pubkey(pair.public_jwk()), b"do not touch", entropy=os.urandom)
    with pytest.raises(TeeKeyError):
        pair.decrypt(dict(response, **{member: flip(response[member])}))


@pytest.mark.parametrize("kind", KINDS)
def test_tampered_protected_header_fails(keys, kind):
    pair = keys[kind]
    response = wrap(parse_tee_pubkey(pair.public_jwk()), b"do not touch", entropy=os.urandom)
    header = json.loads(b64url_decode(response["protected"]))
    header["kid"] = "added"  # still a valid header, but a different AAD
    tampered = dict(response, protected=b64url(json.dumps(header).encode()))
    with pytest.raises(TeeKeyError, match="aes-gcm authentication failed"):
        pair.decrypt(tampered)


def test_ec_epk_problems_fail(keys):
    pair = keys["ec-p256"]
    response = wrap(parse_tee_pubkey(pair.public_jwk()), b"x", entropy=os.urandom)
    header = json.loads(b64url_decode(response["protected"]))

    def with_epk(**changes: str) -> dict[str, str]:
        epk = {**header["epk"], **changes}
        protected = jwe.serialize_protected_header(header["alg"], header["enc"], {"epk": epk})
        return dict(response, protected=protected)

    with pytest.raises(TeeKeyError, match="curve does not match"):
        pair.decrypt(with_epk(crv="P-521"))
    with pytest.raises(TeeKeyError, match="wrong length"):
        pair.decrypt(with_epk(x=b64url(b64url_decode(header["epk"]["x"])[1:])))
    with pytest.raises(TeeKeyError, match="not a point on the curve"):
        pair.decrypt(with_epk(y=flip(header["epk"]["y"], -1)))
    with pytest.raises(TeeKeyError, match="not an ec key"):
        keys["rsa-oaep-256"].decrypt(response)
    no_crv = {k: v for k, v in header["epk"].items() if k != "crv"}
    protected = jwe.serialize_protected_header(header["alg"], header["enc"], {"epk": no_crv})
    with pytest.raises(TeeKeyError, match="no string 'crv'"):
        pair.decrypt(dict(response, protected=protected))
    protected = jwe.serialize_protected_header(header["alg"], header["enc"], {"epk": "x"})
    with pytest.raises(TeeKeyError, match="no 'epk' object"):
        pair.decrypt(dict(response, protected=protected))


# ---------------------------------------------------------------- legacy (protocol 0.1.x)


def test_legacy_shape_and_round_trip(keys):
    pair = keys["rsa1_5"]
    key = parse_tee_pubkey(pair.public_jwk())
    entropy = CountingEntropy()
    response = wrap_legacy(key, b"legacy secret", entropy=entropy)
    assert list(response) == RESPONSE_KEYS
    assert response["protected"] == '{"alg":"RSA1_5","enc":"A256GCM"}'
    assert response["tag"] == ""
    cek, iv = entropy.drawn
    assert b64url_decode(response["iv"]) == iv
    # Tag appended to the ciphertext, no AAD.
    sealed = b64url_decode(response["ciphertext"])
    assert len(sealed) == len(b"legacy secret") + 16
    assert AESGCM(cek).decrypt(iv, sealed, None) == b"legacy secret"
    assert pair.decrypt_legacy(response) == b"legacy secret"


def test_legacy_from_kty_less_key(keys):
    jwk = keys["rsa1_5"].public_jwk()
    old = {"alg": "RSA1_5", "k-mod": jwk["n"], "k-exp": jwk["e"]}
    response = wrap_legacy(parse_tee_pubkey(old), b"0.1.0", entropy=os.urandom)
    assert keys["rsa1_5"].decrypt_legacy(response) == b"0.1.0"


@pytest.mark.parametrize("kind", ["rsa-oaep-256", "ec-p256"])
def test_legacy_refuses_other_algorithms(keys, kind):
    with pytest.raises(JweError, match="only RSA1_5"):
        wrap_legacy(parse_tee_pubkey(keys[kind].public_jwk()), b"x", entropy=os.urandom)


def test_legacy_client_checks(keys):
    pair = keys["rsa1_5"]
    response = wrap_legacy(parse_tee_pubkey(pair.public_jwk()), b"x", entropy=os.urandom)
    with pytest.raises(TeeKeyError, match="not RSA1_5 with A256GCM"):
        pair.decrypt_legacy(dict(response, protected='{"alg":"RSA-OAEP-256","enc":"A256GCM"}'))
    with pytest.raises(TeeKeyError, match="'protected' is missing"):
        pair.decrypt_legacy({k: v for k, v in response.items() if k != "protected"})
    with pytest.raises(TeeKeyError, match="aes-gcm authentication failed"):
        pair.decrypt_legacy(dict(response, ciphertext=flip(response["ciphertext"], -1)))
    # A modern client cannot read the legacy shape (protected is not base64url JSON).
    with pytest.raises(TeeKeyError):
        pair.decrypt(response)


# ---------------------------------------------------------------- parsing the tee-pubkey


def ec_jwk(curve: ec.EllipticCurve, crv: str, size: int) -> dict[str, str]:
    point = (
        ec.generate_private_key(curve)
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return {
        "kty": "EC",
        "crv": crv,
        "alg": "ECDH-ES+A256KW",
        "x": b64url(point[1 : 1 + size]),
        "y": b64url(point[1 + size :]),
    }


def rsa_jwk(bits: int, alg: str = "RSA-OAEP-256") -> dict[str, str]:
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    n = numbers.public_numbers().n
    return {
        "kty": "RSA",
        "alg": alg,
        "n": b64url(n.to_bytes((n.bit_length() + 7) // 8)),
        "e": "AQAB",
    }


@pytest.fixture(scope="module")
def p256_jwk() -> dict[str, str]:
    return ec_jwk(ec.SECP256R1(), "P-256", 32)


@pytest.fixture(scope="module")
def rsa2048_jwk(keys) -> dict[str, str]:
    return keys["rsa-oaep-256"].public_jwk()


@pytest.mark.parametrize("kind", KINDS)
def test_parse_client_keys(keys, kind):
    jwk = keys[kind].public_jwk()
    key = parse_tee_pubkey(jwk)
    assert key.alg == jwk["alg"]
    assert key.crv == jwk.get("crv")


def test_unknown_members_are_ignored(p256_jwk):
    key = parse_tee_pubkey({**p256_jwk, "use": "enc", "kid": "k1", "ext": True, "d": 5})
    assert key.crv == "P-256"


@pytest.mark.parametrize("alg", ["RSA-OAEP", "RSA-OAEP-384", "ECDH-ES", "A128KW", "dir", "rsa1_5"])
def test_unsupported_rsa_alg(rsa2048_jwk, alg):
    with pytest.raises(JweError, match="unsupported alg for kty RSA"):
        parse_tee_pubkey({**rsa2048_jwk, "alg": alg})


@pytest.mark.parametrize("alg", ["ECDH-ES", "ECDH-ES+A128KW", "ECDH-ES+A192KW", "A128KW", "ES256"])
def test_unsupported_ec_alg(p256_jwk, alg):
    with pytest.raises(JweError, match="unsupported alg for kty EC"):
        parse_tee_pubkey({**p256_jwk, "alg": alg})


def test_p384_is_rejected():
    with pytest.raises(JweError, match="unsupported crv"):
        parse_tee_pubkey(ec_jwk(ec.SECP384R1(), "P-384", 48))


@pytest.mark.parametrize("crv", ["X25519", "secp256k1", "p-256", "P256"])
def test_other_curves_are_rejected(p256_jwk, crv):
    with pytest.raises(JweError, match="unsupported crv"):
        parse_tee_pubkey({**p256_jwk, "crv": crv})


@pytest.mark.parametrize("kty", ["OKP", "oct", "ec", "rsa", "AKP", None, 1])
def test_unsupported_kty(p256_jwk, kty):
    with pytest.raises(JweError, match="unsupported kty"):
        parse_tee_pubkey({**p256_jwk, "kty": kty})


def test_point_not_on_curve(p256_jwk):
    with pytest.raises(JweError, match="point is not on the curve"):
        parse_tee_pubkey({**p256_jwk, "y": flip(p256_jwk["y"], -1)})


def test_p521_coordinate_above_field_is_rejected():
    with pytest.raises(JweError, match="point is not on the curve"):
        parse_tee_pubkey({**ec_jwk(ec.SECP521R1(), "P-521", 66), "x": b64url(b"\xff" * 66)})


@pytest.mark.parametrize("member", ["x", "y"])
def test_coordinate_length_must_match_crv(p256_jwk, member):
    short = b64url(b64url_decode(p256_jwk[member])[1:])
    with pytest.raises(JweError, match="coordinate length does not match crv"):
        parse_tee_pubkey({**p256_jwk, member: short})
    with pytest.raises(JweError, match="coordinate length does not match crv"):
        parse_tee_pubkey({**p256_jwk, "crv": "P-521"})


def test_rsa_1024_is_rejected():
    with pytest.raises(JweError, match="shorter than 2048 bits"):
        parse_tee_pubkey(rsa_jwk(1024))


def test_rsa_above_4096_is_rejected(rsa2048_jwk):
    huge = (1 << 4100) + 1  # only the size matters; it is checked first
    with pytest.raises(JweError, match="longer than 4096 bits"):
        parse_tee_pubkey({**rsa2048_jwk, "n": b64url(huge.to_bytes(513))})


@pytest.mark.parametrize("e", [1, 2, 65536, (1 << 33) + 1])
def test_rsa_bad_exponent(rsa2048_jwk, e):
    with pytest.raises(JweError, match="public exponent out of range"):
        parse_tee_pubkey({**rsa2048_jwk, "e": b64url(e.to_bytes((e.bit_length() + 7) // 8))})


def test_rsa_even_modulus_is_rejected(rsa2048_jwk):
    n = int.from_bytes(b64url_decode(rsa2048_jwk["n"])) ^ 1
    with pytest.raises(JweError, match="rsa modulus is even"):
        parse_tee_pubkey({**rsa2048_jwk, "n": b64url(n.to_bytes(256))})


def test_rsa_leading_zero_octets_are_tolerated(rsa2048_jwk):
    padded = b64url(b"\x00" + b64url_decode(rsa2048_jwk["n"]))
    assert parse_tee_pubkey({**rsa2048_jwk, "n": padded}).alg == "RSA-OAEP-256"


@pytest.mark.parametrize("member", ["alg", "n", "e"])
def test_rsa_missing_member(rsa2048_jwk, member):
    jwk = {k: v for k, v in rsa2048_jwk.items() if k != member}
    with pytest.raises(JweError, match=f"missing or non-string member '{member}'"):
        parse_tee_pubkey(jwk)


@pytest.mark.parametrize("member", ["alg", "crv", "x", "y"])
def test_ec_missing_or_non_string_member(p256_jwk, member):
    with pytest.raises(JweError, match=f"missing or non-string member '{member}'"):
        parse_tee_pubkey({k: v for k, v in p256_jwk.items() if k != member})
    with pytest.raises(JweError, match=f"missing or non-string member '{member}'"):
        parse_tee_pubkey({**p256_jwk, member: 1})


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda v: v + "=", id="padding"),
        pytest.param(lambda v: v.replace("-", "+").replace("_", "/") + "+AA", id="std-alphabet"),
        pytest.param(lambda v: v[:-1] + "!", id="bad-char"),
        pytest.param(lambda v: v + "A", id="length-mod-4-is-1"),
        pytest.param(lambda _v: "", id="empty"),
    ],
)
def test_bad_base64_in_jwk(p256_jwk, mutate):
    with pytest.raises(JweError, match=r"'x' is not|coordinate length"):
        parse_tee_pubkey({**p256_jwk, "x": mutate(p256_jwk["x"])})


def test_non_canonical_base64_in_jwk(p256_jwk):
    # 43 chars carry 258 bits for 32 bytes: the last character's two low bits are spare.
    # Setting one decodes to the same bytes, but the reference decoder rejects it.
    x = p256_jwk["x"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    non_canonical = x[:-1] + alphabet[alphabet.index(x[-1]) ^ 1]
    assert b64url_decode(non_canonical) == b64url_decode(x)
    with pytest.raises(JweError, match="not canonical base64url"):
        parse_tee_pubkey({**p256_jwk, "x": non_canonical})


@pytest.mark.parametrize("value", [[], "jwk", None, 1])
def test_not_an_object(value):
    with pytest.raises(JweError, match="not a json object"):
        parse_tee_pubkey(value)


def test_error_messages_carry_no_key_material(rsa2048_jwk, p256_jwk):
    cases = [
        {**rsa2048_jwk, "alg": "RSA-OAEP"},
        {**rsa2048_jwk, "e": "AAAA"},
        {**p256_jwk, "y": flip(p256_jwk["y"], -1)},
        {**p256_jwk, "crv": "P-384"},
        {**p256_jwk, "x": p256_jwk["x"] + "="},
    ]
    for jwk in cases:
        with pytest.raises(JweError) as excinfo:
            parse_tee_pubkey(jwk)
        message = str(excinfo.value)
        for member in ("n", "x", "y"):
            if member in jwk:
                assert jwk[member][:12] not in message


# Legacy (kty-less) forms of protocol 0.1.0 guests.


def test_legacy_k_mod_form_standard_base64(rsa2048_jwk):
    n = b64url_decode(rsa2048_jwk["n"])
    jwk = {"alg": "RSA1_5", "k-mod": base64.b64encode(n).decode(), "k-exp": "AQAB"}
    key = parse_tee_pubkey(jwk)
    assert key.alg == "RSA1_5"
    assert isinstance(key.public_key, rsa.RSAPublicKey)
    assert key.public_key.public_numbers().n == int.from_bytes(n)


def test_legacy_n_e_form_without_kty(rsa2048_jwk):
    jwk = {"alg": "RSA1_5", "n": rsa2048_jwk["n"], "e": rsa2048_jwk["e"]}
    assert parse_tee_pubkey(jwk).alg == "RSA1_5"


def test_legacy_forms_only_allow_rsa1_5(rsa2048_jwk):
    with pytest.raises(JweError, match="unsupported alg for a key without kty"):
        parse_tee_pubkey({"alg": "RSA-OAEP-256", "n": rsa2048_jwk["n"], "e": "AQAB"})
    with pytest.raises(JweError, match="missing or non-string member 'k-exp'"):
        parse_tee_pubkey({"alg": "RSA1_5", "k-mod": rsa2048_jwk["n"]})
    with pytest.raises(JweError, match="missing member 'kty'"):
        parse_tee_pubkey({"alg": "RSA1_5", "x": "AA"})
    with pytest.raises(JweError, match="'k-mod' is not base64"):
        parse_tee_pubkey({"alg": "RSA1_5", "k-mod": "not base64!", "k-exp": "AQAB"})
    with pytest.raises(JweError, match="'k-mod' is not base64"):
        parse_tee_pubkey({"alg": "RSA1_5", "k-mod": "AAAAA", "k-exp": "AQAB"})
    with pytest.raises(JweError, match="shorter than 2048 bits"):
        parse_tee_pubkey({"alg": "RSA1_5", "k-mod": rsa_jwk(1024)["n"], "k-exp": "AQAB"})


# The dataclass re-checks its invariants on direct construction.


def test_tee_public_key_invariants():
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    with pytest.raises(JweError, match="shorter than 2048 bits"):
        TeePublicKey(alg="RSA-OAEP-256", public_key=rsa_key)
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(JweError, match="alg does not match an rsa key"):
        TeePublicKey(alg="ECDH-ES+A256KW", public_key=rsa_key)
    with pytest.raises(JweError, match="alg does not match an ec key"):
        TeePublicKey(alg="RSA1_5", public_key=p256)
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(JweError, match="unsupported crv"):
        TeePublicKey(alg="ECDH-ES+A256KW", public_key=p384)
    assert TeePublicKey(alg="ECDH-ES+A256KW", public_key=p256).crv == "P-256"


def test_parsed_keys_are_remembered_and_failures_are_not(p256_jwk, rsa2048_jwk):
    first = parse_tee_pubkey(dict(p256_jwk))
    # The same members again (another dict, extra members ignored): the same parsed key.
    assert parse_tee_pubkey({**p256_jwk, "kid": "ignored"}) is first
    # A refused key is refused every time, cached or not.
    bad = {**p256_jwk, "y": flip(p256_jwk["y"], -1)}
    for _ in range(2):
        with pytest.raises(JweError, match="point is not on the curve"):
            parse_tee_pubkey(bad)
    # A null member is not an absent one: still refused, by the same check as before.
    with pytest.raises(JweError, match="non-string member 'alg'"):
        parse_tee_pubkey({**p256_jwk, "alg": None})
    # An empty k-mod chooses the k-mod form (and fails) even with a valid n and e around.
    legacy = {"alg": "RSA1_5", "k-mod": "", "n": rsa2048_jwk["n"], "e": rsa2048_jwk["e"]}
    with pytest.raises(JweError, match="member 'k-exp'"):
        parse_tee_pubkey(legacy)
    assert parse_tee_pubkey({k: v for k, v in legacy.items() if k != "k-mod"}).alg == "RSA1_5"
