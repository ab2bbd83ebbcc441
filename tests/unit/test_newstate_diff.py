"""The new state of touched buckets and diffing states: BucketRows, new files, entity diffs,
reasons."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from metatide.extractor.core.ids import ENTITIES, Entity, RunId
from metatide.extractor.core.records import TABLE_SCHEMA, rows_to_table
from metatide.extractor.core.scope import Scope
from metatide.extractor.core.spec import DuckDBSpec, ScopeSpec
from metatide.extractor.engine.diff import column_reasons, entity_diff, scope_reasons
from metatide.extractor.engine.duck import connect
from metatide.extractor.engine.newstate import (
    BucketRows,
    Buckets,
    NewState,
    PreviousFiles,
    RunInputs,
)
from metatide.extractor.state.files import describe, encode_parquet, state_key
from metatide.extractor.state.manifest import FileRef
from metatide.extractor.state.runfiles import (
    BATCH_SCHEMA,
    DELETED_TABLE_SCHEMA,
    PLANNED_TABLE_SCHEMA,
    PlanDocument,
)
from tests.harness import empty_diff

WHEN = datetime(2025, 1, 1, tzinfo=UTC)


def duckdb_spec(tmp_path: Path) -> DuckDBSpec:
    return DuckDBSpec(temp_directory=str(tmp_path / "duck"), memory_limit="256MB", threads=1)


@pytest.fixture
def connection(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = connect(duckdb_spec(tmp_path))
    yield connection
    connection.close()


def table_row(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "database_name": "db",
        "schema_name": "s",
        "table_name": name,
        "table_type": fields.pop("table_type", "TABLE"),
        **fields,
    }


def column_row(table: str, name: str, position: int, **fields: Any) -> dict[str, Any]:
    return {
        "database_name": "db",
        "schema_name": "s",
        "table_name": table,
        "column_name": name,
        "ordinal_position": position,
        "data_type": fields.pop("data_type", "INTEGER"),
        "is_nullable": fields.pop("is_nullable", True),
        "is_primary_key": fields.pop("is_primary_key", False),
        **fields,
    }


# --- BucketRows.split -------------------------------------------------------------------------


def bucketed(buckets: list[int]) -> BucketRows:
    rows = [table_row(f"t{i}") for i in range(len(buckets))]
    table = rows_to_table("table", rows).append_column(
        pa.field("bucket", pa.int32(), nullable=False), pa.array(buckets, pa.int32())
    )
    return BucketRows(table)


def test_split_groups_consecutive_buckets() -> None:
    parts = bucketed([0, 0, 2, 2, 2, 7]).split()
    assert [bucket for bucket, _ in parts] == [0, 2, 7]
    assert [part.column("table_name").to_pylist() for _, part in parts] == [
        ["t0", "t1"],
        ["t2", "t3", "t4"],
        ["t5"],
    ]
    for _, part in parts:
        assert part.schema == TABLE_SCHEMA
        assert "bucket" not in part.column_names


def test_split_of_a_single_bucket() -> None:
    parts = bucketed([3, 3, 3]).split()
    assert [(bucket, part.num_rows) for bucket, part in parts] == [(3, 3)]


def test_split_of_single_rows() -> None:
    parts = bucketed([0, 1, 2, 3]).split()
    assert [(bucket, part.num_rows) for bucket, part in parts] == [(0, 1), (1, 1), (2, 1), (3, 1)]


def test_split_of_nothing() -> None:
    assert bucketed([]).split() == []


def test_split_covers_every_row_once() -> None:
    buckets = sorted([5, 1, 1, 9, 9, 9, 0, 5, 5, 2])
    parts = bucketed(buckets).split()
    assert sum(part.num_rows for _, part in parts) == len(buckets)
    assert [bucket for bucket, _ in parts] == sorted(set(buckets))
    assert all(part.num_rows == buckets.count(bucket) for bucket, part in parts)


# --- NewState.files ---------------------------------------------------------------------------


def planned(rows: list[tuple[str, str, int, bool]]) -> pa.Table:
    """(name, state, bucket, needs_columns) rows in the plan's table schema."""
    tables = [
        {**table_row(name), "state": state, "bucket": bucket, "needs_columns": needs}
        for name, state, bucket, needs in rows
    ]
    return pa.Table.from_pylist(tables, schema=PLANNED_TABLE_SCHEMA)


