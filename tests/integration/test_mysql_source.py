"""`MysqlSource` against a real MariaDB: the DDL-time facts it relies on, and its own choices.

The facts first: InnoDB's CREATE_TIME moves on every ALTER TABLE and on RENAME TABLE, a view
has none, UPDATE_TIME follows DML and is reset by ALTER (so it must not be used), and the
source's clock is never later than the DDL time of a change made after it was read. These
are the contract the source's change detection stands on: if a server version broke one,
these tests say which. Then the mapping (MySQL databases are schemas of 'default', system
databases never read), TLS modes against the server's real certificate, and errors. A
missing server fails the tests: start it with `.ci/services/mariadb.sh start`.
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

import pyarrow as pa
import pytest

from metatide.extractor.core.errors import (
    CredentialsError,
    SourceUnavailableError,
    SpecError,
)
from metatide.extractor.core.scope import Scope
from metatide.extractor.core.spec import MysqlSourceSpec
from metatide.extractor.sources.mysql import MysqlSource
from metatide.extractor.state.marker import truncate_to_seconds
from tests.services import (
    create_mysql_database,
    drop_mysql_database,
    mysql_ca,
    mysql_dsn,
    mysql_dsn_for,
    mysql_execute,
    mysql_ident,
    require_mysql,
)

pytestmark = pytest.mark.integration

DSN_ENV = "METATIDE_TEST_MYSQL_SOURCE_DSN"


@pytest.fixture
def shop(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh MySQL database (a metatide schema), the admin DSN in DSN_ENV."""
    require_mysql()
    name = f"mt_shop_{uuid.uuid4().hex[:8]}"
    create_mysql_database(name)
    monkeypatch.setenv(DSN_ENV, mysql_dsn())
    yield name
    drop_mysql_database(name)


def source(schema: str | None = None, **fields: Any) -> MysqlSource:
    scope = {"include": [{"schema": schema}]} if schema else {}
    return MysqlSource(
        MysqlSourceSpec.model_validate({"dsnFrom": {"env": DSN_ENV}, "scope": scope, **fields})
    )


async def _list(src: MysqlSource) -> tuple[pa.Table, pa.Table]:
    scope = Scope(src._spec.scope)
    async with src:
        schemas = scope.filter_schemas(await src.schemas(["default"], scope))
        return schemas, scope.filter_tables(await src.tables(schemas, scope))


def tables(schema: str, **fields: Any) -> dict[str, dict[str, Any]]:
    _, listed = asyncio.run(_list(source(schema, **fields)))
    return {row["table_name"]: row for row in listed.to_pylist()}


def raw_times(schema: str) -> dict[str, tuple[datetime | None, datetime | None]]:
    rows = mysql_execute(
        "SET time_zone = '+00:00'",
        "SELECT TABLE_NAME, CREATE_TIME, UPDATE_TIME FROM information_schema.TABLES "
        f"WHERE TABLE_SCHEMA = '{schema}'",
    )
    return {name: (created, updated) for name, created, updated in rows}


def q(schema: str, table: str) -> str:
    return f"{mysql_ident(schema)}.{mysql_ident(table)}"


DDL = {
    "add column instantly": "ALTER TABLE {t} ADD COLUMN added int, ALGORITHM=INSTANT",
    "add column by copy": "ALTER TABLE {t} ADD COLUMN added int FIRST, ALGORITHM=COPY",
    "modify column": "ALTER TABLE {t} MODIFY a bigint",
    "rename column": "ALTER TABLE {t} RENAME COLUMN a TO b",
    "column comment": "ALTER TABLE {t} MODIFY a int COMMENT 'counted'",
    "table comment": "ALTER TABLE {t} COMMENT = 'a table'",
    "column default": "ALTER TABLE {t} ALTER COLUMN a SET DEFAULT 3",
    "add index": "ALTER TABLE {t} ADD INDEX (a)",
}


def test_create_time_moves_on_every_alter_and_rename(shop: str) -> None:
    names = [*DDL, "renamed before", "dml only"]
    mysql_execute(*(f"CREATE TABLE {q(shop, name)} (a int) ENGINE=InnoDB" for name in names))
    time.sleep(1.1)  # whole seconds: the DDLs below land in a later second
    created = raw_times(shop)
    mysql_execute(
        *(statement.format(t=q(shop, name)) for name, statement in DDL.items()),
        f"RENAME TABLE {q(shop, 'renamed before')} TO {q(shop, 'renamed after')}",
        f"INSERT INTO {q(shop, 'dml only')} VALUES (1)",
    )
    moved = raw_times(shop)
    for name in DDL:
        assert moved[name][0] > created[name][0], name  # type: ignore[operator]
    assert moved["renamed after"][0] > created["renamed before"][0]  # type: ignore[operator]
    assert moved["dml only"][0] == created["dml only"][0]
    listed = tables(shop)
    for name in [*DDL, "renamed after"]:
        assert listed[name]["ddl_time"] == moved[name][0].replace(tzinfo=UTC)  # type: ignore[union-attr]
        assert listed[name]["fingerprint"] is None
        assert listed[name]["created_at"] is None


