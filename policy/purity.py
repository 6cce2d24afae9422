# SPDX-License-Identifier: Apache-2.0
r"""Whether a parsed policy is a pure function of its input and data.

A release decision may be remembered (``RegoEngine.allow`` with ``input_key``) only when
evaluating the policy again could not give another answer. In the regorus we ship
(0.13, the features of ``opa.runtime().features``) four builtins can: ``time.now_ns``
reads the clock, ``rand.intn`` and ``uuid.rfc4122`` draw random values, and
``http.send`` asks the network (it answers undefined here, but a later build may not).
Everything else is computed from its arguments; ``print`` and ``trace`` only write.

The check walks the parsed syntax tree (``Engine.get_ast_as_json``), not the text, so
no spelling escapes it: ``time["now\u005fns"]()`` is the call ``time.now_ns``. Any
reference to one of them counts, called or not, and so does a call whose name is not a
chain of literal names. tests/unit/policy/test_purity.py pins the builtin list of the
locked regorus, so an upgrade that adds builtins fails there until each new one is
classified here.
"""

from __future__ import annotations

import json
from typing import Any, Final

__all__ = ["IMPURE_BUILTINS", "is_pure"]

#: Builtins whose result is not a function of their arguments.
IMPURE_BUILTINS: Final = frozenset({"time.now_ns", "rand.intn", "uuid.rfc4122", "http.send"})


def is_pure(engine: Any) -> bool:
    """Whether every policy in the regorus ``engine`` calls no :data:`IMPURE_BUILTINS`.

    Unknown syntax-tree shapes answer ``False``: a memo is only ever skipped wrongly.
    """
    try:
        modules = json.loads(engine.get_ast_as_json())
    except Exception:  # noqa: BLE001 - any failure means "not known to be pure"
        return False
    stack: list[Any] = [modules]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            call = node.get("Call")
            if isinstance(call, dict) and _call_name(call.get("fcn")) is None:
                return False
            # Every reference, called or not (a ``with ... as`` value, say).
            if len(node) == 1 and _call_name(node) in IMPURE_BUILTINS:
                return False
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return True


def _call_name(node: Any) -> str | None:
    """``a.b.c`` for a function reference built from literal names, else ``None``."""
    parts: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        ((kind, body),) = node.items()
        if not isinstance(body, dict):
            return None
        if kind == "Var" and isinstance(body.get("value"), str):
            parts.append(body["value"])
            return ".".join(reversed(parts))
        if kind == "RefDot":
            field = body.get("field")
            if not (isinstance(field, list) and len(field) == 2 and isinstance(field[1], str)):  # noqa: PLR2004
                return None
            parts.append(field[1])
        elif kind == "RefBrack":
            index = body.get("index")
            literal = index.get("String") if isinstance(index, dict) else None
            if not (isinstance(literal, dict) and isinstance(literal.get("value"), str)):
                return None
            parts.append(literal["value"])
        else:
            return None
        node = body.get("refr")
    return None
