"""Phase 3, finalize: verify the batches, build the new state and the diff, commit.

The order is the crash-safety argument. Everything is written under new keys first (state
files named by this run, the diff, the summary); then the manifest is swapped in one
conditional write (the commit point); then ``marker.txt``; then garbage collection; then the
lease is released. A crash before the swap leaves the previous state and marker untouched; a
crash after it is completed by the next finalize of the same run, which finds its own
manifest committed and only repeats the steps after the swap.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from metatide.extractor.core.documents import (
    Baseline,
    BytesRead,
    ChangeCounts,
    ColumnCounts,
    DiffCounts,
    RunSummary,
    TableCounts,
)
from metatide.extractor.core.errors import (
    IncompleteRunError,
    LeaseLostError,
    StateConflictError,
    StateCorruptError,
)
from metatide.extractor.core.ids import ENTITIES, Entity, RunId
from metatide.extractor.core.logs import log, phase_logging
from metatide.extractor.core.progress import NoProgress, Progress
from metatide.extractor.core.records import (
    DATABASE_SCHEMA,
    SCHEMA_SCHEMA,
    TABLE_KEY_SCHEMA,
    table_to_keys,
)
from metatide.extractor.core.spec import ExtractionSpec
from metatide.extractor.engine.build import Built, build_state
from metatide.extractor.engine.diff import EntityDiff
from metatide.extractor.engine.guard import check_mass_delete
from metatide.extractor.engine.newstate import RunInputs
from metatide.extractor.state.baseline import read_baseline
from metatide.extractor.state.files import encode_parquet
from metatide.extractor.state.gc import collect_garbage
from metatide.extractor.state.lease import (
    HeldLease,
    kept_lease,
    read_plan_of_live_run,
    release_lease,
    renew_lease,
)
from metatide.extractor.state.manifest import MANIFEST_KEY, Manifest, parse_manifest
from metatide.extractor.state.marker import MARKER_KEY, format_marker
from metatide.extractor.state.runfiles import (
    BATCH_SCHEMA,
    DELETED_TABLE_SCHEMA,
    PLANNED_TABLE_SCHEMA,
    PlanDocument,
    batch_request_key,
    batch_result_key,
    changes_key,
    diff_key,
    history_manifest_key,
    plan_key,
    read_plan,
    read_run_document,
    read_table,
    summary_key,
)
from metatide.extractor.storage import KeyNotFoundError, Store, StoredObject
from metatide.extractor.storage.meter import metering


@dataclass(frozen=True, slots=True)
class Parent:
    """The state this run builds on: its manifest (None on a first run) and store version."""

    manifest: Manifest | None
    version: str | None
    trusted: bool = True
    """False when a full extraction's baseline is a damaged or substitute manifest."""


async def finalize(
    spec: ExtractionSpec,
    store: Store,
    workdir: Path,
    run_id: RunId,
    progress: Progress | None = None,
    extra_durations: dict[str, float] | None = None,
) -> RunSummary:
    """Commit a run and return its summary (also stored as runs/{run_id}/summary.json)."""
    with phase_logging("finalize", run_id):
        log.info("phase_started")
        started = time.monotonic()
        stored = await _stored_manifest(store)
        committed = _committed_by(stored, run_id)
        if committed is not None:
            log.info("commit_found", sequence=committed.sequence)
            await _finish_after_retry(spec, store, committed, await read_plan(store, run_id))
        else:
            plan = await read_plan_of_live_run(store, run_id)
            async with kept_lease(store, run_id, plan.lease_seconds) as lease:
                committed, previous = await _build_and_commit(
                    spec,
                    store,
                    workdir,
                    plan,
                    stored,
                    lease,
                    progress or NoProgress(),
                    started,
                    extra_durations or {},
                )
                await _publish_marker_and_collect(spec, store, committed, previous)
            await release_lease(store, run_id)
        summary = await _stored_summary(store, run_id)
        log.info(
            "phase_finished",
            duration_seconds=round(time.monotonic() - started, 3),
            tables=summary.tables.to_dict(),
            columns=summary.columns.to_dict(),
            state_rows=summary.state_rows,
        )
        return summary


