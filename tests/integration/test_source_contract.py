"""The contract every source passes, on its real server: SQLite, PostgreSQL 15, MariaDB.

Like the store contract suite, one set of scenarios runs against every source kind (through
the kits in tests/source_kits.py): listing and scope, odd names, relations without columns,
views, every requested table accounted for in a column batch, the clock, error mapping
(unreachable -> retryable 75, refused credentials and bad DSNs -> terminal 3, the password in
no message), and each source's declared capabilities: whatever a source extracts, a change to
it must make the table UPDATED against a listing taken before the change. A missing server
fails these tests (never skips): start it with `.ci/services/{postgres,mariadb}.sh start`.
"""

from __future__ import annotations

import asyncio
import time
import traceback
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import duckdb
import pyarrow as pa
import pytest

from metatide.extractor.core.errors import (
    EXIT_RETRYABLE,
    EXIT_TERMINAL,
    CredentialsError,
    MetatideError,
    SourceUnavailableError,
    SpecError,
)
from metatide.extractor.core.ids import TableKey
from metatide.extractor.core.records import COLUMN_SCHEMA, TABLE_SCHEMA
from metatide.extractor.core.scope import Scope
from metatide.extractor.core.spec import DuckDBSpec, ExtractionSpec, ScopeSpec
from metatide.extractor.engine.classify import classify, previous_relation
from metatide.extractor.engine.duck import connect
from metatide.extractor.sources import ColumnsResult, open_source
from metatide.extractor.state.marker import truncate_to_seconds
from tests.source_kits import DSN_ENV, KINDS, Kit, open_kit

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=KINDS)
def module_kit(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kit]:
    kit = open_kit(request.param, tmp_path_factory.mktemp(f"kit-{request.param}"))
    yield kit
    kit.close()


@pytest.fixture
def kit(module_kit: Kit, monkeypatch: pytest.MonkeyPatch) -> Kit:
    """The kit with an empty schema, its DSN in the spec's variable."""
    module_kit.reset()
    if module_kit.dsn is not None:
        monkeypatch.setenv(DSN_ENV, module_kit.dsn)
    return module_kit


