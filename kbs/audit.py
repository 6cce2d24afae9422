# SPDX-License-Identifier: Apache-2.0
"""The audit trail: append-only and hash-chained; attestations, releases, admin changes.

Each record ``n`` stores ``prev_hash`` = the hash of record ``n-1`` (64 zeros for the
first) and ``hash`` = SHA-256 over the canonical JSON array of its columns
(:func:`record_hash`). Editing, deleting or reordering a row breaks the chain at that row;
:func:`verify_chain` (``kbs audit verify``) finds the first break. ``kbs_audit_head`` holds
the last sequence number and hash: truncating the tail of the table without also rewriting
the head is detected too. (Someone who can rewrite the whole table and the head can forge a
consistent chain: keep copies of the head, which ``kbs audit verify`` prints, elsewhere.)

Concurrent writers, in any number of processes, are serialised on the head row. Within a
process, appends are committed in batches (group commit: the appends of one turn of the
event loop, or made while the previous batch was being written, share a transaction; each
caller returns only once its record is committed). A batch of ``n`` records is one
transaction whose **first statement** is ``UPDATE kbs_audit_head SET seq = seq + n ...
RETURNING seq, hash``:

* PostgreSQL: the UPDATE takes the row lock until commit; a second writer's UPDATE waits,
  then (READ COMMITTED re-reads the updated row) returns the first writer's new ``seq`` and
  ``hash``. Two writers can never chain to the same predecessor.
* SQLite: a write as the first statement of a deferred transaction takes the database write
  lock before it reads anything (and SQLite retries it under ``busy_timeout`` with a fresh
  snapshot), so the head it reads is the newest committed one.

The rows, chained in the order they were appended, then the new head hash, are written in
the same transaction; a failure rolls all of it back (every caller in the batch gets the
error), so sequence numbers have no gaps.

Records never hold secret values: resource values appear as HMAC-SHA256 digests under a
per-deployment key kept in the database (:func:`load_or_create_audit_key`), so they can be
compared ("was it rolled back to the same value?") without being guessable offline from the
audit table alone; tokens appear as their SHA-256.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import hashlib
import hmac
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from kbs import db, hotsql, jsoncodec
from kbs.entropy import Entropy
from kbs.errors import AuditUnavailableError, DatabaseUnavailableError
from kbs.scopes import PathPattern, Permissions

_logger = logging.getLogger(__name__)

__all__ = [
    "GENESIS_HASH",
    "AuditEvent",
    "AuditLog",
    "AuditQuery",
    "AuditRecord",
    "ChainReport",
    "load_or_create_audit_key",
    "record_hash",
    "token_id",
    "verify_chain",
]

#: ``prev_hash`` of the first record.
GENESIS_HASH: Final = "0" * 64
#: Most records one query returns.
MAX_QUERY_LIMIT: Final = 500
#: Most rows one query scans to fill a page for a scoped auditor.
MAX_QUERY_SCAN: Final = 10_000
#: Rows read per batch by the verifier.
VERIFY_BATCH: Final = 1000
#: Name of the HMAC key row in ``kbs_signing_keys``.
AUDIT_KEY_NAME: Final = "audit-value-hmac"
_AUDIT_KEY_BYTES: Final = 32
_HEAD_ID: Final = 1

#: Record kinds.
KINDS: Final = ("attestation", "release", "admin")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What happened (before it is numbered and chained).

    Attributes:
        kind: ``attestation``, ``release`` or ``admin``.
        action: what was done (``attest``, ``release``, ``resource.put``, ...).
        outcome: ``ok``, ``failed``, ``allowed``, ``denied``, ``error``.
        actor: the admin (``subject@issuer``) or, for guests, ``None``.
        client: the client address.
        request_id: the request's id (``X-Request-Id``).
        resource: the resource path (or path pattern) concerned, if any.
        detail: JSON details (never secret values).
    """

    kind: str
    action: str
    outcome: str
    actor: str | None = None
    client: str | None = None
    request_id: str | None = None
    resource: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One stored record."""

    seq: int
    at: dt.datetime
    kind: str
    action: str
    outcome: str
    actor: str | None
    client: str | None
    request_id: str | None
    resource: str | None
    detail: Any
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        """The record as the admin API shows it."""
        out = asdict(self)
        out["at"] = _rfc3339(self.at)
        return out


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters and paging for :meth:`AuditLog.query` (all optional)."""

    kind: str | None = None
    action: str | None = None
    outcome: str | None = None
    actor: str | None = None
    request_id: str | None = None
    resource: PathPattern | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    after: int | None = None
    before: int | None = None
    limit: int = 100
    descending: bool = True


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The outcome of :func:`verify_chain`."""

    ok: bool
    records: int
    head_seq: int
    head_hash: str
    problems: tuple[str, ...] = ()
    #: The first sequence number whose record is not what the chain says, if any.
    first_bad_seq: int | None = None


def _canonical(value: Any) -> bytes:
    """Sorted, compact UTF-8 JSON.

    For values without floats (a record's columns have none) these are the bytes the
    standard library's sorted, compact, non-ASCII-escaping ``json.dumps`` gave, which
    earlier records were hashed over: tests/unit/kbs/test_audit_hash.py holds it to that.
    """
    return jsoncodec.dumps(value, sort_keys=True)


def record_hash(
    *,
    seq: int,
    at_ms: int,
    kind: str,
    action: str,
    outcome: str,
    actor: str | None,
    client: str | None,
    request_id: str | None,
    resource: str | None,
    detail_text: str,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) over the canonical JSON array of a record's stored columns."""
    payload = _canonical(
        [
            "kbs-audit-v1",
            seq,
            at_ms,
            kind,
            action,
            outcome,
            actor,
            client,
            request_id,
            resource,
            detail_text,
            prev_hash,
        ]
    )
    return hashlib.sha256(payload).hexdigest()


def token_id(token: str) -> str:
    """The audit trail's name for an attestation token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _rfc3339(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _clip(value: str | None, length: int) -> str | None:
    return None if value is None else value[:length]


# An append's statements, as plain SQL (kbs/hotsql.py): the head is taken first.
_TAKE_HEAD: Final = (
    "UPDATE kbs_audit_head SET seq = seq + :count WHERE id = :id RETURNING seq, hash"
)
_INSERT_RECORD: Final = (
    "INSERT INTO kbs_audit (seq, at, kind, action, outcome, actor, client, request_id, "
    "resource, detail, prev_hash, hash) VALUES (:seq, :at, :kind, :action, :outcome, :actor, "
    ":client, :request_id, :resource, :detail, :prev_hash, :hash)"
)
_SET_HEAD_HASH: Final = "UPDATE kbs_audit_head SET hash = :hash WHERE id = :id"


#: Most records one append transaction writes.
MAX_APPEND_BATCH: Final = 256

_Pending = tuple[dict[str, Any], asyncio.Future[AuditRecord]]


async def _chain(batch: Sequence[_Pending], tx: hotsql.HotTx) -> list[AuditRecord]:
    """Number, chain and insert ``batch`` in one transaction (see the module doc)."""
    # 1. Take the chain head for the whole batch: the first statement is a write.
    taken = await tx.fetch_one(_TAKE_HEAD, {"id": _HEAD_ID, "count": len(batch)})
    if taken is None:
        raise AuditUnavailableError("audit chain head is missing")
    seq, prev_hash = int(taken[0]) - len(batch), str(taken[1])
    # 2. Each record chained to its predecessor, in the order they were appended.
    rows = []
    for row, _ in batch:
        seq += 1
        digest = record_hash(seq=seq, prev_hash=prev_hash, at_ms=row["at"], **_hashed(row))
        rows.append({**row, "seq": seq, "prev_hash": prev_hash, "hash": digest})
        prev_hash = digest
    await tx.execute_many(_INSERT_RECORD, rows)
    # 3. The new head.
    await tx.execute(_SET_HEAD_HASH, {"id": _HEAD_ID, "hash": prev_hash})
    return [_record(row) for row in rows]


def _fail(batch: Sequence[_Pending], cause: BaseException) -> None:
    for _, written in batch:
        if not written.done():
            error = AuditUnavailableError("audit record could not be written")
            error.__cause__ = cause
            written.set_exception(error)


class AuditLog:
    """Appends to and reads the audit trail."""

    def __init__(
        self, engine: AsyncEngine, *, value_key: bytes, sql: hotsql.HotSql | None = None
    ) -> None:
        """Use ``engine`` (and ``sql``, default: one made for it); ``value_key`` keys HMACs."""
        self._engine = engine
        self._value_key = value_key
        self._sql = sql if sql is not None else hotsql.for_engine(engine)
        # Appends waiting for the flusher task (group commit), in order.
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None

    def value_digest(self, data: bytes | None) -> str | None:
        """The HMAC-SHA256 (hex) of a resource value, as records show it."""
        if data is None:
            return None
        return "hmac-sha256:" + hmac.new(self._value_key, data, hashlib.sha256).hexdigest()

    async def append(self, event: AuditEvent, *, at: dt.datetime) -> AuditRecord:
        """Number, chain and store ``event``; return once it is committed.

        Appends made while another batch is being written, or in the same turn of the
        event loop, are committed together in one transaction (group commit; see
        :meth:`_flush`): one commit per batch instead of one per record.

        Raises:
            AuditUnavailableError: the record could not be written (nothing of its batch
                was).
        """
        row = {
            "at": db.to_millis(at),
            "kind": event.kind[:16],
            "action": event.action[:64],
            "outcome": event.outcome[:16],
            "actor": _clip(event.actor, 255),
            "client": _clip(event.client, 64),
            "request_id": _clip(event.request_id, 128),
            "resource": _clip(event.resource, 800),
            "detail": _canonical(dict(event.detail)).decode(),
        }
        loop = asyncio.get_running_loop()
        written: asyncio.Future[AuditRecord] = loop.create_future()
        self._pending.append((row, written))
        flusher = self._flusher
        if flusher is None or flusher.done() or flusher.get_loop() is not loop:
            self._flusher = loop.create_task(self._flush())
        return await written

    async def _flush(self) -> None:
        """Write the waiting appends, a batch per transaction, until none are left.

        The task starts on the next turn of the loop, so every append made in this turn
        joins the first batch; appends made while a batch is being written join the next.
        """
        while self._pending:
            batch = self._pending[:MAX_APPEND_BATCH]
            del self._pending[:MAX_APPEND_BATCH]
            try:
                records = await self._sql.transaction(functools.partial(_chain, batch))
            except Exception as exc:  # every waiter gets the failure, the flusher goes on
                _logger.exception("audit batch of %d record(s) could not be written", len(batch))
                _fail(batch, exc)
                continue
            except BaseException as exc:  # cancelled (shutdown): nobody may wait forever
                _fail([*batch, *self._pending], exc)
                self._pending.clear()
                raise
            for (_, written), record in zip(batch, records, strict=True):
                if not written.done():  # the request may have been cancelled meanwhile
                    written.set_result(record)

    async def query(
        self, query: AuditQuery, *, permissions: Permissions
    ) -> tuple[list[AuditRecord], int | None]:
        """Records matching ``query`` that ``permissions`` may see, and the next cursor.

        An admin with ``audit`` on ``*`` sees every record; one with ``audit`` on some
        patterns sees the records about resources those patterns match.

        Raises:
            DatabaseUnavailableError: the database could not be read.
        """
        visible = permissions.visible("audit")
        everything = visible is None or any(p.is_everything for p in visible)
        table = db.audit
        conditions = _conditions(query)
        order = table.c.seq.desc() if query.descending else table.c.seq.asc()
        limit = max(1, min(query.limit, MAX_QUERY_LIMIT))
        found: list[AuditRecord] = []
        cursor_seq: int | None = None
        scanned = 0
        try:
            async with self._engine.connect() as conn:
                while len(found) < limit and scanned < MAX_QUERY_SCAN:
                    page_conditions = list(conditions)
                    if cursor_seq is not None:
                        page_conditions.append(
                            table.c.seq < cursor_seq
                            if query.descending
                            else table.c.seq > cursor_seq
                        )
                    batch = [
                        dict(row)
                        for row in (
                            await conn.execute(
                                sa.select(table)
                                .where(*page_conditions)
                                .order_by(order)
                                .limit(limit)
                            )
                        ).mappings()
                    ]
                    if not batch:
                        return found, None
                    for row in batch:
                        scanned += 1
                        cursor_seq = int(row["seq"])
                        record = _record(row)
                        if everything or _covered(record.resource, visible or ()):
                            found.append(record)
                            if len(found) == limit:
                                break
                    if len(batch) < limit and len(found) < limit:
                        return found, None
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError("audit records could not be read") from exc
        return found, cursor_seq

    async def head(self) -> tuple[int, str]:
        """The chain head: ``(last seq, last hash)``.

        Raises:
            DatabaseUnavailableError: the database could not be read.
        """
        try:
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(
                        sa.select(db.audit_head).where(db.audit_head.c.id == _HEAD_ID)
                    )
                ).first()
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError("audit head could not be read") from exc
        if row is None:
            raise DatabaseUnavailableError("audit chain head is missing")
        return int(row.seq), str(row.hash)


def _hashed(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "kind": row["kind"],
        "action": row["action"],
        "outcome": row["outcome"],
        "actor": row["actor"],
        "client": row["client"],
        "request_id": row["request_id"],
        "resource": row["resource"],
        "detail_text": row["detail"],
    }


def _record(row: Mapping[str, Any]) -> AuditRecord:
    try:
        detail = json.loads(row["detail"])
    except (TypeError, ValueError):
        detail = row["detail"]
    return AuditRecord(
        seq=int(row["seq"]),
        at=db.from_millis(int(row["at"])),
        kind=row["kind"],
        action=row["action"],
        outcome=row["outcome"],
        actor=row["actor"],
        client=row["client"],
        request_id=row["request_id"],
        resource=row["resource"],
        detail=detail,
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


def _covered(resource: str | None, patterns: Sequence[PathPattern]) -> bool:
    if resource is None:
        return False
    try:
        target = PathPattern.parse(resource)
    except ValueError:
        return False
    return any(p.covers(target) for p in patterns)


def _conditions(query: AuditQuery) -> list[sa.ColumnElement[bool]]:
    table = db.audit
    conditions: list[sa.ColumnElement[bool]] = []
    for column, value in (
        (table.c.kind, query.kind),
        (table.c.action, query.action),
        (table.c.outcome, query.outcome),
        (table.c.actor, query.actor),
        (table.c.request_id, query.request_id),
    ):
        if value is not None:
            conditions.append(column == value)
    if query.resource is not None:
        conditions.append(_resource_condition(query.resource))
    if query.since is not None:
        conditions.append(table.c.at >= db.to_millis(query.since))
    if query.until is not None:
        conditions.append(table.c.at < db.to_millis(query.until))
    if query.after is not None:
        conditions.append(table.c.seq > query.after)
    if query.before is not None:
        conditions.append(table.c.seq < query.before)
    return conditions


def _resource_condition(pattern: PathPattern) -> sa.ColumnElement[bool]:
    """Records about resources ``pattern`` matches (and release policies on them)."""
    column = db.audit.c.resource
    if "*" not in pattern.segments:
        return column == str(pattern)
    # Resource paths have exactly three segments and segments hold no "/", "%" or "\\":
    # LIKE with "%" for each "*" (and "_" escaped) selects exactly the matching paths.
    like = "/".join(
        "%" if segment == "*" else segment.replace("_", "\\_") for segment in pattern.segments
    )
    return column.like(like, escape="\\")


# --------------------------------------------------------------------------- verification


def _rows(conn: Connection) -> Iterator[dict[str, Any]]:
    last = 0
    while True:
        batch = [
            dict(row)
            for row in conn.execute(
                sa.select(db.audit)
                .where(db.audit.c.seq > last)
                .order_by(db.audit.c.seq)
                .limit(VERIFY_BATCH)
            ).mappings()
        ]
        if not batch:
            return
        yield from batch
        last = int(batch[-1]["seq"])


class _ChainChecker:
    """Walks the records in order and collects what does not fit."""

    def __init__(self, anchors: Iterable[tuple[int, str]]) -> None:
        self.problems: list[str] = []
        self.first_bad: int | None = None
        self.expected_prev = GENESIS_HASH
        self.expected_seq = 1
        self.count = 0
        self.wanted = dict(anchors)
        self.seen: dict[int, str] = {}

    def bad(self, seq: int, message: str) -> None:
        if self.first_bad is None:
            self.first_bad = seq
        if len(self.problems) < 20:  # noqa: PLR2004 - enough to act on
            self.problems.append(message)

    def record(self, row: Mapping[str, Any]) -> None:
        self.count += 1
        seq = int(row["seq"])
        # 1. No gap in the numbering.
        if seq != self.expected_seq:
            self.bad(self.expected_seq, f"record {self.expected_seq} is missing (next is {seq})")
        # 2. Chained to the record before it.
        if row["prev_hash"] != self.expected_prev:
            self.bad(seq, f"record {seq}: prev_hash does not match record {seq - 1}")
        # 3. Its own contents unchanged.
        recomputed = record_hash(
            seq=seq, prev_hash=row["prev_hash"], at_ms=int(row["at"]), **_hashed(row)
        )
        if recomputed != row["hash"]:
            self.bad(seq, f"record {seq}: contents do not match its hash (edited)")
        if seq in self.wanted:
            self.seen[seq] = row["hash"]
        self.expected_prev = row["hash"]
        self.expected_seq = seq + 1

    def head(self, head: Any) -> None:
        # 4. The head names the last record (a truncated tail shows here).
        if head is None:
            self.bad(0, "the chain head row is missing")
            return
        last = self.expected_seq - 1
        if int(head.seq) != last:
            self.bad(last + 1, f"the head says {head.seq} records, the table ends at {last}")
        if head.hash != self.expected_prev:
            self.bad(last, "the head hash does not match the last record (truncated?)")

    def anchors(self) -> None:
        # 5. Hashes recorded elsewhere are still in the chain.
        for seq, digest in self.wanted.items():
            if self.seen.get(seq) != digest:
                self.bad(seq, f"anchor {seq}:{digest[:16]} is not in the chain")


def verify_chain(conn: Connection, *, anchors: Iterable[tuple[int, str]] = ()) -> ChainReport:
    """Check every record against its predecessor and the head (``kbs audit verify``).

    Args:
        conn: a synchronous connection to the database.
        anchors: ``(seq, hash)`` pairs recorded elsewhere earlier; each must still be in
            the chain (detects a rewritten chain that is consistent in itself).

    Returns:
        What was found; ``ok`` only if nothing was.
    """
    checker = _ChainChecker(anchors)
    for row in _rows(conn):
        checker.record(row)
    head = conn.execute(sa.select(db.audit_head).where(db.audit_head.c.id == _HEAD_ID)).first()
    checker.head(head)
    checker.anchors()
    return ChainReport(
        ok=not checker.problems,
        records=checker.count,
        head_seq=int(head.seq) if head is not None else -1,
        head_hash=str(head.hash) if head is not None else "",
        problems=tuple(checker.problems),
        first_bad_seq=checker.first_bad,
    )


# --------------------------------------------------------------------------- keys


async def load_or_create_audit_key(
    engine: AsyncEngine, *, at: dt.datetime, entropy: Entropy
) -> bytes:
    """The deployment's HMAC key for resource values in audit records (made once).

    Raises:
        DatabaseUnavailableError: the database could not be read or written.
    """
    table = db.signing_keys
    query = sa.select(table.c.pem).where(table.c.name == AUDIT_KEY_NAME)
    try:
        async with engine.connect() as conn:
            stored = await conn.scalar(query)
        if stored is None:
            fresh = base64.b64encode(entropy(_AUDIT_KEY_BYTES)).decode()
            try:
                async with engine.begin() as conn:
                    await conn.execute(
                        table.insert().values(
                            name=AUDIT_KEY_NAME, pem=fresh, created_at=db.to_millis(at)
                        )
                    )
            except IntegrityError:
                _logger.debug("another process stored the audit key first")
            async with engine.connect() as conn:
                stored = await conn.scalar(query)
    except SQLAlchemyError as exc:
        raise DatabaseUnavailableError("audit key could not be loaded") from exc
    if stored is None:
        raise DatabaseUnavailableError("audit key vanished from the database")
    return base64.b64decode(stored)