async def _build_and_commit(
    spec: ExtractionSpec,
    store: Store,
    workdir: Path,
    plan: PlanDocument,
    stored: Stored,
    lease: HeldLease,
    progress: Progress,
    started: float,
    extra_durations: dict[str, float],
) -> tuple[Manifest, Manifest | None]:
    """Everything up to the commit point; returns the committed manifest and the one it
    replaced (None when that one cannot be trusted to keep files alive)."""
    with metering() as meter:
        parent = await _parent_of(plan, stored, store)
        inputs = await _read_inputs(store, plan, progress)
        check_mass_delete(
            plan.previous_tables,
            inputs.planned.num_rows,
            max(inputs.deleted.num_rows - plan.tables_renamed, 0),
            spec.mass_delete_guard,
        )
        progress.start("build state", total=None)
        built = await build_state(spec, store, workdir, plan.run_id, parent.manifest, inputs)
        progress.finish("build state")
    log.info(
        "state_built",
        logical_rows=built.manifest.logical_rows,
        files=sum(len(refs) for refs in built.manifest.files.values()),
        bytes_written=built.bytes_written,
        skipped_files=len(built.skipped),
    )
    durations = {"plan": plan.duration_seconds, **extra_durations}
    durations["finalize"] = time.monotonic() - started
    summary = _summary(plan, inputs, built, durations, meter.bytes_read)
    await _write_diff(spec, store, plan.run_id, built.diffs)
    await store.put_file(changes_key(plan.run_id), built.changes.parquet)
    await store.put_file(changes_key(plan.run_id, "jsonl"), built.changes.jsonl)
    await store.put(summary_key(plan.run_id), summary.to_json())
    await store.put(history_manifest_key(plan.run_id), built.manifest.to_bytes())
    lease.check()
    await _commit(store, built.manifest, parent)
    log.info(
        "manifest_committed",
        sequence=built.manifest.sequence,
        parent_run_id=built.manifest.parent_run_id,
        verified_all=summary.state_verified,
    )
    return built.manifest, parent.manifest if parent.trusted else None


@dataclass(frozen=True, slots=True)
class Stored:
    """The committed manifest as read once: its object, and the parsed document or the error."""

    data: StoredObject | None
    manifest: Manifest | None
    error: StateCorruptError | None


async def _stored_manifest(store: Store) -> Stored:
    try:
        data = await store.get(MANIFEST_KEY)
    except KeyNotFoundError:
        return Stored(None, None, None)
    try:
        return Stored(data, parse_manifest(data.data, store.location), None)
    except StateCorruptError as exc:
        return Stored(data, None, exc)


def _committed_by(stored: Stored, run_id: RunId) -> Manifest | None:
    """The committed manifest if this very run committed it (a finalize retried after the swap)."""
    manifest = stored.manifest
    return manifest if manifest is not None and manifest.run_id == run_id else None


async def _parent_of(plan: PlanDocument, stored: Stored, store: Store) -> Parent:
    """The state plan built on, which must still be the committed one."""
    location = store.location
    if plan.full_extraction:
        return await _full_extraction_parent(plan, stored, store)
    if plan.parent_run_id is None:
        if stored.manifest is not None:
            raise StateConflictError(
                f"run {plan.run_id} planned a full extraction without a readable state, but "
                f"{location} now holds a committed state; start a new run"
            )
        return Parent(None, stored.data.version if stored.data else None)
    if stored.data is None:
        raise StateConflictError(
            f"run {plan.run_id} planned on top of run {plan.parent_run_id}, but {location} has no "
            "committed state any more; start a new run"
        )
    if stored.manifest is None:
        raise stored.error or StateCorruptError(f"the manifest in {location} is unreadable")
    manifest = stored.manifest
    if manifest.run_id != plan.parent_run_id or manifest.content_hash != plan.parent_content_hash:
        raise StateConflictError(
            f"run {plan.run_id} planned on top of run {plan.parent_run_id}, but run "
            f"{manifest.run_id} has committed since; start a new run"
        )
    return Parent(manifest, stored.data.version)


async def _full_extraction_parent(plan: PlanDocument, stored: Stored, store: Store) -> Parent:
    """A full extraction commits over exactly the manifest bytes plan saw, readable or not."""
    seen = hashlib.sha256(stored.data.data).hexdigest() if stored.data else None
    if seen != plan.parent_manifest_sha256:
        raise StateConflictError(
            f"run {plan.run_id} planned a full extraction, but the manifest in {store.location} "
            "has changed since (another run committed); start a new run"
        )
    baseline = await read_baseline(store, full_extraction=True)
    return Parent(baseline.manifest, stored.data.version if stored.data else None, baseline.trusted)


