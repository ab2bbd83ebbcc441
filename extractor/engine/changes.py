"""Change records: what changed between two states, attribute by attribute, renames kept as renames.

One row per changed entity (database, schema, table, column) with `change` (created, updated,
deleted, renamed), the entity's key (and, for a rename, its previous key), `changed_fields`,
and `before` / `after` as JSON objects of the changed attributes (every attribute for a
created or deleted entity). Finalize writes them for each run next to the seed's diff, from
the rows of the buckets the run touched; `metatide diff --from --to` computes them between
any two kept states from the states themselves. Both go through `change_records`, so the two
always agree.

Renames need identity that survives a rename: a table's `object_id` (PostgreSQL: the
relation's oid; MySQL/MariaDB: InnoDB's table id; SQLite: the schema row and root page) and,
where the source keeps it, a column's `ordinal_position` (PostgreSQL's attnum never moves or
comes back within a table). A deleted and a created table with the same object id and kind
are one renamed table only if their columns agree on at least half of them (position or
name, and type): an id that came back for an unrelated table (an oid after wraparound, a
SQLite root page after drop and create) stays a drop plus a create. A renamed table's
columns move with it and get a record only if they changed themselves.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

import duckdb
import pyarrow as pa

from metatide.extractor.core.ids import ENTITIES, Entity
from metatide.extractor.core.records import KEY_COLUMNS, SCHEMAS, TABLE_KEY_COLUMNS

CHANGE_FORMAT_VERSION: Final = 1
"""Version of the change-record columns below; bumped on any change to them."""

IGNORED_FIELDS: Final = frozenset({"fingerprint"})
"""Bookkeeping, not an attribute: it changes whenever anything else does."""

_KEY_NAMES: Final = ("database_name", "schema_name", "table_name", "column_name")
_TABLE_KEYS: Final = ", ".join(TABLE_KEY_COLUMNS)

CHANGE_SCHEMA: Final = pa.schema(
    [
        pa.field("format_version", pa.int16(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("previous_run_id", pa.string()),
        pa.field("marker", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("entity", pa.string(), nullable=False),
        pa.field("change", pa.string(), nullable=False),
        *(pa.field(name, pa.string()) for name in _KEY_NAMES),
        *(pa.field(f"previous_{name}", pa.string()) for name in _KEY_NAMES),
        pa.field("changed_fields", pa.list_(pa.string()), nullable=False),
        pa.field("before", pa.string()),
        pa.field("after", pa.string()),
        pa.field("reason", pa.string()),
    ]
)

DELETED_REASON_SCHEMA: Final = pa.schema(
    [
        *(pa.field(name, pa.string(), nullable=False) for name in TABLE_KEY_COLUMNS),
        pa.field("reason", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True, slots=True)
class ChangeHeader:
    """The states compared: the newer one's run and marker, the older one's run."""

    run_id: str
    previous_run_id: str | None
    marker: datetime


@dataclass(frozen=True, slots=True)
class StatePair:
    """Rows of an older and a newer state, each limited to the same part of the catalog: Arrow
    tables, or names of relations already in the DuckDB connection."""

    old: Mapping[Entity, pa.Table | str]
    new: Mapping[Entity, pa.Table | str]


@dataclass(frozen=True, slots=True)
class Reasons:
    """Why tables changed: classification reasons of current tables, deletion reasons."""

    tables: pa.Table | None = None
    """database_name, schema_name, table_name, reason (plan's classification reason)."""
    deleted: Mapping[Entity, pa.Table] | None = None
    """Per entity: its key columns and reason (dropped / out_of_scope)."""


def stable_column_ids(source_kind: str) -> bool:
    """Whether a source's column positions identify columns across renames: PostgreSQL's attnum
    never moves or comes back within a table; SQLite's and MySQL's positions shift when a
    column is dropped."""
    return source_kind == "postgresql"


def change_records(
    connection: duckdb.DuckDBPyConnection,
    pair: StatePair,
    header: ChangeHeader,
    *,
    reasons: Reasons = Reasons(),
    stable_column_ids: bool = False,
) -> pa.Table:
    """The change records between two states (CHANGE_SCHEMA), ordered by entity and key."""
    query = _query(connection, pair, header, reasons, stable_column_ids, ordered=True)
    rows = connection.sql(query).to_arrow_table()
    return pa.Table.from_arrays(
        [rows.column(f.name).cast(f.type) for f in CHANGE_SCHEMA], schema=CHANGE_SCHEMA
    )


def sorted_records(records: pa.Table) -> pa.Table:
    """Change records in a stable order (a run writes them unordered): entity, change, key."""
    return records.sort_by([(name, "ascending") for name in ("entity", "change", *_KEY_NAMES)])


def write_change_records(
    connection: duckdb.DuckDBPyConnection,
    pair: StatePair,
    header: ChangeHeader,
    parquet: Path,
    jsonl: Path,
    *,
    reasons: Reasons = Reasons(),
    stable_column_ids: bool = False,
) -> dict[str, dict[str, int]]:
    """Write the change records as Parquet and JSON Lines; returns the counts per entity/kind.

    DuckDB writes the files itself, streaming and unordered: a first run at a million tables
    has twenty million created columns, which never pass through Python nor sit in memory at
    once, and a sort of them (wide JSON payloads) would not fit DuckDB's memory limit. Readers
    order what they select. The JSON Lines and the counts are read back from the Parquet file.
    """
    query = _query(connection, pair, header, reasons, stable_column_ids, ordered=False)
    connection.execute(
        f"COPY ({query}) TO $path (FORMAT PARQUET, COMPRESSION ZSTD, ROW_GROUP_SIZE 20000)",
        {"path": str(parquet)},
    )
    written = "SELECT * FROM read_parquet($path)"
    connection.execute(
        "COPY (SELECT * REPLACE (strftime(marker, '%Y-%m-%dT%H:%M:%SZ') AS marker) "
        "FROM read_parquet($source)) TO $path (FORMAT JSON)",
        {"source": str(parquet), "path": str(jsonl)},
    )
    counts: dict[str, dict[str, int]] = {
        entity: dict.fromkeys(("created", "updated", "renamed", "deleted"), 0)
        for entity in ENTITIES
    }
    found = connection.execute(
        f"SELECT entity, change, count(*) FROM ({written}) GROUP BY ALL", {"path": str(parquet)}
    )
    for entity, change, count in found.fetchall():
        counts[entity][change] = int(count)
    return counts


def _query(
    connection: duckdb.DuckDBPyConnection,
    pair: StatePair,
    header: ChangeHeader,
    reasons: Reasons,
    stable_column_ids: bool,
    *,
    ordered: bool,
) -> str:
    """Set up the connection and return the query of every change record (`ordered`: by
    entity, change and key)."""
    _register(connection, pair, reasons)
    connection.register(
        "ch_header",
        pa.table(
            {
                "format_version": pa.array([CHANGE_FORMAT_VERSION], pa.int16()),
                "run_id": pa.array([header.run_id], pa.string()),
                "previous_run_id": pa.array([header.previous_run_id], pa.string()),
                "marker": pa.array([header.marker], pa.timestamp("us", tz="UTC")),
            }
        ),
    )
    statements = _statements(stable_column_ids)
    for setup in (sql for sql in statements if sql.lstrip().startswith("CREATE")):
        connection.execute(setup)
    selects = [sql for sql in statements if not sql.lstrip().startswith("CREATE")]
    # One query: each part keeps its place in the output order, then the key orders it.
    union = " UNION ALL BY NAME ".join(
        f"(SELECT {rank} AS _part, * FROM ({sql}))" for rank, sql in enumerate(selects)
    )
    keys = ", ".join(f"r.{name}" for name in _KEY_NAMES)
    outputs = ", ".join(
        f"h.{name}" if name in _HEADER else f"r.{name}" for name in CHANGE_SCHEMA.names
    )
    order = f" ORDER BY r._part, {keys}" if ordered else ""
    return f"SELECT {outputs} FROM ({union}) AS r CROSS JOIN ch_header AS h{order}"


_HEADER: Final = frozenset({"format_version", "run_id", "previous_run_id", "marker"})


def _register(connection: duckdb.DuckDBPyConnection, pair: StatePair, reasons: Reasons) -> None:
    for entity in ENTITIES:
        for side, rows in (("old", pair.old[entity]), ("new", pair.new[entity])):
            if isinstance(rows, str):
                fields = ", ".join(SCHEMAS[entity].names)
                connection.execute(
                    f"CREATE OR REPLACE TEMP VIEW ch_{side}_{entity}_all AS "
                    f"SELECT {fields} FROM {rows}"
                )
            else:
                connection.register(f"ch_{side}_{entity}_all", rows)
    for side in ("old", "new"):
        for entity in ("database", "schema", "table"):
            connection.execute(
                f"CREATE OR REPLACE TEMP VIEW ch_{side}_{entity} AS "
                f"SELECT * FROM ch_{side}_{entity}_all"
            )
    # A table row that is the same in both states (fingerprint and DDL time included) has the
    # same columns in both: only the columns of the other tables are compared. That keeps a
    # diff of two large states proportional to what changed.
    connection.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE ch_touched AS
        SELECT DISTINCT {_TABLE_KEYS} FROM (
            (SELECT * FROM ch_old_table_all EXCEPT SELECT * FROM ch_new_table_all)
            UNION ALL
            (SELECT * FROM ch_new_table_all EXCEPT SELECT * FROM ch_old_table_all)
        )
        """
    )
    for side in ("old", "new"):
        connection.execute(
            f"CREATE OR REPLACE TEMP VIEW ch_{side}_column AS SELECT c.* FROM "
            f"ch_{side}_column_all AS c SEMI JOIN ch_touched USING ({_TABLE_KEYS})"
        )
    for entity in ENTITIES:
        deleted = (reasons.deleted or {}).get(entity)
        if deleted is None:
            key_fields = [SCHEMAS[entity].field(name) for name in KEY_COLUMNS[entity]]
            deleted = pa.schema([*key_fields, pa.field("reason", pa.string())]).empty_table()
        connection.register(f"ch_deleted_{entity}", deleted)
    table_reasons = reasons.tables
    if table_reasons is None:
        table_reasons = DELETED_REASON_SCHEMA.empty_table()
    connection.register("ch_table_reasons", table_reasons)


def _values(entity: Entity) -> list[str]:
    keys = KEY_COLUMNS[entity]
    return [n for n in SCHEMAS[entity].names if n not in keys and n not in IGNORED_FIELDS]


def _differs(name: str, old: str, new: str) -> str:
    """An attribute changed; an object id first recorded (old state without one) did not."""
    if name == "object_id":
        return f"({old}.{name} IS NOT NULL AND {old}.{name} IS DISTINCT FROM {new}.{name})"
    return f"({old}.{name} IS DISTINCT FROM {new}.{name})"


def _changed_fields(entity: Entity, old: str, new: str) -> str:
    names = _values(entity)
    flags = ", ".join(_differs(name, old, new) for name in names)
    quoted = ", ".join(f"'{name}'" for name in names)
    return f"list_filter([{quoted}], lambda name, i: [{flags}][i])"


def _partial_json(entity: Entity, side: str, changed: str) -> str:
    """The attributes named in `changed`, as a JSON object of `side`'s values."""
    entries = ", ".join(
        f"struct_pack(k := '{name}', v := to_json({side}.{name}))" for name in _values(entity)
    )
    kept = f"list_filter([{entries}], lambda e: list_contains({changed}, e.k))"
    return f"to_json(map_from_entries({kept}))"


def _full_json(entity: Entity, side: str) -> str:
    fields = ", ".join(f"{name} := {side}.{name}" for name in _values(entity))
    return f"to_json(struct_pack({fields}))"


def _key_select(entity: Entity, side: str, prefix: str = "") -> str:
    """The four key columns (NULL below the entity's level) from `side`."""
    keys = KEY_COLUMNS[entity]
    return ", ".join(
        f"{side}.{name} AS {prefix}{name}" if name in keys else f"NULL::VARCHAR AS {prefix}{name}"
        for name in _KEY_NAMES
    )


def _no_previous() -> str:
    return ", ".join(f"NULL::VARCHAR AS previous_{name}" for name in _KEY_NAMES)


def _join(keys: tuple[str, ...], left: str, right: str) -> str:
    return " AND ".join(f"{left}.{k} = {right}.{k}" for k in keys)


def _simple_statements(entity: Entity) -> list[str]:
    """Created, updated and deleted rows of an entity without renames (databases, schemas)."""
    keys = KEY_COLUMNS[entity]
    changed = _changed_fields(entity, "o", "n")
    return [
        f"""SELECT '{entity}' AS entity, 'created' AS change, {_key_select(entity, "n")},
                   {_no_previous()}, []::VARCHAR[] AS changed_fields, NULL AS before,
                   {_full_json(entity, "n")} AS after, NULL::VARCHAR AS reason
            FROM ch_new_{entity} AS n ANTI JOIN ch_old_{entity} AS o ON {_join(keys, "n", "o")}""",
        f"""SELECT '{entity}' AS entity, 'updated' AS change, {_key_select(entity, "n")},
                   {_no_previous()}, {changed} AS changed_fields,
                   {_partial_json(entity, "o", changed)} AS before,
                   {_partial_json(entity, "n", changed)} AS after, NULL::VARCHAR AS reason
            FROM ch_new_{entity} AS n JOIN ch_old_{entity} AS o ON {_join(keys, "n", "o")}
            WHERE len({changed}) > 0""",
        f"""SELECT '{entity}' AS entity, 'deleted' AS change, {_key_select(entity, "o")},
                   {_no_previous()}, []::VARCHAR[] AS changed_fields,
                   {_full_json(entity, "o")} AS before, NULL AS after,
                   coalesce(d.reason, 'dropped') AS reason
            FROM ch_old_{entity} AS o ANTI JOIN ch_new_{entity} AS n ON {_join(keys, "o", "n")}
            LEFT JOIN ch_deleted_{entity} AS d ON {_join(keys, "o", "d")}""",
    ]


def _renames_view(stable_column_ids: bool) -> str:
    """Pairs (previous key, new key) of tables renamed between the states."""
    column_match = (
        "oc.ordinal_position = nc.ordinal_position"
        if stable_column_ids
        else "oc.column_name = nc.column_name"
    )
    return f"""
    CREATE OR REPLACE TEMP TABLE ch_renamed AS
    WITH gone AS (
        SELECT o.* FROM ch_old_table AS o ANTI JOIN ch_new_table AS n USING ({_TABLE_KEYS})
    ), came AS (
        SELECT n.* FROM ch_new_table AS n ANTI JOIN ch_old_table AS o USING ({_TABLE_KEYS})
    ), candidates AS (
        SELECT g.database_name AS o_database, g.schema_name AS o_schema, g.table_name AS o_table,
               c.database_name AS n_database, c.schema_name AS n_schema, c.table_name AS n_table
        FROM gone AS g JOIN came AS c
          ON g.object_id = c.object_id AND g.table_type = c.table_type
    ), sized AS (
        SELECT k.*,
            (SELECT count(*) FROM ch_old_column AS oc WHERE oc.database_name = k.o_database
               AND oc.schema_name = k.o_schema AND oc.table_name = k.o_table) AS old_columns,
            (SELECT count(*) FROM ch_new_column AS nc WHERE nc.database_name = k.n_database
               AND nc.schema_name = k.n_schema AND nc.table_name = k.n_table) AS new_columns,
            (SELECT count(*) FROM ch_old_column AS oc JOIN ch_new_column AS nc
               ON {column_match} AND oc.data_type = nc.data_type
             WHERE oc.database_name = k.o_database AND oc.schema_name = k.o_schema
               AND oc.table_name = k.o_table AND nc.database_name = k.n_database
               AND nc.schema_name = k.n_schema AND nc.table_name = k.n_table) AS matching
        FROM candidates AS k
    )
    SELECT o_database, o_schema, o_table, n_database, n_schema, n_table FROM sized
    WHERE 2 * matching >= greatest(old_columns, new_columns)
    """


def _table_statements() -> list[str]:
    keys = TABLE_KEY_COLUMNS
    changed = _changed_fields("table", "o", "n")
    reason = "r.reason"
    return [
        f"""SELECT 'table' AS entity, 'created' AS change, {_key_select("table", "n")},
                   {_no_previous()}, []::VARCHAR[] AS changed_fields, NULL AS before,
                   {_full_json("table", "n")} AS after, {reason} AS reason
            FROM ch_new_table AS n ANTI JOIN ch_old_table AS o ON {_join(keys, "n", "o")}
            ANTI JOIN ch_renamed AS x ON n.database_name = x.n_database
                 AND n.schema_name = x.n_schema AND n.table_name = x.n_table
            LEFT JOIN ch_table_reasons AS r ON {_join(keys, "n", "r")}""",
        f"""SELECT 'table' AS entity, 'updated' AS change, {_key_select("table", "n")},
                   {_no_previous()}, {changed} AS changed_fields,
                   {_partial_json("table", "o", changed)} AS before,
                   {_partial_json("table", "n", changed)} AS after, {reason} AS reason
            FROM ch_new_table AS n JOIN ch_old_table AS o ON {_join(keys, "n", "o")}
            LEFT JOIN ch_table_reasons AS r ON {_join(keys, "n", "r")}
            WHERE len({changed}) > 0""",
        f"""SELECT 'table' AS entity, 'renamed' AS change, {_key_select("table", "n")},
                   x.o_database AS previous_database_name, x.o_schema AS previous_schema_name,
                   x.o_table AS previous_table_name, NULL::VARCHAR AS previous_column_name,
                   {changed} AS changed_fields,
                   {_partial_json("table", "o", changed)} AS before,
                   {_partial_json("table", "n", changed)} AS after, {reason} AS reason
            FROM ch_renamed AS x
            JOIN ch_new_table AS n ON n.database_name = x.n_database
                 AND n.schema_name = x.n_schema AND n.table_name = x.n_table
            JOIN ch_old_table AS o ON o.database_name = x.o_database
                 AND o.schema_name = x.o_schema AND o.table_name = x.o_table
            LEFT JOIN ch_table_reasons AS r ON {_join(keys, "n", "r")}""",
        f"""SELECT 'table' AS entity, 'deleted' AS change, {_key_select("table", "o")},
                   {_no_previous()}, []::VARCHAR[] AS changed_fields,
                   {_full_json("table", "o")} AS before, NULL AS after,
                   coalesce(d.reason, 'dropped') AS reason
            FROM ch_old_table AS o ANTI JOIN ch_new_table AS n ON {_join(keys, "o", "n")}
            ANTI JOIN ch_renamed AS x ON o.database_name = x.o_database
                 AND o.schema_name = x.o_schema AND o.table_name = x.o_table
            LEFT JOIN ch_deleted_table AS d ON {_join(keys, "o", "d")}""",
    ]


_MOVED_COLUMNS = """
CREATE OR REPLACE TEMP VIEW ch_old_column_moved AS
SELECT oc.* REPLACE (
           coalesce(x.n_database, oc.database_name) AS database_name,
           coalesce(x.n_schema, oc.schema_name) AS schema_name,
           coalesce(x.n_table, oc.table_name) AS table_name),
       oc.database_name AS was_database, oc.schema_name AS was_schema,
       oc.table_name AS was_table
FROM ch_old_column AS oc
LEFT JOIN ch_renamed AS x ON oc.database_name = x.o_database AND oc.schema_name = x.o_schema
     AND oc.table_name = x.o_table
"""


def _column_statements(stable_column_ids: bool) -> list[str]:
    keys = KEY_COLUMNS["column"]
    changed = _changed_fields("column", "o", "n")
    table_reason = (
        f"(SELECT r.reason FROM ch_table_reasons AS r WHERE {_join(TABLE_KEY_COLUMNS, 'n', 'r')})"
    )
    was = (
        "CASE WHEN o.was_table IS DISTINCT FROM o.table_name OR o.was_schema IS DISTINCT FROM "
        "o.schema_name OR o.was_database IS DISTINCT FROM o.database_name THEN {} END"
    )
    previous = ", ".join(
        [
            was.format("o.was_database") + " AS previous_database_name",
            was.format("o.was_schema") + " AS previous_schema_name",
            was.format("o.was_table") + " AS previous_table_name",
            was.format("o.column_name") + " AS previous_column_name",
        ]
    )
    using = ", ".join(keys)
    renamed_pairs = (
        f"""
        SELECT o.*, n.column_name AS new_column FROM
            (SELECT * FROM ch_old_column_moved ANTI JOIN ch_new_column USING ({using})) AS o
        JOIN (SELECT * FROM ch_new_column ANTI JOIN ch_old_column_moved USING ({using})) AS n
          ON {_join(TABLE_KEY_COLUMNS, "o", "n")} AND o.ordinal_position = n.ordinal_position
        """
        if stable_column_ids
        else "SELECT *, NULL::VARCHAR AS new_column FROM ch_old_column_moved WHERE false"
    )
    return [
        f"CREATE OR REPLACE TEMP VIEW ch_renamed_columns AS {renamed_pairs}",
        f"""SELECT 'column' AS entity, 'created' AS change, {_key_select("column", "n")},
                   {_no_previous()}, []::VARCHAR[] AS changed_fields, NULL AS before,
                   {_full_json("column", "n")} AS after, {table_reason} AS reason
            FROM ch_new_column AS n ANTI JOIN ch_old_column_moved AS o ON {_join(keys, "n", "o")}
            ANTI JOIN ch_renamed_columns AS x ON {_join(TABLE_KEY_COLUMNS, "n", "x")}
                 AND n.column_name = x.new_column""",
        f"""SELECT 'column' AS entity, 'updated' AS change, {_key_select("column", "n")},
                   {previous}, {changed} AS changed_fields,
                   {_partial_json("column", "o", changed)} AS before,
                   {_partial_json("column", "n", changed)} AS after, {table_reason} AS reason
            FROM ch_new_column AS n JOIN ch_old_column_moved AS o ON {_join(keys, "n", "o")}
            WHERE len({changed}) > 0""",
        f"""SELECT 'column' AS entity, 'renamed' AS change, {_key_select("column", "n")},
                   o.was_database AS previous_database_name, o.was_schema AS previous_schema_name,
                   o.was_table AS previous_table_name, o.column_name AS previous_column_name,
                   {changed} AS changed_fields,
                   {_partial_json("column", "o", changed)} AS before,
                   {_partial_json("column", "n", changed)} AS after, {table_reason} AS reason
            FROM ch_renamed_columns AS o JOIN ch_new_column AS n
              ON {_join(TABLE_KEY_COLUMNS, "o", "n")} AND n.column_name = o.new_column""",
        f"""SELECT 'column' AS entity, 'deleted' AS change,
                   o.was_database AS database_name, o.was_schema AS schema_name,
                   o.was_table AS table_name, o.column_name AS column_name,
                   {_no_previous()}, []::VARCHAR[] AS changed_fields,
                   {_full_json("column", "o")} AS before, NULL AS after,
                   coalesce(d.reason, 'dropped') AS reason
            FROM ch_old_column_moved AS o ANTI JOIN ch_new_column AS n ON {_join(keys, "o", "n")}
            ANTI JOIN ch_renamed_columns AS x ON {_join(TABLE_KEY_COLUMNS, "o", "x")}
                 AND o.column_name = x.column_name
            LEFT JOIN ch_deleted_table AS d ON d.database_name = o.was_database
                 AND d.schema_name = o.was_schema AND d.table_name = o.was_table""",
    ]


def _statements(stable_column_ids: bool) -> list[str]:
    """The statements, in output order; CREATE statements set up tables the others read."""
    return [
        *_simple_statements("database"),
        *_simple_statements("schema"),
        _renames_view(stable_column_ids),
        *_table_statements(),
        _MOVED_COLUMNS,
        *_column_statements(stable_column_ids),
    ]


def change_lines(records: pa.Table) -> bytes:
    """Change records as JSON Lines: `before` and `after` as objects, times in ISO 8601."""
    lines = []
    for row in records.to_pylist():
        row["marker"] = row["marker"].isoformat().replace("+00:00", "Z")
        for side in ("before", "after"):
            row[side] = json.loads(row[side]) if row[side] is not None else None
        lines.append(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")
    return "".join(lines).encode()
