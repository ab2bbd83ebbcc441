"""Benchmark `metatide run` against a real PostgreSQL catalog of 10,000 tables / 200,000 columns.

Creates (or reuses) the database ``metatide_bench``: SCHEMAS schemas x TABLES relations x
COLUMNS columns of mixed types, every tenth relation a view, some table and column comments,
primary keys, defaults. Then, into a fresh local-directory store, measures the scenarios of
bench/_catalog.py (a. full run, b. no-change run, c. 1 % of the tables altered), each in a
fresh process. Added columns are dropped again afterwards, so the cached catalog stays
valid. Figures go to stdout and to bench/results.json.

    uv run python bench/postgres_catalog.py [--recreate] [--repeat 2]
    METATIDE_BENCH_PG_DATABASE=metatide_bench_100k uv run python \
        bench/postgres_catalog.py --schemas 200 --repeat 1     # 100,000 tables / 2,000,000 columns

The admin DSN comes from METATIDE_TEST_PG_DSN (default: the CI PostgreSQL on 127.0.0.1:55432);
start that server with ``bash .ci/services/postgres.sh start``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _catalog import (
    ADDED_PREFIX,
    Layout,
    chosen_tables,
    main,
    planned_columns,
    table_comment,
)

DEFAULT_ADMIN_DSN = "postgresql://metatide:metatide-test@127.0.0.1:55432/postgres"
DATABASE = os.environ.get("METATIDE_BENCH_PG_DATABASE") or "metatide_bench"
"""Several catalog sizes can be kept side by side, each in its own database, e.g.
METATIDE_BENCH_PG_DATABASE=metatide_bench_100k with --schemas 200 (100,000 relations)."""
DSN_ENV = "METATIDE_BENCH_DSN"
TABLES_PER_STATEMENT = 50

# Type and default of each template column (bench/_catalog.py names them).
COLUMN_TYPES: dict[str, tuple[str, str | None]] = {
    "id": ("bigint", None),
    "created_at": ("timestamp with time zone", "now()"),
    "updated_at": ("timestamp without time zone", None),
    "name": ("character varying(128)", None),
    "description": ("text", None),
    "status": ("character(3)", "'new'"),
    "amount": ("numeric(12,2)", "0"),
    "quantity": ("integer", "1"),
    "owner_id": ("bigint", None),
    "ratio": ("double precision", None),
    "score": ("real", None),
    "is_active": ("boolean", "true"),
    "payload": ("jsonb", None),
    "tags": ("text[]", None),
    "external_id": ("uuid", None),
    "birth_date": ("date", None),
    "duration": ("interval", None),
    "client_ip": ("inet", None),
    "raw": ("bytea", None),
    "priority": ("smallint", "3"),
}


def ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A quoted SQL string literal (standard_conforming_strings is on since PostgreSQL 9.1)."""
    return "'" + text.replace("'", "''") + "'"


def dsn_for(admin_dsn: str, database: str) -> str:
    """The admin DSN pointed at another database."""
    return urlunsplit(urlsplit(admin_dsn)._replace(path="/" + quote(database, safe="")))


def relation_ddl(layout: Layout, schema_index: int, index: int) -> str:
    """CREATE TABLE or VIEW (with comments) for one relation of a schema."""
    schema = ident(layout.schema_name(schema_index))
    if layout.is_view(index):
        name = f"v_{index:04d}"
        base = f"t_{index - 1:04d}"
        statements = [f"CREATE VIEW {schema}.{ident(name)} AS SELECT * FROM {schema}.{ident(base)}"]
        if index % 20 == 19:
            statements.append(
                f"COMMENT ON VIEW {schema}.{ident(name)} IS {literal(f'View over {base}')}"
            )
        return ";\n".join(statements) + ";\n"
    name = f"t_{index:04d}"
    qualified = f"{schema}.{ident(name)}"
    columns = []
    comments = []
    for column in planned_columns(layout, index):
        data_type, default = COLUMN_TYPES[column.template]
        text = f"{ident(column.name)} {data_type}"
        if column.primary_key:
            text += " PRIMARY KEY"
        elif column.not_null:
            text += " NOT NULL"
        if default is not None:
            text += f" DEFAULT {default}"
        columns.append(text)
        if column.comment is not None:
            comments.append(
                f"COMMENT ON COLUMN {qualified}.{ident(column.name)} IS {literal(column.comment)}"
            )
    if (comment := table_comment(index)) is not None:
        comments.append(f"COMMENT ON TABLE {qualified} IS {literal(comment)}")
    create = f"CREATE TABLE {qualified} (\n  " + ",\n  ".join(columns) + "\n)"
    return ";\n".join([create, *comments]) + ";\n"


async def catalog_counts(conn: Any) -> dict[str, Any]:
    """Relations, views and live columns of the bench schemas, and the layout label."""
    row = await conn.fetchrow(
        r"""
        WITH rel AS (
          SELECT c.oid, c.relkind FROM pg_catalog.pg_class AS c
          JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
          WHERE n.nspname LIKE 'bench\_s%' AND c.relkind IN ('r', 'v')
        )
        SELECT (SELECT count(*) FROM rel) AS relations,
               (SELECT count(*) FROM rel WHERE relkind = 'v') AS views,
               (SELECT count(*) FROM pg_catalog.pg_attribute AS a JOIN rel ON rel.oid = a.attrelid
                 WHERE a.attnum > 0 AND NOT a.attisdropped) AS columns,
               pg_catalog.shobj_description(
                 (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()),
                 'pg_database') AS label
        """
    )
    return dict(row)