def fresh(columns: list[dict[str, Any]], present: list[str]) -> pa.Table:
    accounting = [
        {"database_name": "db", "schema_name": "s", "table_name": name, "row_kind": "table"}
        for name in present
    ]
    return pa.Table.from_pylist(
        accounting + [{**column, "row_kind": "column"} for column in columns], schema=BATCH_SCHEMA
    )


def plan_document() -> PlanDocument:
    """An incremental run's plan: the build reads only whether it is a full extraction."""
    return PlanDocument(
        run_id=RunId("run-2"),
        parent_run_id=RunId("run-1"),
        parent_content_hash="hash",
        full_extraction=False,
        marker_used=WHEN,
        next_marker=WHEN,
        bucket_count=3,
        batch_count=1,
        batch_size=10,
        tables_total=4,
        tables_by_state={},
        tables_deleted={},
        tables_to_extract=2,
        started_at=WHEN,
        duration_seconds=0.0,
    )


def state_file(folder: Path, columns: pa.Table, bucket: int) -> tuple[FileRef, Path]:
    """A previous base file of column rows, as the build's fetch hands it over."""
    data = encode_parquet(columns)
    ref = describe(state_key("column", RunId("run-1"), bucket), data, columns.num_rows, bucket)
    path = folder / f"b{bucket}.parquet"
    path.write_bytes(data)
    return ref, path


def test_compacted_buckets_get_a_base_and_other_touched_buckets_a_delta(tmp_path: Path) -> None:
    deleted = pa.Table.from_pylist(
        [
            {
                "database_name": "db",
                "schema_name": "s",
                "table_name": "gone",
                "reason": "dropped",
                "bucket": 2,
            }
        ],
        schema=DELETED_TABLE_SCHEMA,
    )
    inputs = RunInputs(
        plan=plan_document(),
        planned=planned(
            [
                ("changed", "UPDATED", 0, True),
                ("same", "NO CHANGE", 0, False),
                ("new", "CREATED", 2, True),
                ("kept", "NO CHANGE", 2, False),
            ]
        ),
        deleted=deleted,
        fresh=fresh(
            [
                column_row("changed", "id", 1),
                column_row("changed", "added", 2),
                column_row("new", "x", 1),
            ],
            ["changed", "new"],
        ),
        databases=rows_to_table("database", [{"database_name": "db"}]),
        schemas=rows_to_table("schema", [{"database_name": "db", "schema_name": "s"}]),
    )
    base_columns = rows_to_table(
        "column",
        [
            column_row("changed", "id", 1, comment="old"),
            column_row("changed", "removed", 2),
            column_row("same", "a", 1),
        ],
    )
    kept_columns = rows_to_table("column", [column_row("kept", "k", 1)])
    previous = PreviousFiles(
        tables=[],
        columns=[state_file(tmp_path, base_columns, 0), state_file(tmp_path, kept_columns, 2)],
        databases=[],
        schemas=[],
    )
    buckets = Buckets(same_layout=True, touched=[0, 2], compacting=[0], delta=[2])
    with NewState(duckdb_spec(tmp_path), inputs, buckets, previous) as state:
        files = state.files()
    base_tables = {b: p.column("table_name").to_pylist() for b, p in files.base_tables.split()}
    assert base_tables == {0: ["changed", "same"]}
    base_columns_by_bucket = {b: p.to_pylist() for b, p in files.base_columns.split()}
    assert [
        (r["table_name"], r["column_name"], r["comment"]) for r in base_columns_by_bucket[0]
    ] == [
        ("changed", "id", None),
        ("changed", "added", None),
        ("same", "a", None),
    ]
    delta = {b: p.to_pylist() for b, p in files.delta_tables.split()}
    assert [(r["table_name"], r["op"]) for r in delta[2]] == [("gone", "delete"), ("new", "upsert")]
    delta_columns = {b: p.to_pylist() for b, p in files.delta_columns.split()}
    assert [(r["table_name"], r["column_name"]) for r in delta_columns[2]] == [("new", "x")]