@pytest.fixture
def duck(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = connect(DuckDBSpec(temp_directory=str(tmp_path / "duck"), memory_limit="256MB"))
    yield connection
    connection.close()


def spec_of(kit: Kit, **source: Any) -> ExtractionSpec:
    return kit.spec("file:///tmp/metatide-contract-unused", **source)


async def _listing(spec: ExtractionSpec) -> pa.Table:
    """What plan lists: databases, schemas, tables, each filtered by the scope."""
    scope = Scope(spec.source.scope)
    async with open_source(spec) as source:
        databases = await source.databases(scope)
        names = databases.column("database_name").to_pylist()
        schemas = scope.filter_schemas(await source.schemas(names, scope))
        return scope.filter_tables(await source.tables(schemas, scope))


def listing(spec: ExtractionSpec) -> pa.Table:
    table: pa.Table = asyncio.run(_listing(spec))
    assert table.schema == TABLE_SCHEMA
    return table


def by_name(table: pa.Table) -> dict[str, dict[str, Any]]:
    return {row["table_name"]: row for row in table.to_pylist()}


async def _columns(spec: ExtractionSpec, keys: list[TableKey]) -> ColumnsResult:
    async with open_source(spec) as source:
        return await source.columns(keys)


def columns(spec: ExtractionSpec, keys: list[TableKey]) -> ColumnsResult:
    result: ColumnsResult = asyncio.run(_columns(spec, keys))
    assert result.columns.schema == COLUMN_SCHEMA
    return result


def column_names(result: ColumnsResult) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for row in result.columns.to_pylist():
        found.setdefault(row["table_name"], []).append(row["column_name"])
    return found


def key(kit: Kit, table: str) -> TableKey:
    return (kit.database, kit.schema, table)


def test_lists_tables_and_views_in_scope(kit: Kit) -> None:
    kit.create_table("orders", {"id": kit.integer, "note": kit.text})
    kit.create_table("tmp_scratch", {"id": kit.integer})
    kit.create_view("orders_view", "orders")
    everything = by_name(listing(spec_of(kit)))
    assert set(everything) == {"orders", "tmp_scratch", "orders_view"}
    assert everything["orders"]["table_type"] == "TABLE"
    assert everything["orders_view"]["table_type"] == "VIEW"
    assert everything["orders_view"]["view_definition"]
    assert {row["database_name"] for row in everything.values()} == {kit.database}
    assert {row["schema_name"] for row in everything.values()} == {kit.schema}
    scope = {**spec_of(kit).source.scope.model_dump(by_alias=True), "exclude": [{"table": "tmp_*"}]}
    assert set(by_name(listing(spec_of(kit, scope=scope)))) == {"orders", "orders_view"}
    only_views = {"include": [{"database": kit.database, "schema": kit.schema, "table": "*_view"}]}
    assert set(by_name(listing(spec_of(kit, scope=only_views)))) == {"orders_view"}
    nothing = {"include": [{"database": "no-such-database"}]}
    assert listing(spec_of(kit, scope=nothing)).num_rows == 0


def odd_names(kit: Kit) -> list[str]:
    names = [
        'we"ird',
        "it's",
        "back`tick",
        "dot.ted",
        "br{ace}",
        "{0}",
        "sp ace",
        "per%cent_under",
        "back\\slash",
        "ünï 日本",
        "x" * kit.max_name_length,
        "MiXed",
    ]
    if kit.case_sensitive_names:
        names.append("mixed")
    return names


def test_odd_names_round_trip(kit: Kit) -> None:
    names = odd_names(kit)
    for index, name in enumerate(names):
        kit.create_table(name, {name: kit.integer, f"c{index} {{x}}": kit.text})
    listed = by_name(listing(spec_of(kit)))
    assert sorted(listed) == sorted(names)
    result = columns(spec_of(kit), [key(kit, name) for name in names])
    assert result.present == {key(kit, name) for name in names}
    assert column_names(result) == {
        name: [name, f"c{index} {{x}}"] for index, name in enumerate(names)
    }


# SQLite's tables and views always have a column: only the servers take part.
SERVERS = pytest.mark.parametrize("module_kit", ["postgresql", "mysql"], indirect=True)


@SERVERS
def test_a_relation_without_columns_is_present_with_none(kit: Kit) -> None:
    assert kit.zero_column_relation("hollow")
    kit.create_table("full", {"id": kit.integer})
    listed = by_name(listing(spec_of(kit)))
    assert set(listed) == {"hollow", "full"}
    assert listed["hollow"]["fingerprint"] or listed["hollow"]["ddl_time"]
    result = columns(spec_of(kit), [key(kit, "hollow"), key(kit, "full")])
    assert result.present == {key(kit, "hollow"), key(kit, "full")}
    assert column_names(result) == {"full": ["id"]}
    alone = columns(spec_of(kit), [key(kit, "hollow")])  # a batch with no column at all
    assert alone.present == {key(kit, "hollow")}
    assert alone.columns.num_rows == 0


def test_every_requested_table_is_accounted_for(kit: Kit) -> None:
    # Enough tables that a source which looks few tables up one by one also scans.
    many = [f"t{index:03d}" for index in range(130)]
    kit.run(
        *(f"CREATE TABLE {kit.qualified(name)} ({kit.ident('id')} {kit.integer})" for name in many)
    )
    kit.create_table("gone", {"id": kit.integer})
    kit.drop_table("gone")
    requested = [key(kit, name) for name in many]
    strangers = [
        key(kit, "gone"),  # dropped since plan
        (kit.database, "no_such_schema", "t000"),
        ("no_such_database", kit.schema, "t000"),
        key(kit, "T000") if kit.case_sensitive_names else key(kit, "t000 "),
    ]
    for wanted in (requested[:3] + strangers, requested + strangers):
        result = columns(spec_of(kit), wanted)
        expected = {k for k in wanted if k not in strangers}
        assert result.present == expected
        assert {(r["schema_name"], r["table_name"]) for r in result.columns.to_pylist()} == {
            (schema, table) for _, schema, table in expected
        }
        assert result.columns.num_rows == len(expected)
    assert columns(spec_of(kit), []).present == frozenset()


def test_views_have_columns_and_a_fingerprint_that_follows_them(kit: Kit) -> None:
    kit.create_table("base", {"amount": kit.integer})
    kit.create_view("v", "base")
    before = by_name(listing(spec_of(kit)))["v"]
    assert before["fingerprint"]
    assert before["ddl_time"] is None
    assert column_names(columns(spec_of(kit), [key(kit, "v")])) == {"v": ["amount"]}
    kit.run(*kit.change_view("v", "base", "amount"))
    after = by_name(listing(spec_of(kit)))["v"]
    assert after["fingerprint"] != before["fingerprint"]


def test_clock_is_the_servers_utc_time(kit: Kit) -> None:
    async def two_readings() -> tuple[datetime, datetime]:
        async with open_source(spec_of(kit)) as source:
            return await source.clock(), await source.clock()

    first, second = asyncio.run(two_readings())
    assert first.utcoffset() == timedelta(0)
    assert first <= second
    assert abs(first - datetime.now(UTC)) < timedelta(seconds=5)


def test_declared_capabilities_hold(kit: Kit) -> None:
    assert open_source(spec_of(kit)).capabilities == kit.capabilities
    kit.create_table("t", {"id": kit.integer})
    kit.create_view("v", "t")
    rows = by_name(listing(spec_of(kit)))
    caps = kit.capabilities
    assert (rows["t"]["ddl_time"] is not None) is caps.ddl_time
    assert (rows["t"]["created_at"] is not None) is caps.creation_time
    for row in rows.values():
        assert row["ddl_time"] is not None or row["fingerprint"] is not None
        if row["ddl_time"] is None:
            assert caps.fingerprint
            assert len(row["fingerprint"]) == 32


def test_every_extracted_change_makes_the_table_updated(
    kit: Kit, duck: duckdb.DuckDBPyConnection
) -> None:
    changes = kit.changes("TABLE", "COLUMN")
    for label in [*changes, "untouched"]:
        kit.create_table(label, {"c": kit.integer, "keep": kit.text})
    kit.create_view("view", "untouched")
    if kit.capabilities.ddl_time:
        # Whole-second DDL times: let the creations fall before the marker's second.
        time.sleep(2.1)
    before = listing(spec_of(kit))

    async def marker() -> datetime:
        async with open_source(spec_of(kit)) as source:
            return truncate_to_seconds(await source.clock())

    moment = asyncio.run(marker())
    kit.run(*(kit.changes(label, "c")[label] for label in changes))
    after = listing(spec_of(kit))
    everything = Scope(ScopeSpec())
    old = previous_relation(duck, before)
    classified = classify(duck, after, old, moment, everything).tables.to_pylist()
    states = {row["table_name"]: (row["state"], row["reason"]) for row in classified}
    expected_reason = (
        "ddl_time_after_marker" if kit.capabilities.ddl_time else "fingerprint_changed"
    )
    assert states == {
        **dict.fromkeys(changes, ("UPDATED", expected_reason)),
        "untouched": ("NO CHANGE", "unchanged"),
        "view": ("NO CHANGE", "unchanged"),
    }


# -- errors ------------------------------------------------------------------------------

SECRET = f"Pw-{uuid.uuid4().hex[:12]}-s3cret"


def with_login(dsn: str, user: str, password: str, port: int | None = None) -> str:
    parts = urlsplit(dsn)
    netloc = f"{user}:{password}@{parts.hostname}:{port or parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def failure(kit: Kit, monkeypatch: pytest.MonkeyPatch, dsn: str) -> MetatideError:
    monkeypatch.setenv(DSN_ENV, dsn)
    with pytest.raises(MetatideError) as caught:
        listing(spec_of(kit))
    error = caught.value
    text = "".join(traceback.format_exception(error)) + repr(error)
    assert SECRET not in text
    return error


def dsn_kit(kit: Kit) -> str:
    assert kit.dsn is not None
    return kit.dsn


@SERVERS
def test_an_unreachable_server_is_retryable(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = with_login(dsn_kit(kit), "someone", SECRET, port=1)
    error = failure(kit, monkeypatch, dsn)
    assert isinstance(error, SourceUnavailableError)
    assert error.exit_code == EXIT_RETRYABLE
    assert "127.0.0.1:1" in str(error)


@SERVERS
def test_refused_credentials_are_terminal(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    user = urlsplit(dsn_kit(kit)).username or ""
    error = failure(kit, monkeypatch, with_login(dsn_kit(kit), user, SECRET))
    assert isinstance(error, CredentialsError)
    assert error.exit_code == EXIT_TERMINAL
    assert user in str(error)


@SERVERS
@pytest.mark.parametrize(
    "shape",
    ["not a dsn", "http://user:{secret}@127.0.0.1:1/x", "{scheme}://user:{secret}@h:port/x"],
)
def test_a_bad_dsn_is_terminal(kit: Kit, monkeypatch: pytest.MonkeyPatch, shape: str) -> None:
    scheme = urlsplit(dsn_kit(kit)).scheme
    error = failure(kit, monkeypatch, shape.format(secret=SECRET, scheme=scheme))
    assert isinstance(error, SpecError)
    assert error.exit_code == EXIT_TERMINAL
    assert DSN_ENV in str(error)


def test_a_missing_sqlite_file_is_retryable(tmp_path: Path) -> None:
    # SQLite's only "server" failure: the file is not there (a volume not mounted yet).
    kit = open_kit("sqlite", tmp_path)
    kit.path.unlink()  # type: ignore[attr-defined]
    with pytest.raises(SourceUnavailableError) as caught:
        listing(spec_of(kit))
    assert str(kit.path) in str(caught.value)  # type: ignore[attr-defined]
