# SPDX-License-Identifier: Apache-2.0
"""Resource requests accept tokens from issuers configured Trustee's way, and nothing else."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kbs.client.tee_key import TeeKeyPair
from kbs.tokens import public_jwk
from support.kbs_app import make_admin_key, running_kbs, settings_for

ERR = "https://github.com/confidential-containers/kbs/errors/"


def _cert(subject, key, issuer, issuer_key, *, ca):
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def _ear(key: TeeKeyPair) -> dict:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    return {
        "iat": now,
        "exp": now + 300,
        "submods": {
            "cpu0": {
                "ear.status": "affirming",
                "ear.veraison.annotated-evidence": {
                    "runtime_data_claims": {"tee-pubkey": key.public_jwk()}
                },
            }
        },
    }


async def test_x5c_and_jwks_issuers(tmp_path: Path) -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert("passport root", root_key, "passport root", root_key, ca=True)
    (tmp_path / "ca.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    signer_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert("passport as", signer_key, "passport root", root_key, ca=False)
    jwks_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "jwks.json").write_text(
        json.dumps({"keys": [{**public_jwk(jwks_key.public_key()), "kid": "ita-1"}]})
    )
    admin_key = make_admin_key(tmp_path)
    overrides = {
        "attestation_token": {
            "trusted_certs_paths": [str(tmp_path / "ca.pem")],
            "trusted_jwk_sets": [f"file://{tmp_path / 'jwks.json'}"],
        }
    }
    settings = settings_for(tmp_path, admin_key, overrides=overrides)
    async with running_kbs(settings, admin_key=admin_key) as kbs:
        await kbs.admin().set_resource("a/b/c", b"passport secret")
        tee_key = TeeKeyPair.generate()
        x5c = [base64.b64encode(leaf.public_bytes(serialization.Encoding.DER)).decode()]
        chained = jwt.encode(
            _ear(tee_key),
            signer_key,
            algorithm="ES256",
            headers={"jwk": {**public_jwk(signer_key.public_key()), "x5c": x5c}},
        )
        by_kid = jwt.encode(_ear(tee_key), jwks_key, algorithm="ES256", headers={"kid": "ita-1"})
        for token in (chained, by_kid):
            response = await kbs.new_http().get(
                "/kbs/v0/resource/a/b/c", headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 200, response.text
            assert tee_key.decrypt(response.json()) == b"passport secret"
        # The same chain with an unknown kid, or a self-made header key, is refused.
        stranger = ec.generate_private_key(ec.SECP256R1())
        for token in (
            jwt.encode(_ear(tee_key), stranger, algorithm="ES256", headers={"kid": "ita-2"}),
            jwt.encode(
                _ear(tee_key),
                stranger,
                algorithm="ES256",
                headers={"jwk": {**public_jwk(stranger.public_key()), "x5c": x5c}},
            ),
        ):
            response = await kbs.new_http().get(
                "/kbs/v0/resource/a/b/c", headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 401
            assert response.json()["type"] == ERR + "TokenVerifierError"