async def _read_inputs(store: Store, plan: PlanDocument, progress: Progress) -> RunInputs:
    run_id = plan.run_id
    planned = await read_table(
        store, plan_key(run_id, "table.parquet"), PLANNED_TABLE_SCHEMA, "plan"
    )
    deleted = await read_table(
        store, plan_key(run_id, "deleted.parquet"), DELETED_TABLE_SCHEMA, "plan"
    )
    databases = await read_table(
        store, plan_key(run_id, "database.parquet"), DATABASE_SCHEMA, "plan"
    )
    schemas = await read_table(store, plan_key(run_id, "schema.parquet"), SCHEMA_SCHEMA, "plan")
    fresh, gone = await _read_batches(store, plan, progress)
    if gone:
        planned, deleted = _drop_vanished(planned, deleted, gone)
    return RunInputs(plan, planned, deleted, fresh, databases, schemas)


async def _read_batches(
    store: Store, plan: PlanDocument, progress: Progress
) -> tuple[pa.Table, set[tuple[str, str, str]]]:
    """All batch results, and the tables that vanished between plan and their batch."""
    missing = []
    results = []
    vanished: set[tuple[str, str, str]] = set()
    progress.start("verify batches", total=plan.batch_count)
    for index in range(plan.batch_count):
        try:
            data = (await store.get(batch_result_key(plan.run_id, index))).data
        except KeyNotFoundError:
            missing.append(index)
            continue
        result = pq.read_table(io.BytesIO(data), schema=BATCH_SCHEMA)
        request = await read_table(
            store, batch_request_key(plan.run_id, index), TABLE_KEY_SCHEMA, "batch request"
        )
        present = set(table_to_keys(result.filter(pc.equal(result.column("row_kind"), "table"))))
        vanished |= set(table_to_keys(request)) - present
        results.append(result)
        progress.advance("verify batches")
    progress.finish("verify batches")
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" …" if len(missing) > 20 else "")
        raise IncompleteRunError(
            f"run {plan.run_id} lacks the column batch(es) {shown} of {plan.batch_count}; run "
            f"`metatide columns --run-id {plan.run_id} --batch N` for each"
        )
    fresh = pa.concat_tables(results) if results else BATCH_SCHEMA.empty_table()
    return fresh, vanished


def _drop_vanished(
    planned: pa.Table, deleted: pa.Table, vanished: set[tuple[str, str, str]]
) -> tuple[pa.Table, pa.Table]:
    """Tables dropped after plan listed them leave the listing and join the deletions."""
    keys = table_to_keys(planned)
    keep = pa.array([key not in vanished for key in keys], type=pa.bool_())
    gone = planned.filter(pc.invert(keep))
    extra = pa.table(
        {
            "database_name": gone.column("database_name"),
            "schema_name": gone.column("schema_name"),
            "table_name": gone.column("table_name"),
            "reason": pa.array(["dropped"] * gone.num_rows, pa.string()),
            "bucket": gone.column("bucket"),
        }
    ).cast(DELETED_TABLE_SCHEMA)
    return planned.filter(keep), pa.concat_tables([deleted, extra])


