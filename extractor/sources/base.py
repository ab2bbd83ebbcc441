"""The `Source` seam: what the engine needs from a database, and nothing more.

A source lists databases, schemas and tables (each table with a DDL time and/or a
fingerprint), returns columns for a given list of tables, and tells the database's clock.
Rows come back as Arrow tables in the schemas of `metatide.extractor.records`. Sources filter
coarsely by scope to save work; the engine applies the scope exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self

import pyarrow as pa

from metatide.extractor.ids import TableKey
from metatide.extractor.scope import Scope

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


class Source(Protocol):
    """A database to extract metadata from; use as an async context manager."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    async def clock(self) -> datetime:
        """The database server's current time (UTC): the next marker comes from here."""
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
