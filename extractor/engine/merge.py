"""Building the new state: fresh rows for changed tables, carried rows for the rest.

Only *touched* buckets change: those holding a table that was created, updated, backfilled
or deleted. A touched bucket either gets a new delta (the previous delta's entries for
other tables plus this run's changes) or, when the delta would grow past the compaction
ratio, a new base holding the bucket's whole logical state. Untouched buckets keep their
files (copy-on-write). Views `planned`, `deleted`, `fresh`, `changed`, `compacting`,
`delta_buckets` and the layered views of `layers` must be registered.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from metatide.extractor.core.records import COLUMN_SCHEMA, TABLE_SCHEMA, conform
from metatide.extractor.state.layers import DELTA_TABLE_SCHEMA, TABLE_KEYS

_TABLE_COLUMNS = ", ".join(TABLE_SCHEMA.names)
_COLUMN_COLUMNS = ", ".join(f"f.{name}" for name in COLUMN_SCHEMA.names)
_COLUMN_ORDER = f"bucket, {TABLE_KEYS}, ordinal_position, column_name"

VIEWS = {
    "changed": f"""
        SELECT {TABLE_KEYS}, bucket FROM planned WHERE needs_columns
        UNION ALL SELECT {TABLE_KEYS}, bucket FROM deleted""",
    "fresh_columns": f"""
        SELECT {_COLUMN_COLUMNS}, p.bucket FROM fresh AS f JOIN planned AS p USING ({TABLE_KEYS})
        WHERE f.row_kind = 'column' AND p.needs_columns""",
}

_BASE_TABLES = f"""
SELECT {_TABLE_COLUMNS}, bucket FROM planned WHERE bucket IN (SELECT bucket FROM compacting)
ORDER BY bucket, {TABLE_KEYS}
"""

_BASE_COLUMNS = f"""
SELECT * FROM fresh_columns WHERE bucket IN (SELECT bucket FROM compacting)
UNION ALL BY NAME
SELECT {", ".join("o." + name for name in COLUMN_SCHEMA.names)}, p.bucket
FROM old_columns AS o JOIN planned AS p USING ({TABLE_KEYS})
WHERE NOT p.needs_columns AND p.bucket IN (SELECT bucket FROM compacting)
ORDER BY {_COLUMN_ORDER}
"""

_DELTA_TABLES = f"""
SELECT {_TABLE_COLUMNS}, 'upsert' AS op, bucket FROM planned
WHERE needs_columns AND bucket IN (SELECT bucket FROM delta_buckets)
UNION ALL BY NAME
SELECT {TABLE_KEYS}, 'delete' AS op, bucket FROM deleted
WHERE bucket IN (SELECT bucket FROM delta_buckets)
UNION ALL BY NAME
SELECT d.* FROM prev_table_delta AS d ANTI JOIN changed USING ({TABLE_KEYS})
WHERE d.bucket IN (SELECT bucket FROM delta_buckets)
ORDER BY bucket, {TABLE_KEYS}
"""

_DELTA_COLUMNS = f"""
SELECT * FROM fresh_columns WHERE bucket IN (SELECT bucket FROM delta_buckets)
UNION ALL BY NAME
SELECT d.* FROM prev_column_delta AS d ANTI JOIN changed USING ({TABLE_KEYS})
WHERE d.bucket IN (SELECT bucket FROM delta_buckets)
ORDER BY {_COLUMN_ORDER}
"""


@dataclass(frozen=True, slots=True)
class BucketRows:
    """Rows of one entity and layer for several buckets, sorted by bucket, with a bucket column."""

    rows: pa.Table

    def split(self) -> list[tuple[int, pa.Table]]:
        """(bucket, rows without the bucket column) per bucket that has rows."""
        if self.rows.num_rows == 0:
            return []
        buckets = self.rows.column("bucket").to_numpy()
        starts = np.concatenate(([0], np.flatnonzero(np.diff(buckets)) + 1))
        ends = np.concatenate((starts[1:], [len(buckets)]))
        body = self.rows.drop_columns(["bucket"])
        return [
            (int(buckets[start]), body.slice(int(start), int(end - start)))
            for start, end in zip(starts, ends, strict=True)
        ]


@dataclass(frozen=True, slots=True)
class NewFiles:
    """Everything finalize writes for the touched buckets."""

    base_tables: BucketRows
    base_columns: BucketRows
    delta_tables: BucketRows
    delta_columns: BucketRows


def create_views(connection: duckdb.DuckDBPyConnection) -> None:
    """The derived views the merge and the diff share."""
    for name, sql in VIEWS.items():
        connection.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {sql}")


def new_files(connection: duckdb.DuckDBPyConnection) -> NewFiles:
    """The rows of every file this run writes."""
    return NewFiles(
        base_tables=_rows(connection, _BASE_TABLES, TABLE_SCHEMA),
        base_columns=_rows(connection, _BASE_COLUMNS, COLUMN_SCHEMA),
        delta_tables=_rows(connection, _DELTA_TABLES, DELTA_TABLE_SCHEMA),
        delta_columns=_rows(connection, _DELTA_COLUMNS, COLUMN_SCHEMA),
    )


def _rows(connection: duckdb.DuckDBPyConnection, sql: str, schema: pa.Schema) -> BucketRows:
    target = schema.append(pa.field("bucket", pa.int32(), nullable=False))
    return BucketRows(conform(connection.sql(sql).to_arrow_table(), target))
