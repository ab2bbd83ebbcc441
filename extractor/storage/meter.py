"""Counting the bytes a phase moves to and from the store: its summary and the benchmarks show them.

A phase opens `metering()`; every store read and write made in that context (tasks and worker
threads it starts included, as they inherit the context) adds to the same `IOMeter`. Outside
a metered context nothing is counted. Stores report what crosses their boundary; a local file
a store hands out (`Store.local_file`) counts as read in full.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass


@dataclass(slots=True)
class IOMeter:
    """Bytes and requests of one phase (or one command)."""

    bytes_read: int = 0
    bytes_written: int = 0
    reads: int = 0
    writes: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


_CURRENT: ContextVar[IOMeter | None] = ContextVar("metatide_io_meter", default=None)


@contextmanager
def metering() -> Iterator[IOMeter]:
    """Count the store traffic of the code inside (a fresh meter; an outer one stops counting)."""
    meter = IOMeter()
    token = _CURRENT.set(meter)
    try:
        yield meter
    finally:
        _CURRENT.reset(token)


def record_read(size: int) -> None:
    """A store read `size` bytes for the current context."""
    meter = _CURRENT.get()
    if meter is not None:
        meter.bytes_read += size
        meter.reads += 1


def record_write(size: int) -> None:
    """A store wrote `size` bytes for the current context."""
    meter = _CURRENT.get()
    if meter is not None:
        meter.bytes_written += size
        meter.writes += 1