# --- entity_diff ------------------------------------------------------------------------------


def diff_tables(
    connection: duckdb.DuckDBPyConnection,
    entity: Entity,
    new: list[dict[str, Any]],
    previous: list[dict[str, Any]],
    reasons: dict[tuple[str, ...], str] | None = None,
) -> Any:
    connection.register("n_rel", rows_to_table(entity, new))
    connection.register("p_rel", rows_to_table(entity, previous))
    return entity_diff(connection, entity, "n_rel", "p_rel", reasons or {}, "dropped")


def test_table_diff_created_updated_deleted(connection: duckdb.DuckDBPyConnection) -> None:
    previous = [
        table_row("same", comment="c", fingerprint="f"),
        table_row("null_to_value"),
        table_row("value_to_null", comment="was here"),
        table_row("time_set"),
        table_row("retyped"),
        table_row("gone_dropped"),
        table_row("gone_scope"),
    ]
    new = [
        table_row("same", comment="c", fingerprint="f"),
        table_row("null_to_value", comment="now"),
        table_row("value_to_null"),
        table_row("time_set", ddl_time=WHEN),
        table_row("retyped", table_type="VIEW"),
        table_row("brand_new"),
    ]
    result = diff_tables(
        connection, "table", new, previous, {("db", "s", "gone_scope"): "out_of_scope"}
    )
    changes = dict(
        zip(
            result.changed.column("table_name").to_pylist(),
            result.changed.column("change").to_pylist(),
            strict=True,
        )
    )
    assert changes == {
        "brand_new": "created",
        "null_to_value": "updated",
        "retyped": "updated",
        "time_set": "updated",
        "value_to_null": "updated",
    }
    assert result.count("created") == 1
    assert result.count("updated") == 4
    assert result.changed.schema == TABLE_SCHEMA.append(pa.field("change", pa.string()))
    by_name = {row["table_name"]: row for row in result.changed.to_pylist()}
    assert by_name["null_to_value"]["comment"] == "now"  # the new row is published
    assert by_name["time_set"]["ddl_time"] == WHEN
    assert result.deleted.to_pylist() == [
        {
            "database_name": "db",
            "schema_name": "s",
            "table_name": "gone_dropped",
            "reason": "dropped",
        },
        {
            "database_name": "db",
            "schema_name": "s",
            "table_name": "gone_scope",
            "reason": "out_of_scope",
        },
    ]


def test_identical_states_have_an_empty_diff(connection: duckdb.DuckDBPyConnection) -> None:
    rows = [table_row("a", comment=None), table_row("b", comment="x", created_at=WHEN)]
    result = diff_tables(connection, "table", rows, rows)
    assert result.changed.num_rows == 0
    assert result.deleted.num_rows == 0


def test_column_diff_counts_null_changes_as_updates(connection: duckdb.DuckDBPyConnection) -> None:
    previous = [
        column_row("t", "a", 1),
        column_row("t", "b", 2, column_default="0"),
        column_row("t", "c", 3),
        column_row("t", "d", 4, data_type="TEXT"),
        column_row("t", "old", 5),
    ]
    new = [
        column_row("t", "a", 1, column_default="42"),
        column_row("t", "b", 2),
        column_row("t", "c", 3),
        column_row("t", "d", 4, data_type="TEXT", is_nullable=False),
        column_row("t", "e", 5),
    ]
    result = diff_tables(connection, "column", new, previous)
    assert sorted(
        zip(
            result.changed.column("column_name").to_pylist(),
            result.changed.column("change").to_pylist(),
            strict=True,
        )
    ) == [("a", "updated"), ("b", "updated"), ("d", "updated"), ("e", "created")]
    assert result.deleted.column("column_name").to_pylist() == ["old"]
    assert result.deleted.column("reason").to_pylist() == ["dropped"]


