"""Finalize's state build: which buckets change, the previous files they need, the new files.

Decides which buckets the run touches and which of those are compacted, fetches only those
buckets of the previous state, has `newstate.NewState` compute the new files' rows and the
diff in DuckDB (off the event loop), writes the new files, and returns the manifest to commit
with the diff to publish.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pyarrow as pa

from metatide.extractor.core.ids import Entity, RunId
from metatide.extractor.core.records import RECORD_VERSION, SCHEMAS
from metatide.extractor.core.scope import Scope
from metatide.extractor.core.spec import ExtractionSpec
from metatide.extractor.engine.changes import ChangeHeader, stable_column_ids
from metatide.extractor.engine.newstate import (
    BucketRows,
    Buckets,
    ChangeFiles,
    ColumnCounts,
    Diffs,
    NewFiles,
    NewState,
    PreviousFiles,
    RunInputs,
)
from metatide.extractor.state.files import (
    BadFile,
    Fetched,
    describe,
    encode_parquet,
    fetch_files,
    fetch_verified,
    state_key,
)
from metatide.extractor.state.manifest import FileRef, Manifest
from metatide.extractor.storage import Store

Layer = Literal["base", "delta"]
_READ_ORDER: tuple[Entity, ...] = ("table", "column", "database", "schema")
"""The order previous files are fetched in, and damaged ones reported in."""


@dataclass(frozen=True, slots=True)
class Built:
    """The new manifest and the diff of this run."""

    manifest: Manifest
    diffs: Diffs
    changes: ChangeFiles
    """The run's change records (`changes.CHANGE_SCHEMA`), as files to store."""
    fresh_columns: int
    bytes_written: int
    skipped: list[BadFile]
    """Damaged files of the previous state a full extraction left out of its diff's baseline."""


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
    files_read, skipped = await _fetch_previous(store, workdir, previous, inputs, buckets)
    header = ChangeHeader(run_id, previous.run_id if previous else None, inputs.plan.next_marker)
    files, diffs, counts, changes = await asyncio.to_thread(
        _compute, spec, inputs, buckets, files_read, header, workdir / "changes"
    )
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


async def _fetch_previous(
    store: Store, workdir: Path, previous: Manifest | None, inputs: RunInputs, buckets: Buckets
) -> tuple[PreviousFiles, list[BadFile]]:
    """The previous files the build reads (those of the touched buckets, and every database
    and schema file), and the damaged ones a full extraction skips."""
    wanted = set(buckets.touched) if buckets.same_layout else None
    fetched: dict[Entity, Fetched] = {}
    for entity in _READ_ORDER:
        refs = [
            ref
            for ref in (previous.files[entity] if previous else [])
            if entity in ("database", "schema") or wanted is None or ref.bucket in wanted
        ]
        fetched[entity] = await _fetch(store, refs, workdir, tolerant=inputs.plan.full_extraction)
    files = PreviousFiles(
        tables=fetched["table"].files,
        columns=fetched["column"].files,
        databases=[path for _, path in fetched["database"].files],
        schemas=[path for _, path in fetched["schema"].files],
    )
    return files, [bad for entity in _READ_ORDER for bad in fetched[entity].bad]


async def _fetch(store: Store, refs: list[FileRef], workdir: Path, *, tolerant: bool) -> Fetched:
    if tolerant:
        return await fetch_files(store, refs, workdir)
    paths = await fetch_verified(store, refs, workdir)
    return Fetched(list(zip(refs, paths, strict=True)), [])


def _compute(
    spec: ExtractionSpec,
    inputs: RunInputs,
    buckets: Buckets,
    previous: PreviousFiles,
    header: ChangeHeader,
    folder: Path,
) -> tuple[NewFiles, Diffs, ColumnCounts, ChangeFiles]:
    """The new files' rows, the diff and the change records (DuckDB: blocks its thread)."""
    with NewState(spec.duckdb, inputs, buckets, previous) as state:
        files = state.files()
        compared = state.compared()
        diffs = state.diffs(compared, Scope(spec.source.scope))
        changes = state.change_records(
            compared,
            diffs,
            header,
            folder,
            stable_column_ids=stable_column_ids(spec.source.kind),
        )
    return files, diffs, compared.columns, changes


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
