"""Classification of the table listing against the previous state, in DuckDB."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from metatide.extractor.core.records import rows_to_table
from metatide.extractor.core.scope import Scope
from metatide.extractor.core.spec import DuckDBSpec, ScopeSpec
from metatide.extractor.engine.classify import classify, previous_relation
from metatide.extractor.engine.duck import connect
from metatide.extractor.state.runfiles import DELETED_TABLE_SCHEMA

MARKER = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
BEFORE = MARKER - timedelta(days=3)
AFTER = MARKER + timedelta(seconds=1)


@pytest.fixture
def connection(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    spec = DuckDBSpec(temp_directory=str(tmp_path / "duck"), memory_limit="256MB", threads=1)
    connection = connect(spec)
    yield connection
    connection.close()


def classify_tables(
    connection: duckdb.DuckDBPyConnection, current: pa.Table, previous: pa.Table, marker: datetime
) -> pa.Table:
    """The classified listing, with the default scope (which only the deletions consult)."""
    everything = Scope(ScopeSpec())
    old = previous_relation(connection, previous)
    return classify(connection, current, old, marker, everything).tables


def row(name: str, schema: str = "public", **fields: Any) -> dict[str, Any]:
    return {
        "database_name": "db",
        "schema_name": schema,
        "table_name": name,
        "table_type": fields.pop("table_type", "TABLE"),
        **fields,
    }


def states(
    connection: duckdb.DuckDBPyConnection,
    current: list[dict[str, Any]],
    previous: list[dict[str, Any]],
    marker: datetime = MARKER,
) -> dict[str, str]:
    result = classify_tables(
        connection, rows_to_table("table", current), rows_to_table("table", previous), marker
    )
    return dict(
        zip(
            result.column("table_name").to_pylist(), result.column("state").to_pylist(), strict=True
        )
    )


def test_new_table_without_creation_time_is_created(connection: duckdb.DuckDBPyConnection) -> None:
    assert states(connection, [row("t")], []) == {"t": "CREATED"}


def test_new_table_created_after_the_marker_is_created(
    connection: duckdb.DuckDBPyConnection,
) -> None:
    assert states(connection, [row("t", created_at=AFTER)], []) == {"t": "CREATED"}


def test_new_table_created_before_the_marker_is_backfill(
    connection: duckdb.DuckDBPyConnection,
) -> None:
    current = [row("old", created_at=BEFORE), row("edge", created_at=MARKER - timedelta(seconds=1))]
    assert states(connection, current, []) == {"old": "BACKFILL", "edge": "BACKFILL"}


def test_new_table_created_in_the_markers_second_is_created(
    connection: duckdb.DuckDBPyConnection,
) -> None:
    # The marker is stored truncated to the second and MySQL keeps whole seconds: a table
    # created in the marker's own second may have been created after the marker was read.
    assert states(connection, [row("edge", created_at=MARKER)], []) == {"edge": "CREATED"}


def test_ddl_time_after_the_marker_is_updated(connection: duckdb.DuckDBPyConnection) -> None:
    previous = [row("a", ddl_time=BEFORE), row("b", ddl_time=BEFORE), row("c", ddl_time=BEFORE)]
    current = [row("a", ddl_time=AFTER), row("b", ddl_time=BEFORE), row("c", ddl_time=BEFORE)]
    assert states(connection, current, previous) == {
        "a": "UPDATED",
        "b": "NO CHANGE",
        "c": "NO CHANGE",
    }


def test_ddl_time_in_the_markers_second_is_updated(connection: duckdb.DuckDBPyConnection) -> None:
    # A DDL in the same second as the (truncated) marker may have happened after the marker
    # was read: losing it would leave the state stale for good, re-reading it costs little.
    previous = [row("b", ddl_time=MARKER)]
    current = [row("b", ddl_time=MARKER)]
    assert states(connection, current, previous) == {"b": "UPDATED"}


def test_ddl_time_is_compared_with_the_given_marker(connection: duckdb.DuckDBPyConnection) -> None:
    previous = [row("a", ddl_time=MARKER - timedelta(hours=1))]
    current = [row("a", ddl_time=MARKER - timedelta(hours=1))]
    assert states(connection, current, previous) == {"a": "NO CHANGE"}
    earlier = MARKER - timedelta(hours=3)  # the prepone moves the comparison point earlier
    assert states(connection, current, previous, earlier) == {"a": "UPDATED"}


def test_marker_in_another_time_zone_compares_by_instant(
    connection: duckdb.DuckDBPyConnection,
) -> None:
    tokyo = MARKER.astimezone(timezone(timedelta(hours=9)))
    current = [row("a", ddl_time=MARKER + timedelta(minutes=1))]
    assert states(connection, current, current, tokyo) == {"a": "UPDATED"}
    current = [row("a", ddl_time=MARKER - timedelta(minutes=1))]
    assert states(connection, current, current, tokyo) == {"a": "NO CHANGE"}


def test_fingerprint_change_is_updated(connection: duckdb.DuckDBPyConnection) -> None:
    previous = [
        row("a", fingerprint="f1"),
        row("b", fingerprint="f1"),
        row("c"),
        row("d", fingerprint="f1"),
    ]
    current = [
        row("a", fingerprint="f2"),
        row("b", fingerprint="f1"),
        row("c", fingerprint="f1"),
        row("d"),
    ]
    assert states(connection, current, previous) == {
        "a": "UPDATED",
        "b": "NO CHANGE",
        "c": "UPDATED",
        "d": "UPDATED",
    }


def test_table_type_change_is_updated(connection: duckdb.DuckDBPyConnection) -> None:
    previous = [row("v", table_type="VIEW", fingerprint="f"), row("t", fingerprint="f")]
    current = [row("v", table_type="TABLE", fingerprint="f"), row("t", fingerprint="f")]
    assert states(connection, current, previous) == {"v": "UPDATED", "t": "NO CHANGE"}


def test_unchanged_table_is_no_change_even_with_a_recent_creation_time(
    connection: duckdb.DuckDBPyConnection,
) -> None:
    previous = [row("t", fingerprint="f", created_at=AFTER)]
    current = [row("t", fingerprint="f", created_at=AFTER)]
    assert states(connection, current, previous) == {"t": "NO CHANGE"}


def test_result_keeps_every_listed_field_in_key_order(
    connection: duckdb.DuckDBPyConnection,
) -> None:
    current = [
        row("z", comment="last", fingerprint="1"),
        row("a", schema="s2", view_definition="select 1", table_type="VIEW"),
        row("a", comment="first", created_at=BEFORE, ddl_time=AFTER),
    ]
    result = classify_tables(
        connection, rows_to_table("table", current), rows_to_table("table", []), MARKER
    )
    rows = result.to_pylist()
    assert [(r["schema_name"], r["table_name"]) for r in rows] == [
        ("public", "a"),
        ("public", "z"),
        ("s2", "a"),
    ]
    assert rows[0]["comment"] == "first"
    assert rows[0]["ddl_time"] == AFTER
    assert rows[2]["view_definition"] == "select 1"
    assert rows[1]["fingerprint"] == "1"
    assert [r["state"] for r in rows] == ["BACKFILL", "CREATED", "CREATED"]


def test_same_name_in_another_schema_is_a_different_table(
    connection: duckdb.DuckDBPyConnection,
) -> None:
    result = classify_tables(
        connection,
        rows_to_table("table", [row("t", schema="b", fingerprint="f")]),
        rows_to_table("table", [row("t", schema="a", fingerprint="f")]),
        MARKER,
    )
    assert result.column("state").to_pylist() == ["CREATED"]


def test_classification_over_a_mixed_listing(connection: duckdb.DuckDBPyConnection) -> None:
    previous = [row(name, fingerprint="f") for name in ("same", "changed", "retyped", "gone")]
    current = [
        row("same", fingerprint="f"),
        row("changed", fingerprint="g"),
        row("retyped", fingerprint="f", table_type="VIEW"),
        row("new"),
        row("found", created_at=BEFORE),
    ]
    assert states(connection, current, previous) == {
        "same": "NO CHANGE",
        "changed": "UPDATED",
        "retyped": "UPDATED",
        "new": "CREATED",
        "found": "BACKFILL",
    }


def test_connection_can_classify_twice(connection: duckdb.DuckDBPyConnection) -> None:
    assert states(connection, [row("a")], []) == {"a": "CREATED"}
    assert states(connection, [row("a", fingerprint="x")], [row("a", fingerprint="x")]) == {
        "a": "NO CHANGE"
    }


def deleted(
    connection: duckdb.DuckDBPyConnection,
    current: list[dict[str, Any]],
    previous: list[dict[str, Any]],
    scope: dict[str, Any] | None = None,
) -> pa.Table:
    return classify(
        connection,
        rows_to_table("table", current),
        previous_relation(connection, rows_to_table("table", previous)),
        MARKER,
        Scope(ScopeSpec.model_validate(scope or {})),
    ).deleted


def test_deleted_tables_are_dropped_or_out_of_scope(connection: duckdb.DuckDBPyConnection) -> None:
    previous = [row("keep"), row("dropped"), row("tmp_1"), row("t", schema="archive")]
    current = [row("keep")]
    scope = {"exclude": [{"table": "tmp_*"}, {"schema": "archive"}]}
    result = deleted(connection, current, previous, scope)
    assert result.schema == DELETED_TABLE_SCHEMA
    assert [(r["schema_name"], r["table_name"], r["reason"]) for r in result.to_pylist()] == [
        ("archive", "t", "out_of_scope"),
        ("public", "dropped", "dropped"),
        ("public", "tmp_1", "out_of_scope"),
    ]
    assert result.column("bucket").null_count == result.num_rows


def test_no_deletions(connection: duckdb.DuckDBPyConnection) -> None:
    assert deleted(connection, [row("a")], [row("a")]).num_rows == 0
    assert deleted(connection, [], []).num_rows == 0


def test_everything_deleted_when_the_listing_is_empty(
    connection: duckdb.DuckDBPyConnection,
) -> None:
    result = deleted(connection, [], [row("a"), row("b")])
    assert result.column("reason").to_pylist() == ["dropped", "dropped"]


def reasons(
    connection: duckdb.DuckDBPyConnection,
    current: list[dict[str, Any]],
    previous: list[dict[str, Any]],
) -> dict[str, tuple[str, str]]:
    result = classify_tables(
        connection, rows_to_table("table", current), rows_to_table("table", previous), MARKER
    ).to_pylist()
    return {r["table_name"]: (r["state"], r["reason"]) for r in result}


def test_every_classification_records_its_reason(connection: duckdb.DuckDBPyConnection) -> None:
    previous = [
        row("same", ddl_time=BEFORE),
        row("altered", ddl_time=BEFORE),
        row("view", table_type="VIEW", fingerprint="f"),
        row("retyped", fingerprint="f"),
        row("restored", ddl_time=BEFORE),
    ]
    current = [
        row("same", ddl_time=BEFORE),
        row("altered", ddl_time=AFTER),
        row("view", table_type="VIEW", fingerprint="g"),
        row("retyped", table_type="VIEW", fingerprint="g"),
        row("restored", ddl_time=BEFORE - timedelta(days=1)),
        row("new"),
        row("new_since", created_at=AFTER),
        row("old", created_at=BEFORE),
    ]
    assert reasons(connection, current, previous) == {
        "same": ("NO CHANGE", "unchanged"),
        "altered": ("UPDATED", "ddl_time_after_marker"),
        "view": ("UPDATED", "fingerprint_changed"),
        "retyped": ("UPDATED", "type_changed"),
        "restored": ("UPDATED", "ddl_time_changed"),
        "new": ("CREATED", "new_after_marker"),
        "new_since": ("CREATED", "new_after_marker"),
        "old": ("BACKFILL", "new_before_marker"),
    }


def test_last_ddl_time_bounds_an_unknown_creation_time(
    connection: duckdb.DuckDBPyConnection,
) -> None:
    # MySQL keeps only the time of the last DDL: one before the marker proves the table
    # existed before it (BACKFILL); one after it may be a creation (CREATED).
    current = [row("old", ddl_time=BEFORE), row("recent", ddl_time=AFTER)]
    assert reasons(connection, current, []) == {
        "old": ("BACKFILL", "new_before_marker"),
        "recent": ("CREATED", "new_after_marker"),
    }


def test_a_table_gone_under_one_name_and_listed_under_another_counts_as_renamed(
    connection: duckdb.DuckDBPyConnection,
) -> None:
    previous = [
        row("old", object_id="7"),
        row("dropped", object_id="8"),
        row("kept", object_id="9"),
    ]
    current = [
        row("new", object_id="7"),
        row("kept", object_id="9"),
        row("view", object_id="8", table_type="VIEW"),
    ]
    found = classify(
        connection,
        rows_to_table("table", current),
        previous_relation(connection, rows_to_table("table", previous)),
        MARKER,
        Scope(ScopeSpec()),
    )
    assert found.deleted.column("table_name").to_pylist() == ["dropped", "old"]
    assert found.renamed == 1, "object 8 came back as a view: a new object, not a rename"
