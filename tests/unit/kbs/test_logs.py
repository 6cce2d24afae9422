# SPDX-License-Identifier: Apache-2.0
"""kbs.logs: JSON lines, request ids on records, data-echoing loggers held at WARNING."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from kbs import request_id
from kbs.logs import DATA_ECHOING_LOGGERS, configure_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in DATA_ECHOING_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def _with_request_id(value: str) -> object:
    return request_id._current.set(value)


def _boom() -> None:
    raise ValueError("boom")


def test_json_lines_carry_the_request_id_and_the_trace() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    log = logging.getLogger("kbs.test")
    log.info("outside %s", "a request")
    token = _with_request_id("req-1")
    try:
        log.warning('inside "quoted"\nand multi-line')
        try:
            _boom()
        except ValueError:
            log.exception("failed")
    finally:
        request_id._current.reset(token)  # type: ignore[arg-type]
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3  # one line per record, whatever the message holds
    assert lines[0]["request_id"] is None
    assert lines[0]["message"] == "outside a request"
    assert lines[1] == {
        "time": lines[1]["time"],
        "level": "WARNING",
        "logger": "kbs.test",
        "message": 'inside "quoted"\nand multi-line',
        "request_id": "req-1",
    }
    assert lines[1]["time"].endswith("Z")
    assert lines[2]["request_id"] == "req-1"
    assert "ValueError: boom" in lines[2]["exc_info"]


def test_text_lines_name_the_request_id() -> None:
    out = io.StringIO()
    configure_logging("info", "text", stream=out)
    token = _with_request_id("req-2")
    try:
        logging.getLogger("kbs.test").info("hello")
    finally:
        request_id._current.reset(token)  # type: ignore[arg-type]
    logging.getLogger("kbs.test").info("bye")
    first, second = out.getvalue().splitlines()
    assert first.endswith("INFO kbs.test: hello [request_id=req-2]")
    assert second.endswith("INFO kbs.test: bye")


def test_data_echoing_loggers_stay_quiet_under_debug() -> None:
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    logging.getLogger("aiosqlite").debug("executing INSERT ... ('the-token',)")
    logging.getLogger("kbs.test").debug("ours")
    assert [json.loads(line)["logger"] for line in out.getvalue().splitlines()] == ["kbs.test"]
    for name in DATA_ECHOING_LOGGERS:
        assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format must be one of text, json"):
        configure_logging("info", "yaml")  # type: ignore[arg-type]
