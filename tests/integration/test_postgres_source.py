"""`PostgresSource` against a real PostgreSQL 15: listings, fingerprints, columns, errors.

The fingerprint is the heart of incremental extraction on PostgreSQL, so it is tested both
ways: every kind of DDL that changes what the source returns must change it, and nothing
else (data changes, vacuum, indexes, grants) may. Each test works in its own database with
a random name, dropped at the end. A missing server fails the tests (never skips): start it
with `.ci/services/postgres.sh start`, or point METATIDE_TEST_PG_DSN at another one.
"""

from __future__ import annotations

import asyncio
import time
import traceback
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped,unused-ignore]
import pyarrow as pa
import pytest

from metatide.extractor.core.errors import (
    CredentialsError,
    MetatideError,
    SourceUnavailableError,
    SpecError,
)
from metatide.extractor.core.ids import TableKey
from metatide.extractor.core.records import COLUMN_SCHEMA, TABLE_SCHEMA
from metatide.extractor.core.scope import Scope
from metatide.extractor.core.spec import PostgresSourceSpec, ScopeRule, ScopeSpec, SecretRef
from metatide.extractor.sources import postgres, postgres_sql
from metatide.extractor.sources.postgres import PostgresSource, UnknownDatabaseError
from tests.services import (
    create_database,
    drop_database,
    postgres_dsn,
    postgres_dsn_for,
    require_postgres,
)

pytestmark = pytest.mark.integration

DSN_ENV = "METATIDE_TEST_SOURCE_DSN"
PASSWORD_ENV = "METATIDE_TEST_SOURCE_PASSWORD"
WEIRD = 'we"ird.na{me} ü'
EVERYTHING = Scope(ScopeSpec())

_T = TypeVar("_T")


