# SPDX-License-Identifier: Apache-2.0
"""DCAP collateral in the database: the TDX verifier's cache, shared by replicas.

One row of ``kbs_collateral`` per (FMSPC, PCK CA, TCB update type). ``payload`` is a
small JSON envelope around dcap-qvl's collateral JSON, so the table needs no migration
when we add a field::

    {"format_version": 1, "source_url": "https://...", "collateral": "<QuoteCollateralV3 JSON>"}

The row is only a cache: whoever loads it parses it again and checks every signature up
to the trust anchor (``CachingCollateralSource``), so a row written by a replica with a
different trust anchor, or edited by hand, is ignored rather than trusted. A newer row
never loses to an older one: a save replaces a row only if its collateral expires later
or has a higher TCB evaluation data number, checked in the same statement.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final, get_args

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from attestation.tdx.base import CollateralKey, StoredCollateral, TcbUpdateType
from attestation.tdx.pck import CaType
from kbs import db
from kbs.errors import DatabaseUnavailableError

_logger = logging.getLogger(__name__)

__all__ = ["SqlCollateralStore", "row_key"]

#: Rows larger than this are not ours (real collateral is about 30 KiB of JSON).
MAX_PAYLOAD_CHARS: Final = 4 * 1024 * 1024


def row_key(key: CollateralKey) -> str:
    """The ``kbs_collateral.key`` of ``key``: ``tdx/<FMSPC>/<ca>/<update type>``."""
    return f"tdx/{key.fmspc}/{key.ca}/{key.tcb_update_type}"


def _parse_row_key(text: str) -> CollateralKey | None:
    parts = text.split("/")
    if len(parts) != 4 or parts[0] != "tdx":  # noqa: PLR2004
        return None
    _, fmspc, ca, update = parts
    if ca not in get_args(CaType) or update not in get_args(TcbUpdateType):
        return None
    try:
        return CollateralKey(fmspc, ca, update)  # type: ignore[arg-type]
    except ValueError:
        return None


class SqlCollateralStore:
    """A :class:`~attestation.tdx.base.CollateralStore` on the ``kbs_collateral`` table."""

    def __init__(self, engine: AsyncEngine) -> None:
        """Use ``engine`` for every operation."""
        self._engine = engine

    async def load(self, key: CollateralKey) -> StoredCollateral | None:
        """Return the stored collateral for ``key``, or ``None``.

        A row that is not in our envelope format is treated as absent (and logged).

        Raises:
            DatabaseUnavailableError: the database could not be read.
        """
        try:
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(
                        sa.select(
                            db.collateral.c.payload,
                            db.collateral.c.fetched_at,
                            db.collateral.c.next_update,
                        ).where(db.collateral.c.key == row_key(key))
                    )
                ).first()
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError("collateral could not be read") from exc
        if row is None:
            return None
        return _decode(key, row.payload, row.fetched_at, row.next_update)

    async def save(self, key: CollateralKey, stored: StoredCollateral) -> None:
        """Store ``stored`` for ``key`` unless the row already holds newer collateral.

        "Newer" is a later ``next_update`` or, for the same one, a later ``fetched_at``:
        several replicas refreshing at once all end with the newest copy.

        Raises:
            DatabaseUnavailableError: the database could not be written.
        """
        payload = json.dumps(
            {
                "format_version": stored.format_version,
                "source_url": stored.source_url,
                "collateral": stored.collateral_json,
            },
            separators=(",", ":"),
        )
        values = {
            "payload": payload,
            "fetched_at": db.to_millis(stored.fetched_at),
            "next_update": db.to_millis(stored.next_update),
        }
        table = db.collateral
        newer = sa.or_(
            table.c.next_update < values["next_update"],
            sa.and_(
                table.c.next_update == values["next_update"],
                table.c.fetched_at < values["fetched_at"],
            ),
        )
        try:
            async with self._engine.begin() as conn:
                updated = await conn.execute(
                    table.update().where(table.c.key == row_key(key), newer).values(**values)
                )
                if updated.rowcount:
                    return
                exists = await conn.scalar(
                    sa.select(sa.func.count()).where(table.c.key == row_key(key))
                )
                if not exists:
                    await conn.execute(table.insert().values(key=row_key(key), **values))
        except IntegrityError:
            _logger.debug("another process stored collateral for %s first", key)
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError("collateral could not be stored") from exc

    async def keys(self) -> list[CollateralKey]:
        """Every stored key (for warming the in-memory cache at start-up).

        Raises:
            DatabaseUnavailableError: the database could not be read.
        """
        try:
            async with self._engine.connect() as conn:
                rows = await conn.execute(
                    sa.select(db.collateral.c.key).order_by(db.collateral.c.key)
                )
                texts = [row.key for row in rows]
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError("collateral keys could not be listed") from exc
        return [key for key in map(_parse_row_key, texts) if key is not None]


def _decode(
    key: CollateralKey, payload: str, fetched_at_ms: int, next_update_ms: int
) -> StoredCollateral | None:
    if len(payload) > MAX_PAYLOAD_CHARS:
        _logger.warning("stored collateral for %s is too large; ignoring it", key)
        return None
    try:
        envelope: Any = json.loads(payload)
        version = envelope["format_version"]
        source_url = envelope["source_url"]
        collateral_json = envelope["collateral"]
    except (ValueError, KeyError, TypeError):
        _logger.warning("stored collateral for %s is not in our format; ignoring it", key)
        return None
    if not (
        isinstance(version, int)
        and isinstance(source_url, str)
        and isinstance(collateral_json, str)
    ):
        _logger.warning("stored collateral for %s is not in our format; ignoring it", key)
        return None
    return StoredCollateral(
        collateral_json=collateral_json,
        fetched_at=db.from_millis(fetched_at_ms),
        next_update=db.from_millis(next_update_ms),
        source_url=source_url,
        format_version=version,
    )
