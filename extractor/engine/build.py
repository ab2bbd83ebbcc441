"""Building a run's new state and diff from its inputs and the previous state (for finalize).

Decides which buckets the run touches and which of those are compacted, reads only those
buckets of the previous state, computes the new files and the diff in DuckDB (off the event
loop), writes the new files, and returns the manifest to commit with the diff to publish.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow as pa

from metatide.extractor.core.ids import Entity, RunId
from metatide.extractor.core.records import (
    COLUMN_SCHEMA,
    KEY_COLUMNS,
    RECORD_VERSION,
    SCHEMAS,
    TABLE_SCHEMA,
    conform,
)
from metatide.extractor.core.scope import Scope
from metatide.extractor.core.spec import ExtractionSpec
from metatide.extractor.engine import duck
from metatide.extractor.engine.changes import (
    ChangeHeader,
    Reasons,
    StatePair,
    stable_column_ids,
    write_change_records,
)
from metatide.extractor.engine.diff import EntityDiff, column_reasons, entity_diff, scope_reasons
from metatide.extractor.engine.merge import BucketRows, NewFiles, create_views, new_files
from metatide.extractor.state.files import (
    BadFile,
    Fetched,
    describe,
    encode_parquet,
    fetch_files,
    fetch_verified,
    state_key,
)
from metatide.extractor.state.layers import TABLE_KEYS, create_logical_views, register_previous
from metatide.extractor.state.manifest import FileRef, Manifest
from metatide.extractor.state.runfiles import PlanDocument
from metatide.extractor.storage import Store

Layer = Literal["base", "delta"]
_TABLE_NAMES = ", ".join(TABLE_SCHEMA.names)
_COLUMN_NAMES = ", ".join(COLUMN_SCHEMA.names)


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
class Built:
    """The new manifest and the diff of this run."""

    manifest: Manifest
    diffs: dict[Entity, EntityDiff]
    changes: ChangeFiles
    """The run's change records (`changes.CHANGE_SCHEMA`), as files to store."""
    fresh_columns: int
    bytes_written: int
    skipped: list[BadFile]
    """Damaged files of the previous state a full extraction left out of its diff's baseline."""


@dataclass(frozen=True, slots=True)
class ColumnCounts:
    """Column rows that decide the new logical count without reading untouched buckets."""

    fresh: int
    """Columns extracted by this run."""
    replaced: int
    """Previous columns of the tables this run re-extracted or deleted."""


@dataclass(frozen=True, slots=True)
class Buckets:
    """Which buckets change, and how."""

    same_layout: bool
    touched: list[int]
    compacting: list[int]
    delta: list[int]


async def build_state(
    spec: ExtractionSpec,
    store: Store,
    workdir: Path,
    run_id: RunId,
    previous: Manifest | None,
    inputs: RunInputs,
) -> Built:
    """Write the new state files of a run and return its manifest (not yet committed).

    An incremental run reads the previous files of the buckets it touches and fails on any
    damage. A full extraction rewrites every file from the source, so it reads the previous
    files only to diff against them and skips damaged ones (`Built.skipped`).
    """
    buckets = _choose_buckets(spec, previous, inputs)
    connection = duck.connect(spec.duckdb)
    try:
        skipped = await _register(connection, store, workdir, previous, inputs, buckets)
        header = ChangeHeader(
            run_id, previous.run_id if previous else None, inputs.plan.next_marker
        )
        files, diffs, counts, changes = await asyncio.to_thread(
            _compute, connection, spec, inputs, header, workdir / "changes"
        )
    finally:
        connection.close()
    refs, written = await _write_files(store, run_id, previous, buckets, files)
    small: tuple[tuple[Entity, pa.Table], ...] = (
        ("database", inputs.databases),
        ("schema", inputs.schemas),
    )
    for entity, listing in small:
        reusable = None if inputs.plan.full_extraction else previous
        ref, size = await _write_small(store, entity, run_id, listing, reusable)
        refs[entity] = [ref]
        written += size
    sequence = previous.sequence + 1 if previous else 1
    everything_verified = not buckets.same_layout or inputs.plan.verified_all
    manifest = Manifest(
        run_id=run_id,
        parent_run_id=previous.run_id if previous else None,
        marker=inputs.plan.next_marker,
        committed_at=datetime.now(UTC),
        bucket_count=inputs.plan.bucket_count,
        files=refs,
        sequence=sequence,
        verified_sequence=(
            sequence if everything_verified or previous is None else previous.verified_sequence
        ),
        logical_rows={
            "database": inputs.databases.num_rows,
            "schema": inputs.schemas.num_rows,
            "table": inputs.planned.num_rows,
            "column": _logical_columns(previous, buckets, files, counts),
        },
    ).sealed()
    return Built(manifest, diffs, changes, counts.fresh, written, skipped)