def run(coro: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(coro)


@dataclass(frozen=True)
class Db:
    """A throwaway database: its name and an admin DSN pointing at it."""

    name: str
    dsn: str

    def execute(self, *statements: str) -> None:
        async def go() -> None:
            conn = await asyncpg.connect(self.dsn)
            try:
                for statement in statements:
                    await conn.execute(statement)
            finally:
                await conn.close()

        run(go())


def _fresh_database(name: str) -> Iterator[Db]:
    require_postgres()
    dsn = create_database(name)
    try:
        yield Db(name=name, dsn=dsn)
    finally:
        drop_database(name)


@pytest.fixture
def db() -> Iterator[Db]:
    yield from _fresh_database(f"mt_pg_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def weird_db() -> Iterator[Db]:
    yield from _fresh_database(f"{WEIRD} {uuid.uuid4().hex[:8]}")


def source(monkeypatch: pytest.MonkeyPatch, dsn: str, **spec: Any) -> PostgresSource:
    monkeypatch.setenv(DSN_ENV, dsn)
    return PostgresSource(PostgresSourceSpec(dsn_from=SecretRef(env=DSN_ENV), **spec))


def with_password(dsn: str, password: str | None, port: int | None = None) -> str:
    parts = urlsplit(dsn)
    user = quote(parts.username or "", safe="")
    auth = f"{user}:{quote(password, safe='')}" if password is not None else user
    netloc = f"{auth}@{parts.hostname}:{port or parts.port or 5432}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Snapshot:
    databases: pa.Table
    schemas: pa.Table
    tables: pa.Table
    present: frozenset[TableKey]
    columns: pa.Table

    def table(self, key: TableKey) -> dict[str, Any]:
        return next(row for row in self.tables.to_pylist() if _key(row) == key)

    def fingerprints(self) -> dict[TableKey, str]:
        return {_key(row): row["fingerprint"] for row in self.tables.to_pylist()}

    def columns_of(self, key: TableKey) -> list[dict[str, Any]]:
        return [row for row in self.columns.to_pylist() if _key(row) == key]


def _key(row: dict[str, Any]) -> TableKey:
    return (row["database_name"], row["schema_name"], row["table_name"])


async def snapshot_of(src: PostgresSource, scope: Scope = EVERYTHING) -> Snapshot:
    async with src:
        databases = await src.databases(scope)
        schemas = await src.schemas(databases.column("database_name").to_pylist(), scope)
        tables = await src.tables(schemas, scope)
        keys = [_key(row) for row in tables.to_pylist()]
        result = await src.columns(keys)
    return Snapshot(databases, schemas, tables, result.present, result.columns)


def snap(monkeypatch: pytest.MonkeyPatch, db: Db, **spec: Any) -> Snapshot:
    return run(snapshot_of(source(monkeypatch, db.dsn, databases=[db.name], **spec)))


# -- listings ----------------------------------------------------------------------------

CATALOG = """
COMMENT ON DATABASE {db} IS 'the db';
CREATE SCHEMA app;
COMMENT ON SCHEMA app IS 'application';
CREATE SCHEMA empty;
CREATE TYPE app.mood AS ENUM ('ok', 'meh');
CREATE TABLE app.orders (
    id bigserial PRIMARY KEY,
    code varchar(12) NOT NULL DEFAULT 'x',
    amount numeric(10, 2),
    mood app.mood,
    placed date DEFAULT '2024-01-31',
    gross numeric GENERATED ALWAYS AS (amount * 1.2) STORED
);
COMMENT ON TABLE app.orders IS 'all orders';
COMMENT ON COLUMN app.orders.amount IS 'in EUR';
CREATE TABLE app.pair (a int, b int, c text, PRIMARY KEY (b, a));
CREATE VIEW app.big_orders AS SELECT id, amount FROM app.orders WHERE amount > 100;
CREATE MATERIALIZED VIEW app.totals AS SELECT count(*) AS n FROM app.orders;
CREATE TABLE app.events (at timestamptz NOT NULL, what text) PARTITION BY RANGE (at);
CREATE TABLE app.events_2024 PARTITION OF app.events
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE FOREIGN DATA WRAPPER mt_dummy;
CREATE SERVER mt_nowhere FOREIGN DATA WRAPPER mt_dummy;
CREATE FOREIGN TABLE app.remote (x int) SERVER mt_nowhere;
CREATE SEQUENCE app.not_a_table;
CREATE INDEX orders_code ON app.orders (code);
"""


def test_lists_every_level_with_comments_and_types(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    db.execute(CATALOG.replace("{db}", f'"{db.name}"'))
    s = snap(monkeypatch, db)

    assert s.databases.to_pylist() == [{"database_name": db.name, "comment": "the db"}]
    assert s.schemas.to_pylist() == [
        {"database_name": db.name, "schema_name": "app", "comment": "application"},
        {"database_name": db.name, "schema_name": "empty", "comment": None},
        {"database_name": db.name, "schema_name": "public", "comment": "standard public schema"},
    ]
    assert s.tables.schema == TABLE_SCHEMA
    types = {row["table_name"]: row["table_type"] for row in s.tables.to_pylist()}
    assert types == {
        "big_orders": "VIEW",
        "events": "PARTITIONED TABLE",
        "events_2024": "TABLE",  # partitions are listed: users query them directly
        "orders": "TABLE",
        "pair": "TABLE",
        "remote": "FOREIGN TABLE",
        "totals": "MATERIALIZED VIEW",
    }
    assert [row["table_name"] for row in s.tables.to_pylist()] == sorted(types)
    orders = s.table((db.name, "app", "orders"))
    assert orders["comment"] == "all orders"
    assert orders["view_definition"] is None
    assert orders["created_at"] is None
    assert orders["ddl_time"] is None
    assert len(orders["fingerprint"]) == 32
    view = s.table((db.name, "app", "big_orders"))
    assert "app.orders" in view["view_definition"]  # qualified: search_path is pinned
    assert "100" in view["view_definition"]
    assert "count(*)" in s.table((db.name, "app", "totals"))["view_definition"]

    assert s.present == frozenset(_key(row) for row in s.tables.to_pylist())
    assert s.columns.schema == COLUMN_SCHEMA
    base = {"database_name": db.name, "schema_name": "app", "table_name": "orders"}
    assert s.columns_of((db.name, "app", "orders")) == [
        {
            **base,
            "column_name": "id",
            "ordinal_position": 1,
            "data_type": "bigint",
            "is_nullable": False,
            "column_default": "nextval('app.orders_id_seq'::regclass)",
            "comment": None,
            "is_primary_key": True,
        },
        {
            **base,
            "column_name": "code",
            "ordinal_position": 2,
            "data_type": "character varying(12)",
            "is_nullable": False,
            "column_default": "'x'::character varying",
            "comment": None,
            "is_primary_key": False,
        },
        {
            **base,
            "column_name": "amount",
            "ordinal_position": 3,
            "data_type": "numeric(10,2)",
            "is_nullable": True,
            "column_default": None,
            "comment": "in EUR",
            "is_primary_key": False,
        },
        {
            **base,
            "column_name": "mood",
            "ordinal_position": 4,
            "data_type": "app.mood",
            "is_nullable": True,
            "column_default": None,
            "comment": None,
            "is_primary_key": False,
        },
        {
            **base,
            "column_name": "placed",
            "ordinal_position": 5,
            "data_type": "date",
            "is_nullable": True,
            "column_default": "'2024-01-31'::date",
            "comment": None,
            "is_primary_key": False,
        },
        {
            **base,
            "column_name": "gross",
            "ordinal_position": 6,
            "data_type": "numeric",
            "is_nullable": True,
            "column_default": "(amount * 1.2)",  # a generated column's expression
            "comment": None,
            "is_primary_key": False,
        },
    ]
    pair = s.columns_of((db.name, "app", "pair"))
    assert [(c["column_name"], c["is_primary_key"]) for c in pair] == [
        ("a", True),
        ("b", True),
        ("c", False),
    ]
    view_columns = s.columns_of((db.name, "app", "big_orders"))
    assert [c["column_name"] for c in view_columns] == ["id", "amount"]
    assert [c["column_name"] for c in s.columns_of((db.name, "app", "totals"))] == ["n"]
    assert [c["column_name"] for c in s.columns_of((db.name, "app", "remote"))] == ["x"]


def test_databases_lists_connectable_non_templates_and_applies_scope(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def names(scope: Scope) -> list[str]:
        async with source(monkeypatch, db.dsn) as src:
            listed: list[str] = (await src.databases(scope)).column("database_name").to_pylist()
            return listed

    everything = run(names(EVERYTHING))
    assert db.name in everything
    assert "postgres" in everything
    assert "template0" not in everything
    assert "template1" not in everything
    assert everything == sorted(everything)
    excluded = Scope(ScopeSpec(exclude=[ScopeRule(database=db.name)]))
    assert db.name not in run(names(excluded))


def test_scope_filters_schemas_and_tables(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    db.execute(
        "CREATE SCHEMA keep; CREATE SCHEMA drop_me;"
        "CREATE TABLE keep.a (x int); CREATE TABLE keep.tmp_b (x int);"
        "CREATE TABLE drop_me.c (x int)"
    )
    scope = Scope(
        ScopeSpec(
            include=[ScopeRule(schema="keep"), ScopeRule(schema="drop_me")],
            exclude=[ScopeRule(schema="drop_me"), ScopeRule(table="tmp_*")],
        )
    )
    s = run(snapshot_of(source(monkeypatch, db.dsn, databases=[db.name]), scope))
    assert s.schemas.column("schema_name").to_pylist() == ["keep"]
    assert [_key(row) for row in s.tables.to_pylist()] == [(db.name, "keep", "a")]


def test_clock_is_the_servers_utc_time(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    async def clock() -> datetime:
        async with source(monkeypatch, db.dsn) as src:
            return await src.clock()

    moment = run(clock())
    assert moment.utcoffset() == timedelta(0)
    assert abs(moment - datetime.now(UTC)) < timedelta(minutes=1)


def test_system_schemas_and_temporary_tables_are_left_out(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def go() -> pa.Table:
        conn = await asyncpg.connect(db.dsn)
        try:
            await conn.execute("CREATE TEMPORARY TABLE scratch (x int)")
            async with source(monkeypatch, db.dsn, databases=[db.name]) as src:
                return await src.schemas([db.name], EVERYTHING)
        finally:
            await conn.close()

    assert run(go()).column("schema_name").to_pylist() == ["public"]


def test_many_databases_share_a_small_connection_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_postgres()
    names = [f"mt_pg_many_{i}_{uuid.uuid4().hex[:8]}" for i in range(7)]
    try:
        for name in names:
            create_database(name)
            Db(name, postgres_dsn_for(name)).execute(f"CREATE TABLE t_{name[-8:]} (x int)")
        s = run(snapshot_of(source(monkeypatch, postgres_dsn(), databases=names)))
    finally:
        for name in names:
            drop_database(name)
    assert s.databases.column("database_name").to_pylist() == sorted(names)
    assert sorted(_key(row)[0] for row in s.tables.to_pylist()) == sorted(names)
    assert len(s.present) == len(names)
    assert s.columns.num_rows == len(names)


# -- fingerprints ------------------------------------------------------------------------

BASE = """
CREATE SCHEMA app;
CREATE TABLE app.t (id int NOT NULL, name varchar(10) DEFAULT 'x', code varchar(10), note text);
CREATE TABLE app.other (k int PRIMARY KEY, v text);
CREATE VIEW app.v AS SELECT id, name FROM app.t;
CREATE MATERIALIZED VIEW app.mv AS SELECT id FROM app.t;
INSERT INTO app.t VALUES (1, 'a', 'c', 'n');
"""

CHANGES = {
    "add column": ("t", "ALTER TABLE app.t ADD COLUMN extra int"),
    "drop column": ("t", "ALTER TABLE app.t DROP COLUMN note"),
    "rename column": ("t", "ALTER TABLE app.t RENAME COLUMN note TO remark"),
    "alter type": ("t", "ALTER TABLE app.t ALTER COLUMN note TYPE varchar(5)"),
    "alter type modifier": ("t", "ALTER TABLE app.t ALTER COLUMN code TYPE varchar(20)"),
    "set not null": ("t", "ALTER TABLE app.t ALTER COLUMN note SET NOT NULL"),
    "drop not null": ("t", "ALTER TABLE app.t ALTER COLUMN id DROP NOT NULL"),
    "set default": ("t", "ALTER TABLE app.t ALTER COLUMN note SET DEFAULT 'n/a'"),
    "change default": ("t", "ALTER TABLE app.t ALTER COLUMN name SET DEFAULT 'y'"),
    "drop default": ("t", "ALTER TABLE app.t ALTER COLUMN name DROP DEFAULT"),
    "comment on column": ("t", "COMMENT ON COLUMN app.t.note IS 'a note'"),
    "comment on table": ("t", "COMMENT ON TABLE app.t IS 'the table'"),
    "add primary key": ("t", "ALTER TABLE app.t ADD PRIMARY KEY (id)"),
    "drop primary key": ("other", "ALTER TABLE app.other DROP CONSTRAINT other_pkey"),
    "reorder columns (drop and re-add)": (
        "t",
        "ALTER TABLE app.t DROP COLUMN code; ALTER TABLE app.t ADD COLUMN code varchar(10)",
    ),
    "view definition": (
        "v",
        "CREATE OR REPLACE VIEW app.v AS SELECT id, name FROM app.t WHERE id > 0",
    ),
    "comment on view": ("v", "COMMENT ON VIEW app.v IS 'v'"),
    "view becomes table": ("v", "DROP VIEW app.v; CREATE TABLE app.v (id int, name varchar(10))"),
    "materialized view columns": (
        "mv",
        "DROP MATERIALIZED VIEW app.mv;"
        "CREATE MATERIALIZED VIEW app.mv AS SELECT id, note FROM app.t",
    ),
    "materialized view definition": (
        "mv",
        "DROP MATERIALIZED VIEW app.mv;"
        "CREATE MATERIALIZED VIEW app.mv AS SELECT id FROM app.t WHERE id > 1",
    ),
}


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_fingerprint_changes_with_every_kind_of_ddl(
    change: str, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    table, ddl = CHANGES[change]
    key = (db.name, "app", table)
    db.execute(BASE)
    before = snap(monkeypatch, db)
    db.execute(ddl)
    after = snap(monkeypatch, db)

    assert after.fingerprints()[key] != before.fingerprints()[key]
    # ... and the change is one the source returns (the fingerprint covers what matters):
    visible = (before.table(key), before.columns_of(key)) != (
        after.table(key),
        after.columns_of(key),
    )
    assert visible
    untouched = {k: v for k, v in before.fingerprints().items() if k[2] in ("other", "t")}
    untouched.pop(key, None)
    assert {k: after.fingerprints()[k] for k in untouched} == untouched


NON_CHANGES = {
    "nothing": "SELECT 1",
    "insert, update, delete": (
        "INSERT INTO app.t SELECT g, 'n', 'c', 'x' FROM generate_series(2, 500) g;"
        "UPDATE app.t SET note = 'changed' WHERE id < 100; DELETE FROM app.t WHERE id > 400;"
        "INSERT INTO app.other VALUES (1, 'one')"
    ),
    "vacuum and analyze": "VACUUM ANALYZE app.t",
    "refresh materialized view": "REFRESH MATERIALIZED VIEW app.mv",
    "secondary index": "CREATE INDEX t_name ON app.t (name)",
    "grant": "CREATE ROLE mt_reader_{r}; GRANT SELECT ON app.t TO mt_reader_{r};"
    "REVOKE SELECT ON app.t FROM mt_reader_{r}; DROP ROLE mt_reader_{r}",
    "truncate": "TRUNCATE app.t",
    "other schema objects": "CREATE TABLE public.unrelated (x int); CREATE SEQUENCE app.s",
}


@pytest.mark.parametrize("change", NON_CHANGES, ids=list(NON_CHANGES))
def test_fingerprint_stays_without_metadata_change(
    change: str, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    db.execute(BASE)
    before = snap(monkeypatch, db)
    db.execute(NON_CHANGES[change].replace("{r}", uuid.uuid4().hex[:8]))
    after = snap(monkeypatch, db)

    fingerprints = {k: v for k, v in after.fingerprints().items() if k[1] == "app"}
    assert fingerprints == before.fingerprints()
    assert after.columns.filter(pa.compute.equal(after.columns["schema_name"], "app")).equals(
        before.columns
    )


def test_fingerprint_does_not_depend_on_the_sessions_settings(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    db.execute(
        BASE,
        "ALTER TABLE app.t ADD COLUMN d date DEFAULT '2024-02-29', ADD COLUMN f float8 DEFAULT 0.1",
    )
    before = snap(monkeypatch, db)
    role = urlsplit(db.dsn).username
    db.execute(
        f'ALTER ROLE "{role}" IN DATABASE "{db.name}" SET search_path = app, public',
        f'ALTER ROLE "{role}" IN DATABASE "{db.name}" SET DateStyle = \'SQL, DMY\'',
        f'ALTER ROLE "{role}" IN DATABASE "{db.name}" SET extra_float_digits = 3',
    )
    after = snap(monkeypatch, db)
    assert after.fingerprints() == before.fingerprints()
    assert after.columns.equals(before.columns)


def test_fingerprint_separates_names_safely(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    db.execute(
        'CREATE TABLE one ("a,b" int, "c" int);'
        'CREATE TABLE two ("a" int, "b,c" int);'
        'CREATE TABLE three ("a"",""b" int, "c" int);'
        'CREATE TABLE four ("a" int, "b""]" int);'
        'CREATE TABLE five ("a" int, "b" int)'
    )
    fingerprints = snap(monkeypatch, db).fingerprints()
    assert len(set(fingerprints.values())) == 5


# -- names, columns() --------------------------------------------------------------------


def test_weird_names_round_trip(weird_db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    def q(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    weird_db.execute(
        f"CREATE SCHEMA {q(WEIRD)};"
        f"CREATE TABLE {q(WEIRD)}.{q(WEIRD)} ({q(WEIRD)} int PRIMARY KEY, {q('a,b')} text);"
        f"CREATE VIEW {q(WEIRD)}.{q(WEIRD + ' v')} AS SELECT * FROM {q(WEIRD)}.{q(WEIRD)};"
        f"CREATE TABLE public.{q('{0}.%s')} ({q('%(x)s')} int)"
    )
    s = snap(monkeypatch, weird_db)
    key = (weird_db.name, WEIRD, WEIRD)
    assert s.databases.column("database_name").to_pylist() == [weird_db.name]
    assert WEIRD in s.schemas.column("schema_name").to_pylist()
    assert set(s.fingerprints()) == {
        key,
        (weird_db.name, WEIRD, WEIRD + " v"),
        (weird_db.name, "public", "{0}.%s"),
    }
    assert s.present == frozenset(s.fingerprints())
    assert [c["column_name"] for c in s.columns_of(key)] == [WEIRD, "a,b"]
    assert [c["column_name"] for c in s.columns_of((weird_db.name, WEIRD, WEIRD + " v"))] == [
        WEIRD,
        "a,b",
    ]
    assert [c["column_name"] for c in s.columns_of((weird_db.name, "public", "{0}.%s"))] == [
        "%(x)s"
    ]


def test_columns_tells_dropped_from_empty_tables(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    db.execute("CREATE TABLE kept (x int); CREATE TABLE empty (); CREATE TABLE gone (y int)")
    requested = [
        (db.name, "public", "kept"),
        (db.name, "public", "empty"),
        (db.name, "public", "gone"),
        (db.name, "public", "kept"),  # asked twice: columns once
        (db.name, "no_such_schema", "kept"),
        ("no_such_database_" + uuid.uuid4().hex[:8], "public", "kept"),
    ]
    db.execute("DROP TABLE gone")

    async def go() -> Any:
        async with source(monkeypatch, db.dsn, databases=[db.name]) as src:
            return await src.columns(requested)

    result = run(go())
    assert result.present == frozenset({(db.name, "public", "kept"), (db.name, "public", "empty")})
    assert result.columns.schema == COLUMN_SCHEMA
    assert result.columns.column("table_name").to_pylist() == ["kept"]
    assert result.columns.column("column_name").to_pylist() == ["x"]


def test_columns_of_nothing(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> Any:
        async with source(monkeypatch, db.dsn) as src:
            return await src.columns([])

    result = run(go())
    assert result.present == frozenset()
    assert result.columns.num_rows == 0
    assert result.columns.schema == COLUMN_SCHEMA


def test_thousands_of_tables_go_through_bound_arrays(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    count, per_statement = 6_000, 1_000
    for start in range(0, count, per_statement):
        db.execute(
            "DO $$ BEGIN FOR i IN "
            f"{start}..{start + per_statement - 1} LOOP "
            "EXECUTE format('CREATE TABLE public.%I (a int PRIMARY KEY, b int)', 't' || i); "
            "END LOOP; END $$"
        )
    began = time.perf_counter()
    s = snap(monkeypatch, db)
    elapsed = time.perf_counter() - began
    assert s.tables.num_rows == count
    assert len(s.present) == count
    assert s.columns.num_rows == 2 * count
    assert elapsed < 30, f"listing {count} tables took {elapsed:.1f}s"


@pytest.mark.parametrize("read_connections", [1, 3])
def test_listing_in_small_transactions_gives_the_same_rows(
    db: Db, monkeypatch: pytest.MonkeyPatch, read_connections: int
) -> None:
    db.execute(
        "CREATE SCHEMA a; CREATE SCHEMA b;"
        + "".join(f"CREATE TABLE a.t{i} (x int, y text DEFAULT 'v{i}');" for i in range(8))
        + "".join(f"CREATE VIEW b.v{i} AS SELECT * FROM a.t{i};" for i in range(8))
    )
    whole = snap(monkeypatch, db, read_connections=1)
    monkeypatch.setattr(postgres, "_RELATIONS_PER_READ", 3)
    monkeypatch.setattr(postgres, "_RELATIONS_PER_COLUMN_READER", 4)
    connect = PostgresSource._connect
    opened: list[str | None] = []

    async def counted(self: PostgresSource, database: str | None) -> Any:
        opened.append(database)
        return await connect(self, database)

    monkeypatch.setattr(PostgresSource, "_connect", counted)
    chunked = snap(monkeypatch, db, read_connections=read_connections)
    assert chunked.tables.num_rows == 16
    assert chunked.tables.equals(whole.tables)
    assert chunked.columns.equals(whole.columns)
    # The DSN's (the listed) database once; then each spread read opens its extra readers:
    # the listing's, then the column batch's.
    assert opened == [None] + [db.name] * 2 * (read_connections - 1)


def test_many_readers_list_in_smaller_parts(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    """All readers of a listing together hold the view locks of at most
    `_RELATIONS_LISTED_AT_ONCE` relations: more readers, smaller parts."""
    db.execute(
        "CREATE SCHEMA a;"
        + "".join(
            f"CREATE TABLE a.t{i} (x int); CREATE VIEW a.v{i} AS SELECT x FROM a.t{i};"
            for i in range(8)
        )
    )
    whole = snap(monkeypatch, db, read_connections=1)
    monkeypatch.setattr(postgres, "_RELATIONS_LISTED_AT_ONCE", 6)
    fetch = PostgresSource._fetch
    listed: list[int] = []

    async def spied(self: PostgresSource, conn: Any, query: str, *args: Any) -> list[Any]:
        if query == postgres_sql.TABLES:
            listed.append(len(args[0]))
        return await fetch(self, conn, query, *args)

    monkeypatch.setattr(PostgresSource, "_fetch", spied)
    parted = snap(monkeypatch, db, read_connections=3)
    assert parted.tables.equals(whole.tables)
    assert listed == [2] * 8  # 16 relations, 6 // 3 per part


def test_extra_readers_the_server_refuses_are_done_without(
    db: Db, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A server at max_connections refuses the extra readers: the read goes on over the
    connection it has, and says so."""
    db.execute("CREATE SCHEMA a;" + "".join(f"CREATE TABLE a.t{i} (x int);" for i in range(6)))
    whole = snap(monkeypatch, db, read_connections=1)
    monkeypatch.setattr(postgres, "_RELATIONS_PER_READ", 2)
    monkeypatch.setattr(postgres, "_RELATIONS_PER_COLUMN_READER", 2)
    connect = PostgresSource._connect

    async def refuse_extra(self: PostgresSource, database: str | None) -> Any:
        if self._open:  # the first connection is opened; the extra readers are refused
            raise SourceUnavailableError("sorry, too many clients already")
        return await connect(self, database)

    monkeypatch.setattr(PostgresSource, "_connect", refuse_extra)
    limited = snap(monkeypatch, db, read_connections=4)
    assert limited.tables.equals(whole.tables)
    assert limited.columns.equals(whole.columns)
    assert "postgres_read_connections_limited" in caplog.text


def test_a_column_batch_over_several_connections_reads_one_snapshot(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The extra readers import the first one's snapshot: a table dropped after the batch
    found it is still read whole, by whichever reader its share went to."""
    db.execute("CREATE TABLE a1 (x int); CREATE TABLE a2 (y int); CREATE TABLE zz (z int, w text)")
    monkeypatch.setattr(postgres, "_RELATIONS_PER_COLUMN_READER", 1)
    export = postgres._export_snapshot

    async def export_then_drop(conn: Any) -> str:
        snapshot = await export(conn)
        admin = await asyncpg.connect(db.dsn)
        try:
            await admin.execute("DROP TABLE zz")  # before any extra reader starts
        finally:
            await admin.close()
        return snapshot

    monkeypatch.setattr(postgres, "_export_snapshot", export_then_drop)
    keys = [(db.name, "public", name) for name in ("a1", "a2", "zz")]

    async def go() -> Any:
        async with source(monkeypatch, db.dsn, databases=[db.name], read_connections=3) as src:
            return await src.columns(keys)

    result = run(go())
    assert result.present == frozenset(keys)
    assert result.columns.column("column_name").to_pylist() == ["x", "y", "z", "w"]


def test_a_failed_part_stops_the_spread_without_cutting_off_a_query() -> None:
    """After a failure no reader takes another part; the part another reader is in the
    middle of finishes (its connection stays usable), and the failure is raised."""
    started: list[int] = []
    finished: list[int] = []

    async def work(reader: str, part: int) -> int:
        started.append(part)
        if part == 1:
            raise SourceUnavailableError("part 1 failed")
        await asyncio.sleep(0.05)
        finished.append(part)
        return part

    with pytest.raises(SourceUnavailableError, match="part 1"):
        run(postgres._spread(["first", "second"], list(range(6)), work))
    assert started == [0, 1]
    assert finished == [0]
    assert run(postgres._spread(["a", "b", "c"], list(range(7)), work_ok)) == list(range(7))


async def work_ok(reader: str, part: int) -> int:
    await asyncio.sleep(0.01 * (part % 3))
    return part


def test_tables_under_ddl_are_read_without_waiting(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    db.execute("CREATE TABLE busy (x int DEFAULT 1); CREATE TABLE calm (y int)")
    before = snap(monkeypatch, db)

    async def during_migration() -> Snapshot:
        migration = await asyncpg.connect(db.dsn)
        try:
            await migration.execute("BEGIN; ALTER TABLE busy ADD COLUMN z int DEFAULT 2")
            spec = {"databases": [db.name]}
            return await asyncio.wait_for(snapshot_of(source(monkeypatch, db.dsn, **spec)), 20)
        finally:
            await migration.close()  # rolls the migration back

    during = run(during_migration())  # catalog reads are MVCC: no lock on `busy` needed
    assert during.fingerprints() == before.fingerprints()
    assert during.columns.equals(before.columns)


def test_a_view_locked_by_ddl_is_a_retryable_error(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    db.execute("CREATE TABLE base (x int); CREATE VIEW over AS SELECT x FROM base")
    settings = {**postgres_sql.SESSION_SETTINGS, "lock_timeout": "200ms"}
    monkeypatch.setattr(postgres_sql, "SESSION_SETTINGS", settings)

    async def during_migration() -> None:
        migration = await asyncpg.connect(db.dsn)
        try:
            await migration.execute("BEGIN; LOCK TABLE base IN ACCESS EXCLUSIVE MODE")
            await snapshot_of(source(monkeypatch, db.dsn, databases=[db.name]))
        finally:
            await migration.close()

    with pytest.raises(SourceUnavailableError, match="LockNotAvailable"):
        run(during_migration())


def test_a_lost_connection_is_retryable_and_the_next_call_reconnects(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    db.execute("CREATE TABLE base (x int); CREATE VIEW over AS SELECT x FROM base")
    terminate = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'metatide' AND datname = $1"
    )

    async def go() -> pa.Table:
        admin = await asyncpg.connect(db.dsn)
        try:
            async with source(monkeypatch, db.dsn, databases=[db.name]) as src:
                schemas = await src.schemas([db.name], EVERYTHING)
                # Idle connection killed: noticed, replaced on the next call.
                await admin.execute(terminate, db.name)
                await asyncio.sleep(0.2)
                await src.tables(schemas, EVERYTHING)
                # Killed in the middle of a query (waiting for a lock on `base`):
                await admin.execute("BEGIN; LOCK TABLE base IN ACCESS EXCLUSIVE MODE")
                listing = asyncio.ensure_future(src.tables(schemas, EVERYTHING))
                await asyncio.sleep(0.5)
                await admin.execute(terminate, db.name)
                with pytest.raises(SourceUnavailableError, match=db.name):
                    await listing
                await admin.execute("ROLLBACK")
                return await src.tables(schemas, EVERYTHING)
        finally:
            await admin.close()

    assert run(go()).column("table_name").to_pylist() == ["base", "over"]


# -- errors ------------------------------------------------------------------------------


def _full_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)


def test_unreachable_server_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "unreachable-Secret-42"
    dsn = with_password(postgres_dsn(), secret, port=1)

    async def go() -> None:
        async with source(monkeypatch, dsn, connect_timeout_seconds=2) as src:
            await src.clock()

    began = time.perf_counter()
    with pytest.raises(SourceUnavailableError) as caught:
        run(go())
    assert time.perf_counter() - began < 10
    assert ":1," in str(caught.value)  # names host:port
    assert "retry" in str(caught.value)
    assert secret not in _full_text(caught.value)
    assert dsn not in _full_text(caught.value)


def test_wrong_password_is_a_credentials_error_without_the_password(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "wrong-Secret-1234"

    async def go(src: PostgresSource) -> None:
        async with src:
            await src.databases(EVERYTHING)

    with pytest.raises(CredentialsError) as caught:
        run(go(source(monkeypatch, with_password(db.dsn, secret), databases=[db.name])))
    message = str(caught.value)
    assert secret not in _full_text(caught.value)
    assert db.name in message
    assert str(urlsplit(db.dsn).port) in message

    monkeypatch.setenv(PASSWORD_ENV, secret)
    spec = {"password_from": SecretRef(env=PASSWORD_ENV)}
    with pytest.raises(CredentialsError) as caught:
        run(go(source(monkeypatch, with_password(db.dsn, None), **spec)))
    assert secret not in _full_text(caught.value)
    assert PASSWORD_ENV in str(caught.value)


def test_password_from_a_separate_variable(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    password = urlsplit(db.dsn).password
    assert password is not None
    monkeypatch.setenv(PASSWORD_ENV, password)
    spec = {"password_from": SecretRef(env=PASSWORD_ENV), "databases": [db.name]}
    s = run(snapshot_of(source(monkeypatch, with_password(db.dsn, None), **spec)))
    assert s.databases.column("database_name").to_pylist() == [db.name]


def test_unknown_database_is_terminal_and_named(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = f"mt_missing_{uuid.uuid4().hex[:8]}"

    async def databases(src: PostgresSource) -> None:
        async with src:
            await src.databases(EVERYTHING)

    with pytest.raises(UnknownDatabaseError) as caught:
        run(databases(source(monkeypatch, db.dsn, databases=[db.name, missing])))
    assert isinstance(caught.value, SpecError)
    assert missing in str(caught.value)

    password = urlsplit(db.dsn).password
    assert password is not None
    with pytest.raises(SpecError) as from_dsn:
        run(databases(source(monkeypatch, postgres_dsn_for(missing, db.dsn))))
    assert missing in str(from_dsn.value)
    assert password not in _full_text(from_dsn.value)


@pytest.mark.parametrize(
    "dsn",
    [
        "host=127.0.0.1 user=metatide password=kv-Secret-7",  # libpq key=value: not a URI
        "postgresql://metatide:kv-Secret-7@127.0.0.1:54x32/postgres",  # bad port
    ],
)
def test_an_invalid_dsn_is_a_spec_error(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def go() -> None:
        async with source(monkeypatch, dsn) as src:
            await src.clock()

    with pytest.raises(SpecError) as caught:
        run(go())
    assert "kv-Secret-7" not in _full_text(caught.value)
    assert DSN_ENV in str(caught.value)


def test_the_source_must_be_entered(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    src = source(monkeypatch, db.dsn)
    with pytest.raises(RuntimeError, match="async with"):
        run(src.clock())

    async def use_after_exit() -> None:
        async with src:
            await src.clock()
        await src.clock()

    with pytest.raises(RuntimeError, match="async with"):
        run(use_after_exit())


def test_missing_dsn_variable_is_a_credentials_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DSN_ENV, raising=False)
    src = PostgresSource(PostgresSourceSpec(dsn_from=SecretRef(env=DSN_ENV)))

    async def go() -> None:
        async with src:
            pass

    with pytest.raises(CredentialsError, match=DSN_ENV):
        run(go())


def test_errors_are_metatide_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert issubclass(UnknownDatabaseError, MetatideError)
