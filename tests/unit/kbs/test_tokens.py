# SPDX-License-Identifier: Apache-2.0
"""Token signing and verification: trust sources, algorithms, expiry, TEE key extraction."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jws as jwcrypto_jws

from kbs.audit import token_id
from kbs.errors import TokenVerifierError
from kbs.tokens import (
    SimpleTokenSigner,
    TokenSigner,
    TokenVerifier,
    _b64url_decode,
    jwk_thumbprint,
    public_jwk,
    resolve_pointer,
    self_signed_certificate,
)
from kbs.tokens import (
    _b64url as ours_b64url,
)

AT = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
#: PyJWT checks exp and iat against the wall clock unless told not to.
_NO_TIME = {"verify_exp": False, "verify_iat": False}


def _claims(**extra):
    return {"iat": int(AT.timestamp()), "exp": int(AT.timestamp()) + 300, **extra}


def _cert(subject: str, key, issuer_name: str, issuer_key, *, ca: bool, days: int = 30):
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(AT - dt.timedelta(days=1))
        .not_valid_after(AT + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(issuer_key, hashes.SHA256())


def _x5c(*certs) -> list[str]:
    return [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in certs]


def test_own_token_roundtrip_and_kid() -> None:
    signer = TokenSigner(ec.generate_private_key(ec.SECP256R1()))
    token = signer.sign(_claims(x=1))
    header = jwt.get_unverified_header(token)
    assert header["kid"] == jwk_thumbprint(header["jwk"]) == signer.kid
    assert set(header["jwk"]) == {"kty", "crv", "alg", "x", "y"}
    verifier = TokenVerifier(own_keys=[signer.public_key])
    assert verifier.verify(token, at=AT)["x"] == 1


def test_expiry_uses_the_request_instant_with_leeway() -> None:
    signer = TokenSigner(ec.generate_private_key(ec.SECP256R1()))
    verifier = TokenVerifier(own_keys=[signer.public_key])
    token = signer.sign(_claims())
    verifier.verify(token, at=AT + dt.timedelta(seconds=360))  # exp + 60 s leeway
    with pytest.raises(TokenVerifierError, match="expired"):
        verifier.verify(token, at=AT + dt.timedelta(seconds=361))
    no_exp = signer.sign({"iat": 1})
    with pytest.raises(TokenVerifierError, match="no valid exp"):
        verifier.verify(no_exp, at=AT)


def test_foreign_header_jwk_needs_trust() -> None:
    foreign = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(
        _claims(), foreign, algorithm="ES256", headers={"jwk": public_jwk(foreign.public_key())}
    )
    own = TokenVerifier(own_keys=[ec.generate_private_key(ec.SECP256R1()).public_key()])
    with pytest.raises(TokenVerifierError, match="not trusted"):
        own.verify(token, at=AT)
    insecure = TokenVerifier(own_keys=[], insecure_header_jwk=True)
    assert insecure.verify(token, at=AT)["exp"]


def test_x5c_chain_to_trusted_root() -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    inter_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert("root", root_key, "root", root_key, ca=True)
    inter = _cert("inter", inter_key, "root", root_key, ca=True)
    leaf = _cert("signer", leaf_key, "inter", inter_key, ca=False)
    jwk = {**public_jwk(leaf_key.public_key()), "x5c": _x5c(leaf, inter, root)}
    token = jwt.encode(_claims(), leaf_key, algorithm="ES256", headers={"jwk": jwk})
    TokenVerifier(own_keys=[], trusted_certs=[root]).verify(token, at=AT)
    # Intermediates may come in any order, and the root may be left out.
    jwk2 = {**public_jwk(leaf_key.public_key()), "x5c": _x5c(leaf, inter)}
    token2 = jwt.encode(_claims(), leaf_key, algorithm="ES256", headers={"jwk": jwk2})
    TokenVerifier(own_keys=[], trusted_certs=[root]).verify(token2, at=AT)
    # A partial chain: the trust store holds the intermediate.
    TokenVerifier(own_keys=[], trusted_certs=[inter]).verify(token2, at=AT)
    # Another root is not trusted.
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _cert("root", other_key, "root", other_key, ca=True)
    with pytest.raises(TokenVerifierError, match="does not lead"):
        TokenVerifier(own_keys=[], trusted_certs=[other]).verify(token, at=AT)
    # Expired certificates are not valid at the request instant.
    with pytest.raises(TokenVerifierError, match="not valid at this time"):
        TokenVerifier(own_keys=[], trusted_certs=[root]).verify(
            token, at=AT + dt.timedelta(days=40)
        )


def test_x5c_leaf_must_be_the_jwk() -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert("root", root_key, "root", root_key, ca=True)
    signer_key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**public_jwk(signer_key.public_key()), "x5c": _x5c(root)}
    token = jwt.encode(_claims(), signer_key, algorithm="ES256", headers={"jwk": jwk})
    with pytest.raises(TokenVerifierError, match="does not match its x5c leaf"):
        TokenVerifier(own_keys=[], trusted_certs=[root]).verify(token, at=AT)


def test_kid_from_trusted_jwks_and_rsa() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    entry = jwt.PyJWK.from_dict(
        {**jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "alg": "RS256"}
    )
    jwk_dict = {
        **jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True),
        "alg": "RS256",
    }
    token = jwt.encode(_claims(), key, algorithm="RS256", headers={"kid": "k1"})
    verifier = TokenVerifier(own_keys=[], trusted_jwks={"k1": jwk_dict})
    assert verifier.verify(token, at=AT)["exp"]
    assert entry.key_type == "RSA"
    # The JWKS key says RS256: an RS384 token with that kid is refused.
    token384 = jwt.encode(_claims(), key, algorithm="RS384", headers={"kid": "k1"})
    with pytest.raises(TokenVerifierError, match="does not match"):
        verifier.verify(token384, at=AT)


@pytest.mark.parametrize("alg", ["none", "HS256", None])
def test_rejected_algorithms(alg) -> None:
    header = (
        base64.urlsafe_b64encode((b'{"alg":"%s"}' % alg.encode()) if alg else b"{}")
        .rstrip(b"=")
        .decode()
    )
    payload = base64.urlsafe_b64encode(b'{"exp": 9999999999}').rstrip(b"=").decode()
    with pytest.raises(TokenVerifierError):
        TokenVerifier(own_keys=[], insecure_header_jwk=True).verify(f"{header}.{payload}.", at=AT)


def test_garbage_tokens() -> None:
    verifier = TokenVerifier(own_keys=[])
    for bad in ("", "a.b", "a.b.c.d", "!!!.???.***", "x" * 600_000):
        with pytest.raises(TokenVerifierError):
            verifier.verify(bad, at=AT)


def test_tee_pubkey_pointers() -> None:
    key = {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "a", "y": "b"}
    ear = {
        "submods": {
            "cpu0": {
                "ear.veraison.annotated-evidence": {"runtime_data_claims": {"tee-pubkey": key}}
            }
        }
    }
    verifier = TokenVerifier(own_keys=[])
    assert verifier.tee_pubkey(ear) == key
    assert verifier.tee_pubkey({"customized_claims": {"runtime_data": {"tee-pubkey": key}}}) == key
    custom = TokenVerifier(own_keys=[], extra_teekey_paths=["/my/key"])
    assert custom.tee_pubkey({"my": {"key": key}, **ear}) == key
    with pytest.raises(TokenVerifierError, match="no tee-pubkey"):
        verifier.tee_pubkey({"submods": {}})
    with pytest.raises(TokenVerifierError, match="not a JSON object"):
        verifier.tee_pubkey({"tee-pubkey": "string"})


def test_resolve_pointer_escapes() -> None:
    doc = {"a/b": {"m~n": [10, 20]}}
    assert resolve_pointer(doc, "/a~1b/m~0n/1") == 20
    assert resolve_pointer(doc, "/a~1b/m~0n/5") is None
    assert resolve_pointer(doc, "") == doc
    assert resolve_pointer(doc, "nope") is None


# --------------------------------------------------------------------------- Simple tokens


def _rsa(bits: int = 2048):
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _counter_entropy():
    state = {"n": 0}

    def entropy(size: int) -> bytes:
        state["n"] += 1
        return bytes((state["n"] * 7 + i * 13) % 256 for i in range(size))

    return entropy


def test_simple_token_header_claims_and_verification() -> None:
    key = _rsa()
    cert = self_signed_certificate(key, common_name="simple", at=AT, serial=7)
    signer = SimpleTokenSigner(key, cert_chain=[cert])
    token, claims = signer.sign_simple(
        {"tee": "sample", "evaluation-reports": []},
        at=AT,
        duration=dt.timedelta(minutes=5),
        issuer="CoCo-Attestation-Service",
        entropy=_counter_entropy(),
    )
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS384"
    assert header["typ"] == "JWT"
    assert header["kid"] == signer.kid == jwk_thumbprint(header["jwk"])
    assert header["jwk"]["alg"] == "RS384"
    assert header["jwk"]["kty"] == "RSA"
    # x5c in base64url without padding by default (what TNG decodes).
    (entry,) = header["jwk"]["x5c"]
    assert "=" not in entry
    assert "+" not in entry
    assert "/" not in entry
    der = base64.urlsafe_b64decode(entry + "=" * (-len(entry) % 4))
    assert der == cert.public_bytes(serialization.Encoding.DER)
    # The reference's registered claims, and the JWK again in the claims.
    iat = int(AT.timestamp())
    assert claims["iss"] == "CoCo-Attestation-Service"
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (iat, iat, iat + 300)
    assert len(claims["jti"]) == 10
    assert claims["jti"].isalnum()
    assert claims["jwk"] == header["jwk"]
    assert "aud" not in claims
    # Our verifier trusts the deployment's own RSA key, with RS384 only.
    verifier = TokenVerifier(own_keys=[signer.public_key])
    assert verifier.verify(token, at=AT)["tee"] == "sample"
    forged = jwt.encode(claims, key, algorithm="RS256", headers={"jwk": header["jwk"]})
    with pytest.raises(TokenVerifierError, match="does not match its signing key"):
        verifier.verify(forged, at=AT)
    # Someone else's RSA key is not trusted.
    with pytest.raises(TokenVerifierError, match="not trusted"):
        TokenVerifier(own_keys=[_rsa().public_key()]).verify(token, at=AT)


@pytest.mark.parametrize("kind", ["ear-es256", "simple-rs384"])
def test_signed_tokens_are_what_pyjwt_writes_and_verify_elsewhere(kind: str) -> None:
    """Our compact JWS: PyJWT's header bytes, compact UTF-8 claims, a valid signature."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if kind == "ear-es256":
        key = ec.generate_private_key(ec.SECP256R1())
        signer: TokenSigner | SimpleTokenSigner = TokenSigner(key)
    else:
        key = _rsa()
        signer = SimpleTokenSigner(key)
    claims = _claims(name="é\u2028", nested={"list": [1, 2.5, None, True]}, big=2**70)
    token = signer.sign(claims)
    header_b64, payload_b64, signature_b64 = token.split(".")
    headers = {k: v for k, v in jwt.get_unverified_header(token).items() if k != "alg"}
    reference = jwt.encode(claims, key, algorithm=signer.algorithm, headers=headers)
    assert header_b64 == reference.split(".")[0]
    payload = base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4))
    assert payload == json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode()
    # PyJWT and jwcrypto, neither ours, accept the signature.
    assert (
        jwt.decode(token, key.public_key(), algorithms=[signer.algorithm], options=_NO_TIME)
        == claims
    )
    jwk_key = jwcrypto_jwk.JWK.from_pyca(key.public_key())
    checked = jwcrypto_jws.JWS()
    checked.deserialize(token, key=jwk_key)
    assert json.loads(checked.payload) == claims
    # A tampered payload is refused by both.
    forged = f"{header_b64}.{payload_b64[:-2]}{'AA' if payload_b64[-2:] != 'AA' else 'BB'}"
    forged += f".{signature_b64}"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, key.public_key(), algorithms=[signer.algorithm], options=_NO_TIME)


