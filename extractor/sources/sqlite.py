"""SQLite through SQLAlchemy: the embedded default source, and the unit tests' source.

A SQLite file is one database ('main') with one schema ('main'). SQLite keeps no DDL times
and has no COMMENT statement; by convention a ``-- text`` at the end of a column's line in the
CREATE TABLE statement is read as that column's comment. Each table's fingerprint is a hash
over its stored CREATE statement and the `pragma_table_xinfo` rows (the view's resolved
columns included), which covers every field this source fills. The file is opened
read-only: extraction never creates or changes it.

A table's `object_id` is its schema row's rowid and its b-tree root page: both survive
ALTER TABLE ... RENAME (and ADD, DROP and RENAME COLUMN), so a renamed table is found as
one. Both can come back after DROP TABLE and CREATE TABLE (SQLite reuses freed pages and
the highest rowid), and VACUUM may renumber them: `changes` accepts a rename only when the
columns agree, and a renumbered table is reported UPDATED (its id changed) once. Views have
no id (a renamed view is a drop and a create), and a column's position is not an identity
here (DROP COLUMN shifts the later ones), so column renames are a drop and a create.

Why SQLAlchemy for a file the standard library's `sqlite3` could read: this module is the
template for sources that reach a database through a SQLAlchemy dialect (Oracle, SQL Server,
Snowflake...), which have no asyncio driver of their own. It shows the shape such a source
takes: a read-only `Engine` without a pool, each call on its own connection in a worker
thread, queries as `sa.text` with bound parameters, and the one driver-error translation
(`sa.exc.OperationalError` to `SourceUnavailableError`) in `_run`. Replacing it with
`sqlite3` is a local change; then SQLAlchemy leaves the dependencies with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self, TypeVar

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from metatide.extractor.core.errors import SourceUnavailableError
from metatide.extractor.core.ids import TableKey
from metatide.extractor.core.records import rows_to_table
from metatide.extractor.core.scope import Scope
from metatide.extractor.core.spec import SqliteSourceSpec
from metatide.extractor.sources.base import (
    FINGERPRINT_HEX_DIGITS,
    Capabilities,
    ClosingSource,
    ColumnsResult,
)

T = TypeVar("T")

DATABASE = "main"
SCHEMA = "main"

_LIST_TABLES = sa.text(
    "SELECT name, type, sql, rowid, rootpage FROM sqlite_master "
    "WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
)
_TABLE_INFO = sa.text(
    'SELECT cid, name, type, "notnull", dflt_value, pk, hidden '
    "FROM pragma_table_xinfo(:table) WHERE hidden != 1 ORDER BY cid"
)
_EXISTS = sa.text("SELECT type, sql FROM sqlite_master WHERE name = :table")
_CLOCK = sa.text("SELECT strftime('%Y-%m-%dT%H:%M:%f', 'now')")


class SqliteSource(ClosingSource):
    """A `Source` over one SQLite file."""

    capabilities = Capabilities(ddl_time=False, creation_time=False, fingerprint=True)

    def __init__(self, spec: SqliteSourceSpec) -> None:
        self._path = Path(spec.path)
        self._engine: Engine | None = None

    async def __aenter__(self) -> Self:
        if not self._path.is_file():
            raise SourceUnavailableError(
                f"the SQLite database {self._path} does not exist; check source.path"
            )
        url = sa.URL.create(
            "sqlite+pysqlite",
            database=f"file:{self._path}",
            query={"mode": "ro", "uri": "true"},
        )
        self._engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        return self

    async def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    async def _run(self, work: Callable[[Connection], T]) -> T:
        engine = self._engine
        if engine is None:
            raise RuntimeError("use the source as `async with` before calling it")

        def call() -> T:
            try:
                with engine.connect() as connection:
                    return work(connection)
            except sa.exc.OperationalError as exc:
                raise SourceUnavailableError(
                    f"cannot read the SQLite database {self._path}: {exc.orig}"
                ) from exc

        return await asyncio.to_thread(call)

    async def clock(self) -> datetime:
        text: str = await self._run(lambda c: c.execute(_CLOCK).scalar_one())
        return datetime.fromisoformat(text).replace(tzinfo=UTC)

    async def databases(self, scope: Scope) -> pa.Table:
        rows = [{"database_name": DATABASE, "comment": None}] if scope.database(DATABASE) else []
        return rows_to_table("database", rows)

    async def schemas(self, databases: Sequence[str], scope: Scope) -> pa.Table:
        wanted = DATABASE in databases and scope.schema(DATABASE, SCHEMA)
        rows = [{"database_name": DATABASE, "schema_name": SCHEMA, "comment": None}]
        return rows_to_table("schema", rows if wanted else [])

    async def tables(self, schemas: pa.Table, scope: Scope) -> pa.Table:
        if schemas.num_rows == 0:
            return rows_to_table("table", [])
        return rows_to_table("table", await self._run(self._list_tables))

    def _list_tables(self, connection: Connection) -> list[dict[str, Any]]:
        rows = []
        for name, kind, sql, rowid, rootpage in connection.execute(_LIST_TABLES).all():
            columns = connection.execute(_TABLE_INFO, {"table": name}).all()
            rows.append(
                {
                    "database_name": DATABASE,
                    "schema_name": SCHEMA,
                    "table_name": name,
                    "table_type": "VIEW" if kind == "view" else "TABLE",
                    "comment": None,
                    "view_definition": sql if kind == "view" else None,
                    "created_at": None,
                    "ddl_time": None,
                    "fingerprint": _fingerprint(kind, sql, columns),
                    "object_id": f"{rowid}:{rootpage}" if kind == "table" else None,
                }
            )
        return rows

    async def columns(self, tables: Sequence[TableKey]) -> ColumnsResult:
        return await self._run(lambda c: self._columns(c, tables))

    def _columns(self, connection: Connection, tables: Sequence[TableKey]) -> ColumnsResult:
        rows: list[dict[str, Any]] = []
        present: set[TableKey] = set()
        for key in tables:
            database, schema, table = key
            if (database, schema) != (DATABASE, SCHEMA):
                continue
            found = connection.execute(_EXISTS, {"table": table}).first()
            if found is None:
                continue
            sql = found[1] or ""
            present.add(key)
            comments = _column_comments(sql)
            for cid, name, kind, notnull, default, pk, _ in connection.execute(
                _TABLE_INFO, {"table": table}
            ):
                rows.append(
                    {
                        "database_name": database,
                        "schema_name": schema,
                        "table_name": table,
                        "column_name": name,
                        "ordinal_position": cid + 1,
                        "data_type": kind or "",
                        "is_nullable": not notnull,
                        "column_default": default,
                        "comment": comments.get(name),
                        "is_primary_key": pk > 0,
                    }
                )
        return ColumnsResult(columns=rows_to_table("column", rows), present=frozenset(present))


def _fingerprint(kind: str, sql: str | None, columns: Sequence[Sequence[Any]]) -> str:
    payload = json.dumps([kind, sql, [list(row) for row in columns]], default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:FINGERPRINT_HEX_DIGITS]


_COMMENTED_LINE = re.compile(
    r"""^\s*(?:"((?:[^"]|"")+)"|`([^`]+)`|\[([^\]]+)\]|([^\s"`\[(),]+))[^\n]*?--\s*(.*?)\s*$""",
    re.MULTILINE,
)


def _column_comments(sql: str) -> dict[str, str]:
    """Column comments written as `-- text` at the end of the column's line."""
    comments = {}
    for match in _COMMENTED_LINE.finditer(sql):
        quoted, backticked, bracketed, bare, text = match.groups()
        name = quoted.replace('""', '"') if quoted else backticked or bracketed or bare
        if text:
            comments[name] = text
    return comments
