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

from metatide.extractor.core.records import TABLE_KEY_COLUMNS, TABLE_SCHEMA, row_numbers
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

_COMPARE = f"""
CREATE OR REPLACE TEMP TABLE compared_tables AS
SELECT c.row_index, p.bucket AS previous_bucket,
  CASE WHEN c.row_index IS NULL THEN NULL ELSE {_REASON} END AS reason,
  p.database_name AS old_database, p.schema_name AS old_schema, p.table_name AS old_table,
  coalesce(c.object_id, p.object_id) AS object_id,
  coalesce(c.table_type, p.table_type) AS table_type
FROM current_tables AS c
FULL OUTER JOIN previous_tables AS p USING (database_name, schema_name, table_name)
"""
"""The one join of a plan: each listed table's reason, each previous table's row (keys,
bucket), and object ids for the rename count. `row_index` is the table's row in the listing
(NULL: only in the previous state)."""

_CLASSIFIED = """
SELECT previous_bucket,
  CASE reason WHEN 'new_after_marker' THEN 'CREATED'
              WHEN 'new_before_marker' THEN 'BACKFILL'
              WHEN 'unchanged' THEN 'NO CHANGE'
              ELSE 'UPDATED' END AS state,
  reason
FROM compared_tables WHERE row_index IS NOT NULL ORDER BY row_index
"""

_DELETED = """
SELECT old_database AS database_name, old_schema AS schema_name, old_table AS table_name,
  previous_bucket AS bucket
FROM compared_tables WHERE row_index IS NULL
ORDER BY ALL
"""

_RENAMED = """
SELECT count(*) FROM (
    SELECT object_id, table_type FROM compared_tables
    WHERE row_index IS NULL AND object_id IS NOT NULL
) AS gone
SEMI JOIN (
    SELECT object_id, table_type FROM compared_tables
    WHERE reason IN ('new_after_marker', 'new_before_marker')
) AS came USING (object_id, table_type)
"""
"""Tables gone under their old name whose object id (and type) reappears under a new one.

The mass-delete guard does not count them as deletions: renaming the only table of a schema
is not a mass delete. (The change records still check the columns before they call it a
rename; this count is only the guard's.)"""

_COMPARED_COLUMNS = ("table_type", "created_at", "ddl_time", "fingerprint", "object_id")


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
    """Classify the listing, find the deleted and the renamed tables, with one join.

    `previous` is a relation of `connection` with TABLE_SCHEMA's columns and `bucket` (plan
    passes the state's rows where DuckDB decoded them, `previous_relation` makes one from
    Arrow). Only the keys and the compared fields of the listing go through DuckDB; its other
    fields (comments, view definitions) stay in Arrow.
    """
    current = current.cast(TABLE_SCHEMA)
    compared = current.select([*TABLE_KEY_COLUMNS, *_COMPARED_COLUMNS]).append_column(
        "row_index", row_numbers(current.num_rows)
    )
    connection.register("current_tables", compared)
    previous.create_view("previous_tables", replace=True)
    try:
        connection.execute(_COMPARE, {"marker": marker})
        reasons = connection.sql(_CLASSIFIED).to_arrow_table()
        gone = connection.sql(_DELETED).to_arrow_table()
        ((renamed,),) = connection.execute(_RENAMED).fetchall()
    finally:
        connection.unregister("current_tables")
        connection.execute("DROP VIEW IF EXISTS previous_tables")
        connection.execute("DROP TABLE IF EXISTS compared_tables")
    return Classification(
        _in_key_order(_with_reasons(current, reasons)),
        _deleted_with_reason(gone, scope),
        int(renamed),
    )


def _with_reasons(current: pa.Table, reasons: pa.Table) -> pa.Table:
    """The listing with `previous_bucket`, `state` and `reason` (rows already aligned)."""
    for name in ("previous_bucket", "state", "reason"):
        current = current.append_column(reasons.schema.field(name), reasons.column(name))
    return current


def _in_key_order(tables: pa.Table) -> pa.Table:
    return tables.take(
        pc.sort_indices(tables, sort_keys=[(key, "ascending") for key in TABLE_KEY_COLUMNS])
    )


def _deleted_with_reason(gone: pa.Table, scope: Scope) -> pa.Table:
    """'dropped' for a deleted key the scope still covers, else 'out_of_scope'."""
    rows = pa.array(range(gone.num_rows), pa.int64())
    in_scope = scope.filter_tables(gone.append_column("row", rows)).column("row")
    reason = pc.if_else(pc.is_in(rows, value_set=in_scope), "dropped", "out_of_scope")
    rows = gone.select(list(TABLE_KEY_COLUMNS)).append_column("reason", reason)
    return rows.append_column("bucket", gone.column("bucket")).cast(DELETED_TABLE_SCHEMA)
