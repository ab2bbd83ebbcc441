"""The central property, on real servers: incremental state == full extraction state.

A hypothesis state machine applies random DDL (create/drop/rename tables, add/drop/rename/
retype columns, nullability, defaults, comments, schemas, views and materialized views) to a
real database, interleaved with runs that use small batch sizes (many batches) or large ones.
After every run it checks that the committed state equals what a full extraction holds (the
scoped listing and every listed table's columns, read straight from the source), that the
published diff equals the difference between consecutive states, and that the run's change
records (computed from the buckets it touched) equal those computed directly from the two
whole states (renames included). At the end of every example the committed state must also
equal the state of the pipeline's own full extraction into a fresh store.

It runs on PostgreSQL 15 (fingerprints decide) and on MariaDB (the marker and DDL times
decide, with `preponeHours: 0`, so a DDL time in the marker's own second is exercised all
the time: a machine step takes milliseconds). The rules are shared; each dialect turns them
into its own SQL.

Examples: 100 per server by default (CI); set METATIDE_HYPOTHESIS_PROFILE=thorough for 2,000,
or =smoke for 10 while developing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, ClassVar

import asyncmy  # type: ignore[import-untyped,unused-ignore]
import asyncpg  # type: ignore[import-untyped,unused-ignore]
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from metatide.extractor.core.ids import RunId
from metatide.extractor.storage import open_store
from tests.harness import (
    State,
    assert_same_state,
    check_change_records,
    committed_state,
    empty_state,
    expected_diff,
    full_state,
    make_spec,
    published_diff,
    run_pipeline,
    source_snapshot,
)
from tests.services import (
    create_database,
    drop_database,
    mysql_connect,
    mysql_dsn,
    mysql_execute,
    mysql_ident,
    mysql_literal,
    mysql_run,
    require_mysql,
    require_postgres,
)

settings.register_profile(
    "ci",
    max_examples=100,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=2000)
settings.register_profile("smoke", parent=settings.get_profile("ci"), max_examples=10)
PROFILE = os.environ.get("METATIDE_HYPOTHESIS_PROFILE", "ci")

NAMES = st.sampled_from(["a", "b", "Cap", 'we"ird', "dot.ted", "br{ace}", "sp ace", "ü1", "x"])
# Logical column types; each dialect names its own.
TYPES = st.sampled_from(
    ["integer", "bigint", "text", "varchar", "numeric", "boolean", "timestamp", "json", "array"]
)
COMMENTS = st.one_of(st.none(), st.sampled_from(["", "a comment", "it's {x}", "ü"]))

Relation = tuple[str, str, str, list[str]]  # schema, name, kind (r, v, m), column names


def ident(name: str) -> str:
    """Quote an identifier for PostgreSQL test DDL (DDL cannot take bind parameters)."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str | None) -> str:
    return "NULL" if text is None else "'" + text.replace("'", "''") + "'"


