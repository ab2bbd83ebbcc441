"""Reading the layered state in DuckDB: base files, delta files, and the logical rows they mean.

A bucket's logical rows are its base rows for tables the delta does not name, plus the
delta's rows. A delta names a table with a table row whose `op` is 'upsert' (the table's row
and all its columns are in the delta) or 'delete' (the table is gone). Deltas keep an
incremental run's writes proportional to what changed; a bucket whose delta grew past the
compaction ratio is rewritten as a new base.

`load_previous` registers the files and returns the names of the views it made
(`PreviousViews`); this module is the only one that spells them. Plan keeps the logical table
rows in DuckDB (`logical_tables_in_duckdb`), history reads them as Arrow (`logical_rows`);
finalize's state build (`engine.newstate`) also reads the deltas, to carry their entries for
tables this run did not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import duckdb
import pyarrow as pa

from metatide.extractor.core.ids import Entity
from metatide.extractor.core.records import (
    COLUMN_SCHEMA,
    TABLE_KEY_COLUMNS,
    TABLE_SCHEMA,
    conform,
)
from metatide.extractor.state.manifest import FileRef

TABLE_KEYS = ", ".join(TABLE_KEY_COLUMNS)

DELTA_TABLE_SCHEMA = pa.schema(
    [TABLE_SCHEMA.field(name) for name in TABLE_KEY_COLUMNS]
    + [pa.field("op", pa.string(), nullable=False)]
    + [TABLE_SCHEMA.field(name).with_nullable(True) for name in TABLE_SCHEMA.names[3:]]
)

_OLD_TABLES: Final = "old_tables"
_OLD_COLUMNS: Final = "old_columns"

LAYER_SCHEMAS: dict[tuple[Entity, str], pa.Schema] = {
    ("table", "base"): TABLE_SCHEMA,
    ("table", "delta"): DELTA_TABLE_SCHEMA,
    ("column", "base"): COLUMN_SCHEMA,
    ("column", "delta"): COLUMN_SCHEMA,
}


def _register_files(
    connection: duckdb.DuckDBPyConnection,
    entity: Entity,
    files: Sequence[tuple[FileRef, Path]],
) -> None:
    """Views prev_{entity}_base and prev_{entity}_delta, each row with its file's bucket."""
    for layer in ("base", "delta"):
        name = _layer_view(entity, layer)
        chosen = [(ref, path) for ref, path in files if ref.layer == layer]
        schema = LAYER_SCHEMAS[(entity, layer)]
        if not chosen:
            empty = schema.append(pa.field("bucket", pa.int32())).empty_table()
            connection.register(name, empty)
            continue
        buckets = pa.table(
            {
                "filename": [str(path) for _, path in chosen],
                "bucket": pa.array([ref.bucket or 0 for ref, _ in chosen], pa.int32()),
            }
        )
        connection.register(f"{name}_files", buckets)
        rows = connection.read_parquet(
            [str(path) for _, path in chosen], filename=True, union_by_name=True
        )
        connection.register(f"{name}_rows", rows)
        connection.execute(
            f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT {_columns(schema, rows.columns)}, "
            f"f.bucket FROM {name}_rows AS r JOIN {name}_files AS f USING (filename)"
        )


def _columns(schema: pa.Schema, present: list[str]) -> str:
    """The schema's columns from a file's rows; a field newer than the file reads as NULL."""
    return ", ".join(
        f"r.{field.name}"
        if field.name in present
        else f"NULL::{_DUCKDB_TYPES[field.type]} AS {field.name}"
        for field in schema
    )


_DUCKDB_TYPES: dict[pa.DataType, str] = {pa.string(): "VARCHAR"}
"""Types of fields added to a record schema after files were written (see RECORD_VERSION)."""


def _create_logical_views(connection: duckdb.DuckDBPyConnection) -> None:
    """The logical tables and columns: what the previous state means, with buckets."""
    connection.execute(
        f"""
        CREATE OR REPLACE TEMP VIEW {_OLD_TABLES} AS
        SELECT b.* FROM prev_table_base AS b ANTI JOIN prev_table_delta USING ({TABLE_KEYS})
        UNION ALL BY NAME
        SELECT * EXCLUDE (op) FROM prev_table_delta WHERE op = 'upsert'
        """
    )
    connection.execute(
        f"""
        CREATE OR REPLACE TEMP VIEW {_OLD_COLUMNS} AS
        SELECT c.* FROM prev_column_base AS c ANTI JOIN prev_table_delta USING ({TABLE_KEYS})
        UNION ALL BY NAME
        SELECT * FROM prev_column_delta
        """
    )


def logical_rows(
    connection: duckdb.DuckDBPyConnection, entity: Entity, *, with_bucket: bool = False
) -> pa.Table:
    """The previous state's rows of tables or columns in schema order (and their buckets)."""
    view = _OLD_TABLES if entity == "table" else _OLD_COLUMNS
    schema = TABLE_SCHEMA if entity == "table" else COLUMN_SCHEMA
    if with_bucket:
        schema = schema.append(pa.field("bucket", pa.int32()))
    rows = connection.sql(f"SELECT {', '.join(schema.names)} FROM {view}").to_arrow_table()
    return conform(rows, schema)


def logical_tables_in_duckdb(connection: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyRelation:
    """The previous state's table rows and buckets as a temporary table of the connection.

    Decoded and resolved once, by DuckDB on every thread, and never converted to Arrow: plan
    runs its three comparisons on it in the same connection.
    """
    schema = TABLE_SCHEMA.append(pa.field("bucket", pa.int32()))
    connection.execute(
        f"CREATE OR REPLACE TEMP TABLE previous_table_rows AS "
        f"SELECT {', '.join(schema.names)} FROM {_OLD_TABLES}"
    )
    return connection.table("previous_table_rows")


@dataclass(frozen=True, slots=True)
class PreviousViews:
    """The views `load_previous` registered, each row with its file's bucket."""

    tables: str
    """The logical table rows (base rows the delta does not name, the delta's upserts)."""
    columns: str
    """The logical column rows."""
    table_delta: str
    """The delta files' table rows, `op` included (DELTA_TABLE_SCHEMA)."""
    column_delta: str
    """The delta files' column rows."""


def load_previous(
    connection: duckdb.DuckDBPyConnection,
    tables: Sequence[tuple[FileRef, Path]],
    columns: Sequence[tuple[FileRef, Path]] = (),
) -> PreviousViews:
    """Register the given table and column files and the logical views over them."""
    _register_files(connection, "table", tables)
    _register_files(connection, "column", columns)
    _create_logical_views(connection)
    return PreviousViews(
        tables=_OLD_TABLES,
        columns=_OLD_COLUMNS,
        table_delta=_layer_view("table", "delta"),
        column_delta=_layer_view("column", "delta"),
    )


def _layer_view(entity: Entity, layer: str) -> str:
    return f"prev_{entity}_{layer}"
