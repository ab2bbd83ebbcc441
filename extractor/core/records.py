"""The shape of every stored row: one Arrow schema per entity, shared by sources, state and diff.

Sources hand over rows in these schemas, the state stores them, the diff compares them. A
field belongs here only if every source can fill it (or leave it null), and every field that
a source fills must be covered by that source's table fingerprint: otherwise a change to it
would never make a table UPDATED and the incremental state would drift from a full one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from metatide.extractor.core.ids import Entity, TableKey

KEY_COLUMNS: Mapping[Entity, tuple[str, ...]] = {
    "database": ("database_name",),
    "schema": ("database_name", "schema_name"),
    "table": ("database_name", "schema_name", "table_name"),
    "column": ("database_name", "schema_name", "table_name", "column_name"),
}
"""What identifies a row of each entity: its name within its parents' names."""


def _key_fields(entity: Entity) -> list[pa.Field]:
    """The fields of an entity's key, which lead its schema; a name is never null."""
    return [pa.field(name, pa.string(), nullable=False) for name in KEY_COLUMNS[entity]]


DATABASE_SCHEMA = pa.schema(
    [
        *_key_fields("database"),
        pa.field("comment", pa.string()),
    ]
)

SCHEMA_SCHEMA = pa.schema(
    [
        *_key_fields("schema"),
        pa.field("comment", pa.string()),
    ]
)

TABLE_SCHEMA = pa.schema(
    [
        *_key_fields("table"),
        pa.field("table_type", pa.string(), nullable=False),
        pa.field("comment", pa.string()),
        pa.field("view_definition", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
        pa.field("ddl_time", pa.timestamp("us", tz="UTC")),
        pa.field("fingerprint", pa.string()),
        pa.field("object_id", pa.string()),
    ]
)
"""`object_id`: the source's identity of the table that survives a rename (PostgreSQL: the
relation's oid; MySQL/MariaDB: InnoDB's table id; SQLite: schema row and root page), or null
where the source has none (views on MySQL and SQLite). Renames are found by it
(`changes`), and a table whose id changed under the same name was replaced: UPDATED."""

RECORD_VERSION = 2
"""Version of the row schemas above, recorded in each manifest (`Manifest.record_version`):
1 had no `object_id`. State files of an older version are read with the new fields null and
rewritten by the next run (see `build`)."""

COLUMN_SCHEMA = pa.schema(
    [
        *_key_fields("column"),
        pa.field("ordinal_position", pa.int32(), nullable=False),
        pa.field("data_type", pa.string(), nullable=False),
        pa.field("is_nullable", pa.bool_(), nullable=False),
        pa.field("column_default", pa.string()),
        pa.field("comment", pa.string()),
        pa.field("is_primary_key", pa.bool_(), nullable=False),
    ]
)

SCHEMAS: Mapping[Entity, pa.Schema] = {
    "database": DATABASE_SCHEMA,
    "schema": SCHEMA_SCHEMA,
    "table": TABLE_SCHEMA,
    "column": COLUMN_SCHEMA,
}

TABLE_KEY_COLUMNS = KEY_COLUMNS["table"]

TABLE_KEY_SCHEMA = pa.schema([TABLE_SCHEMA.field(name) for name in TABLE_KEY_COLUMNS])


def rows_to_table(entity: Entity, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Build an Arrow table of one entity from dict rows (sources with few rows use this)."""
    return pa.Table.from_pylist(list(rows), schema=SCHEMAS[entity])


def table_to_keys(table: pa.Table) -> list[TableKey]:
    """The (database, schema, table) keys of an Arrow table, in its row order."""
    names = [table.column(name).to_pylist() for name in TABLE_KEY_COLUMNS]
    return list(zip(*names, strict=True))


def row_numbers(count: int) -> pa.Array:
    """0 to count - 1 as int64: Arrow has no arange, and metatide does without numpy."""
    return pc.subtract(pc.cumulative_sum(pa.repeat(pa.scalar(1, pa.int64()), count)), 1)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The table's columns named by `schema`, cast to its types, in its order."""
    return pa.Table.from_arrays(
        [table.column(field.name).cast(field.type) for field in schema], schema=schema
    )
