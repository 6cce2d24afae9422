# SPDX-License-Identifier: Apache-2.0
"""Schemathesis over the whole app's OpenAPI document, in-process: no faults, no drift.

Bounded for the suite (``KBS_FUZZ_EXAMPLES`` cases per operation, 25 by default); the
long run is ``tools/fuzz_api.py``.
"""

from __future__ import annotations

import os

import pytest

from kbs.state import KbsState
from support.api_fuzz import fuzzable_app, run

EXAMPLES = int(os.environ.get("KBS_FUZZ_EXAMPLES", "25"))


def test_every_operation_conforms_and_never_faults(tmp_path):
    with fuzzable_app(tmp_path) as (app, key):
        report = run(app, key, max_examples=EXAMPLES)
    assert not report.failures, "\n\n".join(report.failures)
    # Every operation was exercised, admin ones past authentication too.
    operations = {
        (method.upper(), path) for path, ops in app.openapi()["paths"].items() for method in ops
    }
    # Schemathesis does not fuzz the document it was loaded from (it served it, though).
    operations.discard(("GET", "/openapi.json"))
    assert {tuple(label.split(" ", 1)) for label in report.requests} == operations
    assert report.statuses[200] > 0
    assert report.statuses[401] > 0


def test_a_server_fault_is_reported(tmp_path, monkeypatch):
    def broken(self: KbsState) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(KbsState, "published_jwks", broken)
    with fuzzable_app(tmp_path) as (app, key):
        report = run(
            app,
            key,
            max_examples=2,
            operations=lambda method, path: (method, path) == ("GET", "/.well-known/jwks.json"),
        )
    assert report.statuses == {500: report.total}
    assert len(report.failures) == 1
    assert "server fault 500" in report.failures[0]


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/attestation", "An internal error occured: \n0: attestation report evaluate", True),
        ("/as/challenge", "An internal error occured: \n0: x\n1: internal error", False),
        ("/healthz", "An internal error occured: \n0: x", False),
    ],
)
def test_only_framed_rejections_may_be_500(path, body, expected):
    from support.api_fuzz import no_server_fault  # noqa: PLC0415

    class _Response:
        status_code = 500
        content = body.encode()

    class _Operation:
        pass

    class _Case:
        operation = _Operation()

    _Case.operation.path = path  # type: ignore[attr-defined]
    if expected:
        assert no_server_fault(None, _Response(), _Case()) is None
    else:
        with pytest.raises(AssertionError, match="server fault 500"):
            no_server_fault(None, _Response(), _Case())
