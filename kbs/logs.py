# SPDX-License-Identifier: Apache-2.0
"""Log output: human-readable text (the default) or one JSON object per line.

Every record logged while a request is served carries that request's id (the
``X-Request-Id`` the client sent or the one we chose, see :mod:`kbs.request_id`):
:class:`RequestIdFilter` copies it from the context variable onto the record, for our
loggers and for uvicorn's access and error lines alike (they are emitted inside the
request's context). JSON lines have the members ``time`` (RFC 3339, UTC), ``level``,
``logger``, ``message`` and ``request_id`` (``null`` outside a request), plus
``exc_info`` when a trace is logged. What goes *into* messages is the caller's business:
the KBS never logs secret values, tokens or evidence.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Final, Literal, TextIO

from kbs.request_id import current_request_id

_logger = logging.getLogger(__name__)

__all__ = [
    "DATA_ECHOING_LOGGERS",
    "LOG_FORMATS",
    "TEXT_FORMAT",
    "JsonFormatter",
    "LogFormat",
    "RequestIdFilter",
    "configure_logging",
]

LogFormat = Literal["text", "json"]
#: The ``--log-format`` choices.
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("text", "json")
#: Third-party loggers whose DEBUG/INFO lines may echo data: aiosqlite logs every SQL
#: call with its parameters (session tokens, secret values in the SQL backend), the SQL
#: engine and drivers can log statements and parameters, httpcore and hpack log request
#: and header frames. They are held at WARNING even under ``--log-level debug``, so that
#: no log level ever writes a secret.
DATA_ECHOING_LOGGERS: Final = (
    "aiosqlite",
    "sqlalchemy.engine",
    "sqlalchemy.pool",
    "psycopg",
    "asyncpg",
    "httpcore",
    "hpack",
)
#: The text layout; the request id ends the line when there is one.
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s%(request_id_suffix)s"


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (and ``request_id_suffix`` for text) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate ``record`` with the current request id; never drops a record."""
        request_id = getattr(record, "request_id", None) or current_request_id()
        record.request_id = request_id
        record.request_id_suffix = f" [request_id={request_id}]" if request_id else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as ``{time, level, logger, message, request_id[, exc_info]}``."""
        time = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
        line = {
            "time": time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        # default=str: a message argument of an unexpected type still gives one line.
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(
    level: str, log_format: LogFormat = "text", *, stream: TextIO | None = None
) -> None:
    """Send every logger's records to ``stream`` (stderr) in ``log_format``.

    Replaces the root logger's handlers, so uvicorn's loggers (which propagate to the
    root with ``log_config=None``) are formatted the same way.

    Raises:
        ValueError: unknown ``log_format`` or level.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for name in DATA_ECHOING_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
