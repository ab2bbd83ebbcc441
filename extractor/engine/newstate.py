"""The new state's rows and the run's diff, computed in one DuckDB connection (for finalize).

`NewState` owns the connection of a state build. Its constructor registers everything the
build reads: the run's inputs (`RunInputs`), which touched buckets are compacted and which get
a delta (`Buckets`), and the previous state's files of those buckets (`PreviousFiles`, read as
layered views by `state.layered`). Its steps take and return what flows between them:
`files()` the rows of every file to write, `compared()` the rows the diff compares,
`diffs(compared)` the diff, `change_records(compared, diffs)` the change records. Every SQL
text that names a view registered here is in this module.

Only *touched* buckets change: those holding a table that was created, updated, backfilled
or deleted. A touched bucket either gets a new delta (the previous delta's entries for
other tables plus this run's changes) or, when the delta would grow past the compaction
ratio, a new base holding the bucket's whole logical state. Untouched buckets keep their
files (copy-on-write).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import pyarrow as pa
import pyarrow.compute as pc

from metatide.extractor.core.ids import Entity
from metatide.extractor.core.records import (
    COLUMN_SCHEMA,
    KEY_COLUMNS,
    SCHEMAS,
    TABLE_SCHEMA,
    conform,
)
from metatide.extractor.core.scope import Scope
from metatide.extractor.core.spec import DuckDBSpec
from metatide.extractor.engine import duck
from metatide.extractor.engine.changes import (
    ChangeHeader,
    Reasons,
    StatePair,
    write_change_records,
)
from metatide.extractor.engine.diff import EntityDiff, column_reasons, entity_diff, scope_reasons
from metatide.extractor.state.layered import (
    DELTA_TABLE_SCHEMA,
    TABLE_KEYS,
    PreviousViews,
    load_previous,
)
from metatide.extractor.state.manifest import FileRef
from metatide.extractor.state.runfiles import PlanDocument

Diffs = dict[Entity, EntityDiff]

_TABLE_NAMES = ", ".join(TABLE_SCHEMA.names)
_COLUMN_NAMES = ", ".join(COLUMN_SCHEMA.names)
_COLUMN_ORDER = f"bucket, {TABLE_KEYS}, ordinal_position, column_name"

_DERIVED = {
    "changed": f"""
        SELECT {TABLE_KEYS}, bucket FROM planned WHERE needs_columns
        UNION ALL SELECT {TABLE_KEYS}, bucket FROM deleted""",
    "fresh_columns": f"""
        SELECT {", ".join(f"f.{name}" for name in COLUMN_SCHEMA.names)}, p.bucket
        FROM fresh AS f JOIN planned AS p USING ({TABLE_KEYS})
        WHERE f.row_kind = 'column' AND p.needs_columns""",
}
"""The tables this run changed (re-extracted or deleted), and its columns with their buckets:
shared by the new files and the diff."""

_BASE_TABLES = f"""
SELECT {_TABLE_NAMES}, bucket FROM planned WHERE bucket IN (SELECT bucket FROM compacting)
ORDER BY bucket, {TABLE_KEYS}
"""


def _base_columns(previous: PreviousViews) -> str:
    """A compacted bucket's columns: the fresh ones, and the previous ones of its other tables."""
    return f"""
SELECT * FROM fresh_columns WHERE bucket IN (SELECT bucket FROM compacting)
UNION ALL BY NAME
SELECT {", ".join("o." + name for name in COLUMN_SCHEMA.names)}, p.bucket
FROM {previous.columns} AS o JOIN planned AS p USING ({TABLE_KEYS})
WHERE NOT p.needs_columns AND p.bucket IN (SELECT bucket FROM compacting)
ORDER BY {_COLUMN_ORDER}
"""


def _delta_tables(previous: PreviousViews) -> str:
    """A delta's table rows: this run's upserts and deletes, and the previous delta's rows of
    the tables this run did not change."""
    return f"""
SELECT {_TABLE_NAMES}, 'upsert' AS op, bucket FROM planned
WHERE needs_columns AND bucket IN (SELECT bucket FROM delta_buckets)
UNION ALL BY NAME
SELECT {TABLE_KEYS}, 'delete' AS op, bucket FROM deleted
WHERE bucket IN (SELECT bucket FROM delta_buckets)
UNION ALL BY NAME
SELECT d.* FROM {previous.table_delta} AS d ANTI JOIN changed USING ({TABLE_KEYS})
WHERE d.bucket IN (SELECT bucket FROM delta_buckets)
ORDER BY bucket, {TABLE_KEYS}
"""


def _delta_columns(previous: PreviousViews) -> str:
    """A delta's column rows: the fresh ones, and the previous delta's of unchanged tables."""
    return f"""
SELECT * FROM fresh_columns WHERE bucket IN (SELECT bucket FROM delta_buckets)
UNION ALL BY NAME
SELECT d.* FROM {previous.column_delta} AS d ANTI JOIN changed USING ({TABLE_KEYS})
WHERE d.bucket IN (SELECT bucket FROM delta_buckets)
ORDER BY {_COLUMN_ORDER}
"""