def test_jti_differs_between_tokens() -> None:
    signer = SimpleTokenSigner(_rsa())
    entropy = _counter_entropy()
    jtis = {
        signer.sign_simple(
            {}, at=AT, duration=dt.timedelta(minutes=1), issuer="i", entropy=entropy
        )[1]["jti"]
        for _ in range(5)
    }
    assert len(jtis) == 5


def test_simple_signer_refuses_small_keys_and_foreign_certificates() -> None:
    with pytest.raises(ValueError, match="2048"):
        SimpleTokenSigner(_rsa(1024))
    other = self_signed_certificate(_rsa(), common_name="x", at=AT, serial=1)
    with pytest.raises(ValueError, match="does not match"):
        SimpleTokenSigner(_rsa(), cert_chain=[other])


@pytest.mark.parametrize("encoding", ["base64url", "base64"])
def test_x5c_encoding_in_headers_and_standard_base64_in_jwks(encoding) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed_certificate(key, common_name="ear", at=AT, serial=3)
    der = cert.public_bytes(serialization.Encoding.DER)
    signer = TokenSigner(key, cert_chain=[cert], cert_url="https://as/cert", x5c_encoding=encoding)
    header = jwt.get_unverified_header(signer.sign(_claims()))
    expected = (
        base64.urlsafe_b64encode(der).rstrip(b"=").decode()
        if encoding == "base64url"
        else base64.b64encode(der).decode()
    )
    assert header["jwk"]["x5c"] == [expected]
    assert header["jwk"]["x5u"] == "https://as/cert"
    (published,) = signer.jwks()["keys"]
    assert published["x5c"] == [base64.b64encode(der).decode()]
    assert published["kid"] == signer.kid
    assert signer.certificate_pem() == cert.public_bytes(serialization.Encoding.PEM).decode()
    # Either encoding chains for our own verifier.
    TokenVerifier(own_keys=[], trusted_certs=[cert]).verify(signer.sign(_claims()), at=AT)


