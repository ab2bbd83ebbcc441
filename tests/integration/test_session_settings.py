"""Fingerprints and extracted text must not depend on the reading session's settings.

`format_type`, `pg_get_expr`, `pg_get_viewdef` and literal constants print differently under
some session settings. A role whose settings differ between runs (an ALTER ROLE ... SET done
by a DBA, a pooler's defaults) must not make tables flip to UPDATED in a run where nothing
changed, nor give the committed state that session's text. Each case commits a state with the
server's defaults, sets one setting on the reading role in that database, runs again, and
expects every table NO CHANGE and the state identical; then a full extraction under the
setting must give the same state too.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import assert_same_state, committed_state, full_state, make_spec, run_pipeline
from tests.services import create_database, drop_database, execute_sql, require_postgres

pytestmark = pytest.mark.integration

SCHEMA = r"""
CREATE SCHEMA "Sales";
CREATE TYPE "Sales"."Mood" AS ENUM ('ok', 'happy');
CREATE TABLE "Sales"."Orders" (
    "Id" bigint PRIMARY KEY,
    price money DEFAULT 12.34,
    fee money DEFAULT '7.50'::money,
    note text DEFAULT E'back\\slash and ''quote''',
    pattern text DEFAULT 'C:\temp',
    at timestamptz DEFAULT '2024-02-29 13:45:00+00',
    span interval DEFAULT '1 day 02:03:04',
    ratio double precision DEFAULT 0.1,
    blob bytea DEFAULT '\x00ff',
    mood "Sales"."Mood" DEFAULT 'ok',
    total numeric(12, 2) GENERATED ALWAYS AS (ratio * 100) STORED
);
COMMENT ON COLUMN "Sales"."Orders".note IS E'has a \\ backslash';
CREATE VIEW "Sales"."Recent" AS
    SELECT "Id", price, note || E'\\n' AS line, at + span AS later
    FROM "Sales"."Orders" WHERE at > '2020-01-01' AND pattern <> 'C:\temp';
CREATE MATERIALIZED VIEW public.totals AS SELECT sum(price) AS revenue FROM "Sales"."Orders";
"""

SETTINGS = {
    "quote_all_identifiers": "on",
    "standard_conforming_strings": "off",
    "lc_monetary": "de_DE.UTF-8",
    "DateStyle": "SQL, DMY",
    "IntervalStyle": "sql_standard",
    "extra_float_digits": "3",
    "bytea_output": "escape",
    "TimeZone": "Asia/Kolkata",
    "search_path": '"Sales", public',
}


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    require_postgres()
    name = f"metatide_settings_{uuid.uuid4().hex[:8]}"
    dsn = create_database(name)
    execute_sql(dsn, SCHEMA)
    monkeypatch.setenv("METATIDE_SOURCE_DSN", dsn)
    yield name
    drop_database(name)


def _set_on_role(database: str, name: str, value: str) -> None:
    """ALTER ROLE ... IN DATABASE: the reading role's sessions in this database only."""
    from tests.services import postgres_dsn

    literal = "'" + value.replace("'", "''") + "'"
    execute_sql(
        postgres_dsn(), f'ALTER ROLE CURRENT_USER IN DATABASE "{database}" SET {name} = {literal}'
    )


@pytest.mark.parametrize("setting", [*SETTINGS, "all"])
def test_a_role_setting_changes_nothing_in_a_second_run(
    database: str, setting: str, tmp_path: Path
) -> None:
    spec = make_spec(
        {"kind": "postgresql", "databases": [database]}, f"file://{tmp_path / 'store'}"
    )
    asyncio.run(run_pipeline(spec, tmp_path / "first"))
    before = asyncio.run(committed_state(spec, tmp_path / "read-before"))
    chosen = SETTINGS if setting == "all" else {setting: SETTINGS[setting]}
    for name, value in chosen.items():
        _set_on_role(database, name, value)

    summary = asyncio.run(run_pipeline(spec, tmp_path / "second"))

    tables = summary["tables"]
    assert tables["NO CHANGE"] == summary["state_rows"]["table"] == 3, tables
    assert tables["UPDATED"] == 0
    assert summary["diff"]["column"] == {"created": 0, "updated": 0, "deleted": 0}
    after = asyncio.run(committed_state(spec, tmp_path / "read-after"))
    assert_same_state(after, before)
    fresh = asyncio.run(full_state(spec, f"file://{tmp_path / 'reference'}", tmp_path / "full"))
    assert_same_state(fresh, before)
