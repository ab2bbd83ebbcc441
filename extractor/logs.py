"""Structured logs: JSON lines in containers, readable lines on a terminal, always on stderr.

stdout is reserved for each phase's one JSON result line, which the operator and scripts
parse; everything else is a log event on stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import structlog


def configure(level: str = "INFO", json_logs: bool | None = None) -> None:
    """Set up logging once per process; METATIDE_LOG_FORMAT=json|console overrides the guess.

    structlog events and records of stdlib loggers (the S3 adapter's, libraries') go through
    the same renderer, so a pod's log is one stream of JSON lines.
    """
    chosen = os.environ.get("METATIDE_LOG_FORMAT")
    if json_logs is None:
        json_logs = chosen == "json" if chosen else not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json_logs
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    numeric_level = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        # sys.stderr is looked up per event: a progress display may redirect it meanwhile.
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric_level)


def _stderr_logger(*_: object) -> structlog.PrintLogger:
    return structlog.PrintLogger(file=sys.stderr)  # looked up per event: see configure()


if not structlog.is_configured():
    # Used as a library (tests, benchmarks), the phases still log to stderr, never to stdout.
    structlog.configure(logger_factory=_stderr_logger)

log = structlog.get_logger("metatide")


@contextmanager
def phase_logging(phase: str, run_id: str, batch: int | None = None) -> Iterator[None]:
    """Every log event inside carries the phase, the run id and (columns) the batch index."""
    fields: dict[str, object] = {"phase": phase, "run_id": run_id}
    if batch is not None:
        fields["batch"] = batch
    with structlog.contextvars.bound_contextvars(**fields):
        yield
