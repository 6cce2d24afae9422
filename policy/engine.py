# SPDX-License-Identifier: Apache-2.0
"""The Rego policy engine: Microsoft regorus, the engine Trustee itself embeds.

One :class:`RegoEngine` serves both roles:

* attestation (EAR appraisal) policies, read through ``data.policy.trust_claims`` and
  ``data.policy.extensions``, with reference values supplied by the host function
  ``query_reference_value(id)``;
* resource (release) policies, read through ``data.policy.allow``, with the request
  described in the ``data`` document.

Policies are parsed once and evaluated many times. A parsed *template* engine is kept
per policy text (with the text's SHA-384) and every appraisal runs on a fresh clone of
it, so nothing one request sets can leak into the next. A release decision runs on an
engine kept per policy text and ``data`` document, whose input is replaced for each
decision and emptied after it (see ``RegoEngine._decide``). Regorus engines are
bound to the thread that created them (using one elsewhere raises ``PanicException``,
a ``BaseException``), so the template cache is per thread and bounded in size.

Rego v1 is the only dialect. Trustee's mixed style (``default allow = false`` next to
``allow if {...}`` without ``import rego.v1``) parses unchanged, since v1 accepts ``=``
for complete rules.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, TypeVar

import orjson
import regorus

from policy.base import TRUST_CLAIM_NAMES, Appraisal, Decision, Extension, PolicyEngine
from policy.defaults import policy_hash
from policy.ear import CLAIM_MAX, CLAIM_MIN, status_of
from policy.errors import PolicyEvaluationError, PolicyInvalidError
from policy.purity import is_pure

_logger = logging.getLogger(__name__)
_K = TypeVar("_K")
_V = TypeVar("_V")

__all__ = [
    "ALLOW_RULE",
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_DECISION_MEMO_SIZE",
    "EXTENSIONS_RULE",
    "MAX_POLICY_BYTES",
    "POLICY_PACKAGE",
    "REFERENCE_VALUE_FUNCTION",
    "TRUST_CLAIMS_RULE",
    "RegoEngine",
]

# Rust error strings carry a full backtrace when RUST_BACKTRACE is set, and capturing
# one costs ~20 us per error (every undefined rule is an error). RUST_LIB_BACKTRACE
# governs only library (anyhow) backtraces, so an operator's RUST_BACKTRACE=1 still
# yields panic backtraces. Rust reads both once, at the first capture.
for _variable in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE"):
    os.environ.setdefault(_variable, "0")

#: Rule the attestation service reads for the trust vector.
TRUST_CLAIMS_RULE: Final = "data.policy.trust_claims"
#: Rule the attestation service reads for extra appraisal members.
EXTENSIONS_RULE: Final = "data.policy.extensions"
#: Rule the KBS reads for a release decision.
ALLOW_RULE: Final = "data.policy.allow"
#: The host function attestation policies call for reference values.
REFERENCE_VALUE_FUNCTION: Final = "query_reference_value"
#: The package every policy must declare (all three rules live in it).
POLICY_PACKAGE: Final = "data.policy"

#: Largest policy text accepted, in UTF-8 bytes. Equal to regorus's own limit.
MAX_POLICY_BYTES: Final = 1_048_576
#: Regorus's parser limits, written out (these are also its defaults, and Trustee's).
_MAX_POLICY_COLUMNS: Final = 1024
_MAX_POLICY_LINES: Final = 20_000
#: Parsed policies kept per thread; the least recently used one is dropped first.
DEFAULT_CACHE_SIZE: Final = 32
#: Release decisions remembered per engine (``RegoEngine.allow`` with ``input_key``).
#: An entry is a few hundred bytes: two hex digests, the data document as JSON, and a
#: shared Decision.
DEFAULT_DECISION_MEMO_SIZE: Final = 4096
#: Nesting beyond which a ``data`` document is not remembered by its text (_data_key).
_MAX_DATA_DEPTH: Final = 64
_PLAIN_SCALARS: Final = frozenset({str, bool, int, type(None)})
#: Longest error text kept in an exception message or a denial reason.
_MAX_ERROR_CHARS: Final = 300

#: Name of the file the policy is parsed as; appears in error locations.
_POLICY_PATH: Final = "policy.rego"
_UNDEFINED_RULE_MARKER: Final = "not a valid rule path"
#: How regorus renders an undefined value in eval_rule_as_json.
_UNDEFINED_JSON_MARKER: Final = "<undefined>"

#: Appraisal members and CBOR keys that EAR itself defines; an extension must not
#: shadow them.
_RESERVED_EXTENSION_NAMES: Final = frozenset(
    {
        "ear.status",
        "ear.trustworthiness-vector",
        "ear.appraisal-policy-id",
        "ear.appraisal-policy-ids",
        "ear.veraison.annotated-evidence",
        "ear.veraison.policy-claims",
        "ear.veraison.key-attestation",
    }
)
_RESERVED_EXTENSION_KEYS: Final = frozenset({1000, 1001, 1002, 1003, -70000, -70001, -70002})
_EXTENSION_KEY_MIN: Final = -(2**31)
_EXTENSION_KEY_MAX: Final = 2**31 - 1


class _Undefined:
    """Marker for a rule with no value (missing, or undefined for this input)."""

    def __repr__(self) -> str:
        return "<undefined>"


_UNDEFINED: Final = _Undefined()

#: Parsed templates, per thread, shared by every RegoEngine instance. Module level on
#: purpose: regorus engines must be dropped on the thread that made them, and an
#: instance-level thread-local can be garbage-collected from any thread (a panic); a
#: thread's entry here is only released when that thread exits, on that thread.
_THREAD_TEMPLATES: Final = threading.local()


class RegoEngine:
    """:class:`~policy.base.PolicyEngine` on regorus, with a per-thread template cache.

    Instances are safe to share between threads: all regorus state is thread-local.
    """

    def __init__(
        self,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        decision_memo_size: int = DEFAULT_DECISION_MEMO_SIZE,
    ) -> None:
        """Create an engine.

        Args:
            cache_size: parsed policies kept per thread (at least 1).
            decision_memo_size: release decisions remembered (0: none).

        Raises:
            ValueError: ``cache_size`` is less than 1 or ``decision_memo_size`` negative.
        """
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        if decision_memo_size < 0:
            raise ValueError("decision_memo_size must not be negative")
        self._cache_size = cache_size
        self._memo_size = decision_memo_size
        self._memo: collections.OrderedDict[tuple[str, str, bytes], Decision] = (
            collections.OrderedDict()
        )
        #: Policy SHA-384 -> whether it is pure (policy/purity.py); as many as the memo.
        self._purity: collections.OrderedDict[str, bool] = collections.OrderedDict()
        self._memo_lock = threading.Lock()

    # ------------------------------------------------------------------ public API

    def validate(self, text: str) -> None:
        """Check that ``text`` parses as a Rego v1 module in package ``policy``.

        Raises:
            PolicyInvalidError: it does not (the message names the line and the problem).
        """
        self._template(text)

    def appraise(
        self, text: str, *, input_: Mapping[str, Any], reference_values: Mapping[str, Any]
    ) -> Appraisal:
        """Evaluate an attestation policy into an EAR appraisal.

        Steps:

        1. Parse ``text`` (cached) and clone it with ``input_`` and the host function
           ``query_reference_value(id)`` -> ``reference_values.get(id)`` (``null`` when
           absent).
        2. Evaluate ``data.policy.trust_claims``. Undefined sets every claim to 0.
           Otherwise it must be an object of AR4SI claim names to integers in -128..127
           naming at least one claim; unnamed claims are 0.
        3. Evaluate ``data.policy.extensions``: undefined means none; otherwise a list of
           ``{"name", "key", "value"}`` with unique names and keys.
        4. ``status`` is the worst EAR tier over the vector.

        Raises:
            PolicyInvalidError: the text does not parse.
            PolicyEvaluationError: evaluation failed or produced ill-typed claims.
        """
        template, digest = self._template(text)
        results = self._evaluate(
            template,
            (TRUST_CLAIMS_RULE, EXTENSIONS_RULE),
            input_=input_,
            data=None,
            reference_values=reference_values,
        )
        trust_vector = _trust_vector(results.get(TRUST_CLAIMS_RULE, _UNDEFINED))
        extensions = _extensions(results.get(EXTENSIONS_RULE, _UNDEFINED))
        status = status_of(trust_vector)
        _logger.debug("appraisal %s with policy %s", status, digest[:16])
        return Appraisal(
            trust_vector=trust_vector,
            status=status,
            extensions=extensions,
            policy_hash=digest,
        )

    def allow(
        self,
        text: str,
        *,
        input_: Mapping[str, Any],
        data: Mapping[str, Any],
        input_key: str | None = None,
    ) -> Decision:
        """Evaluate a resource policy; only a literal ``true`` allows.

        An undefined ``allow``, any other value (``"true"``, ``1``, ``null``) and any
        evaluation error deny, with the cause in :attr:`Decision.reason`.

        ``input_key`` names ``input_``: callers give equal keys only for equal inputs
        (the KBS gives the SHA-256 of the token the claims were verified from). With it,
        the decision of a pure policy (policy/purity.py: no clock, randomness or
        network) is remembered under (policy hash, key, ``data``), and the same
        question is answered from memory. Failed evaluations are not remembered.

        Raises:
            PolicyInvalidError: the text does not parse.
        """
        template, digest = self._template(text)
        memo_key = None
        if input_key is not None and self._memo_size and self._pure(digest, template):
            data_key = _data_key(data)
            if data_key is not None:
                memo_key = (digest, input_key, data_key)
                with self._memo_lock:
                    found = _recall(self._memo, memo_key)
                if found is not None:
                    return found
        try:
            value = self._decide(text, template, input_=input_, data=data)
        except PolicyEvaluationError as exc:
            _logger.warning("resource policy %s failed, denying: %s", digest[:16], exc)
            return Decision(allowed=False, reason=f"evaluation failed: {exc}", policy_hash=digest)
        decision = self._verdict(value, digest)
        if memo_key is not None:
            remembered = dataclasses.replace(decision, remembered=True)
            with self._memo_lock:
                _keep(self._memo, memo_key, remembered, self._memo_size)
        return decision

    def _pure(self, digest: str, template: Any) -> bool:
        """Whether the policy with this hash is pure (judged once per hash)."""
        with self._memo_lock:
            found = _recall(self._purity, digest)
        if found is not None:
            return found
        pure = is_pure(template)
        with self._memo_lock:
            _keep(self._purity, digest, pure, self._memo_size)
        return pure

    @staticmethod
    def _verdict(value: Any, digest: str) -> Decision:
        """The decision for the value ``allow`` evaluated to."""
        if value is True:
            return Decision(allowed=True, policy_hash=digest)
        if value is _UNDEFINED:
            reason = "allow is undefined"
        elif value is False:
            reason = "allow is false"
        else:
            reason = f"allow is {_json_type(value)}, not true"
        _logger.debug("resource policy %s denied: %s", digest[:16], reason)
        return Decision(allowed=False, reason=reason, policy_hash=digest)

    def evaluate_rules(
        self,
        text: str,
        rules: Sequence[str],
        *,
        input_: Mapping[str, Any],
        data: Mapping[str, Any] | None = None,
        reference_values: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Evaluate several rules of one policy against one input, in one clone.

        ``query_reference_value`` is registered only when ``reference_values`` is given.
        Rego sets come back as sorted lists, so every result is JSON.

        Args:
            text: the policy text.
            rules: full rule paths, e.g. ``"data.policy.allow"``.
            input_: the ``input`` document.
            data: the ``data`` document, if any (must not contain ``policy``).
            reference_values: id -> value for ``query_reference_value``.

        Returns:
            rule path -> value, for every rule that is defined (undefined ones are absent).

        Raises:
            PolicyInvalidError: the text does not parse.
            PolicyEvaluationError: evaluation failed.
        """
        template, _ = self._template(text)
        return self._evaluate(
            template, tuple(rules), input_=input_, data=data, reference_values=reference_values
        )

    # ------------------------------------------------------------------ internals

    def _templates(self) -> collections.OrderedDict[str, tuple[Any, str]]:
        """This thread's parsed templates: policy text -> (engine, SHA-384 hex)."""
        return _thread_cache("templates")

    def _template(self, text: str) -> tuple[Any, str]:
        """Return this thread's parsed template for ``text``, and the text's hash."""
        if not isinstance(text, str):
            raise PolicyInvalidError("policy must be text")
        # Keyed by the text itself: a hit costs a string comparison, not a SHA-384.
        cache = self._templates()
        found = _recall(cache, text)
        if found is not None:
            return found
        try:
            too_big = len(text) > MAX_POLICY_BYTES or len(text.encode()) > MAX_POLICY_BYTES
        except UnicodeEncodeError as exc:  # lone surrogates
            raise PolicyInvalidError("policy is not valid unicode") from exc
        if too_big:
            raise PolicyInvalidError(f"policy is larger than {MAX_POLICY_BYTES} bytes")
        found = (_compile(text), policy_hash(text))
        _keep(cache, text, found, self._cache_size)
        return found

    def _decide(
        self, text: str, template: Any, *, input_: Mapping[str, Any], data: Mapping[str, Any]
    ) -> Any:
        """``data.policy.allow`` for ``input_``, on this thread's engine for (text, data).

        Adding ``data`` to an engine makes its next evaluation prepare the policy again,
        which is two thirds of a decision's cost (~50 us of 75). A release decision's
        ``data`` is the request path and query, so a thread keeps one engine per policy
        text and ``data`` (as many as its template cache holds), sets only the input,
        evaluates, and sets the input back to empty so that no claims stay behind. An
        engine whose evaluation failed is dropped. tests/unit/policy/test_engine_reuse.py
        holds the results to those of a fresh clone.
        """
        if not isinstance(input_, Mapping):
            raise PolicyEvaluationError("input must be an object")
        _check_data(data)
        data_key = _data_key(data)
        if data_key is None:  # not plain JSON: a fresh clone, as the engine sees it
            results = self._evaluate(
                template, (ALLOW_RULE,), input_=input_, data=data, reference_values=None
            )
            return results.get(ALLOW_RULE, _UNDEFINED)
        key = (text, data_key)
        engines: collections.OrderedDict[tuple[str, bytes], Any] = _thread_cache("decisions")
        engine = engines.pop(key, None)
        if engine is None:
            with _engine_errors("evaluation"):
                engine = template.clone()
                engine.add_data(data if isinstance(data, dict) else dict(data))
        with _engine_errors("evaluation"):
            engine.set_input(input_ if isinstance(input_, dict) else dict(input_))
        value = _eval_rule(engine, ALLOW_RULE)
        with _engine_errors("evaluation"):
            engine.set_input({})
        # Kept only after a clean evaluation (an exception above leaves it out).
        _keep(engines, key, engine, self._cache_size)
        return value

    def _evaluate(
        self,
        template: Any,
        rules: tuple[str, ...],
        *,
        input_: Mapping[str, Any],
        data: Mapping[str, Any] | None,
        reference_values: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """Evaluate ``rules`` on a fresh clone of ``template``; undefined rules are absent."""
        if not isinstance(input_, Mapping):
            raise PolicyEvaluationError("input must be an object")
        if data is not None:
            _check_data(data)
        results: dict[str, Any] = {}
        with _engine_errors("evaluation"):
            engine = template.clone()
            engine.set_input(input_ if isinstance(input_, dict) else dict(input_))
            if data is not None:
                engine.add_data(data if isinstance(data, dict) else dict(data))
            if reference_values is not None:
                engine.add_extension(REFERENCE_VALUE_FUNCTION, 1, _rv_lookup(reference_values))
        for rule in rules:
            value = _eval_rule(engine, rule)
            if value is not _UNDEFINED:
                results[rule] = value
        return results


def _thread_cache(name: str) -> collections.OrderedDict[Any, Any]:
    """This thread's LRU map ``name`` in :data:`_THREAD_TEMPLATES` (made on first use)."""
    cache: collections.OrderedDict[Any, Any] | None = getattr(_THREAD_TEMPLATES, name, None)
    if cache is None:
        cache = collections.OrderedDict()
        setattr(_THREAD_TEMPLATES, name, cache)
    return cache


# ---------------------------------------------------------------------- regorus calls


def _compile(text: str) -> Any:
    """Parse ``text`` into a new template engine.

    Raises:
        PolicyInvalidError: a syntax error, a limit exceeded, or a package other than
            ``policy``.
    """
    try:
        engine = regorus.Engine()
        # Written out although they are regorus's defaults: the dialect and the parser
        # limits decide which policies load, and must not move with a library upgrade.
        engine.set_rego_v0(False)
        engine.set_policy_length_config(
            max_col=_MAX_POLICY_COLUMNS,
            max_file_bytes=MAX_POLICY_BYTES,
            max_lines=_MAX_POLICY_LINES,
        )
        engine.add_policy(_POLICY_PATH, text)
        packages = engine.get_packages()
    except Exception as exc:
        raise PolicyInvalidError(_short_error(exc)) from exc
    except BaseException as exc:
        if not _is_panic(exc):
            raise
        raise PolicyInvalidError("the rego parser failed") from exc
    if list(packages) != [POLICY_PACKAGE]:
        raise PolicyInvalidError("policy must declare `package policy`")
    return engine


def _eval_rule(engine: Any, rule: str) -> Any:
    """Evaluate one rule: its JSON value, ``None`` for null, or ``_UNDEFINED``."""
    try:
        try:
            value = engine.eval_rule(rule)
        except TypeError:
            # A set of arrays or objects has no Python form (unhashable members); the JSON
            # rendering turns sets into arrays.
            value = json.loads(engine.eval_rule_as_json(rule))
            if value == _UNDEFINED_JSON_MARKER:
                return _UNDEFINED
        # eval_rule gives None for both null and undefined; the JSON form tells them
        # apart (undefined renders as a string marker). Rare: only for None results.
        if value is None and json.loads(engine.eval_rule_as_json(rule)) is not None:
            return _UNDEFINED
    except RuntimeError as exc:
        # A rule path the policy never defines. Trustee treats it as undefined too.
        if _UNDEFINED_RULE_MARKER in str(exc):
            return _UNDEFINED
        raise PolicyEvaluationError(f"{_rule_name(rule)}: {_short_error(exc)}") from exc
    except Exception as exc:
        raise PolicyEvaluationError(f"{_rule_name(rule)}: {_short_error(exc)}") from exc
    except BaseException as exc:
        if not _is_panic(exc):
            raise
        raise PolicyEvaluationError(f"{_rule_name(rule)}: the rego engine failed") from exc
    return _to_json(value)


@contextmanager
def _engine_errors(what: str) -> Iterator[None]:
    """Turn regorus failures (including Rust panics) into PolicyEvaluationError."""
    try:
        yield
    except Exception as exc:
        raise PolicyEvaluationError(f"{what}: {_short_error(exc)}") from exc
    except BaseException as exc:
        if not _is_panic(exc):
            raise
        raise PolicyEvaluationError(f"{what}: the rego engine failed") from exc


def _is_panic(exc: BaseException) -> bool:
    # pyo3's PanicException derives from BaseException and is not importable by name.
    return type(exc).__name__ == "PanicException"


def _rv_lookup(reference_values: Mapping[str, Any]) -> Callable[[Any], Any]:
    def query_reference_value(reference_value_id: Any) -> Any:
        if not isinstance(reference_value_id, str):
            raise TypeError("query_reference_value takes a string id")
        return reference_values.get(reference_value_id)

    return query_reference_value


def _check_data(data: Mapping[str, Any]) -> None:
    if not isinstance(data, Mapping):
        raise PolicyEvaluationError("data must be an object")
    # Regorus merges `data` with the policy's own package: a top-level "policy" key
    # would override or erase the policy's rules (measured: it can turn allow to true).
    if "policy" in data:
        raise PolicyEvaluationError("data must not contain a `policy` member")


def _short_error(exc: BaseException) -> str:
    """Reduce a regorus error to ``"<file>:<line>:<col>: <message>"``.

    Regorus errors are multi-line: location, the offending source line, a caret, the
    message, and possibly a Rust backtrace. Only the location and message are kept.
    """
    text = str(exc).split("Stack backtrace:", 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    location = next((line[4:] for line in lines if line.startswith("--> ")), "")
    message = next((line for line in lines if line.startswith("error:")), "")
    message = message.removeprefix("error:").strip() if message else lines[-1]
    short = f"{location}: {message}" if location else message
    return short[:_MAX_ERROR_CHARS]


def _rule_name(rule: str) -> str:
    return rule[:_MAX_ERROR_CHARS]


# ---------------------------------------------------------------------- value handling


def _to_json(value: Any) -> Any:
    """Make a regorus result JSON-ready: sets become sorted lists, recursively."""
    if isinstance(value, dict):
        return {key: _to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted((_to_json(item) for item in value), key=_order_key)
    return value


def _order_key(value: Any) -> tuple[int, Any]:
    """Sort key following Rego's type order: null, boolean, number, string, then the rest.

    Sets that reach Python hold only scalars (regorus cannot hand over a set of arrays,
    objects or sets; those take the JSON path), so the last case is a safety net.
    """
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, int | float):
        return (2, value)
    if isinstance(value, str):
        return (3, value)
    return (4, json.dumps(value, sort_keys=True, default=str))


def _recall(cache: collections.OrderedDict[_K, _V], key: _K) -> _V | None:
    """``cache[key]`` marked most recently used, or ``None``."""
    found = cache.get(key)
    if found is not None:
        cache.move_to_end(key)
    return found


def _keep(cache: collections.OrderedDict[_K, _V], key: _K, value: _V, size: int) -> None:
    """Store ``value`` as most recently used, dropping the least recent beyond ``size``."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)


def _data_key(value: Mapping[str, Any]) -> bytes | None:
    """``value`` as sorted JSON, or ``None`` unless it is plain JSON data.

    Plain: dicts with string keys, lists (and tuples, which regorus reads as arrays),
    strings, booleans, ``None``, finite floats and 64-bit integers, of exactly those
    types. Equal keys then mean documents regorus cannot tell apart; the text of
    ``json.dumps`` would not (it writes the key ``1`` as ``"1"``, which regorus can
    tell apart, and NaN as ``NaN``).
    """
    if not _plain(value, 0):
        return None
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits
        return None


def _plain(value: Any, depth: int) -> bool:
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return True
    if kind is float:
        return math.isfinite(value)
    if depth >= _MAX_DATA_DEPTH:
        return False
    if kind is dict:
        return _plain_members(value, depth)
    return (kind is list or kind is tuple) and _plain_items(value, depth)


# Loops, not all() over a generator: a third of the time for a release's data document.
def _plain_members(value: dict[Any, Any], depth: int) -> bool:
    for key, item in value.items():
        if type(key) is not str or (type(item) is not str and not _plain(item, depth + 1)):
            return False
    return True


def _plain_items(items: Iterable[Any], depth: int) -> bool:
    for item in items:  # noqa: SIM110
        if type(item) is not str and not _plain(item, depth + 1):
            return False
    return True


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _trust_vector(raw: Any) -> dict[str, int]:
    """Check ``trust_claims`` and complete it to all eight claims.

    Raises:
        PolicyEvaluationError: not an object, names no claim, an unknown claim name, or
            a value that is not an integer in -128..127.
    """
    if raw is _UNDEFINED:
        # Trustee: no trust claims -> every claim is set to 0 (status "none").
        _logger.warning("policy defines no trust_claims; every claim is 0")
        return dict.fromkeys(TRUST_CLAIM_NAMES, 0)
    if not isinstance(raw, dict):
        raise PolicyEvaluationError(f"trust_claims is {_json_type(raw)}, not an object")
    if not raw:
        raise PolicyEvaluationError("trust_claims must set at least one claim")
    for name, value in raw.items():
        if name not in TRUST_CLAIM_NAMES:
            raise PolicyEvaluationError(f"trust_claims has an unknown claim {str(name)[:64]!r}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyEvaluationError(
                f"trust claim {name} is {_json_type(value)}, not an integer"
            )
        if not CLAIM_MIN <= value <= CLAIM_MAX:
            raise PolicyEvaluationError(f"trust claim {name} is outside -128..127")
    return {name: raw.get(name, 0) for name in TRUST_CLAIM_NAMES}


def _extensions(raw: Any) -> tuple[Extension, ...]:
    """Check ``extensions``: a list of ``{"name", "key", "value"}``.

    Members whose value is null are dropped (EAR leaves null members out of the token).
    Other members of an entry are ignored, as Trustee does.

    Raises:
        PolicyEvaluationError: not a list, an entry of the wrong shape, a duplicate or
            reserved name or key, or a value that is not JSON.
    """
    if raw is _UNDEFINED:
        return ()
    if not isinstance(raw, list):
        raise PolicyEvaluationError(f"extensions is {_json_type(raw)}, not an array")
    names: set[str] = set()
    keys: set[int] = set()
    extensions: list[Extension] = []
    for index, entry in enumerate(raw):
        extension = _extension(f"extensions[{index}]", entry)
        if extension.name in names or extension.key in keys:
            raise PolicyEvaluationError(f"extensions[{index}] repeats a name or key")
        names.add(extension.name)
        keys.add(extension.key)
        if extension.value is not None:
            extensions.append(extension)
    return tuple(extensions)


def _extension(where: str, entry: Any) -> Extension:
    """Check one ``extensions`` entry.

    Raises:
        PolicyEvaluationError: the entry has the wrong shape or a reserved name or key.
    """
    if not isinstance(entry, dict) or not {"name", "key", "value"} <= entry.keys():
        raise PolicyEvaluationError(f"{where} must be an object with name, key and value")
    name, key, value = entry["name"], entry["key"], entry["value"]
    if not isinstance(name, str) or not name:
        raise PolicyEvaluationError(f"{where}.name must be a non-empty string")
    if isinstance(key, bool) or not isinstance(key, int):
        raise PolicyEvaluationError(f"{where}.key must be an integer")
    if not _EXTENSION_KEY_MIN <= key <= _EXTENSION_KEY_MAX:
        raise PolicyEvaluationError(f"{where}.key is outside the 32-bit range")
    if name in _RESERVED_EXTENSION_NAMES or key in _RESERVED_EXTENSION_KEYS:
        raise PolicyEvaluationError(f"{where} reuses a name or key EAR reserves")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PolicyEvaluationError(f"{where}.value is not JSON") from exc
    return Extension(name=name, key=key, value=value)


if TYPE_CHECKING:
    # mypy checks here that RegoEngine keeps matching the PolicyEngine protocol.
    _protocol_check: PolicyEngine = RegoEngine()
