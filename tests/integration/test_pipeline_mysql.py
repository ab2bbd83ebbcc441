"""`metatide run` against a real MariaDB with MinIO as the store: the marker path for real.

MariaDB keeps DDL times, so here the marker decides: tables changed after it are UPDATED,
those untouched are NO CHANGE, new ones CREATED, and tables that existed before the marker
but are new to the state (a scope widened to old tables) are BACKFILL, with their columns.
Every classification records its reason in the plan, the diff and the summary. A DDL in the
very second of the marker must not be lost, whichever way the second falls.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from metatide.extractor.core.ids import RunId
from metatide.extractor.core.spec import ExtractionSpec
from metatide.extractor.phases.columns import extract_batch
from metatide.extractor.phases.finalize import finalize
from metatide.extractor.phases.plan import plan
from metatide.extractor.sources import mysql as mysql_source
from metatide.extractor.sources import open_source
from metatide.extractor.state.runfiles import changes_key, diff_key
from metatide.extractor.storage import open_store
from tests.harness import (
    assert_same_state,
    committed_state,
    expected_diff,
    full_state,
    make_spec,
    published_diff,
    run_pipeline,
)
from tests.services import (
    create_mysql_database,
    delete_bucket,
    drop_mysql_database,
    fresh_bucket,
    mysql_dsn,
    mysql_dsn_for,
    mysql_execute,
    mysql_ident,
    require_mysql,
    require_s3,
    s3_settings,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def schemas(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """Two fresh MySQL databases (metatide schemas): the shop and an old archive."""
    require_mysql()
    monkeypatch.setenv("METATIDE_SOURCE_DSN", mysql_dsn())
    tag = uuid.uuid4().hex[:8]
    shop, archive = f"mt_pipe_{tag}", f"mt_pipe_{tag}_archive"
    for name in (shop, archive):
        create_mysql_database(name)
    yield shop, archive
    for name in (shop, archive):
        drop_mysql_database(name)


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    require_s3()
    settings = s3_settings()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", settings.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", settings.secret_key)
    name = fresh_bucket("mysql-pipeline")
    yield name
    delete_bucket(name)


def spec_for(store: dict[str, Any] | str, *schemas: str, **fields: Any) -> ExtractionSpec:
    return make_spec(
        {"kind": "mysql", "scope": {"include": [{"schema": name} for name in schemas]}},
        store,
        marker={"preponeHours": 0},
        columns={"batchSize": 2, "parallelism": 2},
        **fields,
    )


def q(schema: str, table: str) -> str:
    return f"{mysql_ident(schema)}.{mysql_ident(table)}"


def read_parquet(spec: ExtractionSpec, key: str) -> list[dict[str, Any]]:
    data = asyncio.run(open_store(spec).get(key)).data
    return list(pq.read_table(io.BytesIO(data)).to_pylist())


def test_marker_path_classifies_every_state_with_its_reason(
    schemas: tuple[str, str], bucket: str, tmp_path: Path
) -> None:
    shop, archive = schemas
    mysql_execute(
        f"CREATE TABLE {q(shop, 'orders')} (id bigint PRIMARY KEY, total decimal(12,2))",
        f"CREATE TABLE {q(shop, 'customers')} (id int, `e-mail` varchar(200))",
        f"CREATE VIEW {q(shop, 'big orders')} AS SELECT id FROM {q(shop, 'orders')}",
        f"CREATE TABLE {q(archive, 'legacy {orders}')} (id int COMMENT 'old id', note text)",
    )
    time.sleep(2.1)  # whole-second DDL times: everything above predates the first marker
    store = {"url": f"s3://{bucket}/main", "endpoint": s3_settings().endpoint, "secure": False}
    narrow = spec_for(store, shop)
    first = asyncio.run(run_pipeline(narrow, tmp_path / "w1"))
    assert first["tables"]["CREATED"] + first["tables"]["BACKFILL"] == 3

    mysql_execute(
        f"ALTER TABLE {q(shop, 'orders')} ADD COLUMN shipped datetime, ALGORITHM=INSTANT",
        f"CREATE TABLE {q(shop, 'returns')} (id int)",
    )
    before = asyncio.run(committed_state(narrow, tmp_path / "r1"))
    wide = spec_for(store, shop, archive)  # the scope now takes in the old archive
    second = asyncio.run(run_pipeline(wide, tmp_path / "w2"))
    assert second["tables"] == {
        "CREATED": 1,
        "UPDATED": 1,
        "NO CHANGE": 2,
        "BACKFILL": 1,
        "deleted": 0,
    }
    assert {k: v for k, v in second["tables_by_reason"].items() if v} == {
        "new_after_marker": 1,
        "ddl_time_after_marker": 1,
        "unchanged": 2,
        "new_before_marker": 1,
    }
    run_id = RunId(second["run_id"])
    planned = {
        (r["schema_name"], r["table_name"]): (r["state"], r["reason"])
        for r in read_parquet(wide, f"runs/{run_id}/plan/table.parquet")
    }
    assert planned == {
        (shop, "orders"): ("UPDATED", "ddl_time_after_marker"),
        (shop, "customers"): ("NO CHANGE", "unchanged"),
        (shop, "big orders"): ("NO CHANGE", "unchanged"),
        (shop, "returns"): ("CREATED", "new_after_marker"),
        (archive, "legacy {orders}"): ("BACKFILL", "new_before_marker"),
    }
    diff = {
        r["table_name"]: (r["change"], r["reason"])
        for r in read_parquet(wide, diff_key(run_id, "table", "parquet"))
    }
    assert diff == {
        "orders": ("updated", "ddl_time_after_marker"),
        "returns": ("created", "new_after_marker"),
        "legacy {orders}": ("created", "new_before_marker"),
    }
    after = asyncio.run(committed_state(wide, tmp_path / "r2"))
    legacy = [r for r in after["column"].to_pylist() if r["table_name"] == "legacy {orders}"]
    assert [(r["column_name"], r["comment"]) for r in legacy] == [("id", "old id"), ("note", None)]
    reference_store = {**store, "url": f"s3://{bucket}/full-{uuid.uuid4().hex[:6]}"}
    reference = asyncio.run(
        full_state(wide, reference_store["url"], tmp_path / "full")  # same source, full run
    )
    assert_same_state(after, reference)
    published = asyncio.run(published_diff(open_store(wide), run_id))
    assert published == expected_diff(before, after)

    # Tables changed less than a second before run 2's marker are read once more (the
    # marker errs early), without a change to publish; after that nothing is read.
    time.sleep(2.1)
    third = asyncio.run(run_pipeline(wide, tmp_path / "w3"))
    assert third["diff"]["table"] == {"created": 0, "updated": 0, "deleted": 0}
    fourth = asyncio.run(run_pipeline(wide, tmp_path / "w4"))
    assert fourth["tables"]["NO CHANGE"] == 5
    assert fourth["batches"] == 0


async def _plan_then_alter(spec: ExtractionSpec, workdir: Path, statement: str) -> dict[str, Any]:
    """Plan (the marker is read), run `statement` at once, then extract and finalize."""
    store = open_store(spec)
    document = await plan(spec, store, open_source(spec), workdir)
    mysql_execute(statement)
    for index in range(document.batch_count):
        await extract_batch(store, open_source(spec), document.run_id, index)
    return (await finalize(spec, store, workdir, document.run_id)).to_dict()


def _start_of_a_second() -> None:
    time.sleep(1.02 - time.time() % 1)


@pytest.mark.parametrize("allowance", ["source allowance", "no allowance"])
def test_a_ddl_in_the_markers_second_is_not_lost(
    schemas: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allowance: str
) -> None:
    # With the source's one-second allowance the marker lies a second before the clock
    # reading; without it, in that very second: either way the engine's "at or after"
    # comparison must see a DDL made right after plan listed the table as unchanged.
    if allowance == "no allowance":
        monkeypatch.setattr(mysql_source, "_CLOCK_ALLOWANCE", mysql_source.timedelta(0))
    offset = 1 if allowance == "source allowance" else 0
    shop, _ = schemas
    spec = spec_for(f"file://{tmp_path}/store", shop)
    attempts = 5
    mysql_execute(*(f"CREATE TABLE {q(shop, f'u{n}')} (a int)" for n in range(attempts)))
    time.sleep(2.1)
    asyncio.run(run_pipeline(spec, tmp_path / "setup"))  # u0..u4 committed, all unchanged
    for attempt in range(attempts):
        table = f"u{attempt}"
        _start_of_a_second()
        summary = asyncio.run(
            _plan_then_alter(
                spec, tmp_path / f"w{attempt}", f"ALTER TABLE {q(shop, table)} ADD COLUMN late int"
            )
        )
        ((created,),) = mysql_execute(
            "SET time_zone = '+00:00'",
            "SELECT CREATE_TIME FROM information_schema.TABLES "
            f"WHERE TABLE_SCHEMA = '{shop}' AND TABLE_NAME = '{table}'",
        )
        reading = created.replace(tzinfo=UTC) - timedelta(seconds=offset)
        if reading.strftime("%Y-%m-%dT%H:%M:%S") == summary["next_marker"][:19]:
            break  # the DDL landed in the very second the marker was read in
    else:
        pytest.fail("in five attempts the DDL never landed in the marker's second")
    state = asyncio.run(committed_state(spec, tmp_path / "before"))
    assert (table, "late") not in {
        (r["table_name"], r["column_name"]) for r in state["column"].to_pylist()
    }
    follow_up = asyncio.run(run_pipeline(spec, tmp_path / "follow-up"))
    assert follow_up["tables_by_reason"]["ddl_time_after_marker"] >= 1
    state = asyncio.run(committed_state(spec, tmp_path / "after"))
    assert (table, "late") in {
        (r["table_name"], r["column_name"]) for r in state["column"].to_pylist()
    }


def changes_of(spec: ExtractionSpec, run_id: str) -> list[tuple[Any, ...]]:
    rows = read_parquet(spec, changes_key(RunId(run_id)))
    return sorted(
        (r["entity"], r["change"], r["table_name"], r["previous_table_name"])
        for r in rows
        if r["entity"] == "table"
    )


def test_a_renamed_table_is_one_renamed_record(schemas: tuple[str, str], tmp_path: Path) -> None:
    """InnoDB's table id survives RENAME TABLE: a rename, not a drop and a create."""
    shop, _ = schemas
    mysql_execute(f"CREATE TABLE {q(shop, 'orders')} (id int PRIMARY KEY, amount decimal(10,2))")
    spec = spec_for(f"file://{tmp_path / 'store'}", shop)
    first = asyncio.run(run_pipeline(spec, tmp_path / "first"))
    assert first["tables"]["CREATED"] == 1
    mysql_execute(f"RENAME TABLE {q(shop, 'orders')} TO {q(shop, 'purchases')}")
    second = asyncio.run(run_pipeline(spec, tmp_path / "second"))
    assert changes_of(spec, second["run_id"]) == [("table", "renamed", "purchases", "orders")]
    reference = asyncio.run(full_state(spec, f"file://{tmp_path / 'ref'}", tmp_path / "full"))
    assert_same_state(asyncio.run(committed_state(spec, tmp_path / "read")), reference)


