# SPDX-License-Identifier: Apache-2.0
"""Generated signing keys and certificates in the database: created once, shared, checked."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kbs import db
from kbs.errors import DatabaseUnavailableError
from kbs.stores import (
    load_or_create_certificate,
    load_or_create_rsa_signing_key,
    load_or_create_signing_key,
)
from kbs.tokens import self_signed_certificate

AT = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
async def engine(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'kbs.db'}"
    db.migrate(url)
    engine = db.make_async_engine(url)
    yield engine
    await engine.dispose()


async def test_keys_and_certificates_are_created_once(engine) -> None:
    ear = await load_or_create_signing_key(engine, at=AT)
    simple = await load_or_create_rsa_signing_key(engine, at=AT)
    assert isinstance(simple, rsa.RSAPrivateKey)
    assert simple.key_size == 2048
    assert (await load_or_create_signing_key(engine, at=AT)).private_numbers() == (
        ear.private_numbers()
    )
    assert (await load_or_create_rsa_signing_key(engine, at=AT)).private_numbers() == (
        simple.private_numbers()
    )
    calls = []

    def create():
        calls.append(1)
        return self_signed_certificate(ear, common_name="ear", at=AT, serial=len(calls))

    first = await load_or_create_certificate(
        engine, key_name="ear-token-signer", public_key=ear.public_key(), create=create, at=AT
    )
    second = await load_or_create_certificate(
        engine, key_name="ear-token-signer", public_key=ear.public_key(), create=create, at=AT
    )
    assert first == second
    assert len(calls) == 1


async def test_a_stored_certificate_for_another_key_is_refused(engine) -> None:
    ear = await load_or_create_signing_key(engine, at=AT)
    other = ec.generate_private_key(ec.SECP256R1())
    await load_or_create_certificate(
        engine,
        key_name="ear-token-signer",
        public_key=other.public_key(),
        create=lambda: self_signed_certificate(other, common_name="x", at=AT, serial=1),
        at=AT,
    )
    with pytest.raises(DatabaseUnavailableError, match="does not certify ear-token-signer"):
        await load_or_create_certificate(
            engine,
            key_name="ear-token-signer",
            public_key=ear.public_key(),
            create=lambda: self_signed_certificate(ear, common_name="x", at=AT, serial=2),
            at=AT,
        )


async def test_key_rows_of_the_wrong_type_are_refused(engine) -> None:
    await load_or_create_signing_key(engine, at=AT, name="mixed-up")
    with pytest.raises(DatabaseUnavailableError, match="not an RSA key"):
        await load_or_create_rsa_signing_key(engine, at=AT, name="mixed-up")