def _summary(
    plan: PlanDocument,
    inputs: RunInputs,
    built: Built,
    durations: dict[str, float],
    finalize_bytes_read: int,
) -> RunSummary:
    """The run summary; row counts are logical: what a reader of the state sees."""
    reasons = inputs.deleted.column("reason").to_pylist()
    logical = built.manifest.logical_rows or {}
    problems = list(dict.fromkeys([*plan.baseline_problems, *map(str, built.skipped)]))
    states = plan.tables_by_state
    return RunSummary(
        run_id=plan.run_id,
        parent_run_id=plan.parent_run_id,
        full_extraction=plan.full_extraction,
        marker_used=plan.marker_used,
        next_marker=plan.next_marker,
        tables=TableCounts(
            created=states.get("CREATED", 0),
            updated=states.get("UPDATED", 0),
            unchanged=states.get("NO CHANGE", 0),
            backfill=states.get("BACKFILL", 0),
            deleted=len(reasons),
        ),
        tables_by_reason=plan.tables_by_reason,
        tables_deleted_by_reason={r: reasons.count(r) for r in ("dropped", "out_of_scope")},
        columns=ColumnCounts(
            extracted=built.fresh_columns,
            carried_forward=max(logical.get("column", 0) - built.fresh_columns, 0),
            deleted=built.diffs["column"].deleted.num_rows,
        ),
        diff={
            entity: DiffCounts(
                created=diff.count("created"),
                updated=diff.count("updated"),
                deleted=diff.deleted.num_rows,
            )
            for entity, diff in built.diffs.items()
        },
        changes={
            entity: ChangeCounts.model_validate(built.changes.counts[entity]) for entity in ENTITIES
        },
        state_rows={entity: logical.get(entity, 0) for entity in ENTITIES},
        state_bytes_written=built.bytes_written,
        state_verified=built.manifest.verified_sequence == built.manifest.sequence,
        baseline=Baseline(complete=not problems, problems=problems),
        bytes_read=BytesRead(plan=plan.bytes_read, finalize=finalize_bytes_read),
        batches=plan.batch_count,
        durations_seconds={name: round(value, 3) for name, value in durations.items()},
    )


async def _write_diff(
    spec: ExtractionSpec, store: Store, run_id: RunId, diffs: dict[Entity, EntityDiff]
) -> None:
    extension = spec.output.format
    for entity, diff in diffs.items():
        for table, deleted in ((diff.changed, False), (diff.deleted, True)):
            data = encode_parquet(table) if extension == "parquet" else _jsonl(table)
            await store.put(diff_key(run_id, entity, extension, deleted), data)


def _jsonl(table: pa.Table) -> bytes:
    lines = (json.dumps(row, default=str, ensure_ascii=False) for row in table.to_pylist())
    return "".join(line + "\n" for line in lines).encode()


async def _commit(store: Store, manifest: Manifest, parent: Parent) -> None:
    """The commit point: swap the manifest only if it is still the one plan built on."""
    data = manifest.to_bytes()
    if parent.version is None:
        swapped = await store.put_if_absent(MANIFEST_KEY, data)
    else:
        swapped = await store.replace_if_match(MANIFEST_KEY, data, parent.version)
    if not swapped:
        raise StateConflictError(
            f"another run committed to {store.location} while run {manifest.run_id} was "
            "finalizing; nothing of this run was committed, start a new run"
        )


async def _finish_after_retry(
    spec: ExtractionSpec, store: Store, manifest: Manifest, plan: PlanDocument
) -> None:
    """A finalize retried after its commit repeats the steps after the swap, if the lease is
    still this run's: otherwise a newer run may be writing files garbage collection would take."""
    try:
        await renew_lease(store, plan.run_id, plan.lease_seconds)
    except LeaseLostError as exc:
        log.warning("after_commit_skipped", reason=str(exc))
        return
    await _publish_marker_and_collect(spec, store, manifest, None)
    await release_lease(store, plan.run_id)


async def _publish_marker_and_collect(
    spec: ExtractionSpec, store: Store, manifest: Manifest, previous: Manifest | None
) -> None:
    """The steps after the swap: marker.txt, then garbage collection (lease still held)."""
    marker = format_marker(manifest.marker, spec.marker.format)
    await store.put(MARKER_KEY, marker.encode())
    if previous is None and manifest.parent_run_id is not None:
        previous = await _history_manifest(store, manifest.parent_run_id)
    deleted = await collect_garbage(store, manifest, previous, spec.state.keep_runs)
    log.info("garbage_collected", keys_deleted=deleted)


async def _stored_summary(store: Store, run_id: RunId) -> RunSummary:
    """The summary this run wrote before its commit."""
    key = summary_key(run_id)
    return await read_run_document(
        store,
        key,
        RunSummary,
        what=f"the summary of run {run_id}",
        missing=f"run {run_id} is committed but its summary ({key}) is missing in {store.location}",
    )


async def _history_manifest(store: Store, run_id: RunId) -> Manifest | None:
    try:
        return parse_manifest((await store.get(history_manifest_key(run_id))).data, store.location)
    except (KeyNotFoundError, StateCorruptError):
        return None
