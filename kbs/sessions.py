# SPDX-License-Identifier: Apache-2.0
"""RCAR sessions, kept in SQL so any server process can continue any guest's handshake.

A session is opened by ``/auth`` (state ``authed``: it holds the challenge) and closed by
a successful ``/attest`` (state ``attested``: it holds the token). It is bound to
nothing but its random id, carried in the ``kbs-session-id`` cookie. Expired sessions
are deleted lazily on read and by a periodic sweep.

``/auth`` needs no credentials, so a flood of it would fill the table. The store refuses
a new session (429) while ``max_unattested`` live ``authed`` sessions exist, counted in
the database so the cap holds across replicas. Counting on every ``/auth`` would cost a
range scan per request; instead each process counts at most once per
:data:`UNATTESTED_RECOUNT_INTERVAL_S` (a scan of the ``(state, expires_at)`` index that
stops at the cap, so a flood cannot make it dearer) and adds the sessions it opened and
attested since. Expired sessions are never counted.
With N replicas the cap can be overshot by what the others open within one interval.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from kbs import db
from kbs.errors import DatabaseUnavailableError, RateLimitedError

_logger = logging.getLogger(__name__)

__all__ = ["ATTESTED", "AUTHED", "Session", "SessionStore"]

AUTHED: Final = "authed"
ATTESTED: Final = "attested"

#: Session ids are 16 random bytes in lower-case hex (the reference's UUID "simple" form).
SESSION_ID_BYTES: Final = 16

#: Seconds a process trusts its last count of live unattested sessions.
UNATTESTED_RECOUNT_INTERVAL_S: Final = 1.0


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


def _row_to_session(row: sa.Row[Any]) -> Session:
    return Session(
        id=row.id,
        state=row.state,
        protocol_version=row.protocol_version,
        tee=row.tee,
        nonce=row.nonce,
        request_extra_params=json.loads(row.request_extra_params),
        token=row.token,
        expires_at=db.from_millis(row.expires_at),
    )


class SessionStore:
    """Sessions in the ``kbs_sessions`` table."""

    def __init__(self, engine: AsyncEngine, *, max_unattested: int | None = None) -> None:
        """Use ``engine`` for every operation; cap live ``authed`` sessions at ``max_unattested``.

        ``None`` sets no cap.
        """
        self._engine = engine
        self._max_unattested = max_unattested
        self._counted: int = 0  # live authed sessions at the last count
        self._counted_at: float | None = None  # when (seconds since the epoch)
        self._since: int = 0  # opened minus attested by this process since then
        self._recount_lock = asyncio.Lock()

    async def _admit(self, at: dt.datetime) -> None:
        """Refuse a new session when the cap on unattested sessions is reached.

        Raises:
            RateLimitedError: the cap is reached (429).
            DatabaseUnavailableError: the sessions could not be counted.
        """
        if self._max_unattested is None:
            return
        now = at.timestamp()
        if self._stale(now):
            async with self._recount_lock:
                if self._stale(now):  # another request may have recounted meanwhile
                    self._counted = await self.count_unattested(at=at, up_to=self._max_unattested)
                    self._counted_at = now
                    self._since = 0
        if self._counted + self._since >= self._max_unattested:
            _logger.warning(
                "auth: refused a session, %d live sessions await attestation (limit %d)",
                self._counted + self._since,
                self._max_unattested,
            )
            raise RateLimitedError(
                "too many sessions awaiting attestation",
                retry_after_s=max(1, math.ceil(UNATTESTED_RECOUNT_INTERVAL_S)),
            )
        # Reserved before the insert awaits, so concurrent requests see each other.
        self._since += 1

    def _stale(self, now: float) -> bool:
        counted_at = self._counted_at
        # A clock that steps backwards also forces a count.
        return (
            counted_at is None
            or now < counted_at
            or now - counted_at >= UNATTESTED_RECOUNT_INTERVAL_S
        )

    async def create(
        self,
        *,
        session_id: str,
        protocol_version: str,
        tee: str,
        nonce: str,
        request_extra_params: Any,
        expires_at: dt.datetime,
        at: dt.datetime,
    ) -> Session:
        """Open a new ``authed`` session at instant ``at``.

        Raises:
            RateLimitedError: ``max_unattested`` live sessions await attestation.
            DatabaseUnavailableError: the database could not be written or counted.
        """
        await self._admit(at)
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
            async with self._engine.begin() as conn:
                await conn.execute(db.sessions.insert().values(**values))
        except SQLAlchemyError as exc:
            if self._max_unattested is not None:
                self._since -= 1  # the reservation made by _admit
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
        try:
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(sa.select(db.sessions).where(db.sessions.c.id == session_id))
                ).first()
                if row is None:
                    return None
                if row.expires_at <= db.to_millis(at):
                    await conn.execute(db.sessions.delete().where(db.sessions.c.id == session_id))
                    await conn.commit()
                    return None
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError("session could not be read") from exc
        return _row_to_session(row)

    async def mark_attested(self, session: Session, token: str) -> Session:
        """Move ``session`` to ``attested`` with ``token``; the expiry is unchanged.

        If another process attested the same session first, its token wins and is
        returned, so every caller sees the one token the session holds.

        Raises:
            DatabaseUnavailableError: the database could not be written.
        """
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    db.sessions.update()
                    .where(db.sessions.c.id == session.id, db.sessions.c.state == AUTHED)
                    .values(state=ATTESTED, token=token)
                )
                if result.rowcount == 1:
                    self._since -= 1
                    return _attested(session, token)
                row = (
                    await conn.execute(sa.select(db.sessions).where(db.sessions.c.id == session.id))
                ).first()
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError("session could not be updated") from exc
        if row is None or row.token is None:
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

    async def count_unattested(self, *, at: dt.datetime, up_to: int | None = None) -> int:
        """Number of ``authed`` sessions that have not expired at ``at``.

        With ``up_to``, counting stops there (the answer is at most ``up_to``): the cost
        stays bounded by the cap however many sessions a flood has written.

        Raises:
            DatabaseUnavailableError: the database could not be read.
        """
        live = (
            # Only indexed columns: the (state, expires_at) index answers alone.
            sa.select(db.sessions.c.expires_at)
            .where(db.sessions.c.state == AUTHED, db.sessions.c.expires_at > db.to_millis(at))
            .limit(up_to)
            .subquery()
        )
        try:
            async with self._engine.connect() as conn:
                value = await conn.scalar(sa.select(sa.func.count()).select_from(live))
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError("sessions could not be counted") from exc
        return int(value or 0)

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
