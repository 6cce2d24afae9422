# SPDX-License-Identifier: Apache-2.0
"""RCAR sessions, kept in SQL so any server process can continue any guest's handshake.

A session is opened by ``/auth`` (state ``authed``: it holds the challenge) and closed by
a successful ``/attest`` (state ``attested``: it holds the token). It is bound to
nothing but its random id, carried in the ``kbs-session-id`` cookie. Expired sessions
are deleted lazily on read and by a periodic sweep.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from kbs import db, hotsql
from kbs.errors import DatabaseUnavailableError

_logger = logging.getLogger(__name__)

__all__ = ["ATTESTED", "AUTHED", "Session", "SessionStore"]

AUTHED: Final = "authed"
ATTESTED: Final = "attested"

#: Session ids are 16 random bytes in lower-case hex (the reference's UUID "simple" form).
SESSION_ID_BYTES: Final = 16


@dataclass(frozen=True, slots=True)
class Session:
    """One session row."""

    id: str
    state: str
    protocol_version: str
    tee: str
    nonce: str
    request_extra_params: Any
    token: str | None
    expires_at: dt.datetime

    @property
    def attested(self) -> bool:
        """Whether ``/attest`` has succeeded on this session."""
        return self.state == ATTESTED


# The hot statements, as plain SQL (kbs/hotsql.py); the column order is _row_to_session's.
_INSERT: Final = (
    "INSERT INTO kbs_sessions"
    " (id, state, protocol_version, tee, nonce, request_extra_params, token, expires_at)"
    " VALUES (:id, :state, :protocol_version, :tee, :nonce, :request_extra_params, :token,"
    " :expires_at)"
)
_SELECT: Final = (
    "SELECT id, state, protocol_version, tee, nonce, request_extra_params, token, expires_at"
    " FROM kbs_sessions WHERE id = :id"
)
_DELETE_EXPIRED_ONE: Final = "DELETE FROM kbs_sessions WHERE id = :id AND expires_at <= :at"
_ATTEST: Final = (
    "UPDATE kbs_sessions SET state = :attested, token = :token WHERE id = :id AND state = :authed"
)


def _row_to_session(row: tuple[Any, ...]) -> Session:
    sid, state, protocol_version, tee, nonce, extra, token, expires_at = row
    return Session(
        id=sid,
        state=state,
        protocol_version=protocol_version,
        tee=tee,
        nonce=nonce,
        request_extra_params=json.loads(extra),
        token=token,
        expires_at=db.from_millis(expires_at),
    )


class SessionStore:
    """Sessions in the ``kbs_sessions`` table."""

    def __init__(self, engine: AsyncEngine, *, sql: hotsql.HotSql | None = None) -> None:
        """Use ``engine`` (and ``sql``, default: one made for it) for every operation."""
        self._engine = engine
        self._sql = sql if sql is not None else hotsql.for_engine(engine)

    async def create(
        self,
        *,
        session_id: str,
        protocol_version: str,
        tee: str,
        nonce: str,
        request_extra_params: Any,
        expires_at: dt.datetime,
    ) -> Session:
        """Open a new ``authed`` session.

        Raises:
            DatabaseUnavailableError: the database could not be written.
        """
        values = {
            "id": session_id,
            "state": AUTHED,
            "protocol_version": protocol_version,
            "tee": tee,
            "nonce": nonce,
            "request_extra_params": json.dumps(request_extra_params, separators=(",", ":")),
            "token": None,
            "expires_at": db.to_millis(expires_at),
        }
        try:
            await self._sql.execute(_INSERT, values)
        except hotsql.HotSqlError as exc:
            raise DatabaseUnavailableError("session could not be stored") from exc
        return Session(
            id=session_id,
            state=AUTHED,
            protocol_version=protocol_version,
            tee=tee,
            nonce=nonce,
            request_extra_params=request_extra_params,
            token=None,
            expires_at=expires_at,
        )

    async def get(self, session_id: str, *, at: dt.datetime) -> Session | None:
        """Return the live session ``session_id``, or ``None`` if absent or expired.

        An expired session found here is deleted.

        Raises:
            DatabaseUnavailableError: the database could not be read.
        """
        at_ms = db.to_millis(at)
        try:
            row = await self._sql.fetch_one(_SELECT, {"id": session_id})
            if row is None:
                return None
            if row[-1] <= at_ms:
                await self._sql.execute(_DELETE_EXPIRED_ONE, {"id": session_id, "at": at_ms})
                return None
        except hotsql.HotSqlError as exc:
            raise DatabaseUnavailableError("session could not be read") from exc
        return _row_to_session(row)

    async def mark_attested(self, session: Session, token: str) -> Session:
        """Move ``session`` to ``attested`` with ``token``; the expiry is unchanged.

        If another process attested the same session first, its token wins and is
        returned, so every caller sees the one token the session holds.

        Raises:
            DatabaseUnavailableError: the database could not be written.
        """
        params = {"id": session.id, "token": token, "attested": ATTESTED, "authed": AUTHED}
        try:
            if await self._sql.execute(_ATTEST, params) == 1:
                return _attested(session, token)
            # Not ours to attest any more: the row as the winner left it.
            row = await self._sql.fetch_one(_SELECT, {"id": session.id})
        except hotsql.HotSqlError as exc:
            raise DatabaseUnavailableError("session could not be updated") from exc
        if row is None or row[6] is None:
            raise DatabaseUnavailableError("session vanished while being attested")
        return _row_to_session(row)

    async def purge_expired(self, *, at: dt.datetime) -> int:
        """Delete every session that expired before ``at``; return how many.

        Raises:
            DatabaseUnavailableError: the database could not be written.
        """
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    db.sessions.delete().where(db.sessions.c.expires_at <= db.to_millis(at))
                )
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError("expired sessions could not be purged") from exc
        return int(result.rowcount or 0)

    async def count_live(self, *, at: dt.datetime) -> int:
        """Number of sessions that have not expired at ``at``.

        Raises:
            DatabaseUnavailableError: the database could not be read.
        """
        try:
            async with self._engine.connect() as conn:
                value = await conn.scalar(
                    sa.select(sa.func.count())
                    .select_from(db.sessions)
                    .where(db.sessions.c.expires_at > db.to_millis(at))
                )
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError("sessions could not be counted") from exc
        return int(value or 0)


def _attested(session: Session, token: str) -> Session:
    return Session(
        id=session.id,
        state=ATTESTED,
        protocol_version=session.protocol_version,
        tee=session.tee,
        nonce=session.nonce,
        request_extra_params=session.request_extra_params,
        token=token,
        expires_at=session.expires_at,
    )