def test_update_time_follows_dml_and_is_reset_by_alter(shop: str) -> None:
    t = q(shop, "t")
    mysql_execute(f"CREATE TABLE {t} (a int) ENGINE=InnoDB")
    assert raw_times(shop)["t"][1] is None
    mysql_execute(f"INSERT INTO {t} VALUES (1)")
    after_insert = raw_times(shop)["t"][1]
    assert after_insert is not None
    mysql_execute(f"ALTER TABLE {t} MODIFY a bigint")
    assert raw_times(shop)["t"][1] != after_insert  # reset: no DDL signal in UPDATE_TIME


def test_views_have_no_time_and_get_a_fingerprint(shop: str) -> None:
    mysql_execute(
        f"CREATE TABLE {q(shop, 't')} (a int)",
        f"CREATE VIEW {q(shop, 'v')} AS SELECT a FROM {q(shop, 't')}",
    )
    assert raw_times(shop)["v"] == (None, None)
    view = tables(shop)["v"]
    assert (view["ddl_time"], view["table_type"], view["comment"]) == (None, "VIEW", None)
    assert view["view_definition"]
    assert view["fingerprint"]


def test_the_clock_is_never_later_than_the_next_ddl(shop: str) -> None:
    # The marker is the clock truncated to the second; every DDL made after reading it must
    # carry a DDL time at or after it, however the DDL's second falls.
    async def clock() -> datetime:
        async with source(shop) as src:
            return await src.clock()

    for attempt in range(5):
        name = f"t{attempt}"
        marker = truncate_to_seconds(asyncio.run(clock()))
        mysql_execute(f"CREATE TABLE {q(shop, name)} (a int)")
        created = raw_times(shop)[name][0]
        assert created is not None
        assert created.replace(tzinfo=UTC) >= marker
        assert abs(asyncio.run(clock()) - datetime.now(UTC)) < timedelta(seconds=5)


def test_databases_are_schemas_of_default_and_system_ones_are_never_read(shop: str) -> None:
    mysql_execute(f"CREATE TABLE {q(shop, 't')} (a int)")
    schemas, listed = asyncio.run(_list(source()))
    names = set(schemas.column("schema_name").to_pylist())
    assert shop in names
    assert not names & {"mysql", "information_schema", "performance_schema", "sys"}
    assert set(schemas.column("database_name").to_pylist()) == {"default"}
    assert ("default", shop, "t") in {
        (r["database_name"], r["schema_name"], r["table_name"]) for r in listed.to_pylist()
    }
    # Even a scope that names them does not read the system databases.
    _, system = asyncio.run(_list(source("mysql")))
    assert system.num_rows == 0


def test_scope_include_schema_selects_one_mysql_database(shop: str) -> None:
    other = f"{shop}_other"
    create_mysql_database(other)
    try:
        mysql_execute(
            f"CREATE TABLE {q(shop, 't')} (a int)", f"CREATE TABLE {q(other, 't')} (a int)"
        )
        schemas, listed = asyncio.run(_list(source(shop)))
        assert schemas.column("schema_name").to_pylist() == [shop]
        assert {r["schema_name"] for r in listed.to_pylist()} == {shop}
    finally:
        drop_mysql_database(other)


def test_database_comments_are_schema_comments(shop: str) -> None:
    mysql_execute(f"ALTER DATABASE {mysql_ident(shop)} COMMENT 'the shop'")
    schemas, _ = asyncio.run(_list(source(shop)))
    assert schemas.to_pylist() == [
        {"database_name": "default", "schema_name": shop, "comment": "the shop"}
    ]


