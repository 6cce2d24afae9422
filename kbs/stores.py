# SPDX-License-Identifier: Apache-2.0
"""Policies, reference values and signing keys in the database.

Every replica reads the same rows, so a policy or reference value set through one
server process takes effect in all of them.
"""

from __future__ import annotations

import builtins
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any, Final

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from kbs import db, hotsql
from kbs.errors import DatabaseUnavailableError
from policy.base import ReferenceValue

_logger = logging.getLogger(__name__)

__all__ = [
    "ATTESTATION_NAMESPACE",
    "RESOURCE_NAMESPACE",
    "PolicyStore",
    "ReferenceValueStore",
    "load_or_create_certificate",
    "load_or_create_rsa_signing_key",
    "load_or_create_signing_key",
]

#: Namespace of appraisal (EAR) policies, ids like ``default_cpu``.
ATTESTATION_NAMESPACE: Final = "attestation"
#: Namespace of resource (release) policies, id ``resource-policy``.
RESOURCE_NAMESPACE: Final = "resource"

#: Name of the EAR token signing key in ``kbs_signing_keys``.
TOKEN_SIGNING_KEY: Final = "ear-token-signer"  # noqa: S105 - a row name, not a secret
#: Name of the Simple token (RS384) signing key in ``kbs_signing_keys``.
SIMPLE_TOKEN_SIGNING_KEY: Final = "simple-token-signer"  # noqa: S105 - a row name
#: A generated key's self-signed certificate is stored beside it, as ``<key name>.crt``.
CERTIFICATE_SUFFIX: Final = ".crt"
#: Size of a generated Simple token key (the reference generates 2048-bit keys too).
SIMPLE_TOKEN_KEY_BITS: Final = 2048


def policy_sha384(text: str) -> str:
    """SHA-384 hex digest of a policy text (the reference's policy hash)."""
    return hashlib.sha384(text.encode()).hexdigest()


_SELECT_POLICY: Final = (
    "SELECT text FROM kbs_policies WHERE namespace = :namespace AND policy_id = :policy_id"
)
_SELECT_LIVE_REFERENCE_VALUES: Final = (
    "SELECT name, value FROM kbs_reference_values WHERE expires_at IS NULL OR expires_at > :at"
)


