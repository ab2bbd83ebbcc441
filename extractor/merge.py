"""Building the new state: fresh rows for changed tables, ancestral rows for the rest.

Only *touched* buckets are rebuilt: those holding a table that was created, updated,
backfilled or deleted. For a touched bucket the new table rows are the plan's listing, and
the new column rows are the batch results for re-extracted tables plus the previous state's
columns of NO CHANGE tables. Untouched buckets keep their previous file (copy-on-write).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from metatide.extractor.records import COLUMN_SCHEMA, KEY_COLUMNS, TABLE_SCHEMA

_KEY = ", ".join(KEY_COLUMNS["table"])

_NEW_TABLES = f"""
SELECT {", ".join(TABLE_SCHEMA.names)}, bucket FROM planned
WHERE bucket IN (SELECT bucket FROM touched)
ORDER BY bucket, {_KEY}
"""

_NEW_COLUMNS = f"""
WITH candidates AS (
  SELECT {", ".join("f." + name for name in COLUMN_SCHEMA.names)}, p.bucket, 0 AS origin
  FROM fresh AS f JOIN planned AS p USING ({_KEY})
  WHERE f.row_kind = 'column' AND p.needs_columns AND p.bucket IN (SELECT bucket FROM touched)
  UNION ALL
  SELECT {", ".join("c." + name for name in COLUMN_SCHEMA.names)}, p.bucket, 1 AS origin
  FROM previous_columns AS c JOIN planned AS p USING ({_KEY})
  WHERE NOT p.needs_columns AND p.bucket IN (SELECT bucket FROM touched)
)
SELECT * EXCLUDE (origin) FROM candidates
QUALIFY row_number() OVER (PARTITION BY {", ".join(KEY_COLUMNS["column"])} ORDER BY origin) = 1
ORDER BY bucket, {_KEY}, ordinal_position, column_name
"""


@dataclass(frozen=True, slots=True)
class BucketRows:
    """Rows of one entity for the touched buckets, sorted by bucket, with a bucket column."""

    rows: pa.Table

    def split(self) -> list[tuple[int, pa.Table]]:
        """(bucket, rows without the bucket column) per touched bucket that has rows."""
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


def new_tables(connection: duckdb.DuckDBPyConnection) -> BucketRows:
    """Table rows of touched buckets (views `planned`, `touched` must be registered)."""
    rows = connection.sql(_NEW_TABLES).to_arrow_table()
    return BucketRows(_cast_with_bucket(rows, TABLE_SCHEMA))


def new_columns(connection: duckdb.DuckDBPyConnection) -> BucketRows:
    """Column rows of touched buckets (views `planned`, `touched`, `fresh`, `previous_columns`)."""
    rows = connection.sql(_NEW_COLUMNS).to_arrow_table()
    return BucketRows(_cast_with_bucket(rows, COLUMN_SCHEMA))


def _cast_with_bucket(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    target = schema.append(pa.field("bucket", pa.int32(), nullable=False))
    return pa.Table.from_arrays(
        [rows.column(field.name).cast(field.type) for field in target], schema=target
    )
