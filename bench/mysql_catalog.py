"""Benchmark `metatide run` against a real MariaDB catalog of 10,000 tables / 200,000 columns.

Creates (or reuses) SCHEMAS MySQL databases ``bench_s000``... (metatide schemas of the
database 'default') x TABLES relations x COLUMNS columns of mixed types, every tenth relation
a view, some table and column comments, primary keys, defaults: the shape of the PostgreSQL
catalog. Then, into a fresh local-directory store, measures the scenarios of
bench/_catalog.py (a. full run, b. no-change run, c. 1 % of the tables altered with an
instant ADD COLUMN), each in a fresh process. Added columns are dropped again afterwards.
Figures go to stdout and to bench/results.json.

    uv run python bench/mysql_catalog.py [--recreate] [--repeat 2]

The admin DSN comes from METATIDE_TEST_MYSQL_DSN (default: the CI MariaDB on
127.0.0.1:53306); start that server with ``bash .ci/services/mariadb.sh start``. The spec
sets ``marker.preponeHours: 0``: with the default 3 hours every table changed in the last
3 hours is read on every run, and the generated catalog is minutes old.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncmy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _catalog import (
    ADDED_PREFIX,
    Layout,
    chosen_tables,
    main,
    planned_columns,
    table_comment,
)

DEFAULT_ADMIN_DSN = "mysql://metatide:metatide-test@127.0.0.1:53306/"
DSN_ENV = "METATIDE_BENCH_DSN"
TABLES_PER_STATEMENT = 50

# Type and default of each template column (bench/_catalog.py names them).
COLUMN_TYPES: dict[str, tuple[str, str | None]] = {
    "id": ("bigint", None),
    "created_at": ("datetime(6)", "CURRENT_TIMESTAMP(6)"),
    "updated_at": ("datetime", None),
    "name": ("varchar(128)", None),
    "description": ("text", None),
    "status": ("char(3)", "'new'"),
    "amount": ("decimal(12,2)", "0"),
    "quantity": ("int", "1"),
    "owner_id": ("bigint", None),
    "ratio": ("double", None),
    "score": ("float", None),
    "is_active": ("boolean", "1"),
    "payload": ("json", None),
    "tags": ("varchar(255)", None),
    "external_id": ("char(36)", None),
    "birth_date": ("date", None),
    "duration": ("time", None),
    "client_ip": ("varbinary(16)", None),
    "raw": ("blob", None),
    "priority": ("smallint", "3"),
}


# MySQL cannot key these without a prefix length.
_UNKEYABLE = frozenset({"text", "blob", "json"})


def ident(name: str) -> str:
    """A quoted MySQL identifier."""
    return "`" + name.replace("`", "``") + "`"


def literal(text: str) -> str:
    """A quoted MySQL string literal (no backslashes in the generated texts)."""
    return "'" + text.replace("'", "''") + "'"


def relation_ddl(layout: Layout, schema_index: int, index: int) -> str:
    """CREATE TABLE or VIEW (comments inline) for one relation of a schema."""
    schema = ident(layout.schema_name(schema_index))
    if layout.is_view(index):
        name, base = f"v_{index:04d}", f"t_{index - 1:04d}"
        return f"CREATE VIEW {schema}.{ident(name)} AS SELECT * FROM {schema}.{ident(base)}"
    name = f"t_{index:04d}"
    columns = []
    for column in planned_columns(layout, index):
        data_type, default = COLUMN_TYPES[column.template]
        text = f"{ident(column.name)} {data_type}"
        if column.primary_key and data_type not in _UNKEYABLE:
            text += " PRIMARY KEY"
        elif column.not_null:
            text += " NOT NULL"
        if default is not None:
            text += f" DEFAULT {default}"
        if column.comment is not None:
            text += f" COMMENT {literal(column.comment)}"
        columns.append(text)
    comment = table_comment(index)
    suffix = f" COMMENT {literal(comment)}" if comment is not None else ""
    return f"CREATE TABLE {schema}.{ident(name)} (\n  " + ",\n  ".join(columns) + f"\n){suffix}"


async def _connect(dsn: str) -> Any:
    parts = urlsplit(dsn)
    return await asyncmy.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        charset="utf8mb4",
        autocommit=True,
    )


async def _run(dsn: str, *statements: str) -> list[Any]:
    connection = await _connect(dsn)
    rows: list[Any] = []
    try:
        async with connection.cursor() as cursor:
            for statement in statements:
                await cursor.execute(statement)
                rows = list(await cursor.fetchall())
    finally:
        await connection.ensure_closed()
    return rows


_BENCH_SCHEMAS = "LEFT(TABLE_SCHEMA, 7) = 'bench_s'"


async def catalog_counts(dsn: str) -> dict[str, Any]:
    """Relations, views and columns of the bench databases, and the layout label."""
    ((relations, views),) = await _run(
        dsn,
        "SELECT COUNT(*), COALESCE(SUM(TABLE_TYPE = 'VIEW'), 0) FROM information_schema.TABLES "
        f"WHERE {_BENCH_SCHEMAS}",
    )
    ((columns,),) = await _run(
        dsn, f"SELECT COUNT(*) FROM information_schema.COLUMNS WHERE {_BENCH_SCHEMAS}"
    )
    labels = await _run(
        dsn,
        "SELECT SCHEMA_COMMENT FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'bench_s000'",
    )
    return {
        "relations": int(relations),
        "views": int(views),
        "columns": int(columns),
        "label": labels[0][0] if labels else None,
    }


async def drop_added_columns(dsn: str) -> int:
    """Undo scenario c (also after a crash): drop every column the benchmark added."""
    rows = await _run(
        dsn,
        "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS "
        f"WHERE {_BENCH_SCHEMAS} AND LEFT(COLUMN_NAME, {len(ADDED_PREFIX)}) = "
        f"{literal(ADDED_PREFIX)}",
    )
    statements = [f"ALTER TABLE {ident(s)}.{ident(t)} DROP COLUMN {ident(c)}" for s, t, c in rows]
    if statements:
        await _run(dsn, *statements)
    return len(rows)


async def ensure_catalog(dsn: str, layout: Layout, recreate: bool) -> dict[str, Any]:
    """Reuse the bench databases if they hold exactly the layout, else (re)create them."""
    if not recreate:
        await drop_added_columns(dsn)
        counts = await catalog_counts(dsn)
        expected = {
            "relations": layout.relations,
            "views": layout.views,
            "columns": layout.relations * layout.columns,
            "label": layout.label,
        }
        if counts == expected:
            return {"reused": True, "create_seconds": 0.0, **counts}
        print(f"catalog differs from the layout ({counts} != {expected}): recreating")
    started = time.perf_counter()
    existing = await _run(
        dsn,
        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA "
        "WHERE LEFT(SCHEMA_NAME, 7) = 'bench_s'",
    )
    await _run(dsn, *(f"DROP DATABASE {ident(name)}" for (name,) in existing))
    work = list(range(layout.schemas))

    async def worker() -> None:
        while work:
            schema_index = work.pop(0)
            await _create_schema(dsn, layout, schema_index)
            print(f"  database {layout.schema_name(schema_index)} created", flush=True)

    await asyncio.gather(*(worker() for _ in range(2)))
    await _run(
        dsn, f"ALTER DATABASE {ident(layout.schema_name(0))} COMMENT {literal(layout.label)}"
    )
    counts = await catalog_counts(dsn)
    return {"reused": False, "create_seconds": time.perf_counter() - started, **counts}


async def _create_schema(dsn: str, layout: Layout, schema_index: int) -> None:
    """One MySQL database, TABLES_PER_STATEMENT relations per batch of statements."""
    await _run(dsn, f"CREATE DATABASE {ident(layout.schema_name(schema_index))}")
    for start in range(0, layout.tables, TABLES_PER_STATEMENT):
        stop = min(start + TABLES_PER_STATEMENT, layout.tables)
        await _run(dsn, *(relation_ddl(layout, schema_index, i) for i in range(start, stop)))


async def alter_tables(dsn: str, layout: Layout, count: int, seed: int) -> list[str]:
    """Instant ADD COLUMN on `count` random base tables; returns their names."""
    chosen = chosen_tables(layout, count, seed)
    await _run(
        dsn,
        *(
            f"ALTER TABLE {ident(layout.schema_name(s))}.{ident(f't_{i:04d}')} "
            f"ADD COLUMN {ident(f'{ADDED_PREFIX}_{seed}')} int DEFAULT 7"
            for s, i in chosen
        ),
    )
    return [f"{layout.schema_name(s)}.t_{i:04d}" for s, i in chosen]


@dataclass(frozen=True)
class MysqlCatalog:
    """The MySQL/MariaDB side of the catalog benchmark (see bench/_catalog.py)."""

    admin_dsn: str
    name: str = "mysql"
    dsn_env: str = DSN_ENV
    # DDL times are whole seconds and the marker errs a second early: tables changed
    # within about two seconds of a run are read again by the next one.
    settle_seconds: float = 2.1
    extra_spec: dict[str, Any] = field(default_factory=lambda: {"marker": {"preponeHours": 0}})
    spec_notes: str = "marker.preponeHours 0 (the generated catalog is minutes old)"

    def dsn(self) -> str:
        return self.admin_dsn

    def source(self) -> dict[str, Any]:
        return {
            "kind": "mysql",
            "dsnFrom": {"env": DSN_ENV},
            "scope": {"include": [{"schema": "bench_s*"}]},
        }

    def ensure(self, layout: Layout, recreate: bool) -> dict[str, Any]:
        return asyncio.run(ensure_catalog(self.admin_dsn, layout, recreate))

    def alter(self, layout: Layout, count: int, seed: int) -> list[str]:
        return asyncio.run(alter_tables(self.admin_dsn, layout, count, seed))

    def restore(self) -> int:
        return asyncio.run(drop_added_columns(self.admin_dsn))


if __name__ == "__main__":
    admin = os.environ.get("METATIDE_TEST_MYSQL_DSN") or DEFAULT_ADMIN_DSN
    main(MysqlCatalog(admin), __doc__, sys.argv[1:])