def test_generated_certificate_shape() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed_certificate(key, common_name="EAR token signer", at=AT, serial=99)
    assert cert.subject == cert.issuer
    assert cert.serial_number == 99
    assert cert.not_valid_before_utc < AT < cert.not_valid_after_utc
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    for absent in (x509.KeyUsage, x509.ExtendedKeyUsage):
        with pytest.raises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_class(absent)
    cert.verify_directly_issued_by(cert)
    # cryptography's Web PKI client verifier takes it as its own anchor.
    from cryptography.x509.verification import PolicyBuilder, Store  # noqa: PLC0415

    PolicyBuilder().store(Store([cert])).time(AT).build_client_verifier().verify(cert, [])


def test_a_jwks_listed_key_is_trusted_even_with_a_header_jwk() -> None:
    # Tokens of another deployment of ours carry jwk and kid; its JWKS is configured.
    signer = TokenSigner(ec.generate_private_key(ec.SECP256R1()))
    token = signer.sign(_claims())
    (entry,) = signer.jwks()["keys"]
    verifier = TokenVerifier(own_keys=[], trusted_jwks={entry["kid"]: entry})
    verifier.verify(token, at=AT)
    # The same kid over another key in the header is not.
    impostor = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(
        _claims(),
        impostor,
        algorithm="ES256",
        headers={"jwk": public_jwk(impostor.public_key()), "kid": entry["kid"]},
    )
    with pytest.raises(TokenVerifierError, match="not trusted"):
        verifier.verify(forged, at=AT)