@dataclass(frozen=True, slots=True)
class RunInputs:
    """Plan outputs and batch results, checked for completeness."""

    plan: PlanDocument
    planned: pa.Table
    deleted: pa.Table
    fresh: pa.Table
    databases: pa.Table
    schemas: pa.Table


@dataclass(frozen=True, slots=True)
class Buckets:
    """Which buckets change, and how."""

    same_layout: bool
    touched: list[int]
    compacting: list[int]
    delta: list[int]


@dataclass(frozen=True, slots=True)
class PreviousFiles:
    """The previous state's files a build reads, fetched: the touched buckets' table and
    column files, and every database and schema file."""

    tables: Sequence[tuple[FileRef, Path]]
    columns: Sequence[tuple[FileRef, Path]]
    databases: list[Path]
    schemas: list[Path]


@dataclass(frozen=True, slots=True)
class BucketRows:
    """Rows of one entity and layer for several buckets, sorted by bucket, with a bucket column."""

    rows: pa.Table

    def split(self) -> list[tuple[int, pa.Table]]:
        """(bucket, rows without the bucket column) per bucket that has rows."""
        if self.rows.num_rows == 0:
            return []
        runs = pc.run_end_encode(self.rows.column("bucket").combine_chunks())
        ends = runs.run_ends.to_pylist()
        starts = [0, *ends[:-1]]
        body = self.rows.drop_columns(["bucket"])
        return [
            (bucket, body.slice(start, end - start))
            for bucket, start, end in zip(runs.values.to_pylist(), starts, ends, strict=True)
        ]


@dataclass(frozen=True, slots=True)
class NewFiles:
    """Everything finalize writes for the touched buckets."""

    base_tables: BucketRows
    base_columns: BucketRows
    delta_tables: BucketRows
    delta_columns: BucketRows


@dataclass(frozen=True, slots=True)
class ColumnCounts:
    """Column rows that decide the new logical count without reading untouched buckets."""

    fresh: int
    """Columns extracted by this run."""
    replaced: int
    """Previous columns of the tables this run re-extracted or deleted."""


@dataclass(frozen=True, slots=True)
class ComparedRows:
    """The relations the diff and the change records compare, per entity: the changed
    tables' previous and new rows, and all databases and schemas."""

    old: dict[Entity, str]
    new: dict[Entity, str]
    columns: ColumnCounts


@dataclass(frozen=True, slots=True)
class ChangeFiles:
    """The run's change records, written by DuckDB, and how many of each kind there are."""

    parquet: Path
    jsonl: Path
    counts: dict[str, dict[str, int]]


