# SPDX-License-Identifier: Apache-2.0
"""Resource path patterns and what an admin role may do where (our addition to Trustee).

A *path pattern* names a set of resource paths by segment: ``cai/*`` (every resource in
repository ``cai``), ``default/aliyun/*``, ``*/models/*``, ``cai/key/model-1`` (one
resource), ``*`` (everything). A pattern has one to three segments; each is a literal
resource path segment or ``*`` (any one segment); fewer than three segments must end
in ``*``, which then stands for the rest of the path. ``cai/*`` and ``cai/*/*`` are the
same pattern (canonical form ``cai/*``).

A *grant* gives a role actions on the resources its patterns match:

* ``read``   list and describe resources, read kept versions (``?version=``), explain;
* ``write``  store and roll back resources;
* ``delete`` delete resources and single kept versions;
* ``policy`` manage release policies on covered prefixes; on ``*``: the global resource
  policy, attestation policies and reference values;
* ``audit``  read audit records about covered resources; on ``*``: every record.

Actions that are not about one resource (the global policies, the whole audit trail)
need a grant whose pattern is ``*``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, get_args

from storage_backends.base import ResourceDesc, is_valid_segment

_logger = logging.getLogger(__name__)

__all__ = [
    "ACTIONS",
    "ALLOW_ALL",
    "GLOBAL",
    "Action",
    "Grant",
    "Grants",
    "PathPattern",
    "Permissions",
]

#: The actions a grant can give.
Action = Literal["read", "write", "delete", "policy", "audit"]
ACTIONS: Final[tuple[str, ...]] = get_args(Action)

_WILDCARD: Final = "*"
_SEGMENTS: Final = 3


@dataclass(frozen=True, slots=True, order=True)
class PathPattern:
    """A set of resource paths, segment by segment (``*`` = any segment)."""

    segments: tuple[str, str, str]

    @classmethod
    def parse(cls, text: str) -> PathPattern:
        """Parse ``cai/*``, ``*/aliyun/*``, ``a/b/c``, ``*``.

        Raises:
            ValueError: not one to three segments of valid names or ``*``, or a short
                pattern that does not end in ``*``.
        """
        if not isinstance(text, str) or not text:
            raise ValueError("a path pattern must be a non-empty string")
        parts = text.split("/")
        if len(parts) > _SEGMENTS:
            raise ValueError(f"path pattern {text!r} has more than three segments")
        for part in parts:
            if part != _WILDCARD and not is_valid_segment(part):
                raise ValueError(f"path pattern {text!r} has an invalid segment {part!r}")
        if len(parts) < _SEGMENTS:
            if parts[-1] != _WILDCARD:
                raise ValueError(
                    f"path pattern {text!r} must name three segments or end in '*' (e.g. 'cai/*')"
                )
            parts += [_WILDCARD] * (_SEGMENTS - len(parts))
        return cls((parts[0], parts[1], parts[2]))

    @classmethod
    def exact(cls, desc: ResourceDesc) -> PathPattern:
        """The pattern that matches ``desc`` only."""
        return cls(desc.segments)

    def matches(self, desc: ResourceDesc) -> bool:
        """Whether ``desc`` is in the set."""
        return all(p in (_WILDCARD, s) for p, s in zip(self.segments, desc.segments, strict=True))

    def covers(self, other: PathPattern) -> bool:
        """Whether every path ``other`` matches is matched by this pattern."""
        return all(p in (_WILDCARD, o) for p, o in zip(self.segments, other.segments, strict=True))

    def overlaps(self, other: PathPattern) -> bool:
        """Whether some path is matched by both patterns."""
        return all(
            _WILDCARD in (p, o) or p == o
            for p, o in zip(self.segments, other.segments, strict=True)
        )

    @property
    def is_everything(self) -> bool:
        """Whether this is ``*`` (every resource)."""
        return all(p == _WILDCARD for p in self.segments)

    def __str__(self) -> str:
        """The canonical text: trailing ``*`` segments folded into one."""
        parts = list(self.segments)
        while len(parts) > 1 and parts[-1] == _WILDCARD and parts[-2] == _WILDCARD:
            parts.pop()
        return "/".join(parts)


#: The scope of actions that are not about one resource.
GLOBAL: Final = PathPattern((_WILDCARD, _WILDCARD, _WILDCARD))


@dataclass(frozen=True, slots=True)
class Grant:
    """Actions a role may take on the resources its patterns match."""

    role: str
    actions: frozenset[str]
    patterns: tuple[PathPattern, ...]


class Permissions:
    """What one authenticated admin may do (the grants of its roles)."""

    def __init__(self, grants: Iterable[Grant] | None) -> None:
        """``None``: no scoping configured, every action everywhere (Trustee's model)."""
        self._grants = None if grants is None else tuple(grants)

    @property
    def scoped(self) -> bool:
        """Whether grants restrict this admin (else everything is allowed)."""
        return self._grants is not None

    def allows(self, action: str, scope: ResourceDesc | PathPattern = GLOBAL) -> bool:
        """Whether ``action`` is granted on ``scope`` (one resource, or every path of a pattern).

        ``GLOBAL`` (the default) needs a grant on ``*``.
        """
        if self._grants is None:
            return True
        pattern = PathPattern.exact(scope) if isinstance(scope, ResourceDesc) else scope
        return any(
            action in grant.actions and any(p.covers(pattern) for p in grant.patterns)
            for grant in self._grants
        )

    def touches(self, actions: Iterable[str], pattern: PathPattern) -> bool:
        """Whether one of ``actions`` is granted on some path ``pattern`` matches."""
        if self._grants is None:
            return True
        wanted = set(actions)
        return any(
            wanted & grant.actions and any(p.overlaps(pattern) for p in grant.patterns)
            for grant in self._grants
        )

    def visible(self, action: str) -> tuple[PathPattern, ...] | None:
        """The patterns ``action`` is granted on; ``None`` means everywhere."""
        if self._grants is None:
            return None
        return tuple(p for g in self._grants if action in g.actions for p in g.patterns)

    def describe(self) -> list[dict[str, object]]:
        """The grants as JSON (for ``whoami``-style answers and logs)."""
        if self._grants is None:
            return [{"actions": list(ACTIONS), "resources": ["*"]}]
        return [
            {
                "role": g.role,
                "actions": sorted(g.actions),
                "resources": [str(p) for p in g.patterns],
            }
            for g in self._grants
        ]


#: No scoping: every action on every resource (Trustee's admin model).
ALLOW_ALL: Final = Permissions(None)


class Grants:
    """The configured grants, by role."""

    def __init__(self, grants: Sequence[Grant]) -> None:
        """Index ``grants`` by role."""
        by_role: dict[str, list[Grant]] = {}
        for grant in grants:
            by_role.setdefault(grant.role, []).append(grant)
        self._by_role: Mapping[str, tuple[Grant, ...]] = {
            role: tuple(items) for role, items in by_role.items()
        }

    def __bool__(self) -> bool:
        """Whether any grant is configured."""
        return bool(self._by_role)

    def for_roles(self, roles: Iterable[str]) -> Permissions:
        """The permissions of an admin holding ``roles``."""
        return Permissions(g for role in roles for g in self._by_role.get(role, ()))

    def knows_any(self, roles: Iterable[str]) -> bool:
        """Whether at least one of ``roles`` has a grant."""
        return any(role in self._by_role for role in roles)