# --------------------------------------------------------------------------- own ES256 path


def _own() -> tuple[TokenSigner, TokenVerifier]:
    signer = TokenSigner(ec.generate_private_key(ec.SECP256R1()))
    return signer, TokenVerifier(own_keys=[signer.public_key])


def _segments(token: str) -> list[str]:
    return token.split(".")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _reheader(token: str, **changes) -> str:
    header = jwt.get_unverified_header(token)
    header.update(changes)
    header = {k: v for k, v in header.items() if v is not None}
    _, payload, signature = _segments(token)
    return ".".join([_b64url(json.dumps(header).encode()), payload, signature])


def test_own_path_returns_exactly_what_the_generic_path_returns() -> None:
    signer, verifier = _own()
    claims = _claims(submods={"cpu0": {"ear.status": "affirming"}}, nbf=int(AT.timestamp()))
    token = signer.sign(claims)
    assert verifier.verify(token, at=AT) == claims
    generic = TokenVerifier(own_keys=[signer.public_key])
    generic._own_es256 = {}  # force PyJWT
    assert generic.verify(token, at=AT) == claims


@pytest.mark.parametrize("alg", ["none", "HS256", "ES384", "RS256"])
def test_own_key_with_another_alg_is_refused(alg: str) -> None:
    signer, verifier = _own()
    token = _reheader(signer.sign(_claims()), alg=alg)
    with pytest.raises(TokenVerifierError, match="algorithm"):
        verifier.verify(token, at=AT)


