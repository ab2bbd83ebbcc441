"""Change records between two states: attribute-level before/after, renames kept as renames."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa

from metatide.extractor.core.ids import ENTITIES, Entity
from metatide.extractor.core.records import SCHEMAS
from metatide.extractor.engine.changes import (
    CHANGE_SCHEMA,
    ChangeHeader,
    Reasons,
    StatePair,
    change_records,
)

HEADER = ChangeHeader(
    "20260101t000000z-00000002", "20260101t000000z-00000001", datetime(2026, 1, 1, tzinfo=UTC)
)


def table(
    name: str, oid: str | None, schema: str = "s", kind: str = "TABLE", **fields: Any
) -> dict[str, Any]:
    return {
        "database_name": "d",
        "schema_name": schema,
        "table_name": name,
        "table_type": kind,
        "object_id": oid,
        "fingerprint": fields.pop("fingerprint", name),
        **fields,
    }


def column(
    table_name: str,
    name: str,
    position: int,
    data_type: str = "int",
    schema: str = "s",
    **fields: Any,
) -> dict[str, Any]:
    return {
        "database_name": "d",
        "schema_name": schema,
        "table_name": table_name,
        "column_name": name,
        "ordinal_position": position,
        "data_type": data_type,
        "is_nullable": fields.pop("is_nullable", True),
        "is_primary_key": fields.pop("is_primary_key", False),
        **fields,
    }


def state(tables: list[dict[str, Any]], columns: list[dict[str, Any]]) -> dict[Entity, pa.Table]:
    schemas = sorted({(t["database_name"], t["schema_name"]) for t in tables})
    rows: dict[Entity, list[dict[str, Any]]] = {
        "database": [{"database_name": "d"}],
        "schema": [{"database_name": d, "schema_name": s} for d, s in schemas],
        "table": tables,
        "column": columns,
    }
    return {
        entity: pa.Table.from_pylist(rows[entity], schema=SCHEMAS[entity]) for entity in ENTITIES
    }


def records(
    before: dict[Entity, pa.Table],
    after: dict[Entity, pa.Table],
    stable: bool = True,
    **reasons: Any,
) -> list[dict[str, Any]]:
    connection = duckdb.connect()
    result = change_records(
        connection,
        StatePair(before, after),
        HEADER,
        reasons=Reasons(**reasons),
        stable_column_ids=stable,
    )
    assert result.schema == CHANGE_SCHEMA
    rows = result.to_pylist()
    for row in rows:
        row["before"] = json.loads(row["before"]) if row["before"] else None
        row["after"] = json.loads(row["after"]) if row["after"] else None
    return rows


def short(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (
            r["entity"],
            r["change"],
            r["schema_name"],
            r["table_name"],
            r["column_name"],
            r["previous_table_name"],
            r["previous_column_name"],
            tuple(r["changed_fields"]),
        )
        for r in rows
    ]


BASE = state(
    [table("orders", "100"), table("customers", "101")],
    [
        column("orders", "id", 1),
        column("orders", "amount", 2, "numeric(10,2)"),
        column("customers", "id", 1),
        column("customers", "email", 2, "text"),
    ],
)


def test_no_change_no_records() -> None:
    assert records(BASE, BASE) == []


def test_columns_of_an_unchanged_table_row_are_not_compared() -> None:
    """The same table row (fingerprint included) means the same columns: a state never holds
    different columns under an unchanged fingerprint, so they need no comparison."""
    same_fingerprint = state(
        BASE["table"].to_pylist(),
        [{**row, "comment": "changed"} for row in BASE["column"].to_pylist()],
    )
    assert records(BASE, same_fingerprint) == []


def test_a_type_change_has_before_and_after() -> None:
    after = state(
        [table("orders", "100", fingerprint="other"), table("customers", "101")],
        [
            column("orders", "id", 1),
            column("orders", "amount", 2, "numeric(12,2)"),
            column("customers", "id", 1),
            column("customers", "email", 2, "text"),
        ],
    )
    rows = records(BASE, after)
    assert short(rows) == [
        ("column", "updated", "s", "orders", "amount", None, None, ("data_type",))
    ]
    assert rows[0]["before"] == {"data_type": "numeric(10,2)"}
    assert rows[0]["after"] == {"data_type": "numeric(12,2)"}
    assert rows[0]["run_id"] == HEADER.run_id
    assert rows[0]["previous_run_id"] == HEADER.previous_run_id
    assert rows[0]["format_version"] == 1


def test_a_table_rename_is_one_record_and_its_columns_move_with_it() -> None:
    after = state(
        [table("purchase_orders", "100"), table("customers", "101")],
        [
            column("purchase_orders", "id", 1),
            column("purchase_orders", "amount", 2, "numeric(10,2)"),
            column("customers", "id", 1),
            column("customers", "email", 2, "text"),
        ],
    )
    assert short(records(BASE, after)) == [
        ("table", "renamed", "s", "purchase_orders", None, "orders", None, ()),
    ]


def test_set_schema_is_a_rename_with_the_previous_schema() -> None:
    after = state(
        [table("orders", "100", schema="archive"), table("customers", "101")],
        [
            column("orders", "id", 1, schema="archive"),
            column("orders", "amount", 2, "numeric(10,2)", schema="archive"),
            column("customers", "id", 1),
            column("customers", "email", 2, "text"),
        ],
    )
    rows = [r for r in records(BASE, after) if r["entity"] == "table"]
    assert [(r["change"], r["schema_name"], r["previous_schema_name"]) for r in rows] == [
        ("renamed", "archive", "s")
    ]


def test_a_column_rename_with_a_type_change_is_one_renamed_record() -> None:
    after = state(
        [table("orders", "100", fingerprint="v2"), table("customers", "101")],
        [
            column("orders", "id", 1),
            column("orders", "total", 2, "numeric(12,2)"),
            column("customers", "id", 1),
            column("customers", "email", 2, "text"),
        ],
    )
    rows = records(BASE, after)
    assert short(rows) == [
        ("column", "renamed", "s", "orders", "total", "orders", "amount", ("data_type",))
    ]
    assert rows[0]["before"] == {"data_type": "numeric(10,2)"}


def test_without_stable_column_ids_a_column_rename_is_a_drop_and_a_create() -> None:
    after = state(
        [table("orders", "100", fingerprint="v2"), table("customers", "101")],
        [
            column("orders", "id", 1),
            column("orders", "total", 2, "numeric(10,2)"),
            column("customers", "id", 1),
            column("customers", "email", 2, "text"),
        ],
    )
    assert [r["change"] for r in records(BASE, after, stable=False)] == ["created", "deleted"]


def test_rename_and_alter_in_one_run() -> None:
    after = state(
        [table("purchase_orders", "100", comment="renamed"), table("customers", "101")],
        [
            column("purchase_orders", "id", 1),
            column("purchase_orders", "amount", 2, "numeric(10,2)", comment="money"),
            column("purchase_orders", "note", 3, "text"),
            column("customers", "id", 1),
            column("customers", "email", 2, "text"),
        ],
    )
    rows = records(BASE, after)
    assert short(rows) == [
        ("table", "renamed", "s", "purchase_orders", None, "orders", None, ("comment",)),
        ("column", "created", "s", "purchase_orders", "note", None, None, ()),
        ("column", "updated", "s", "purchase_orders", "amount", "orders", "amount", ("comment",)),
    ]


def test_an_id_that_came_back_for_an_unrelated_table_is_a_drop_and_a_create() -> None:
    """An oid after wraparound, or a SQLite root page reused after DROP and CREATE."""
    after = state(
        [table("invoices", "100"), table("customers", "101")],
        [
            column("invoices", "number", 1, "text"),
            column("invoices", "issued", 2, "date"),
            column("invoices", "paid", 3, "boolean"),
            column("customers", "id", 1),
            column("customers", "email", 2, "text"),
        ],
    )
    rows = records(
        BASE,
        after,
        deleted={
            "table": pa.table(
                {
                    "database_name": ["d"],
                    "schema_name": ["s"],
                    "table_name": ["orders"],
                    "reason": ["dropped"],
                }
            )
        },
    )
    tables = [(r["change"], r["table_name"], r["reason"]) for r in rows if r["entity"] == "table"]
    assert tables == [("created", "invoices", None), ("deleted", "orders", "dropped")]


def test_the_same_name_with_a_new_id_is_an_update_of_the_object_id() -> None:
    after = state(
        [table("orders", "555"), table("customers", "101")],
        [
            column("orders", "id", 1),
            column("orders", "amount", 2, "numeric(10,2)"),
            column("customers", "id", 1),
            column("customers", "email", 2, "text"),
        ],
    )
    rows = records(BASE, after)
    assert short(rows) == [("table", "updated", "s", "orders", None, None, None, ("object_id",))]


def test_an_object_id_recorded_for_the_first_time_is_not_a_change() -> None:
    before = state(
        [table("orders", None), table("customers", None)],
        BASE["column"].to_pylist(),
    )
    assert records(before, BASE) == []


def test_created_and_deleted_records_carry_every_attribute_and_reasons() -> None:
    after = state(
        [table("orders", "100"), table("customers", "101"), table("new", "102", comment="hi")],
        [*BASE["column"].to_pylist(), column("new", "k", 1)],
    )
    reasons = pa.table(
        {
            "database_name": ["d"],
            "schema_name": ["s"],
            "table_name": ["new"],
            "reason": ["new_after_marker"],
        }
    )
    rows = records(BASE, after, tables=reasons)
    created = {(r["entity"], r["reason"]) for r in rows}
    assert created == {("table", "new_after_marker"), ("column", "new_after_marker")}
    table_row = next(r for r in rows if r["entity"] == "table")
    assert table_row["after"]["comment"] == "hi"
    assert table_row["after"]["object_id"] == "102"
    assert "fingerprint" not in table_row["after"]
    gone = records(after, BASE)
    assert {(r["entity"], r["change"], r["reason"]) for r in gone} == {
        ("table", "deleted", "dropped"),
        ("column", "deleted", "dropped"),
    }
    assert next(r for r in gone if r["entity"] == "table")["before"]["comment"] == "hi"


def test_schemas_are_created_and_deleted() -> None:
    moved = state(
        [table("orders", "100", schema="other")], [column("orders", "id", 1, schema="other")]
    )
    plain = state([table("orders", "100")], [column("orders", "id", 1)])
    rows = [r for r in records(plain, moved) if r["entity"] == "schema"]
    assert [(r["change"], r["schema_name"]) for r in rows] == [
        ("created", "other"),
        ("deleted", "s"),
    ]
