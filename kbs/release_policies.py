# SPDX-License-Identifier: Apache-2.0
"""Per-resource release policies (ours): Rego, or a compact allow list, on a path pattern.

A policy is attached to a resource path pattern (``cai/*``, ``default/aliyun/model-key``).

A guest's resource request is released only if the global resource policy **and every**
release policy whose pattern matches the path say ``allow``: a narrower policy cannot
widen what a broader one (or the global one) denies. Policies live in
``kbs_release_policies``, so every replica applies a change at once.

An allow list is JSON, each member optional, each a list of accepted values::

    {
        "tee": ["tdx"],
        "mr_td": ["<hex>"],
        "rtmr_0": [...],
        "rtmr_1": [...],
        "rtmr_2": [...],
        "rtmr_3": [...],
        "tcb_status": ["UpToDate"],
        "ear_status": ["affirming"],
    }

and compiles to a Rego policy (:func:`compile_allow_list`) with one named rule per member
(``mr_td_allowed``...), so an explanation names the member that failed. Measurements are
compared as lowercase hex against every TDX appraisal in the token (and there must be at
least one); ``tee`` against the evidence type of every appraisal; ``ear_status`` against
the EAR status of every appraisal.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from kbs import db, hotsql
from kbs.errors import DatabaseUnavailableError, ReleasePolicyError
from kbs.scopes import PathPattern
from policy.defaults import policy_hash
from storage_backends.base import ResourceDesc

_logger = logging.getLogger(__name__)

__all__ = [
    "ALLOW_LIST_MEMBERS",
    "Kind",
    "ReleasePolicy",
    "ReleasePolicyStore",
    "compile_allow_list",
    "normalise_allow_list",
]

#: Allow-list members and where each is found in the token's claims.
ALLOW_LIST_MEMBERS: Final = (
    "tee",
    "mr_td",
    "rtmr_0",
    "rtmr_1",
    "rtmr_2",
    "rtmr_3",
    "tcb_status",
    "ear_status",
)
_MEASUREMENTS: Final = ("mr_td", "rtmr_0", "rtmr_1", "rtmr_2", "rtmr_3")
_HEX48: Final = re.compile(r"[0-9a-f]{96}")
_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: Most values in one allow-list member.
MAX_ALLOW_VALUES: Final = 256

Kind = Literal["rego", "allow_list"]


@dataclass(frozen=True, slots=True)
class ReleasePolicy:
    """A stored release policy."""

    prefix: PathPattern
    kind: Kind
    #: The Rego that is evaluated (compiled, for an allow list).
    text: str
    #: The allow list, for ``kind == "allow_list"``.
    allow_list: Mapping[str, list[str]] | None
    sha384: str
    updated_at: dt.datetime
    updated_by: str

    def summary(self) -> dict[str, Any]:
        """Metadata for listings (no policy text)."""
        return {
            "prefix": str(self.prefix),
            "kind": self.kind,
            "sha384": self.sha384,
            "updated": self.updated_at.isoformat().replace("+00:00", "Z"),
            "updated_by": self.updated_by,
        }


def normalise_allow_list(raw: Any) -> dict[str, list[str]]:
    """Check an allow list and bring its values to canonical form (hex lowercase).

    Raises:
        ReleasePolicyError: not an object of known members, each a non-empty list of
            strings of the right shape.
    """
    if not isinstance(raw, dict) or not raw:
        raise ReleasePolicyError("allow list must be a non-empty JSON object")
    out: dict[str, list[str]] = {}
    for member, values in raw.items():
        if member not in ALLOW_LIST_MEMBERS:
            raise ReleasePolicyError(f"allow list member {str(member)[:40]!r} is not known")
        if (
            not isinstance(values, list)
            or not values
            or len(values) > MAX_ALLOW_VALUES
            or not all(isinstance(v, str) for v in values)
        ):
            raise ReleasePolicyError(f"allow list member {member} must be a list of strings")
        if member in _MEASUREMENTS:
            cleaned = [v.strip().lower() for v in values]
            if not all(_HEX48.fullmatch(v) for v in cleaned):
                raise ReleasePolicyError(f"allow list member {member} takes 48-byte hex values")
        else:
            cleaned = [v.strip() for v in values]
            if not all(_NAME.fullmatch(v) for v in cleaned):
                raise ReleasePolicyError(f"allow list member {member} has an invalid value")
        out[member] = sorted(set(cleaned))
    return out


def _rego_set(values: Sequence[str]) -> str:
    return "{" + ", ".join(json.dumps(v) for v in values) + "}"


def compile_allow_list(allow: Mapping[str, Sequence[str]]) -> str:
    """The Rego policy an allow list stands for (one rule per member, all must hold).

    Raises:
        ReleasePolicyError: the allow list is malformed.
    """
    allow = normalise_allow_list(dict(allow))
    lines = [
        "# Compiled from a release-policy allow list by the KBS; edit the allow list instead.",
        "package policy",
        "",
        "import rego.v1",
        "",
        "default allow := false",
        "",
        "appraisals := [a | some a in input.submods]",
        "",
        'tdx_evidence := [e | some a in appraisals; e := a["ear.veraison.annotated-evidence"].tdx]',
        "",
    ]
    rules = []
    for member in ALLOW_LIST_MEMBERS:
        if member not in allow:
            continue
        rule = f"{member}_allowed"
        rules.append(rule)
        accepted = _rego_set(allow[member])
        if member in _MEASUREMENTS:
            body = [
                "count(tdx_evidence) > 0",
                f"every e in tdx_evidence {{ e.quote.body.{member} in {accepted} }}",
            ]
        elif member == "tcb_status":
            body = [
                "count(tdx_evidence) > 0",
                f"every e in tdx_evidence {{ e.tcb_status in {accepted} }}",
            ]
        elif member == "ear_status":
            body = [
                "count(appraisals) > 0",
                f'every a in appraisals {{ a["ear.status"] in {accepted} }}',
            ]
        else:  # tee: the evidence type of every appraisal
            body = [
                "count(appraisals) > 0",
                "every a in appraisals {",
                f"\tsome tee in {accepted}",
                '\ta["ear.veraison.annotated-evidence"][tee]',
                "}",
            ]
        lines.append(f"{rule} if {{")
        lines.extend(f"\t{line}" for line in body)
        lines.extend(["}", ""])
    lines.append("allow if {")
    lines.extend(f"\t{rule}" for rule in rules)
    lines.append("}")
    return "\n".join(lines) + "\n"


#: Every release policy (read on every release; plain SQL, kbs/hotsql.py).
_COLUMNS: Final = ("prefix", "kind", "text", "source", "sha384", "updated_at", "updated_by")
_SELECT_ALL: Final = (
    "SELECT prefix, kind, text, source, sha384, updated_at, updated_by"
    " FROM kbs_release_policies ORDER BY prefix"
)


class ReleasePolicyStore:
    """Release policies by path pattern, in the database."""

    def __init__(self, engine: AsyncEngine, *, sql: hotsql.HotSql | None = None) -> None:
        """Use ``engine`` (and ``sql``, default: one made for it) for every operation."""
        self._engine = engine
        self._sql = sql if sql is not None else hotsql.for_engine(engine)

    async def all(self) -> list[ReleasePolicy]:
        """Every release policy, by pattern.

        Raises:
            DatabaseUnavailableError: the database could not be read.
        """
        try:
            rows = await self._sql.fetch_all(_SELECT_ALL, {})
        except hotsql.HotSqlError as exc:
            raise DatabaseUnavailableError("release policies could not be read") from exc
        return [_policy(dict(zip(_COLUMNS, row, strict=True))) for row in rows]

    async def get(self, prefix: PathPattern) -> ReleasePolicy | None:
        """The policy on exactly ``prefix``, if any.

        Raises:
            DatabaseUnavailableError: the database could not be read.
        """
        table = db.release_policies
        try:
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(sa.select(table).where(table.c.prefix == str(prefix)))
                ).first()
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError("release policy could not be read") from exc
        return None if row is None else _policy(row)

    async def matching(self, desc: ResourceDesc) -> list[ReleasePolicy]:
        """The policies whose pattern matches ``desc``, broadest first.

        Raises:
            DatabaseUnavailableError: the database could not be read.
        """
        found = [p for p in await self.all() if p.prefix.matches(desc)]
        return sorted(found, key=_breadth)

    async def set(
        self,
        prefix: PathPattern,
        *,
        kind: Kind,
        text: str,
        allow_list: Mapping[str, list[str]] | None,
        at: dt.datetime,
        by: str,
    ) -> ReleasePolicy:
        """Store (replace) the policy on ``prefix``; return what was stored.

        Raises:
            DatabaseUnavailableError: the database could not be written.
        """
        table = db.release_policies
        values = {
            "kind": kind,
            "text": text,
            "source": json.dumps(allow_list, sort_keys=True) if allow_list is not None else None,
            "sha384": policy_hash(text),
            "updated_at": db.to_millis(at),
            "updated_by": by[:255],
        }
        try:
            async with self._engine.begin() as conn:
                updated = await conn.execute(
                    table.update().where(table.c.prefix == str(prefix)).values(**values)
                )
                if not updated.rowcount:
                    await conn.execute(table.insert().values(prefix=str(prefix), **values))
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError("release policy could not be stored") from exc
        return _policy({"prefix": str(prefix), **values})

    async def delete(self, prefix: PathPattern) -> bool:
        """Delete the policy on ``prefix``; return whether there was one.

        Raises:
            DatabaseUnavailableError: the database could not be written.
        """
        table = db.release_policies
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(table.delete().where(table.c.prefix == str(prefix)))
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError("release policy could not be deleted") from exc
        return bool(result.rowcount)


def _breadth(policy: ReleasePolicy) -> tuple[int, str]:
    return sum(s != "*" for s in policy.prefix.segments), str(policy.prefix)


def _policy(row: Any) -> ReleasePolicy:
    mapping = row if isinstance(row, Mapping) else row._asdict()
    source = mapping["source"]
    return ReleasePolicy(
        prefix=PathPattern.parse(mapping["prefix"]),
        kind="allow_list" if mapping["kind"] == "allow_list" else "rego",
        text=mapping["text"],
        allow_list=json.loads(source) if source else None,
        sha384=mapping["sha384"],
        updated_at=db.from_millis(int(mapping["updated_at"])),
        updated_by=mapping["updated_by"],
    )