def test_own_key_with_none_and_no_signature_is_refused() -> None:
    signer, verifier = _own()
    header, payload, _ = _segments(_reheader(signer.sign(_claims()), alg="none"))
    with pytest.raises(TokenVerifierError, match="algorithm"):
        verifier.verify(f"{header}.{payload}.", at=AT)


def test_own_path_bad_signature() -> None:
    signer, verifier = _own()
    header, payload, signature = _segments(signer.sign(_claims()))
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[5] ^= 1
    for bad in (
        _b64url(bytes(raw)),  # flipped bit
        _b64url(bytes(raw[:63])),  # 63 bytes
        signature[:-2] + "!!",  # not base64url
        "",  # empty
    ):
        with pytest.raises(TokenVerifierError, match="signature verification failed"):
            verifier.verify(f"{header}.{payload}.{bad}", at=AT)


def test_own_path_tampered_payload() -> None:
    signer, verifier = _own()
    header, _, signature = _segments(signer.sign(_claims(x=1)))
    forged = _b64url(json.dumps(_claims(x=2)).encode())
    with pytest.raises(TokenVerifierError, match="signature verification failed"):
        verifier.verify(f"{header}.{forged}.{signature}", at=AT)


def test_own_path_payload_must_be_an_object() -> None:
    signer, verifier = _own()
    header = _segments(signer.sign(_claims()))[0]
    payload = _b64url(b"[1,2]")
    signing_input = f"{header}.{payload}".encode()
    der = signer._key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    signature = _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    with pytest.raises(TokenVerifierError, match="signature verification failed"):
        verifier.verify(f"{header}.{payload}.{signature}", at=AT)


def test_own_path_expiry_and_not_before_use_the_request_instant() -> None:
    signer, verifier = _own()
    token = signer.sign(_claims())
    with pytest.raises(TokenVerifierError, match="expired"):
        verifier.verify(token, at=AT + dt.timedelta(seconds=361))
    with pytest.raises(TokenVerifierError, match="no valid exp"):
        verifier.verify(signer.sign({"iat": 1, "exp": True}), at=AT)
    early = signer.sign(_claims(nbf=int(AT.timestamp()) + 120))
    with pytest.raises(TokenVerifierError, match="not yet valid"):
        verifier.verify(early, at=AT)
    verifier.verify(early, at=AT + dt.timedelta(seconds=60))  # nbf - 60 s leeway


def test_own_header_with_another_key_or_kid_is_not_trusted() -> None:
    signer, verifier = _own()
    other = TokenSigner(ec.generate_private_key(ec.SECP256R1()))
    # Another key claiming our kid: the generic path decides, and does not trust it.
    token = _reheader(other.sign(_claims()), kid=signer.kid)
    with pytest.raises(TokenVerifierError, match="not trusted"):
        verifier.verify(token, at=AT)
    # Our jwk with the other key's signature: the signature does not verify.
    header = _segments(signer.sign(_claims()))[0]
    _, payload, signature = _segments(other.sign(_claims()))
    with pytest.raises(TokenVerifierError, match="signature verification failed"):
        verifier.verify(f"{header}.{payload}.{signature}", at=AT)