class NewState:
    """The DuckDB connection of one state build, with the build's inputs registered.

    DuckDB calls block: use it from a worker thread, and close it (it is a context manager).
    """

    def __init__(
        self, spec: DuckDBSpec, inputs: RunInputs, buckets: Buckets, previous: PreviousFiles
    ) -> None:
        self._inputs = inputs
        self._connection = duck.connect(spec)
        try:
            self._previous = self._register(buckets, previous)
        except BaseException:
            self._connection.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._connection.close()

    def _register(self, buckets: Buckets, previous: PreviousFiles) -> PreviousViews:
        """Register the inputs, the previous files and the views derived from both."""
        connection, inputs = self._connection, self._inputs
        for name, table in (
            ("planned", inputs.planned),
            ("deleted", inputs.deleted),
            ("fresh", inputs.fresh),
            ("new_databases", inputs.databases),
            ("new_schemas", inputs.schemas),
            ("compacting", pa.table({"bucket": pa.array(buckets.compacting, pa.int32())})),
            ("delta_buckets", pa.table({"bucket": pa.array(buckets.delta, pa.int32())})),
        ):
            connection.register(name, table)
        views = load_previous(connection, previous.tables, previous.columns)
        listed: tuple[tuple[str, list[Path], Entity], ...] = (
            ("previous_databases", previous.databases, "database"),
            ("previous_schemas", previous.schemas, "schema"),
        )
        for name, paths, entity in listed:
            duck.register_files(connection, name, paths, SCHEMAS[entity].empty_table())
        for name, sql in _DERIVED.items():
            connection.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {sql}")
        return views

    def files(self) -> NewFiles:
        """The rows of every file this run writes: a base for each compacted bucket, a delta
        for each other touched bucket."""
        previous = self._previous
        return NewFiles(
            base_tables=self._rows(_BASE_TABLES, TABLE_SCHEMA),
            base_columns=self._rows(_base_columns(previous), COLUMN_SCHEMA),
            delta_tables=self._rows(_delta_tables(previous), DELTA_TABLE_SCHEMA),
            delta_columns=self._rows(_delta_columns(previous), COLUMN_SCHEMA),
        )

    def _rows(self, sql: str, schema: pa.Schema) -> BucketRows:
        target = schema.append(pa.field("bucket", pa.int32(), nullable=False))
        return BucketRows(conform(self._connection.sql(sql).to_arrow_table(), target))

    def compared(self) -> ComparedRows:
        """The changed tables' previous and new rows, materialized once, so the touched
        buckets' files are scanned once, not by every statement that reads them."""
        previous = self._previous
        # A full extraction compares everything: views then, for DuckDB to stream (a
        # materialized copy of twenty million columns would not fit its memory limit).
        kind = "VIEW" if self._inputs.plan.full_extraction else "TABLE"
        for name, sql in (
            ("diff_new_tables", f"SELECT {_TABLE_NAMES} FROM planned WHERE needs_columns"),
            (
                "diff_old_tables",
                f"SELECT {_TABLE_NAMES} FROM {previous.tables} "
                f"SEMI JOIN changed USING ({TABLE_KEYS})",
            ),
            ("diff_new_columns", f"SELECT {_COLUMN_NAMES} FROM fresh_columns"),
            (
                "diff_old_columns",
                f"SELECT {_COLUMN_NAMES} FROM {previous.columns} "
                f"SEMI JOIN changed USING ({TABLE_KEYS})",
            ),
        ):
            self._connection.execute(f"CREATE OR REPLACE TEMP {kind} {name} AS {sql}")
        return ComparedRows(
            old={
                "database": "previous_databases",
                "schema": "previous_schemas",
                "table": "diff_old_tables",
                "column": "diff_old_columns",
            },
            new={
                "database": "new_databases",
                "schema": "new_schemas",
                "table": "diff_new_tables",
                "column": "diff_new_columns",
            },
            columns=ColumnCounts(
                fresh=self._count("diff_new_columns"), replaced=self._count("diff_old_columns")
            ),
        )

    def _count(self, view: str) -> int:
        ((found,),) = self._connection.execute(f"SELECT count(*) FROM {view}").fetchall()
        return int(found)

    def diffs(self, compared: ComparedRows, scope: Scope) -> Diffs:
        """The run's diff; a deleted database or schema is `out_of_scope` if the scope
        excludes it now, a deleted table has plan's reason, a deleted column its table's."""
        connection, deleted = self._connection, self._inputs.deleted
        table_reasons: dict[tuple[str, ...], str] = {
            tuple(key): reason
            for *key, reason in zip(
                *(deleted.column(name).to_pylist() for name in KEY_COLUMNS["table"]),
                deleted.column("reason").to_pylist(),
                strict=True,
            )
        }
        diffs: Diffs = {}
        listed: tuple[Entity, ...] = ("database", "schema")
        for entity in listed:
            new, old = compared.new[entity], compared.old[entity]
            keys = ", ".join(KEY_COLUMNS[entity])
            gone = connection.execute(f"SELECT {keys} FROM {old} ANTI JOIN {new} USING ({keys})")
            reasons = scope_reasons(entity, [tuple(key) for key in gone.fetchall()], scope)
            diffs[entity] = entity_diff(connection, entity, new, old, reasons, "dropped")
        tables = entity_diff(
            connection,
            "table",
            compared.new["table"],
            compared.old["table"],
            table_reasons,
            "dropped",
        )
        diffs["table"] = EntityDiff(self._with_reasons(tables.changed), tables.deleted)
        columns = entity_diff(
            connection, "column", compared.new["column"], compared.old["column"], {}, "dropped"
        )
        diffs["column"] = EntityDiff(
            columns.changed, column_reasons(table_reasons, columns.deleted)
        )
        return diffs

    def _with_reasons(self, changed: pa.Table) -> pa.Table:
        """Changed table rows with the reason plan classified each table for (`reason`)."""
        keys = ", ".join(KEY_COLUMNS["table"])
        self._connection.register("changed_table_rows", changed)
        try:
            result = self._connection.sql(
                f"SELECT c.*, p.reason FROM changed_table_rows AS c "
                f"JOIN planned AS p USING ({keys}) ORDER BY {keys}"
            ).to_arrow_table()
        finally:
            self._connection.unregister("changed_table_rows")
        return conform(result, changed.schema.append(pa.field("reason", pa.string())))

    def change_records(
        self,
        compared: ComparedRows,
        diffs: Diffs,
        header: ChangeHeader,
        folder: Path,
        *,
        stable_column_ids: bool,
    ) -> ChangeFiles:
        """The run's change records, from the same rows as its diff (the touched tables only)."""
        inputs = self._inputs
        planned = inputs.planned
        reasons = Reasons(
            tables=planned.filter(planned.column("needs_columns")).select(
                [*KEY_COLUMNS["table"], "reason"]
            ),
            deleted={
                "database": diffs["database"].deleted,
                "schema": diffs["schema"].deleted,
                "table": inputs.deleted.select([*KEY_COLUMNS["table"], "reason"]),
            },
        )
        folder.mkdir(parents=True, exist_ok=True)
        parquet, jsonl = folder / "changes.parquet", folder / "changes.jsonl"
        counts = write_change_records(
            self._connection,
            StatePair(compared.old, compared.new),
            header,
            parquet,
            jsonl,
            reasons=reasons,
            stable_column_ids=stable_column_ids,
        )
        return ChangeFiles(parquet, jsonl, counts)