def test_without_the_process_privilege_a_rename_is_a_drop_and_a_create(
    schemas: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop, _ = schemas
    user, password = f"mt_noproc_{uuid.uuid4().hex[:6]}", "no-process-pw"
    mysql_execute(
        f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'",
        f"GRANT SELECT, SHOW VIEW ON {mysql_ident(shop)}.* TO '{user}'@'%'",
        f"CREATE TABLE {q(shop, 'orders')} (id int PRIMARY KEY)",
        f"CREATE TABLE {q(shop, 'customers')} (id int PRIMARY KEY)",  # keeps the guard quiet
    )
    try:
        monkeypatch.setenv("METATIDE_SOURCE_DSN", mysql_dsn_for(user, password))
        spec = spec_for(f"file://{tmp_path / 'store'}", shop)
        asyncio.run(run_pipeline(spec, tmp_path / "first"))
        mysql_execute(f"RENAME TABLE {q(shop, 'orders')} TO {q(shop, 'purchases')}")
        second = asyncio.run(run_pipeline(spec, tmp_path / "second"))
        assert changes_of(spec, second["run_id"]) == [
            ("table", "created", "purchases", None),
            ("table", "deleted", "orders", None),
        ]
    finally:
        mysql_execute(f"DROP USER '{user}'@'%'")