class PolicyStore:
    """Rego policy texts by (namespace, id)."""

    def __init__(self, engine: AsyncEngine, *, sql: hotsql.HotSql | None = None) -> None:
        """Use ``engine`` (and ``sql``, default: one made for it) for every operation."""
        self._engine = engine
        self._sql = sql if sql is not None else hotsql.for_engine(engine)

    async def get(self, namespace: str, policy_id: str) -> str | None:
        """Return the policy text, or ``None`` if there is none.

        Raises:
            DatabaseUnavailableError: the database could not be read.
        """
        try:
            row = await self._sql.fetch_one(
                _SELECT_POLICY, {"namespace": namespace, "policy_id": policy_id}
            )
        except hotsql.HotSqlError as exc:
            raise DatabaseUnavailableError("policy could not be read") from exc
        return None if row is None else str(row[0])

    async def list(self, namespace: str) -> list[str]:
        """Return the policy ids in ``namespace``, sorted.

        Raises:
            DatabaseUnavailableError: the database could not be read.
        """
        try:
            async with self._engine.connect() as conn:
                rows = await conn.execute(
                    sa.select(db.policies.c.policy_id)
                    .where(db.policies.c.namespace == namespace)
                    .order_by(db.policies.c.policy_id)
                )
                return [row.policy_id for row in rows]
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError("policies could not be listed") from exc

    async def list_with_hashes(self, namespace: str) -> builtins.list[tuple[str, str]]:
        """Return ``(policy id, SHA-384 hex of its text)`` pairs in ``namespace``, sorted.

        Raises:
            DatabaseUnavailableError: the database could not be read.
        """
        try:
            async with self._engine.connect() as conn:
                rows = await conn.execute(
                    sa.select(db.policies.c.policy_id, db.policies.c.sha384)
                    .where(db.policies.c.namespace == namespace)
                    .order_by(db.policies.c.policy_id)
                )
                return [(row.policy_id, row.sha384) for row in rows]
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError("policies could not be listed") from exc

    async def set(
        self, namespace: str, policy_id: str, text: str, *, at: dt.datetime, overwrite: bool = True
    ) -> bool:
        """Store ``text``; with ``overwrite=False`` an existing policy is kept.

        Returns whether the text was written.

        Raises:
            DatabaseUnavailableError: the database could not be written.
        """
        values = {
            "namespace": namespace,
            "policy_id": policy_id,
            "text": text,
            "sha384": policy_sha384(text),
            "updated_at": db.to_millis(at),
        }
        try:
            async with self._engine.begin() as conn:
                if overwrite:
                    updated = await conn.execute(
                        db.policies.update()
                        .where(
                            db.policies.c.namespace == namespace,
                            db.policies.c.policy_id == policy_id,
                        )
                        .values(**values)
                    )
                    if updated.rowcount:
                        return True
                await conn.execute(db.policies.insert().values(**values))
        except IntegrityError:
            # Another process inserted it first: fine for install-if-absent, and for
            # an overwrite the other writer's value is as recent as ours.
            return False
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError("policy could not be stored") from exc
        return True

    async def delete(self, namespace: str, policy_id: str) -> bool:
        """Delete a policy; return whether it existed.

        Raises:
            DatabaseUnavailableError: the database could not be written.
        """
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    db.policies.delete().where(
                        db.policies.c.namespace == namespace,
                        db.policies.c.policy_id == policy_id,
                    )
                )
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError("policy could not be deleted") from exc
        return bool(result.rowcount)


class ReferenceValueStore:
    """Reference values by name, with expiry."""

    def __init__(self, engine: AsyncEngine, *, sql: hotsql.HotSql | None = None) -> None:
        """Use ``engine`` (and ``sql``, default: one made for it) for every operation."""
        self._engine = engine
        self._sql = sql if sql is not None else hotsql.for_engine(engine)

    async def put(self, values: Iterable[ReferenceValue], *, at: dt.datetime) -> None:
        """Store (replace) each value.

        Raises:
            DatabaseUnavailableError: the database could not be written.
        """
        try:
            async with self._engine.begin() as conn:
                for rv in values:
                    row = {
                        "version": rv.version,
                        "value": json.dumps(rv.value, separators=(",", ":")),
                        "expires_at": db.to_millis(rv.expiration) if rv.expiration else None,
                        "updated_at": db.to_millis(at),
                    }
                    result = await conn.execute(
                        db.reference_values.update()
                        .where(db.reference_values.c.name == rv.name)
                        .values(**row)
                    )
                    if not result.rowcount:
                        await conn.execute(db.reference_values.insert().values(name=rv.name, **row))
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError("reference values could not be stored") from exc

    async def get(self, name: str, *, at: dt.datetime) -> tuple[bool, Any]:
        """Return ``(found, value)`` for a live (unexpired) reference value.

        Raises:
            DatabaseUnavailableError: the database could not be read.
        """
        try:
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(
                        sa.select(db.reference_values.c.value).where(
                            db.reference_values.c.name == name, _live(at)
                        )
                    )
                ).first()
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError("reference value could not be read") from exc
        if row is None:
            return False, None
        return True, json.loads(row.value)

    async def snapshot(self, *, at: dt.datetime) -> dict[str, Any]:
        """All live reference values, for one policy evaluation.

        Raises:
            DatabaseUnavailableError: the database could not be read.
        """
        try:
            rows = await self._sql.fetch_all(
                _SELECT_LIVE_REFERENCE_VALUES, {"at": db.to_millis(at)}
            )
        except hotsql.HotSqlError as exc:
            raise DatabaseUnavailableError("reference values could not be read") from exc
        return {name: json.loads(value) for name, value in rows}