def _logical_columns(
    previous: Manifest | None, buckets: Buckets, files: NewFiles, counts: ColumnCounts
) -> int:
    """Columns a reader of the new state sees, from counts this run has anyway."""
    if not buckets.same_layout or previous is None or previous.logical_rows is None:
        rewritten: int = files.base_columns.rows.num_rows  # every bucket is a new base file
        return rewritten
    return previous.logical_rows["column"] - counts.replaced + counts.fresh


def _choose_buckets(spec: ExtractionSpec, previous: Manifest | None, inputs: RunInputs) -> Buckets:
    """Which buckets change; everything is rewritten on a full extraction, a new bucket count,
    a manifest migrated from v2 (whose logical row counts are unknown), or state files of an
    older record version (a rewrite fills their new fields from this run's listing)."""
    count = inputs.plan.bucket_count
    if (
        previous is None
        or previous.bucket_count != count
        or previous.logical_rows is None
        or previous.record_version != RECORD_VERSION
        or inputs.plan.full_extraction
    ):
        everything = list(range(count))
        return Buckets(False, everything, everything, [])
    changed = inputs.planned.filter(inputs.planned.column("needs_columns")).column("bucket")
    per_bucket: dict[int, int] = {}
    for bucket in changed.to_pylist() + inputs.deleted.column("bucket").to_pylist():
        per_bucket[bucket] = per_bucket.get(bucket, 0) + 1
    base = {b: ref.rows for b, ref in previous.layer("table", "base").items()}
    delta = {b: ref.rows for b, ref in previous.layer("table", "delta").items()}
    compacting, kept = [], []
    for bucket in sorted(per_bucket):
        grown = delta.get(bucket, 0) + per_bucket[bucket]
        if grown > spec.state.compaction_ratio * max(base.get(bucket, 0), 1):
            compacting.append(bucket)
        else:
            kept.append(bucket)
    return Buckets(True, sorted(per_bucket), compacting, kept)


async def _register(
    connection: duckdb.DuckDBPyConnection,
    store: Store,
    workdir: Path,
    previous: Manifest | None,
    inputs: RunInputs,
    buckets: Buckets,
) -> list[BadFile]:
    """Register the run's inputs and the previous files it reads; returns the skipped ones."""
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
    full = inputs.plan.full_extraction
    skipped: list[BadFile] = []
    wanted = set(buckets.touched) if buckets.same_layout else None
    bucketed: tuple[Entity, ...] = ("table", "column")
    for entity in bucketed:
        refs = [
            ref
            for ref in (previous.files[entity] if previous else [])
            if wanted is None or ref.bucket in wanted
        ]
        fetched = await _fetch(store, refs, workdir, tolerant=full)
        skipped += fetched.bad
        register_previous(connection, entity, fetched.files)
    listed: tuple[tuple[Entity, str], ...] = (
        ("database", "previous_databases"),
        ("schema", "previous_schemas"),
    )
    for entity, name in listed:
        refs = previous.files[entity] if previous else []
        fetched = await _fetch(store, refs, workdir, tolerant=full)
        skipped += fetched.bad
        paths = [path for _, path in fetched.files]
        duck.register_files(connection, name, paths, SCHEMAS[entity].empty_table())
    create_logical_views(connection)
    create_views(connection)
    return skipped


async def _fetch(store: Store, refs: list[FileRef], workdir: Path, *, tolerant: bool) -> Fetched:
    if tolerant:
        return await fetch_files(store, refs, workdir)
    paths = await fetch_verified(store, refs, workdir)
    return Fetched(list(zip(refs, paths, strict=True)), [])