async def drop_added_columns(conn: Any) -> int:
    """Undo scenario c (also after a crash): drop every column the benchmark added."""
    rows = await conn.fetch(
        r"""
        SELECT n.nspname, c.relname, a.attname FROM pg_catalog.pg_attribute AS a
        JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname LIKE 'bench\_s%' AND a.attname LIKE $1 AND NOT a.attisdropped
        """,
        ADDED_PREFIX.replace("_", r"\_") + "%",
    )
    if rows:
        script = "".join(
            f"ALTER TABLE {ident(s)}.{ident(t)} DROP COLUMN {ident(a)};\n" for s, t, a in rows
        )
        async with conn.transaction():
            await conn.execute(script)
    return len(rows)


async def ensure_catalog(admin_dsn: str, layout: Layout, recreate: bool) -> dict[str, Any]:
    """Reuse metatide_bench if it holds exactly the layout, else (re)create it; returns timings."""
    bench_dsn = dsn_for(admin_dsn, DATABASE)
    if not recreate:
        try:
            conn = await asyncpg.connect(bench_dsn)
        except asyncpg.InvalidCatalogNameError:
            conn = None
        if conn is not None:
            try:
                await drop_added_columns(conn)
                counts = await catalog_counts(conn)
            finally:
                await conn.close()
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
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {ident(DATABASE)} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {ident(DATABASE)}")
        await admin.execute(f"COMMENT ON DATABASE {ident(DATABASE)} IS {literal(layout.label)}")
    finally:
        await admin.close()
    work = list(range(layout.schemas))

    async def worker() -> None:
        conn = await asyncpg.connect(bench_dsn)
        try:
            while work:
                schema_index = work.pop(0)
                await _create_schema(conn, layout, schema_index)
                print(f"  schema {layout.schema_name(schema_index)} created", flush=True)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(2)))
    conn = await asyncpg.connect(bench_dsn)
    try:
        await conn.execute(
            "ANALYZE pg_catalog.pg_class, pg_catalog.pg_attribute, pg_catalog.pg_attrdef, "
            "pg_catalog.pg_description, pg_catalog.pg_index, pg_catalog.pg_namespace, "
            "pg_catalog.pg_type, pg_catalog.pg_depend, pg_catalog.pg_rewrite"
        )
        counts = await catalog_counts(conn)
    finally:
        await conn.close()
    return {"reused": False, "create_seconds": time.perf_counter() - started, **counts}


async def _create_schema(conn: Any, layout: Layout, schema_index: int) -> None:
    """One schema in one transaction, TABLES_PER_STATEMENT relations per round trip."""
    async with conn.transaction():
        await conn.execute(f"CREATE SCHEMA {ident(layout.schema_name(schema_index))}")
        for start in range(0, layout.tables, TABLES_PER_STATEMENT):
            stop = min(start + TABLES_PER_STATEMENT, layout.tables)
            await conn.execute(
                "".join(relation_ddl(layout, schema_index, i) for i in range(start, stop))
            )


async def alter_tables(admin_dsn: str, layout: Layout, count: int, seed: int) -> list[str]:
    """ADD COLUMN on `count` random base tables (one transaction); returns their names."""
    chosen = chosen_tables(layout, count, seed)
    names = [f"{layout.schema_name(s)}.t_{i:04d}" for s, i in chosen]
    script = "".join(
        f"ALTER TABLE {ident(layout.schema_name(s))}.{ident(f't_{i:04d}')} "
        f"ADD COLUMN {ident(f'{ADDED_PREFIX}_{seed}')} integer DEFAULT 7;\n"
        for s, i in chosen
    )
    conn = await asyncpg.connect(dsn_for(admin_dsn, DATABASE))
    try:
        async with conn.transaction():
            await conn.execute(script)
    finally:
        await conn.close()
    return names


async def restore(admin_dsn: str) -> int:
    """Drop the columns scenario c added."""
    conn = await asyncpg.connect(dsn_for(admin_dsn, DATABASE))
    try:
        return await drop_added_columns(conn)
    finally:
        await conn.close()


@dataclass(frozen=True)
class PostgresCatalog:
    """The PostgreSQL side of the catalog benchmark (see bench/_catalog.py)."""

    admin_dsn: str
    name: str = "postgres"
    dsn_env: str = DSN_ENV
    settle_seconds: float = 0.0
    extra_spec: dict[str, Any] = field(default_factory=dict)
    spec_notes: str = "spec defaults"

    def dsn(self) -> str:
        return dsn_for(self.admin_dsn, DATABASE)

    def source(self) -> dict[str, Any]:
        return {"kind": "postgresql", "dsnFrom": {"env": DSN_ENV}, "databases": [DATABASE]}

    def ensure(self, layout: Layout, recreate: bool) -> dict[str, Any]:
        return asyncio.run(ensure_catalog(self.admin_dsn, layout, recreate))

    def alter(self, layout: Layout, count: int, seed: int) -> list[str]:
        return asyncio.run(alter_tables(self.admin_dsn, layout, count, seed))

    def restore(self) -> int:
        return asyncio.run(restore(self.admin_dsn))


if __name__ == "__main__":
    admin = os.environ.get("METATIDE_TEST_PG_DSN") or DEFAULT_ADMIN_DSN
    main(PostgresCatalog(admin), __doc__, sys.argv[1:])
