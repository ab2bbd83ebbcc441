"""Classification of tables against the previous state (engine-side, never in source SQL).

not in previous state  -> CREATED  if created (or last changed) at or after the marker, or
                                   the source knows no time for it      new_after_marker
                          BACKFILL if it existed before the marker (filter widened, a run
                                   missed it)                           new_before_marker
in previous state      -> UPDATED  if its type differs                  type_changed
                                   its DDL time is at or after the marker
                                                                        ddl_time_after_marker
                                   its fingerprint differs              fingerprint_changed
                                   its DDL time differs from the state's (a clock that went
                                   back further than preponeHours, a restored server)
                                                                        ddl_time_changed
                                   only its object id differs (dropped and created again
                                   under the same name, or rebuilt: records.TABLE_SCHEMA)
                                                                        object_replaced
                          NO CHANGE otherwise                           unchanged
only in previous state -> deleted, reason 'out_of_scope' when the scope excludes it now,
                          else 'dropped'

Times compare with "at or after": the marker is stored truncated to the second and some
sources keep DDL times in whole seconds, so a change in the marker's own second may have
happened after the marker was read and must count. A source that keeps only the time of
the last DDL (MySQL's CREATE_TIME) leaves `created_at` empty; its `ddl_time` bounds the
creation time from above, so a DDL time before the marker still proves BACKFILL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from metatide.extractor.core.records import TABLE_KEY_COLUMNS, TABLE_SCHEMA
from metatide.extractor.core.scope import Scope
from metatide.extractor.state.runfiles import DELETED_TABLE_SCHEMA

_REASON = """
CASE
  WHEN p.table_name IS NULL THEN
    CASE WHEN coalesce(c.created_at, c.ddl_time) IS NULL
           OR coalesce(c.created_at, c.ddl_time) >= $marker
         THEN 'new_after_marker' ELSE 'new_before_marker' END
  WHEN c.table_type IS DISTINCT FROM p.table_type THEN 'type_changed'
  WHEN c.ddl_time >= $marker THEN 'ddl_time_after_marker'
  WHEN c.fingerprint IS DISTINCT FROM p.fingerprint THEN 'fingerprint_changed'
  WHEN c.ddl_time IS DISTINCT FROM p.ddl_time THEN 'ddl_time_changed'
  WHEN p.object_id IS NOT NULL AND c.object_id IS DISTINCT FROM p.object_id
    THEN 'object_replaced'
  ELSE 'unchanged'
END
"""

_CLASSIFY = f"""
WITH reasoned AS (
  SELECT c.*, {_REASON} AS reason, p.bucket AS previous_bucket
  FROM current_tables AS c
  LEFT JOIN previous_tables AS p USING (database_name, schema_name, table_name)
)
SELECT * EXCLUDE (reason),
  CASE reason WHEN 'new_after_marker' THEN 'CREATED'
              WHEN 'new_before_marker' THEN 'BACKFILL'
              WHEN 'unchanged' THEN 'NO CHANGE'
              ELSE 'UPDATED' END AS state,
  reason
FROM reasoned
"""

_DELETED = """
SELECT database_name, schema_name, table_name, bucket FROM previous_tables
ANTI JOIN current_tables USING (database_name, schema_name, table_name)
ORDER BY ALL
"""


@dataclass(frozen=True, slots=True)
class Classification:
    """What plan learns from comparing the listing with the previous state."""

    tables: pa.Table
    """The listing with `state`, `reason` and `previous_bucket` (the bucket the state keeps
    the table in, if any), in key order."""
    deleted: pa.Table
    """Keys in the previous state but not in the listing, with their reason and bucket
    (DELETED_TABLE_SCHEMA), in key order."""
    renamed: int
    """Deleted tables whose object id reappears under a new name (see `_RENAMED`)."""


def previous_relation(
    connection: duckdb.DuckDBPyConnection, previous: pa.Table
) -> duckdb.DuckDBPyRelation:
    """Previous rows held in Arrow as `classify` takes them: TABLE_SCHEMA plus their bucket
    (null where unknown)."""
    rows = previous.select(TABLE_SCHEMA.names).cast(TABLE_SCHEMA)
    buckets = (
        previous.column("bucket")
        if "bucket" in previous.column_names
        else pa.nulls(previous.num_rows, pa.int32())
    )
    return connection.from_arrow(
        rows.append_column(pa.field("bucket", pa.int32()), buckets.cast(pa.int32()))
    )


def classify(
    connection: duckdb.DuckDBPyConnection,
    current: pa.Table,
    previous: duckdb.DuckDBPyRelation,
    marker: datetime,
    scope: Scope,
) -> Classification:
    """Classify the listing, find the deleted and the renamed tables.

    `previous` is a relation of `connection` with TABLE_SCHEMA's columns and `bucket` (plan
    passes the state's rows where DuckDB decoded them, `previous_relation` makes one from
    Arrow); one registration of both sides serves the three queries.
    """
    connection.register("current_tables", current.cast(TABLE_SCHEMA))
    previous.create_view("previous_tables", replace=True)
    try:
        tables = connection.sql(
            _CLASSIFY + " ORDER BY database_name, schema_name, table_name",
            params={"marker": marker},
        ).to_arrow_table()
        gone = connection.sql(_DELETED).to_arrow_table()
        ((renamed,),) = connection.execute(_RENAMED).fetchall()
    finally:
        connection.unregister("current_tables")
        connection.execute("DROP VIEW IF EXISTS previous_tables")
    return Classification(tables, _deleted_with_reason(gone, scope), int(renamed))


def _deleted_with_reason(gone: pa.Table, scope: Scope) -> pa.Table:
    """'dropped' for a deleted key the scope still covers, else 'out_of_scope'."""
    rows = pa.array(range(gone.num_rows), pa.int64())
    in_scope = scope.filter_tables(gone.append_column("row", rows)).column("row")
    reason = pc.if_else(pc.is_in(rows, value_set=in_scope), "dropped", "out_of_scope")
    rows = gone.select(list(TABLE_KEY_COLUMNS)).append_column("reason", reason)
    return rows.append_column("bucket", gone.column("bucket")).cast(DELETED_TABLE_SCHEMA)


_RENAMED = """
SELECT count(*) FROM (
    SELECT p.object_id, p.table_type FROM previous_tables AS p
    ANTI JOIN current_tables AS c USING (database_name, schema_name, table_name)
    WHERE p.object_id IS NOT NULL
) AS gone
SEMI JOIN (
    SELECT c.object_id, c.table_type FROM current_tables AS c
    ANTI JOIN previous_tables AS p USING (database_name, schema_name, table_name)
) AS came USING (object_id, table_type)
"""