def test_database_and_schema_diffs(connection: duckdb.DuckDBPyConnection) -> None:
    databases = diff_tables(
        connection,
        "database",
        [{"database_name": "a", "comment": "x"}, {"database_name": "c"}],
        [{"database_name": "a"}, {"database_name": "b"}],
        {("b",): "out_of_scope"},
    )
    assert databases.changed.select(["database_name", "change"]).to_pylist() == [
        {"database_name": "a", "change": "updated"},
        {"database_name": "c", "change": "created"},
    ]
    assert databases.deleted.to_pylist() == [{"database_name": "b", "reason": "out_of_scope"}]
    schemas = diff_tables(
        connection,
        "schema",
        [{"database_name": "a", "schema_name": "s"}],
        [{"database_name": "a", "schema_name": "s"}, {"database_name": "a", "schema_name": "t"}],
    )
    assert schemas.changed.num_rows == 0
    assert schemas.deleted.to_pylist() == [
        {"database_name": "a", "schema_name": "t", "reason": "dropped"}
    ]


def test_empty_diff_has_the_diff_shapes() -> None:
    for entity in ENTITIES:
        diff = empty_diff(entity)
        assert diff.changed.num_rows == 0
        assert diff.deleted.num_rows == 0
        assert diff.changed.column_names[-1] == "change"
        assert diff.deleted.column_names[-1] == "reason"


# --- reasons ----------------------------------------------------------------------------------


def test_deleted_columns_inherit_their_tables_reason(connection: duckdb.DuckDBPyConnection) -> None:
    previous = [
        column_row("hidden", "a", 1),
        column_row("hidden", "b", 2),
        column_row("dropped", "c", 1),
        column_row("altered", "d", 1),
        column_row("altered", "e", 2),
    ]
    new = [column_row("altered", "d", 1)]
    deleted = diff_tables(connection, "column", new, previous).deleted
    table_reasons: dict[tuple[str, ...], str] = {
        ("db", "s", "hidden"): "out_of_scope",
        ("db", "s", "dropped"): "dropped",
    }
    result = column_reasons(table_reasons, deleted)
    assert result.column_names == deleted.column_names
    assert [(r["table_name"], r["column_name"], r["reason"]) for r in result.to_pylist()] == [
        ("altered", "e", "dropped"),
        ("dropped", "c", "dropped"),
        ("hidden", "a", "out_of_scope"),
        ("hidden", "b", "out_of_scope"),
    ]


def test_column_reasons_keep_the_deleted_schema(connection: duckdb.DuckDBPyConnection) -> None:
    """The published delete/column file has the same shape as every other delete file:
    `reason` is non-nullable, as in `entity_diff` and `empty_diff`."""
    deleted = diff_tables(connection, "column", [], [column_row("t", "a", 1)]).deleted
    result = column_reasons({("db", "s", "t"): "out_of_scope"}, deleted)
    assert result.schema == deleted.schema
    assert result.schema == empty_diff("column").deleted.schema
    assert not result.schema.field("reason").nullable


def test_column_reasons_of_no_deletions(connection: duckdb.DuckDBPyConnection) -> None:
    rows = [column_row("t", "a", 1)]
    deleted = diff_tables(connection, "column", rows, rows).deleted
    assert column_reasons({("db", "s", "t"): "out_of_scope"}, deleted).num_rows == 0


def test_scope_reasons_for_databases_and_schemas() -> None:
    scope = Scope(
        ScopeSpec.model_validate({"exclude": [{"database": "tmp*"}, {"schema": "scratch"}]})
    )
    assert scope_reasons("database", [("prod",), ("tmp1",)], scope) == {
        ("prod",): "dropped",
        ("tmp1",): "out_of_scope",
    }
    assert scope_reasons(
        "schema", [("prod", "public"), ("prod", "scratch"), ("tmp1", "public")], scope
    ) == {
        ("prod", "public"): "dropped",
        ("prod", "scratch"): "out_of_scope",
        ("tmp1", "public"): "out_of_scope",
    }
    assert scope_reasons("schema", [], scope) == {}