def test_column_fields(shop: str) -> None:
    mysql_execute(
        f"CREATE TABLE {q(shop, 't')} ("
        "id bigint unsigned NOT NULL PRIMARY KEY COMMENT 'the key', "
        "name varchar(20) DEFAULT 'x', "
        "note text, "
        "total decimal(10,2) AS (id * 2) VIRTUAL, "
        "kind enum('a','b') NOT NULL DEFAULT 'a')"
    )

    async def read() -> list[dict[str, Any]]:
        async with source(shop) as src:
            result = await src.columns([("default", shop, "t")])
        return list(result.columns.to_pylist())

    rows = {row["column_name"]: row for row in asyncio.run(read())}
    assert [rows[n]["ordinal_position"] for n in ("id", "name", "note", "total", "kind")] == [
        1,
        2,
        3,
        4,
        5,
    ]
    assert rows["id"]["data_type"] == "bigint(20) unsigned"
    assert (rows["id"]["is_nullable"], rows["id"]["is_primary_key"]) == (False, True)
    assert rows["id"]["comment"] == "the key"
    assert rows["name"]["column_default"] == "'x'"
    assert rows["note"]["column_default"] is None  # MariaDB says NULL: no default
    assert rows["note"]["is_nullable"] is True
    assert rows["total"]["column_default"] == "`id` * 2"  # the generation expression
    assert rows["kind"]["data_type"] == "enum('a','b')"


# -- TLS ---------------------------------------------------------------------------------


def ca_ref(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("METATIDE_TEST_MYSQL_CA_PEM", Path(mysql_ca()).read_text())
    return {"env": "METATIDE_TEST_MYSQL_CA_PEM"}


def session_cipher(src: MysqlSource) -> str:
    async def read() -> str:
        async with src:
            rows = await src._query("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        return str(rows[0][1])

    return asyncio.run(read())


@pytest.mark.parametrize("mode", ["required", "verify-ca", "verify-identity"])
def test_tls_modes_encrypt(shop: str, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    tls: dict[str, Any] = {"mode": mode}
    if mode != "required":
        tls["caFrom"] = ca_ref(monkeypatch)
    assert session_cipher(source(shop, tls=tls))


def test_tls_disabled_is_plain(shop: str) -> None:
    assert session_cipher(source(shop, tls={"mode": "disabled"})) == ""


def test_an_untrusted_certificate_is_terminal(shop: str) -> None:
    # The test server's certificate is signed by its own CA, not one the system trusts.
    with pytest.raises(SpecError, match="TLS verification failed"):
        tables(shop, tls={"mode": "verify-ca"})


# -- errors ------------------------------------------------------------------------------


def test_password_from_a_separate_variable(shop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    admin = urlsplit(mysql_dsn())
    without = admin._replace(netloc=f"{admin.username}@{admin.hostname}:{admin.port}")
    monkeypatch.setenv(DSN_ENV, urlunsplit(without))
    monkeypatch.setenv("METATIDE_TEST_MYSQL_PASSWORD", admin.password or "")
    mysql_execute(f"CREATE TABLE {q(shop, 't')} (a int)")
    assert set(tables(shop, passwordFrom={"env": "METATIDE_TEST_MYSQL_PASSWORD"})) == {"t"}


def test_a_user_without_grants_sees_nothing_and_a_refused_one_is_terminal(
    shop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, secret = f"mt_u_{uuid.uuid4().hex[:6]}", f"Pw{uuid.uuid4().hex}"
    mysql_execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{secret}'")
    try:
        mysql_execute(f"CREATE TABLE {q(shop, 't')} (a int)")
        monkeypatch.setenv(DSN_ENV, mysql_dsn_for(user, secret))
        assert tables(shop) == {}  # information_schema shows only what the user may see
        mysql_execute(f"GRANT SELECT ON {mysql_ident(shop)}.* TO '{user}'@'127.0.0.1'")
        assert set(tables(shop)) == {"t"}
        mysql_execute(f"ALTER USER '{user}'@'127.0.0.1' ACCOUNT LOCK")
        with pytest.raises(CredentialsError) as caught:
            tables(shop)
        assert secret not in "".join(traceback.format_exception(caught.value))
    finally:
        mysql_execute(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")


def test_an_unknown_dsn_database_is_terminal(shop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DSN_ENV, mysql_dsn().rstrip("/") + "/no_such_database")
    with pytest.raises(SpecError, match="'no_such_database' does not exist"):
        tables(shop)


def test_a_dsn_with_parameters_is_terminal(shop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DSN_ENV, mysql_dsn() + "?ssl-mode=REQUIRED")
    with pytest.raises(SpecError, match=r"source\.tls"):
        tables(shop)


def test_a_lost_connection_is_retryable_and_the_next_call_reconnects(shop: str) -> None:
    mysql_execute(f"CREATE TABLE {q(shop, 't')} (a int)")

    async def scenario() -> None:
        src = source(shop)
        async with src:
            (thread,) = (await src._query("SELECT CONNECTION_ID()"))[0]
            mysql_execute(f"KILL CONNECTION {int(thread)}")
            with pytest.raises(SourceUnavailableError):
                await src.clock()
            assert await src.clock()  # a new connection

    asyncio.run(scenario())