def _live(at: dt.datetime) -> sa.ColumnElement[bool]:
    return sa.or_(
        db.reference_values.c.expires_at.is_(None),
        db.reference_values.c.expires_at > db.to_millis(at),
    )


async def _load_or_create_pem(
    engine: AsyncEngine, name: str, create: Callable[[], str], *, at: dt.datetime
) -> str:
    """Return the PEM stored as ``name``, storing ``create()`` first if there is none.

    Several processes starting at once agree on one value: the first insert wins and
    everyone reads the stored row back.

    Raises:
        DatabaseUnavailableError: the database could not be read or written.
    """
    select = sa.select(db.signing_keys.c.pem).where(db.signing_keys.c.name == name)
    try:
        async with engine.connect() as conn:
            pem = await conn.scalar(select)
        if pem is None:
            fresh = create()
            try:
                async with engine.begin() as conn:
                    await conn.execute(
                        db.signing_keys.insert().values(
                            name=name, pem=fresh, created_at=db.to_millis(at)
                        )
                    )
                _logger.info("generated %s and stored it in the database", name)
            except IntegrityError:
                _logger.debug("another process stored %s first", name)
            async with engine.connect() as conn:
                pem = await conn.scalar(select)
    except SQLAlchemyError as exc:
        raise DatabaseUnavailableError(f"{name} could not be loaded") from exc
    if pem is None:
        raise DatabaseUnavailableError(f"{name} vanished from the database")
    return str(pem)


def _private_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


async def load_or_create_signing_key(
    engine: AsyncEngine, *, at: dt.datetime, name: str = TOKEN_SIGNING_KEY
) -> ec.EllipticCurvePrivateKey:
    """Return the deployment's P-256 signing key, generating and storing it once.

    Several processes starting at once agree on one key: the first insert wins and
    everyone reads the stored row back.

    Raises:
        DatabaseUnavailableError: the database could not be read or written.
    """
    pem = await _load_or_create_pem(
        engine, name, lambda: _private_pem(ec.generate_private_key(ec.SECP256R1())), at=at
    )
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DatabaseUnavailableError("stored signing key is not an EC key")
    return key


async def load_or_create_rsa_signing_key(
    engine: AsyncEngine, *, at: dt.datetime, name: str = SIMPLE_TOKEN_SIGNING_KEY
) -> rsa.RSAPrivateKey:
    """Return the deployment's RSA (Simple token) signing key, generating it once.

    Raises:
        DatabaseUnavailableError: the database could not be read or written.
    """

    def create() -> str:
        return _private_pem(
            rsa.generate_private_key(public_exponent=65537, key_size=SIMPLE_TOKEN_KEY_BITS)
        )

    pem = await _load_or_create_pem(engine, name, create, at=at)
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DatabaseUnavailableError("stored Simple token signing key is not an RSA key")
    return key


async def load_or_create_certificate(
    engine: AsyncEngine,
    *,
    key_name: str,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    create: Callable[[], x509.Certificate],
    at: dt.datetime,
) -> x509.Certificate:
    """Return the certificate stored beside the generated key ``key_name``.

    ``create`` builds it (self-signed) the first time; every replica then serves the
    same certificate.

    Raises:
        DatabaseUnavailableError: the database could not be read or written, or the
            stored certificate is not for ``public_key``.
    """
    name = key_name + CERTIFICATE_SUFFIX
    pem = await _load_or_create_pem(
        engine, name, lambda: create().public_bytes(serialization.Encoding.PEM).decode(), at=at
    )
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise DatabaseUnavailableError(f"stored {name} is not a PEM certificate") from exc
    stored = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if stored != expected:
        raise DatabaseUnavailableError(f"stored {name} does not certify {key_name}")
    return cert