def _compute(
    connection: duckdb.DuckDBPyConnection,
    spec: ExtractionSpec,
    inputs: RunInputs,
    header: ChangeHeader,
    folder: Path,
) -> tuple[NewFiles, dict[Entity, EntityDiff], ColumnCounts, ChangeFiles]:
    files = new_files(connection)
    # The rows the diff and the change records compare: the changed tables' previous and new
    # rows. Materialized once, so the touched buckets' files are scanned once, not by every
    # statement that reads them.
    for name, sql in (
        ("diff_new_tables", f"SELECT {_TABLE_NAMES} FROM planned WHERE needs_columns"),
        (
            "diff_old_tables",
            f"SELECT {_TABLE_NAMES} FROM old_tables SEMI JOIN changed USING ({TABLE_KEYS})",
        ),
        ("diff_new_columns", f"SELECT {_COLUMN_NAMES} FROM fresh_columns"),
        (
            "diff_old_columns",
            f"SELECT {_COLUMN_NAMES} FROM old_columns SEMI JOIN changed USING ({TABLE_KEYS})",
        ),
    ):
        # A full extraction compares everything: views then, for DuckDB to stream (a
        # materialized copy of twenty million columns would not fit its memory limit).
        kind = "VIEW" if inputs.plan.full_extraction else "TABLE"
        connection.execute(f"CREATE OR REPLACE TEMP {kind} {name} AS {sql}")
    counts = ColumnCounts(
        fresh=_count(connection, "diff_new_columns"),
        replaced=_count(connection, "diff_old_columns"),
    )
    diffs = _diffs(connection, Scope(spec.source.scope), inputs)
    return files, diffs, counts, _changes(connection, spec, inputs, diffs, header, folder)


@dataclass(frozen=True, slots=True)
class ChangeFiles:
    """The run's change records, written by DuckDB, and how many of each kind there are."""

    parquet: Path
    jsonl: Path
    counts: dict[str, dict[str, int]]


def _changes(
    connection: duckdb.DuckDBPyConnection,
    spec: ExtractionSpec,
    inputs: RunInputs,
    diffs: dict[Entity, EntityDiff],
    header: ChangeHeader,
    folder: Path,
) -> ChangeFiles:
    """The run's change records, from the same rows as its diff (the touched tables only)."""
    old: dict[Entity, pa.Table | str] = {
        "database": "previous_databases",
        "schema": "previous_schemas",
        "table": "diff_old_tables",
        "column": "diff_old_columns",
    }
    new: dict[Entity, pa.Table | str] = {
        "database": "new_databases",
        "schema": "new_schemas",
        "table": "diff_new_tables",
        "column": "diff_new_columns",
    }
    deleted_tables = inputs.deleted.select([*KEY_COLUMNS["table"], "reason"])
    reasons = Reasons(
        tables=inputs.planned.filter(inputs.planned.column("needs_columns")).select(
            [*KEY_COLUMNS["table"], "reason"]
        ),
        deleted={
            "database": diffs["database"].deleted,
            "schema": diffs["schema"].deleted,
            "table": deleted_tables,
        },
    )
    folder.mkdir(parents=True, exist_ok=True)
    parquet, jsonl = folder / "changes.parquet", folder / "changes.jsonl"
    counts = write_change_records(
        connection,
        StatePair(old, new),
        header,
        parquet,
        jsonl,
        reasons=reasons,
        stable_column_ids=stable_column_ids(spec.source.kind),
    )
    return ChangeFiles(parquet, jsonl, counts)


def _count(connection: duckdb.DuckDBPyConnection, view: str) -> int:
    ((found,),) = connection.execute(f"SELECT count(*) FROM {view}").fetchall()
    return int(found)


