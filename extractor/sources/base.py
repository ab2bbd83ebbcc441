"""The `Source` seam: what the engine needs from a database, and nothing more.

A source lists databases, schemas and tables (each table with a DDL time and/or a
fingerprint), returns columns for a given list of tables, and tells the database's clock.
Rows come back as Arrow tables in the schemas of `metatide.extractor.core.records`. Sources filter
coarsely by scope to save work; the engine applies the scope exactly. Each source declares
its `Capabilities`; tests/integration/test_source_contract.py holds every source to them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self

import pyarrow as pa

from metatide.extractor.core.ids import TableKey
from metatide.extractor.core.scope import Scope

FINGERPRINT_HEX_DIGITS = 32
"""Fingerprints are the first 128 bits of a SHA-256, in hex: collisions are out of reach for
change detection, and every state file and delta stores one per table."""


@dataclass(frozen=True, slots=True)
class ColumnsResult:
    """Columns of the requested tables, and which of those tables still exist.

    A requested table that exists with zero columns is in `present` with no rows in
    `columns`; one dropped since plan is absent from `present`. The engine needs the
    difference: the first has empty columns, the second is deleted.
    """

    columns: pa.Table
    present: frozenset[TableKey]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a source can tell about its relations, which decides how changes are detected.

    Every relation must carry a DDL time or a fingerprint (or both): the engine finds
    changes through nothing else.
    """

    ddl_time: bool
    """Tables carry `ddl_time`, the time of their last DDL, moved by every change to a field
    the source extracts, on the same clock as `Source.clock`."""
    creation_time: bool
    """Tables carry `created_at`; without it a table new to the state is CREATED unless its
    DDL time (an upper bound of its creation) predates the marker."""
    fingerprint: bool
    """Relations without a DDL time (all of them, or views) carry a fingerprint: a hash over
    every field the source returns for the relation and its columns."""


class Source(Protocol):
    """A database to extract metadata from; use as an async context manager."""

    capabilities: Capabilities

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    async def clock(self) -> datetime:
        """The database server's current time (UTC): the next marker comes from here.

        Never later than the DDL time any change made after this call will carry (a source
        whose DDL times come from a coarser clock answers a little early).
        """
        ...

    async def databases(self, scope: Scope) -> pa.Table:
        """Databases in scope (DATABASE_SCHEMA)."""
        ...

    async def schemas(self, databases: Sequence[str], scope: Scope) -> pa.Table:
        """Schemas of the given databases (SCHEMA_SCHEMA), system schemas left out."""
        ...

    async def tables(self, schemas: pa.Table, scope: Scope) -> pa.Table:
        """Tables and views of the given schemas (TABLE_SCHEMA), with fingerprint/DDL time."""
        ...

    async def columns(self, tables: Sequence[TableKey]) -> ColumnsResult:
        """Columns (COLUMN_SCHEMA) of exactly the requested tables."""
        ...


class ClosingSource:
    """The end of `async with` that every adapter shares: leaving the block, whether it ended
    normally or by an exception, awaits `close`, which releases the adapter's connections."""

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Release every connection the adapter opened (it may be entered again later)."""
        raise NotImplementedError


def reveals_secret(exc: BaseException, secrets: Iterable[str]) -> bool:
    """Whether a driver error, or one it was raised from, shows one of the secrets.

    An error that does is translated with ``raise ... from None``, so no traceback shows it.
    """
    texts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(texts) < 10:  # a chain, bounded against cycles
        texts.append(f"{seen}\n{seen!r}")
        seen = seen.__cause__ or seen.__context__
    text = "\n".join(texts)
    return any(secret and secret in text for secret in secrets)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """The text with every secret (longest first, so none is half-replaced) as ``***``."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