class IncrementalMachine(RuleBasedStateMachine):
    """Random DDL and runs on one database; the invariant is checked at every run.

    Subclasses speak one server's dialect: they connect, list the catalog, and turn each
    rule into SQL (None: the server has no such thing).
    """

    STATS: ClassVar[dict[str, int]]
    base_schema: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.folder = Path(tempfile.mkdtemp(prefix="metatide-property-"))
        self.connection: Any = self.loop.run_until_complete(self.connect())
        self.loop.run_until_complete(self.reset())
        self.schemas: list[str] = [self.base_schema]
        self.relations: list[Relation] = []
        self.previous: State = empty_state()
        self.tables_per_bucket = 1
        self.compaction_ratio = 0.2
        self.runs = 0
        self.last_spec: Any = None
        self.STATS["examples"] += 1

    # -- the dialect -------------------------------------------------------------------

    async def connect(self) -> Any:
        raise NotImplementedError

    async def reset(self) -> None:
        """Drop every schema the machine may have made, create the base schema."""
        raise NotImplementedError

    async def execute(self, statement: str) -> None:
        """Run one statement; errors the server raises for bad DDL propagate."""
        raise NotImplementedError

    def refused(self) -> type[BaseException]:
        """The driver's error for statements the server refuses (dependencies, casts)."""
        raise NotImplementedError

    def alive(self) -> bool:
        """Whether the DDL connection is still open."""
        raise NotImplementedError

    async def catalog(self) -> tuple[list[str], list[Relation]]:
        raise NotImplementedError

    def source(self) -> dict[str, Any]:
        raise NotImplementedError

    def extra_fields(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        raise NotImplementedError

    def q(self, schema: str, name: str) -> str:
        raise NotImplementedError

    def create_schema_sql(self, schema: str) -> str:
        raise NotImplementedError

    def drop_schema_sql(self, schema: str) -> str:
        raise NotImplementedError

    def create_table_sql(
        self, schema: str, name: str, columns: list[tuple[str, str]], primary: bool
    ) -> str:
        raise NotImplementedError

    def drop_sql(self, schema: str, name: str, kind: str) -> str:
        raise NotImplementedError

    def rename_table_sql(self, schema: str, name: str, new_name: str) -> str:
        raise NotImplementedError

    def add_column_sql(self, schema: str, name: str, column: str, kind: str, not_null: bool) -> str:
        raise NotImplementedError

    def drop_column_sql(self, schema: str, name: str, column: str) -> str:
        raise NotImplementedError

    def rename_column_sql(self, schema: str, name: str, column: str, new_name: str) -> str:
        raise NotImplementedError

    def alter_column_sql(self, schema: str, name: str, column: str, kind: str, change: str) -> str:
        raise NotImplementedError

    def comment_sql(
        self, schema: str, name: str, kind: str, column: str | None, comment: str | None
    ) -> str | None:
        raise NotImplementedError

    def create_view_sql(
        self, schema: str, name: str, table: str, picked: list[str], materialized: bool
    ) -> str:
        raise NotImplementedError

    # -- shared machinery ---------------------------------------------------------------

    def teardown(self) -> None:
        if self.last_spec is not None and self.alive():
            # Once per example (it is the costly check), the pipeline's own full extraction is
            # the reference too; one more run first catches up with DDL since the last run.
            self.run_and_check(25_000)
            spec, tag = self.last_spec, f"full{self.runs}"
            state = asyncio.run(committed_state(spec, self.folder / f"{tag}-read"))
            reference = asyncio.run(
                full_state(spec, f"file://{self.folder}/{tag}", self.folder / f"{tag}-work")
            )
            assert_same_state(state, reference)
        self.close()
        self.loop.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def ddl(self, statement: str | None) -> None:
        """Apply DDL; statements the server refuses (dependencies, casts) are no-ops."""
        if statement is not None:
            with contextlib.suppress(self.refused()):
                self.loop.run_until_complete(self.execute(statement))
        self.schemas, self.relations = self.loop.run_until_complete(self.catalog())

    def tables(self) -> list[Relation]:
        return [rel for rel in self.relations if rel[2] == "r"]

    def spec(self, batch_size: int) -> Any:
        return make_spec(
            self.source(),
            f"file://{self.folder}/store",
            columns={"batchSize": batch_size, "parallelism": 2},
            state={
                "tablesPerBucket": self.tables_per_bucket,
                "compactionRatio": self.compaction_ratio,
            },
            massDeleteGuard={"maxDeletedFraction": 1.0, "allowEmptySource": True},
            **self.extra_fields(),
        )

    @initialize(
        count=st.integers(min_value=0, max_value=3),
        data=st.data(),
        tables_per_bucket=st.sampled_from([1, 3, 1000]),
        compaction_ratio=st.sampled_from([0.2, 1.0]),
    )
    def seed_tables(
        self, count: int, data: st.DataObject, tables_per_bucket: int, compaction_ratio: float
    ) -> None:
        # Few tables per bucket exercise many buckets; many exercise deltas and compaction.
        self.tables_per_bucket = tables_per_bucket
        self.compaction_ratio = compaction_ratio
        for index in range(count):
            columns = data.draw(
                st.lists(st.tuples(NAMES, TYPES), min_size=0, max_size=3, unique_by=lambda c: c[0])
            )
            self.ddl(self.create_table_sql(self.base_schema, f"t{index}", columns, False))

    @rule(schema=NAMES)
    def create_schema(self, schema: str) -> None:
        self.ddl(self.create_schema_sql(schema))

    @precondition(lambda self: len(self.schemas) > 1)
    @rule(data=st.data())
    def drop_schema(self, data: st.DataObject) -> None:
        schema = data.draw(st.sampled_from([s for s in self.schemas if s != self.base_schema]))
        self.ddl(self.drop_schema_sql(schema))

    @rule(
        data=st.data(),
        name=NAMES,
        columns=st.lists(st.tuples(NAMES, TYPES), max_size=4, unique_by=lambda c: c[0]),
        primary=st.booleans(),
    )
    def create_table(
        self, data: st.DataObject, name: str, columns: list[tuple[str, str]], primary: bool
    ) -> None:
        schema = data.draw(st.sampled_from(self.schemas))
        self.ddl(self.create_table_sql(schema, name, columns, primary))

    @precondition(lambda self: self.relations)
    @rule(data=st.data())
    def drop_relation(self, data: st.DataObject) -> None:
        schema, name, kind, _ = data.draw(st.sampled_from(self.relations))
        self.ddl(self.drop_sql(schema, name, kind))

    @precondition(lambda self: self.tables())
    @rule(data=st.data(), new_name=NAMES)
    def rename_table(self, data: st.DataObject, new_name: str) -> None:
        schema, name, _, _ = data.draw(st.sampled_from(self.tables()))
        self.ddl(self.rename_table_sql(schema, name, new_name))

    @precondition(lambda self: self.tables())
    @rule(data=st.data(), column=NAMES, kind=TYPES, not_null=st.booleans())
    def add_column(self, data: st.DataObject, column: str, kind: str, not_null: bool) -> None:
        schema, name, _, _ = data.draw(st.sampled_from(self.tables()))
        self.ddl(self.add_column_sql(schema, name, column, kind, not_null))

    @precondition(lambda self: any(t[3] for t in self.tables()))
    @rule(data=st.data())
    def drop_column(self, data: st.DataObject) -> None:
        schema, name, _, columns = data.draw(st.sampled_from([t for t in self.tables() if t[3]]))
        column = data.draw(st.sampled_from(columns))
        self.ddl(self.drop_column_sql(schema, name, column))

    @precondition(lambda self: any(t[3] for t in self.tables()))
    @rule(data=st.data(), new_name=NAMES)
    def rename_column(self, data: st.DataObject, new_name: str) -> None:
        schema, name, _, columns = data.draw(st.sampled_from([t for t in self.tables() if t[3]]))
        column = data.draw(st.sampled_from(columns))
        self.ddl(self.rename_column_sql(schema, name, column, new_name))

    @precondition(lambda self: any(t[3] for t in self.tables()))
    @rule(
        data=st.data(),
        kind=TYPES,
        change=st.sampled_from(
            ["type", "set not null", "drop not null", "default", "drop default"]
        ),
    )
    def alter_column(self, data: st.DataObject, kind: str, change: str) -> None:
        schema, name, _, columns = data.draw(st.sampled_from([t for t in self.tables() if t[3]]))
        column = data.draw(st.sampled_from(columns))
        self.ddl(self.alter_column_sql(schema, name, column, kind, change))

    @precondition(lambda self: self.relations)
    @rule(data=st.data(), comment=COMMENTS)
    def comment(self, data: st.DataObject, comment: str | None) -> None:
        schema, name, kind, columns = data.draw(st.sampled_from(self.relations))
        column = (
            data.draw(st.sampled_from(columns)) if columns and data.draw(st.booleans()) else None
        )
        self.ddl(self.comment_sql(schema, name, kind, column, comment))

    @precondition(lambda self: self.tables())
    @rule(data=st.data(), name=NAMES, materialized=st.booleans())
    def create_view(self, data: st.DataObject, name: str, materialized: bool) -> None:
        schema, table, _, columns = data.draw(st.sampled_from(self.tables()))
        picked = data.draw(st.lists(st.sampled_from(columns), unique=True)) if columns else []
        self.ddl(self.create_view_sql(schema, name, table, picked, materialized))

    # Runs are three rules so that about one step in five is a run.
    @rule(batch_size=st.sampled_from([1, 2, 3]))
    def run_small_batches(self, batch_size: int) -> None:
        self.run_and_check(batch_size)

    @rule()
    def run_one_batch(self) -> None:
        self.run_and_check(25_000)

    @rule()
    def run_two_tables_per_batch(self) -> None:
        self.run_and_check(2)

    def run_and_check(self, batch_size: int) -> None:
        spec = self.spec(batch_size)
        self.STATS["runs"] += 1
        self.runs += 1
        tag = f"run{self.runs}"
        summary = asyncio.run(run_pipeline(spec, self.folder / tag))
        state = asyncio.run(committed_state(spec, self.folder / f"{tag}-read"))
        assert_same_state(state, asyncio.run(source_snapshot(spec)))
        self.last_spec = spec
        diff = asyncio.run(published_diff(open_store(spec), RunId(summary["run_id"])))
        assert diff == expected_diff(self.previous, state)
        asyncio.run(check_change_records(spec, self.previous, state, self.folder / f"{tag}-ch"))
        self.previous = state

    @invariant()
    def connection_alive(self) -> None:
        assert self.alive()


_PG_TYPES = {
    "integer": "integer",
    "bigint": "bigint",
    "text": "text",
    "varchar": "varchar(20)",
    "numeric": "numeric(10,2)",
    "boolean": "boolean",
    "timestamp": "timestamptz",
    "json": "jsonb",
    "array": "integer[]",
}

_PG_CATALOG = """
SELECT n.nspname, c.relname, c.relkind::text,
       coalesce(array_agg(a.attname ORDER BY a.attnum) FILTER (WHERE a.attnum > 0), '{}')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'v', 'm') AND n.nspname = ANY($1::text[])
GROUP BY 1, 2, 3 ORDER BY 1, 2
"""

_PG_SCHEMAS = (
    "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
    "AND nspname <> 'information_schema' ORDER BY 1"
)

_PG_KINDS = {"r": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW"}


class PostgresMachine(IncrementalMachine):
    """The rules in PostgreSQL's dialect, on one database of the test server."""

    STATS: ClassVar[dict[str, int]] = {"examples": 0, "runs": 0}
    base_schema = "public"
    database: ClassVar[str]
    dsn: ClassVar[str]

    async def connect(self) -> Any:
        return await asyncpg.connect(self.dsn)

    async def reset(self) -> None:
        for row in await self.connection.fetch(_PG_SCHEMAS):
            await self.connection.execute(f"DROP SCHEMA {ident(row[0])} CASCADE")
        await self.connection.execute("CREATE SCHEMA public")

    async def execute(self, statement: str) -> None:
        await self.connection.execute(statement)

    def refused(self) -> type[BaseException]:
        return asyncpg.PostgresError  # type: ignore[no-any-return]

    def alive(self) -> bool:
        return not self.connection.is_closed()

    async def catalog(self) -> tuple[list[str], list[Relation]]:
        schemas = [row[0] for row in await self.connection.fetch(_PG_SCHEMAS)]
        rows = await self.connection.fetch(_PG_CATALOG, schemas)
        return schemas, [(r[0], r[1], r[2], list(r[3])) for r in rows]

    def source(self) -> dict[str, Any]:
        return {
            "kind": "postgresql",
            "dsnFrom": {"env": "METATIDE_PROPERTY_DSN"},
            "databases": [self.database],
        }

    def close(self) -> None:
        self.loop.run_until_complete(self.connection.close())

    def q(self, schema: str, name: str) -> str:
        return f"{ident(schema)}.{ident(name)}"

    def create_schema_sql(self, schema: str) -> str:
        return f"CREATE SCHEMA {ident(schema)}"

    def drop_schema_sql(self, schema: str) -> str:
        return f"DROP SCHEMA {ident(schema)} CASCADE"

    def create_table_sql(
        self, schema: str, name: str, columns: list[tuple[str, str]], primary: bool
    ) -> str:
        parts = [f"{ident(n)} {_PG_TYPES[t]}" for n, t in columns]
        if primary and columns and columns[0][1] in ("integer", "bigint", "text"):
            parts.append(f"PRIMARY KEY ({ident(columns[0][0])})")
        return f"CREATE TABLE {self.q(schema, name)} ({', '.join(parts)})"

    def drop_sql(self, schema: str, name: str, kind: str) -> str:
        return f"DROP {_PG_KINDS[kind]} {self.q(schema, name)} CASCADE"

    def rename_table_sql(self, schema: str, name: str, new_name: str) -> str:
        return f"ALTER TABLE {self.q(schema, name)} RENAME TO {ident(new_name)}"

    def add_column_sql(self, schema: str, name: str, column: str, kind: str, not_null: bool) -> str:
        extra = " NOT NULL DEFAULT 0" if not_null and kind in ("integer", "bigint") else ""
        return (
            f"ALTER TABLE {self.q(schema, name)} ADD COLUMN {ident(column)} {_PG_TYPES[kind]}"
            f"{extra}"
        )

    def drop_column_sql(self, schema: str, name: str, column: str) -> str:
        return f"ALTER TABLE {self.q(schema, name)} DROP COLUMN {ident(column)} CASCADE"

    def rename_column_sql(self, schema: str, name: str, column: str, new_name: str) -> str:
        return (
            f"ALTER TABLE {self.q(schema, name)} RENAME COLUMN {ident(column)} TO {ident(new_name)}"
        )

    def alter_column_sql(self, schema: str, name: str, column: str, kind: str, change: str) -> str:
        action = {
            "type": f"TYPE {_PG_TYPES[kind]} USING NULL",
            "set not null": "SET NOT NULL",
            "drop not null": "DROP NOT NULL",
            "default": "SET DEFAULT NULL",
            "drop default": "DROP DEFAULT",
        }[change]
        return f"ALTER TABLE {self.q(schema, name)} ALTER COLUMN {ident(column)} {action}"

    def comment_sql(
        self, schema: str, name: str, kind: str, column: str | None, comment: str | None
    ) -> str:
        if column is not None:
            target = f"COLUMN {self.q(schema, name)}.{ident(column)}"
        else:
            target = f"{_PG_KINDS[kind]} {self.q(schema, name)}"
        return f"COMMENT ON {target} IS {literal(comment)}"

    def create_view_sql(
        self, schema: str, name: str, table: str, picked: list[str], materialized: bool
    ) -> str:
        select = ", ".join(ident(c) for c in picked) or "1 AS one"
        word = "MATERIALIZED VIEW" if materialized else "OR REPLACE VIEW"
        return (
            f"CREATE {word} {self.q(schema, name)} AS SELECT {select} FROM {self.q(schema, table)}"
        )


_MYSQL_TYPES = {
    "integer": "int",
    "bigint": "bigint",
    "text": "text",
    "varchar": "varchar(20)",
    "numeric": "decimal(10,2)",
    "boolean": "boolean",
    "timestamp": "datetime(3)",
    "json": "json",
    "array": "set('a','b')",
}


class MysqlMachine(IncrementalMachine):
    """The rules in MariaDB's dialect: schemas are databases named with the run's prefix."""

    STATS: ClassVar[dict[str, int]] = {"examples": 0, "runs": 0}
    prefix: ClassVar[str]
    base_schema: ClassVar[str]

    def schema(self, name: str) -> str:
        return name if name.startswith(self.prefix) else f"{self.prefix}{name}"

    async def connect(self) -> Any:
        return await mysql_connect()

    async def _prefixed(self) -> list[str]:
        rows = await mysql_run(
            self.connection,
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA "
            f"WHERE LEFT(SCHEMA_NAME, {len(self.prefix)}) = {mysql_literal(self.prefix)}",
        )
        return sorted(row[0] for row in rows)

    async def reset(self) -> None:
        for name in await self._prefixed():
            await mysql_run(self.connection, f"DROP DATABASE {mysql_ident(name)}")
        await mysql_run(self.connection, f"CREATE DATABASE {mysql_ident(self.base_schema)}")

    async def execute(self, statement: str) -> None:
        await mysql_run(self.connection, statement)

    def refused(self) -> type[BaseException]:
        return asyncmy.errors.MySQLError  # type: ignore[no-any-return]

    def alive(self) -> bool:
        return bool(self.connection.connected)

    async def catalog(self) -> tuple[list[str], list[Relation]]:
        # One schema at a time: information_schema then opens only that schema's tables,
        # not every table on the (shared) server.
        schemas = await self._prefixed()
        relations: dict[tuple[str, str], Relation] = {}
        for schema in schemas:
            where = f"WHERE TABLE_SCHEMA = {mysql_literal(schema)}"
            listed = await mysql_run(
                self.connection,
                f"SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES {where}",
            )
            for name, kind in sorted(listed):
                relations[(schema, name)] = (schema, name, "v" if kind == "VIEW" else "r", [])
            columns = await mysql_run(
                self.connection,
                "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS "
                f"{where} ORDER BY TABLE_NAME, ORDINAL_POSITION",
            )
            for name, column in columns:
                if (schema, name) in relations:
                    relations[(schema, name)][3].append(column)
        return schemas, list(relations.values())

    def source(self) -> dict[str, Any]:
        return {
            "kind": "mysql",
            "dsnFrom": {"env": "METATIDE_PROPERTY_DSN"},
            "scope": {"include": [{"schema": f"{self.prefix}*"}]},
        }

    def extra_fields(self) -> dict[str, Any]:
        return {"marker": {"preponeHours": 0}}

    def close(self) -> None:
        self.loop.run_until_complete(self.connection.ensure_closed())

    def q(self, schema: str, name: str) -> str:
        return f"{mysql_ident(self.schema(schema))}.{mysql_ident(name)}"

    def column_type(self, schema: str, name: str, column: str) -> str:
        rows = self.loop.run_until_complete(
            mysql_run(
                self.connection,
                "SELECT COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
                f"{mysql_literal(schema)} AND TABLE_NAME = {mysql_literal(name)} "
                f"AND COLUMN_NAME = {mysql_literal(column)}",
            )
        )
        return str(rows[0][0]) if rows else "int"

    def create_schema_sql(self, schema: str) -> str:
        return f"CREATE DATABASE {mysql_ident(self.schema(schema))}"

    def drop_schema_sql(self, schema: str) -> str:
        return f"DROP DATABASE {mysql_ident(self.schema(schema))}"

    def create_table_sql(
        self, schema: str, name: str, columns: list[tuple[str, str]], primary: bool
    ) -> str:
        parts = [f"{mysql_ident(n)} {_MYSQL_TYPES[t]}" for n, t in columns]
        if primary and columns and columns[0][1] in ("integer", "bigint"):
            parts.append(f"PRIMARY KEY ({mysql_ident(columns[0][0])})")
        # MySQL tables need a column: an empty list makes the server refuse (a no-op step).
        return f"CREATE TABLE {self.q(schema, name)} ({', '.join(parts)})"

    def drop_sql(self, schema: str, name: str, kind: str) -> str:
        return f"DROP {'VIEW' if kind == 'v' else 'TABLE'} {self.q(schema, name)}"

    def rename_table_sql(self, schema: str, name: str, new_name: str) -> str:
        return f"RENAME TABLE {self.q(schema, name)} TO {self.q(schema, new_name)}"

    def add_column_sql(self, schema: str, name: str, column: str, kind: str, not_null: bool) -> str:
        extra = " NOT NULL DEFAULT 0" if not_null and kind in ("integer", "bigint") else ""
        return (
            f"ALTER TABLE {self.q(schema, name)} ADD COLUMN {mysql_ident(column)} "
            f"{_MYSQL_TYPES[kind]}{extra}"
        )

    def drop_column_sql(self, schema: str, name: str, column: str) -> str:
        return f"ALTER TABLE {self.q(schema, name)} DROP COLUMN {mysql_ident(column)}"

    def rename_column_sql(self, schema: str, name: str, column: str, new_name: str) -> str:
        return (
            f"ALTER TABLE {self.q(schema, name)} RENAME COLUMN {mysql_ident(column)} "
            f"TO {mysql_ident(new_name)}"
        )

    def alter_column_sql(self, schema: str, name: str, column: str, kind: str, change: str) -> str:
        current = self.column_type(self.schema(schema), name, column)
        action = {
            "type": f"MODIFY {mysql_ident(column)} {_MYSQL_TYPES[kind]}",
            "set not null": f"MODIFY {mysql_ident(column)} {current} NOT NULL",
            "drop not null": f"MODIFY {mysql_ident(column)} {current} NULL",
            "default": f"ALTER COLUMN {mysql_ident(column)} SET DEFAULT NULL",
            "drop default": f"ALTER COLUMN {mysql_ident(column)} DROP DEFAULT",
        }[change]
        return f"ALTER TABLE {self.q(schema, name)} {action}"

    def comment_sql(
        self, schema: str, name: str, kind: str, column: str | None, comment: str | None
    ) -> str | None:
        if kind == "v":
            return None  # MySQL views have no comments
        text = mysql_literal(comment or "")
        if column is None:
            return f"ALTER TABLE {self.q(schema, name)} COMMENT = {text}"
        current = self.column_type(self.schema(schema), name, column)
        return (
            f"ALTER TABLE {self.q(schema, name)} MODIFY {mysql_ident(column)} {current} "
            f"COMMENT {text}"
        )

    def create_view_sql(
        self, schema: str, name: str, table: str, picked: list[str], materialized: bool
    ) -> str:
        select = ", ".join(mysql_ident(c) for c in picked) or "1 AS one"
        return (
            f"CREATE OR REPLACE VIEW {self.q(schema, name)} AS "
            f"SELECT {select} FROM {self.q(schema, table)}"
        )


def _check(machine: type[IncrementalMachine], capsys: pytest.CaptureFixture[str]) -> None:
    profile = settings.get_profile(PROFILE)
    machine.TestCase.settings = profile
    machine.TestCase().runTest()
    stats = machine.STATS
    with capsys.disabled():  # the example count belongs in the CI log
        print(
            f"\nproperty test ({machine.__name__}): {stats['examples']} examples, "
            f"{stats['runs']} checked runs (profile {PROFILE})"
        )
    assert stats["examples"] >= profile.max_examples
    assert stats["runs"] >= profile.max_examples


@pytest.fixture(scope="module")
def property_database() -> Any:
    require_postgres()
    name = f"metatide_property_{uuid.uuid4().hex[:8]}"
    dsn = create_database(name)
    yield name, dsn
    drop_database(name)


@pytest.mark.integration
@pytest.mark.property
@pytest.mark.timeout(1800)  # ~8-12 min for 100 examples; 900 s ran out on a loaded 2-core machine
def test_incremental_state_equals_full_extraction(
    property_database: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name, dsn = property_database
    monkeypatch.setenv("METATIDE_PROPERTY_DSN", dsn)
    PostgresMachine.database = name
    PostgresMachine.dsn = dsn
    _check(PostgresMachine, capsys)


@pytest.mark.integration
@pytest.mark.property
@pytest.mark.timeout(2400)  # DDL on MariaDB is slower than on PostgreSQL: ~15 min for 100 examples
def test_incremental_state_equals_full_extraction_on_mariadb(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    require_mysql()
    monkeypatch.setenv("METATIDE_PROPERTY_DSN", mysql_dsn())
    MysqlMachine.prefix = f"mtp{uuid.uuid4().hex[:6]}_"
    MysqlMachine.base_schema = f"{MysqlMachine.prefix}main"
    try:
        _check(MysqlMachine, capsys)
    finally:
        schemas = mysql_execute(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA "
            f"WHERE LEFT(SCHEMA_NAME, {len(MysqlMachine.prefix)}) = "
            f"{mysql_literal(MysqlMachine.prefix)}"
        )
        mysql_execute(*(f"DROP DATABASE {mysql_ident(row[0])}" for row in schemas))