def _diffs(
    connection: duckdb.DuckDBPyConnection, scope: Scope, inputs: RunInputs
) -> dict[Entity, EntityDiff]:
    table_reasons: dict[tuple[str, ...], str] = {
        tuple(key): reason
        for *key, reason in zip(
            *(inputs.deleted.column(name).to_pylist() for name in KEY_COLUMNS["table"]),
            inputs.deleted.column("reason").to_pylist(),
            strict=True,
        )
    }
    diffs: dict[Entity, EntityDiff] = {}
    listed: tuple[tuple[Entity, str, str], ...] = (
        ("database", "new_databases", "previous_databases"),
        ("schema", "new_schemas", "previous_schemas"),
    )
    for entity, new, old in listed:
        keys = ", ".join(KEY_COLUMNS[entity])
        gone = connection.execute(f"SELECT {keys} FROM {old} ANTI JOIN {new} USING ({keys})")
        reasons = scope_reasons(entity, [tuple(key) for key in gone.fetchall()], scope)
        diffs[entity] = entity_diff(connection, entity, new, old, reasons, "dropped")
    tables = entity_diff(
        connection, "table", "diff_new_tables", "diff_old_tables", table_reasons, "dropped"
    )
    diffs["table"] = EntityDiff(_with_reasons(connection, tables.changed), tables.deleted)
    columns = entity_diff(
        connection, "column", "diff_new_columns", "diff_old_columns", {}, "dropped"
    )
    diffs["column"] = EntityDiff(columns.changed, column_reasons(table_reasons, columns.deleted))
    return diffs


def _with_reasons(connection: duckdb.DuckDBPyConnection, changed: pa.Table) -> pa.Table:
    """Changed table rows with the reason plan classified each table for (`reason`)."""
    keys = ", ".join(KEY_COLUMNS["table"])
    connection.register("changed_table_rows", changed)
    try:
        result = connection.sql(
            f"SELECT c.*, p.reason FROM changed_table_rows AS c "
            f"JOIN planned AS p USING ({keys}) ORDER BY {keys}"
        ).to_arrow_table()
    finally:
        connection.unregister("changed_table_rows")
    return conform(result, changed.schema.append(pa.field("reason", pa.string())))


async def _write_files(
    store: Store, run_id: RunId, previous: Manifest | None, buckets: Buckets, files: NewFiles
) -> tuple[dict[Entity, list[FileRef]], int]:
    """Write the new base and delta files; keep the previous files of untouched layers."""
    refs: dict[Entity, list[FileRef]] = {}
    written = 0
    compacting, delta = set(buckets.compacting), set(buckets.delta)
    layers: tuple[tuple[Entity, BucketRows, BucketRows], ...] = (
        ("table", files.base_tables, files.delta_tables),
        ("column", files.base_columns, files.delta_columns),
    )
    for entity, base_rows, delta_rows in layers:
        kept = []
        if previous is not None and buckets.same_layout:
            for ref in previous.files[entity]:
                replaced = ref.bucket in compacting or (
                    ref.bucket in delta and ref.layer == "delta"
                )
                if not replaced:
                    kept.append(ref)
        new = await _write_layer(store, entity, "base", run_id, base_rows)
        new += await _write_layer(store, entity, "delta", run_id, delta_rows)
        written += sum(ref.bytes for ref in new)
        refs[entity] = sorted(kept + new, key=lambda ref: (ref.bucket or 0, ref.layer))
    return refs, written


async def _write_layer(
    store: Store, entity: Entity, layer: Layer, run_id: RunId, rows: BucketRows
) -> list[FileRef]:
    parts = rows.split()
    encoded = await asyncio.to_thread(
        lambda: [
            (bucket, encode_parquet(part, small=layer == "delta"), part.num_rows)
            for bucket, part in parts
        ]
    )
    refs = []
    for bucket, data, count in encoded:
        ref = describe(state_key(entity, run_id, bucket, layer), data, count, bucket, layer)
        await store.put(ref.key, data)
        refs.append(ref)
    return refs


async def _write_small(
    store: Store, entity: Entity, run_id: RunId, listing: pa.Table, previous: Manifest | None
) -> tuple[FileRef, int]:
    """Databases and schemas are one file each, rewritten only when their content changed.

    `previous` is None on a full extraction: it writes every file anew and lists no old one
    (an old file may be the damaged one it is recovering from).
    """
    data = encode_parquet(listing.cast(SCHEMAS[entity]))
    ref = describe(state_key(entity, run_id), data, listing.num_rows)
    for old in previous.files[entity] if previous is not None else []:
        if old.sha256 == ref.sha256:
            return old, 0
    await store.put(ref.key, data)
    return ref, len(data)
