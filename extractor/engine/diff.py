"""The incremental diff: exactly the assets that changed between two committed states.

For each entity the diff holds created and updated rows (with a `change` column) and deleted
keys (with a `reason`). It is computed by comparing the previous and the new rows of the
touched buckets only (untouched buckets are identical by construction), and databases and
schemas in full (they are small). Unchanged assets never appear.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pyarrow as pa

from metatide.extractor.core.ids import Entity
from metatide.extractor.core.records import KEY_COLUMNS, SCHEMAS
from metatide.extractor.core.scope import Scope


@dataclass(frozen=True, slots=True)
class EntityDiff:
    """Changed rows (with `change`) and deleted keys (with `reason`) of one entity."""

    changed: pa.Table
    deleted: pa.Table

    def count(self, change: str) -> int:
        return sum(1 for value in self.changed.column("change").to_pylist() if value == change)


def _changed_sql(entity: Entity, new: str, previous: str) -> str:
    keys = KEY_COLUMNS[entity]
    values = [name for name in SCHEMAS[entity].names if name not in keys]
    differs = " OR ".join(f"n.{name} IS DISTINCT FROM p.{name}" for name in values) or "FALSE"
    first_key = keys[0]
    return f"""
        SELECT n.*, CASE WHEN p.{first_key} IS NULL THEN 'created' ELSE 'updated' END AS change
        FROM {new} AS n LEFT JOIN {previous} AS p USING ({", ".join(keys)})
        WHERE p.{first_key} IS NULL OR {differs}
        ORDER BY {", ".join(keys)}
    """


def _deleted_sql(entity: Entity, new: str, previous: str) -> str:
    keys = ", ".join(KEY_COLUMNS[entity])
    return f"SELECT {keys} FROM {previous} ANTI JOIN {new} USING ({keys}) ORDER BY {keys}"


def entity_diff(
    connection: duckdb.DuckDBPyConnection,
    entity: Entity,
    new: str,
    previous: str,
    reason_of: dict[tuple[str, ...], str],
    default_reason: str,
) -> EntityDiff:
    """Diff two registered relations of one entity; `reason_of` maps deleted keys to reasons."""
    changed = connection.sql(_changed_sql(entity, new, previous)).to_arrow_table()
    changed = _cast(changed, SCHEMAS[entity].append(pa.field("change", pa.string())))
    deleted_keys = connection.execute(_deleted_sql(entity, new, previous)).fetchall()
    reasons = [reason_of.get(tuple(key), default_reason) for key in deleted_keys]
    key_schema = pa.schema([SCHEMAS[entity].field(name) for name in KEY_COLUMNS[entity]])
    deleted = pa.Table.from_arrays(
        [pa.array([key[i] for key in deleted_keys], pa.string()) for i in range(len(key_schema))]
        + [pa.array(reasons, pa.string())],
        schema=key_schema.append(pa.field("reason", pa.string(), nullable=False)),
    )
    return EntityDiff(changed=changed, deleted=deleted)


def column_reasons(
    table_reasons: dict[tuple[str, ...], str], deleted_columns: pa.Table
) -> pa.Table:
    """A deleted column inherits its table's reason when the table went; else 'dropped'."""
    keys = zip(
        deleted_columns.column("database_name").to_pylist(),
        deleted_columns.column("schema_name").to_pylist(),
        deleted_columns.column("table_name").to_pylist(),
        strict=True,
    )
    reasons = [table_reasons.get(key, "dropped") for key in keys]
    index = deleted_columns.schema.get_field_index("reason")
    field = deleted_columns.schema.field("reason")
    return deleted_columns.set_column(index, field, pa.array(reasons, pa.string()))


def scope_reasons(
    entity: Entity, keys: list[tuple[str, ...]], scope: Scope
) -> dict[tuple[str, ...], str]:
    """Why databases or schemas left the state: the scope excludes them now, or they are gone."""
    reasons = {}
    for key in keys:
        inside = scope.database(key[0]) if entity == "database" else scope.schema(key[0], key[1])
        reasons[key] = "dropped" if inside else "out_of_scope"
    return reasons


def _cast(table: pa.Table, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_arrays([table.column(f.name).cast(f.type) for f in schema], schema=schema)
