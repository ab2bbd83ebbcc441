"""Structured logs: JSON lines in containers, readable lines on a terminal, always on stderr.

stdout is reserved for each phase's one JSON result line, which the operator and scripts
parse; everything else is a log event on stderr.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure(level: str = "INFO", json_logs: bool | None = None) -> None:
    """Set up structlog once per process; METATIDE_LOG_FORMAT=json|console overrides the guess."""
    chosen = os.environ.get("METATIDE_LOG_FORMAT")
    if json_logs is None:
        json_logs = chosen == "json" if chosen else not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json_logs
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


log = structlog.get_logger("metatide")