def test_own_header_with_extra_members_takes_the_generic_path() -> None:
    signer, verifier = _own()
    ours = jwt.get_unverified_header(signer.sign(_claims()))
    headers = {**{k: v for k, v in ours.items() if k != "alg"}, "cty": "ear"}
    token = jwt.encode(_claims(x=3), signer._key, algorithm="ES256", headers=headers)
    assert set(jwt.get_unverified_header(token)) == {"typ", "alg", "jwk", "kid", "cty"}
    # Not our exact header: PyJWT judges it, and our key is still our key.
    assert verifier.verify(token, at=AT)["x"] == 3
    with pytest.raises(TokenVerifierError, match="signature verification failed"):
        verifier.verify(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"), at=AT)


# --------------------------------------------------------------------------- verified-token cache


def test_cached_token_is_still_judged_at_each_request_instant() -> None:
    signer, verifier = _own()
    early = signer.sign(_claims(nbf=int(AT.timestamp()) + 120))
    verifier.verify(early, at=AT + dt.timedelta(seconds=60))  # verified and remembered
    assert len(verifier._verified) == 1
    # A hit still checks nbf and exp against the instant it is given.
    with pytest.raises(TokenVerifierError, match="not yet valid"):
        verifier.verify(early, at=AT)
    verifier.verify(early, at=AT + dt.timedelta(seconds=360))
    with pytest.raises(TokenVerifierError, match="expired"):
        verifier.verify(early, at=AT + dt.timedelta(seconds=361))


def test_cached_token_does_not_vouch_for_a_tampered_copy() -> None:
    signer, verifier = _own()
    token = signer.sign(_claims(x=1))
    assert verifier.verify(token, at=AT)["x"] == 1
    header, _, signature = _segments(token)
    forged = _b64url(json.dumps(_claims(x=2)).encode())
    with pytest.raises(TokenVerifierError, match="signature verification failed"):
        verifier.verify(f"{header}.{forged}.{signature}", at=AT)
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[0] ^= 1
    with pytest.raises(TokenVerifierError, match="signature verification failed"):
        verifier.verify(f"{header}.{_segments(token)[1]}.{_b64url(bytes(raw))}", at=AT)
    # A verifier for other keys never shares what this one remembered.
    stranger = TokenVerifier(
        own_keys=[TokenSigner(ec.generate_private_key(ec.SECP256R1())).public_key]
    )
    with pytest.raises(TokenVerifierError, match="not trusted"):
        stranger.verify(token, at=AT)


def test_verified_token_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kbs.tokens.VERIFIED_TOKEN_CACHE_ENTRIES", 3)
    signer, verifier = _own()
    tokens = [signer.sign(_claims(n=n)) for n in range(5)]
    for token in tokens:
        verifier.verify(token, at=AT)
    assert len(verifier._verified) == 3
    # The oldest were dropped and are verified in full again (still accepted).
    assert verifier.verify(tokens[0], at=AT)["n"] == 0
    assert len(verifier._verified) == 3


def test_kept_claims_are_still_judged_at_each_request_instant() -> None:
    signer, verifier = _own()
    token = signer.sign(_claims(nbf=int(AT.timestamp()) + 120))
    first = verifier.verify(token, at=AT + dt.timedelta(seconds=60))
    assert len(verifier._claims) == 1
    # The second call answers from the kept claims, and judges them at its own instant.
    assert verifier.verify(token, at=AT + dt.timedelta(seconds=61)) is first
    with pytest.raises(TokenVerifierError, match="not yet valid"):
        verifier.verify(token, at=AT)
    with pytest.raises(TokenVerifierError, match="expired"):
        verifier.verify(token, at=AT + dt.timedelta(seconds=361))


def test_kept_claims_are_bounded_and_large_payloads_are_not_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("kbs.tokens.CLAIMS_CACHE_ENTRIES", 2)
    monkeypatch.setattr("kbs.tokens.CLAIMS_CACHE_MAX_PAYLOAD", 400)
    signer, verifier = _own()
    small = [signer.sign(_claims(n=n)) for n in range(3)]
    for token in small:
        verifier.verify(token, at=AT)
    assert len(verifier._claims) == 2
    assert len(verifier._verified) == 3
    large = signer.sign(_claims(n=9, pad="x" * 1000))
    assert verifier.verify(large, at=AT)["n"] == 9
    assert verifier.verify(large, at=AT)["n"] == 9  # verified, decoded again
    assert len(verifier._claims) == 2
    # The dropped small token is decoded again, and still accepted.
    assert verifier.verify(small[0], at=AT)["n"] == 0


def test_kept_claims_fit_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    signer = TokenSigner(ec.generate_private_key(ec.SECP256R1()))
    sizes = [len(signer.sign(_claims(n=n, pad="x" * 300)).split(".")[1]) for n in range(3)]
    # Room for two of these payloads, not three.
    monkeypatch.setattr("kbs.tokens.CLAIMS_CACHE_BUDGET", sizes[0] + sizes[1] + 10)
    verifier = TokenVerifier(own_keys=[signer.public_key])
    tokens = [signer.sign(_claims(n=n, pad="x" * 300)) for n in range(3)]
    first = [verifier.verify(token, at=AT) for token in tokens]
    assert len(verifier._claims) == 2
    assert verifier._claims.weight <= sizes[0] + sizes[1] + 10
    # The two newest answer from memory (the same object); the oldest is decoded again.
    assert verifier.verify(tokens[2], at=AT) is first[2]
    assert verifier.verify(tokens[1], at=AT) is first[1]
    again = verifier.verify(tokens[0], at=AT)
    assert again == first[0]
    assert again is not first[0]


def test_a_tdx_sized_token_keeps_its_claims() -> None:
    signer, verifier = _own()
    token = signer.sign(_claims(events=[{"digest": "ab" * 48, "n": n} for n in range(400)]))
    assert len(token.split(".")[1]) > 16 * 1024  # larger than the claims once kept
    first = verifier.verify(token, at=AT)
    assert verifier.verify(token, at=AT) is first


# --------------------------------------------------------------------------- base64url segments


_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")


def _regex_then_urlsafe(segment: str) -> bytes | None:
    """The check this module made before: the alphabet by regex, then the stdlib decoder."""
    if not _SEGMENT.fullmatch(segment):
        return None
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except ValueError:
        return None


@settings(max_examples=2000)
@given(
    st.text(alphabet="AQgw09-_+/=. \n\u00e9", max_size=14)
    | st.binary(max_size=12).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="))
)
def test_segment_decoding_accepts_exactly_base64url(segment: str) -> None:
    try:
        ours: bytes | None = _b64url_decode(segment)
    except ValueError:
        ours = None
    assert ours == _regex_then_urlsafe(segment)


@st.composite
def _long_segments(draw: st.DrawFn) -> str:
    """Segments long enough for pybase64's SIMD loop, with at most one foreign character."""
    segment = base64.urlsafe_b64encode(draw(st.binary(min_size=40, max_size=400)))
    chars = list(segment.decode().rstrip("="))
    if draw(st.booleans()):
        where = draw(st.integers(0, len(chars) - 1))
        chars[where] = draw(st.sampled_from("+/=. \n\x00\u00e9*"))
    if draw(st.booleans()):
        del chars[draw(st.integers(0, len(chars) - 1))]  # breaks the length now and then
    return "".join(chars)


@settings(max_examples=1000)
@given(_long_segments())
def test_long_segment_decoding_accepts_exactly_base64url(segment: str) -> None:
    try:
        ours: bytes | None = _b64url_decode(segment)
    except ValueError:
        ours = None
    assert ours == _regex_then_urlsafe(segment)


@given(st.binary(max_size=300))
def test_segment_encoding_is_the_standard_librarys(raw: bytes) -> None:
    assert ours_b64url(raw) == base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert _b64url_decode(ours_b64url(raw)) == raw


def test_verify_identified_names_the_token_as_the_audit_trail_does() -> None:
    signer, verifier = _own()
    token = signer.sign(_claims(n=1))
    for _ in range(2):  # verified in full, then from memory
        claims, digest = verifier.verify_identified(token, at=AT)
        assert claims["n"] == 1
        assert digest.hex() == token_id(token)
    # A token of another trusted signer (the generic path) too.
    other = ec.generate_private_key(ec.SECP256R1())
    foreign = jwt.encode(_claims(n=2), other, algorithm="ES256", headers={"kid": "k1"})
    jwks = {"k1": {**public_jwk(other.public_key()), "alg": "ES256"}}
    trusting = TokenVerifier(own_keys=[], trusted_jwks=jwks)
    claims, digest = trusting.verify_identified(foreign, at=AT)
    assert (claims["n"], digest.hex()) == (2, token_id(foreign))
    with pytest.raises(TokenVerifierError):
        verifier.verify_identified(token[:-4] + "AAAA", at=AT)
