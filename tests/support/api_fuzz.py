# SPDX-License-Identifier: Apache-2.0
"""Schemathesis over the whole application's OpenAPI document, in-process (ASGI).

Shared by the bounded suite test (tests/integration/test_openapi_schemathesis.py) and the
long run (tools/fuzz_api.py). Every operation of ``/openapi.json`` gets generated
requests, valid and invalid; admin operations carry a fresh admin token. Each answer
must conform to the document (status documented, content type, body schema, headers) and
must not be a fault of ours: a 5xx is allowed only where the reference's wire format
demands it, the attestation service's framed 500 for a rejected request, and even then
not for an unexpected exception (whose framed cause is the fixed ``internal error``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import schemathesis
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis import checks as st_checks
from schemathesis.python import asgi as st_asgi

from kbs.app import create_app
from support.kbs_app import AdminKey, make_admin_key, now_clock, settings_for

#: The attestation service's paths, at the root and under /as (its text framing).
AS_PATHS = ("/attestation", "/challenge", "/policy", "/policies", "/certificate")


@dataclass
class FuzzReport:
    """What a run did: requests per operation and status, and the failures found."""

    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.requests.values())


def _is_as_path(path: str) -> bool:
    path = path.removeprefix("/as")
    return any(path == p or path.startswith(p + "/") for p in AS_PATHS)


@schemathesis.check
def no_server_fault(ctx: Any, response: Any, case: Any) -> bool | None:
    """No 5xx, except the attestation service's framed 500 for a rejected request."""
    del ctx
    status = response.status_code
    if status < 500:
        return None
    body = response.content.decode("utf-8", errors="replace")
    if (
        status == 500
        and _is_as_path(case.operation.path)
        and body.startswith("An internal error occured: \n")
        and not body.rstrip().endswith(": internal error")
    ):
        return None
    raise AssertionError(f"server fault {status}: {body[:300]}")


def admin_token(key: AdminKey) -> str:
    private = serialization.load_pem_private_key(key.private_pem, password=None)
    now = int(dt.datetime.now(dt.UTC).timestamp())
    return jwt.encode({"role": "admin", "iat": now, "exp": now + 300}, private, algorithm="EdDSA")  # type: ignore[arg-type]


@contextlib.contextmanager
def fuzzable_app(directory: Path | None = None) -> Iterator[tuple[Any, AdminKey]]:
    """The whole application (both APIs) on a fresh SQLite database, with an admin key."""
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        key = make_admin_key(directory)
        app = create_app(settings_for(directory, key), clock=now_clock())
        try:
            yield app, key
        finally:
            st_asgi.shutdown_lifespans()


#: Checks run on every answer (not_a_server_error is replaced by no_server_fault).
#: Not negative_data_rejection: like Trustee, the KBS ignores query parameters and body
#: members it does not know, so an "invalid" request with an extra one may well succeed.
CHECKS: list[Callable[..., Any]] = [
    no_server_fault,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
    st_checks.response_headers_conformance,
    st_checks.ignored_auth,
]


def run(
    app: Any,
    key: AdminKey,
    *,
    max_examples: int,
    operations: Callable[[str, str], bool] = lambda _method, _path: True,
    on_case: Callable[[str], None] | None = None,
) -> FuzzReport:
    """Fuzz every operation of ``app``'s document with up to ``max_examples`` cases each."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    report = FuzzReport()
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operations(operation.method.upper(), operation.path):
            continue
        label = f"{operation.method.upper()} {operation.path}"
        try:
            _exercise(operation, key, label=label, max_examples=max_examples, report=report)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - schemathesis raises exception groups
            report.failures.append(f"{label}: {exc}")
        if on_case is not None:
            on_case(label)
    return report


def _strategy(operation: Any) -> Any:
    """Valid requests and, for operations without path parameters, invalid ones too.

    A path that violates its parameters' schema ("..", a known endpoint name in the
    catch-all's ``{plugin}``) names another operation or none, so it is not a negative
    case of this one.
    """
    positive = operation.as_strategy(generation_mode=GenerationMode.POSITIVE)
    if "{" in operation.path:
        return positive
    return st.one_of(positive, operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))


def _exercise(
    operation: Any, key: AdminKey, *, label: str, max_examples: int, report: FuzzReport
) -> None:
    admin = bool(operation.definition.raw.get("security"))

    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=_strategy(operation))
    def exercise(case: Any) -> None:
        headers = {"Authorization": f"Bearer {admin_token(key)}"} if admin else None
        response = case.call(headers=headers)
        report.requests[label] += 1
        report.statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)

    exercise()
