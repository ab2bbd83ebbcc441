"""Structured logs: JSON lines in containers, readable lines on a terminal, always on stderr.

stdout is reserved for each phase's one JSON result line, which the operator and scripts
parse; everything else is a log event on stderr. An event is a name and fields
(``log.info("catalog_listed", tables=10000)``); `phase_logging` adds the phase, the run id
and the batch to every event inside it, however deep the call.

Built on the standard library's `logging`, so the events of every library logger (the S3
adapter's retries, urllib3, kopf) come out of the same handler in the same format. (structlog
did this before; importing it imports rich's traceback machinery whenever rich is installed,
as it is for typer: 0.19 s added to the start of every Job pod, for no feature used here.)
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final

_FIELDS: Final = "metatide_fields"
# The default is never mutated: phase_logging sets a new dict and resets it afterwards.
_CONTEXT: ContextVar[dict[str, Any]] = ContextVar("metatide_log_context", default={})  # noqa: B039


class EventLogger:
    """``log.info("event", key=value, ...)``: an event name and its fields."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, event: str, fields: dict[str, Any], *, trace: bool = False) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={_FIELDS: fields}, exc_info=trace, stacklevel=3)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error event with the traceback of the exception being handled."""
        self._log(logging.ERROR, event, fields, trace=True)


class _Formatter(logging.Formatter):
    """One event per line: a JSON object, or `time [level] event key=value ...` for people."""

    def __init__(self, json_lines: bool) -> None:
        super().__init__()
        self._json = json_lines

    def format(self, record: logging.LogRecord) -> str:
        fields = {**getattr(record, _FIELDS, {}), **_CONTEXT.get()}
        moment = datetime.fromtimestamp(record.created, UTC)
        level = record.levelname.lower()
        if self._json:
            document = {"event": record.getMessage(), **fields, "level": level}
            document["logger"] = record.name
            document["timestamp"] = moment.isoformat().replace("+00:00", "Z")
            if record.exc_info:
                document["exception"] = self.formatException(record.exc_info)
            return json.dumps(document, default=str, ensure_ascii=False)
        pairs = " ".join(f"{key}={value}" for key, value in sorted(fields.items()))
        line = f"{moment:%Y-%m-%d %H:%M:%S} [{level:<8}] {record.getMessage():<30} {pairs}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line.rstrip()


def configure(level: str = "INFO", json_logs: bool | None = None) -> None:
    """Send every logger's events to stderr; METATIDE_LOG_FORMAT=json|console overrides the guess
    (JSON unless stderr is a terminal)."""
    chosen = os.environ.get("METATIDE_LOG_FORMAT")
    if json_logs is None:
        json_logs = chosen == "json" if chosen else not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(json_logs))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.getLevelName(level.upper()))


log = EventLogger("metatide")


@contextmanager
def phase_logging(phase: str, run_id: str, batch: int | None = None) -> Iterator[None]:
    """Every log event inside carries the phase, the run id and (columns) the batch index."""
    fields: dict[str, Any] = {**_CONTEXT.get(), "phase": phase, "run_id": run_id}
    if batch is not None:
        fields["batch"] = batch
    token = _CONTEXT.set(fields)
    try:
        yield
    finally:
        _CONTEXT.reset(token)
