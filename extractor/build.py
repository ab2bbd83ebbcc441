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
import pyarrow.compute as pc

from metatide.extractor import duck
from metatide.extractor.diff import EntityDiff, column_reasons, entity_diff, scope_reasons
from metatide.extractor.ids import Entity, RunId
from metatide.extractor.layers import TABLE_KEYS, create_logical_views, register_previous
from metatide.extractor.manifest import FileRef, Manifest
from metatide.extractor.merge import BucketRows, NewFiles, create_views, new_files
from metatide.extractor.records import (
    COLUMN_SCHEMA,
    KEY_COLUMNS,
    SCHEMAS,
    TABLE_SCHEMA,
    conform,
)
from metatide.extractor.runfiles import PlanDocument
from metatide.extractor.scope import Scope
from metatide.extractor.spec import ExtractionSpec
from metatide.extractor.state import describe, encode_parquet, fetch_verified, state_key
from metatide.extractor.storage import Store

Layer = Literal["base", "delta"]


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
    fresh_columns: int
    bytes_written: int


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
    """Write the new state files of a run and return its manifest (not yet committed)."""
    buckets = _choose_buckets(spec, previous, inputs)
    connection = duck.connect(spec.duckdb)
    try:
        await _register(connection, store, workdir, previous, inputs, buckets)
        files, diffs = await asyncio.to_thread(_compute, connection, spec, inputs)
    finally:
        connection.close()
    refs, written = await _write_files(store, run_id, previous, buckets, files)
    small: tuple[tuple[Entity, pa.Table], ...] = (
        ("database", inputs.databases),
        ("schema", inputs.schemas),
    )
    for entity, listing in small:
        ref, size = await _write_small(store, entity, run_id, listing, previous)
        refs[entity] = [ref]
        written += size
    manifest = Manifest(
        run_id=run_id,
        parent_run_id=previous.run_id if previous else None,
        marker=inputs.plan.next_marker,
        committed_at=datetime.now(UTC),
        bucket_count=inputs.plan.bucket_count,
        files=refs,
    ).sealed()
    fresh = int(pc.sum(pc.equal(inputs.fresh.column("row_kind"), "column")).as_py() or 0)
    return Built(manifest, diffs, fresh, written)


def _choose_buckets(spec: ExtractionSpec, previous: Manifest | None, inputs: RunInputs) -> Buckets:
    count = inputs.plan.bucket_count
    if previous is None or previous.bucket_count != count:
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
) -> None:
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
    wanted = set(buckets.touched) if buckets.same_layout else None
    bucketed: tuple[Entity, ...] = ("table", "column")
    for entity in bucketed:
        refs = [
            ref
            for ref in (previous.files[entity] if previous else [])
            if wanted is None or ref.bucket in wanted
        ]
        paths = await fetch_verified(store, refs, workdir)
        register_previous(connection, entity, list(zip(refs, paths, strict=True)))
    listed: tuple[tuple[Entity, str], ...] = (
        ("database", "previous_databases"),
        ("schema", "previous_schemas"),
    )
    for entity, name in listed:
        refs = previous.files[entity] if previous else []
        paths = await fetch_verified(store, refs, workdir)
        duck.register_files(connection, name, paths, SCHEMAS[entity].empty_table())
    create_logical_views(connection)
    create_views(connection)


def _compute(
    connection: duckdb.DuckDBPyConnection, spec: ExtractionSpec, inputs: RunInputs
) -> tuple[NewFiles, dict[Entity, EntityDiff]]:
    files = new_files(connection)
    connection.execute(
        f"CREATE OR REPLACE TEMP VIEW diff_new_tables AS SELECT {', '.join(TABLE_SCHEMA.names)} "
        "FROM planned WHERE needs_columns"
    )
    connection.execute(
        f"CREATE OR REPLACE TEMP VIEW diff_old_tables AS SELECT {', '.join(TABLE_SCHEMA.names)} "
        f"FROM old_tables SEMI JOIN changed USING ({TABLE_KEYS})"
    )
    connection.execute(
        f"CREATE OR REPLACE TEMP VIEW diff_new_columns AS SELECT {', '.join(COLUMN_SCHEMA.names)} "
        "FROM fresh_columns"
    )
    connection.execute(
        "CREATE OR REPLACE TEMP VIEW diff_old_columns AS SELECT "
        f"{', '.join(COLUMN_SCHEMA.names)} FROM old_columns SEMI JOIN changed USING ({TABLE_KEYS})"
    )
    return files, _diffs(connection, Scope(spec.source.scope), inputs)


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
    """Databases and schemas are one file each, rewritten only when their content changed."""
    data = encode_parquet(listing.cast(SCHEMAS[entity]))
    ref = describe(state_key(entity, run_id), data, listing.num_rows)
    for old in previous.files[entity] if previous is not None else []:
        if old.sha256 == ref.sha256:
            return old, 0
    await store.put(ref.key, data)
    return ref, len(data)
