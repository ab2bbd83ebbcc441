"""Classification of tables against the previous state (engine-side, never in source SQL).

not in previous state  -> CREATED  if created after the marker, or creation time unknown
                          BACKFILL if it existed before (filter widened, a run missed it)
in previous state      -> UPDATED  if DDL time after the marker, fingerprint or type differ
                          NO CHANGE otherwise
only in previous state -> deleted, reason 'out_of_scope' when the scope excludes it now,
                          else 'dropped'
"""

from __future__ import annotations

from datetime import datetime

import duckdb
import pyarrow as pa

from metatide.extractor.records import TABLE_KEY_COLUMNS, TABLE_SCHEMA
from metatide.extractor.runfiles import DELETED_TABLE_SCHEMA
from metatide.extractor.scope import Scope

_CLASSIFY = """
SELECT current_tables.*,
  CASE
    WHEN previous_tables.table_name IS NULL THEN
      CASE WHEN current_tables.created_at IS NULL OR current_tables.created_at > $marker
           THEN 'CREATED' ELSE 'BACKFILL' END
    WHEN current_tables.ddl_time > $marker
      OR current_tables.fingerprint IS DISTINCT FROM previous_tables.fingerprint
      OR current_tables.table_type IS DISTINCT FROM previous_tables.table_type
      THEN 'UPDATED'
    ELSE 'NO CHANGE'
  END AS state
FROM current_tables
LEFT JOIN previous_tables USING (database_name, schema_name, table_name)
"""

_DELETED = """
SELECT database_name, schema_name, table_name FROM previous_tables
ANTI JOIN current_tables USING (database_name, schema_name, table_name)
ORDER BY ALL
"""


def classify_tables(
    connection: duckdb.DuckDBPyConnection,
    current: pa.Table,
    previous: pa.Table,
    marker: datetime,
) -> pa.Table:
    """The current listing with a `state` column, in the listing's key order."""
    connection.register("current_tables", current.cast(TABLE_SCHEMA))
    connection.register("previous_tables", previous.cast(TABLE_SCHEMA))
    try:
        result = connection.sql(
            _CLASSIFY + " ORDER BY database_name, schema_name, table_name",
            params={"marker": marker},
        ).to_arrow_table()
    finally:
        connection.unregister("current_tables")
        connection.unregister("previous_tables")
    return result


def deleted_tables(
    connection: duckdb.DuckDBPyConnection, current: pa.Table, previous: pa.Table, scope: Scope
) -> pa.Table:
    """Keys in the previous state but not in the listing, each with its reason."""
    connection.register("current_tables", current.select(list(TABLE_KEY_COLUMNS)))
    connection.register("previous_tables", previous.select(list(TABLE_KEY_COLUMNS)))
    try:
        gone = connection.execute(_DELETED).fetchall()
    finally:
        connection.unregister("current_tables")
        connection.unregister("previous_tables")
    rows = [
        {
            "database_name": database,
            "schema_name": schema,
            "table_name": table,
            "reason": "dropped" if scope.table(database, schema, table) else "out_of_scope",
            "bucket": None,
        }
        for database, schema, table in gone
    ]
    return pa.Table.from_pylist(rows, schema=DELETED_TABLE_SCHEMA)
