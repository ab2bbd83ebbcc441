"""Phase 1, plan: take the lease, list the catalog, classify tables, write the run's scope.

Plan reads only the cheap table listing (with fingerprints computed by the source), compares
it with the previous state's table files, and writes under ``runs/{run_id}/plan/``: the
listings, the deleted tables, the batches of tables whose columns must be extracted, and
``plan.json``. Nothing under ``current-state/`` changes here.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from metatide.extractor.core.documents import PlanResult
from metatide.extractor.core.ids import RunId, new_run_id
from metatide.extractor.core.logs import log, phase_logging
from metatide.extractor.core.progress import NoProgress, Progress
from metatide.extractor.core.records import TABLE_KEY_COLUMNS, TABLE_SCHEMA
from metatide.extractor.core.scope import Scope
from metatide.extractor.core.spec import ExtractionSpec
from metatide.extractor.engine import duck
from metatide.extractor.engine.classify import classify, previous_relation
from metatide.extractor.engine.guard import check_mass_delete
from metatide.extractor.sources import Source
from metatide.extractor.state.baseline import Baseline, read_baseline
from metatide.extractor.state.files import (
    BadFile,
    Fetched,
    assign_buckets,
    choose_bucket_count,
    corrupt_state_error,
    fetch_files,
    fetch_verified,
    verify_files,
)
from metatide.extractor.state.layered import load_previous, logical_tables_in_duckdb
from metatide.extractor.state.lease import acquire_lease, kept_lease, release_lease
from metatide.extractor.state.manifest import Manifest
from metatide.extractor.state.marker import default_marker, effective_marker, truncate_to_seconds
from metatide.extractor.state.runfiles import (
    TABLE_REASONS,
    TABLE_STATES,
    PlanDocument,
    batch_request_key,
    plan_key,
    write_table,
)
from metatide.extractor.storage import Store
from metatide.extractor.storage.meter import metering


@dataclass(frozen=True, slots=True)
class Listing:
    """What the source listed, already filtered to the scope."""

    databases: pa.Table
    schemas: pa.Table
    tables: pa.Table


async def plan(
    spec: ExtractionSpec,
    store: Store,
    source: Source,
    workdir: Path,
    run_id: RunId | None = None,
    progress: Progress | None = None,
    take_over_from: RunId | None = None,
    *,
    whole_run: bool = False,
) -> PlanDocument:
    """Plan a run and return its plan document (also stored as plan.json).

    `take_over_from` names a dead run whose lease this run may take at once; `whole_run` says
    this process runs every phase (`metatide run`), so the lease dies with it.
    """
    run_id = run_id or new_run_id()
    with phase_logging("plan", run_id):
        log.info("phase_started", force_full_extraction=spec.force_full_extraction)
        await acquire_lease(
            store, run_id, spec.state.lease_seconds, take_over_from, pid_bound=whole_run
        )
        try:
            async with kept_lease(store, run_id, spec.state.lease_seconds) as lease:
                document = await _plan(spec, store, source, workdir, run_id, progress)
                lease.check()
                await store.put(
                    plan_key(run_id, "plan.json"), document.model_dump_json(indent=1).encode()
                )
        except BaseException:
            await release_lease(store, run_id)
            raise
        log.info(
            "phase_finished",
            duration_seconds=round(document.duration_seconds, 3),
            tables=document.tables_total,
            tables_to_extract=document.tables_to_extract,
            batches=document.batch_count,
            full_extraction=document.full_extraction,
            bytes_read=document.bytes_read,
        )
    return document


async def _plan(
    spec: ExtractionSpec,
    store: Store,
    source: Source,
    workdir: Path,
    run_id: RunId,
    progress: Progress | None,
) -> PlanDocument:
    progress = progress or NoProgress()
    started = time.monotonic()
    started_at = datetime.now(UTC)
    with metering() as meter:
        baseline = await read_baseline(store, full_extraction=spec.force_full_extraction)
        # The previous state loads while the source lists its catalog: one waits on the
        # database server, the other on storage and DuckDB.
        previous = asyncio.create_task(
            _load_previous(spec, store, baseline, workdir), name="previous-state"
        )
        try:
            async with source:
                next_marker = truncate_to_seconds(await source.clock())
                await _check_store_writable(store, run_id)
                listing = await _list_catalog(spec, source, progress)
        except BaseException:
            previous.cancel()
            if previous.done() and not previous.cancelled() and previous.exception() is None:
                previous.result().connection.close()
            raise
        loaded = await previous
        try:
            document = await _classify_and_write(
                spec, store, run_id, baseline, loaded, listing, next_marker, started_at
            )
        finally:
            loaded.connection.close()
    return document.model_copy(
        update={"duration_seconds": time.monotonic() - started, "bytes_read": meter.bytes_read}
    )


async def _check_store_writable(store: Store, run_id: RunId) -> None:
    """Preflight: fail before any work if the store cannot take a conditional write.

    A conditional write, as the commit will make: an S3 store checks here, once, that its
    server honours the preconditions (and warns if not), rather than at the commit.
    """
    key = plan_key(run_id, "preflight")
    await store.put_if_absent(key, b"ok")
    await store.delete([key])


async def _list_catalog(spec: ExtractionSpec, source: Source, progress: Progress) -> Listing:
    scope = Scope(spec.source.scope)
    progress.start("list catalog", total=3)
    databases = await source.databases(scope)
    progress.advance("list catalog")
    names = databases.column("database_name").to_pylist()
    schemas = scope.filter_schemas(await source.schemas(names, scope))
    progress.advance("list catalog")
    tables = scope.filter_tables(await source.tables(schemas, scope))
    progress.advance("list catalog")
    progress.finish("list catalog")
    log.info(
        "catalog_listed",
        databases=databases.num_rows,
        schemas=schemas.num_rows,
        tables=tables.num_rows,
    )
    return Listing(databases, schemas, tables)


@dataclass(frozen=True, slots=True)
class Previous:
    """The previous state's tables as plan needs them, and what reading the state found.

    The rows stay in the DuckDB connection that decoded them (plan closes it).
    """

    connection: duckdb.DuckDBPyConnection
    tables: duckdb.DuckDBPyRelation
    count: int
    skipped: list[BadFile]
    """Damaged files a full extraction left out of its baseline."""
    verified_all: bool
    """True when every file of the committed manifest was read and verified by this plan."""


async def _load_previous(
    spec: ExtractionSpec, store: Store, baseline: Baseline, workdir: Path
) -> Previous:
    """The previous state's tables (base files resolved with their deltas).

    An incremental run reads its table files strictly and, when `state.verifyEveryRuns` says
    it is due, verifies every other listed file too; a full extraction skips damaged files.
    """
    manifest = baseline.manifest
    if manifest is None:
        connection = duck.connect(spec.duckdb)
        empty = previous_relation(connection, TABLE_SCHEMA.empty_table())
        return Previous(connection, empty, 0, [], verified_all=False)
    refs = manifest.files["table"]
    if spec.force_full_extraction:
        fetched = await fetch_files(store, refs, workdir)
    else:
        fetched = Fetched(
            list(zip(refs, await fetch_verified(store, refs, workdir), strict=True)), []
        )
    verified_all = False
    if not spec.force_full_extraction and _verification_due(spec, manifest):
        others = [
            ref for entity in ("database", "schema", "column") for ref in manifest.files[entity]
        ]
        bad = await verify_files(store, others)
        if bad:
            raise corrupt_state_error(store.location, bad)
        verified_all = True

    def resolve() -> Previous:
        connection = duck.connect(spec.duckdb)
        try:
            load_previous(connection, fetched.files)
            tables = logical_tables_in_duckdb(connection)
            count = len(tables)
        except BaseException:
            connection.close()
            raise
        return Previous(connection, tables, count, fetched.bad, verified_all)

    loaded = await asyncio.to_thread(resolve)
    log.info(
        "previous_state_loaded",
        run=manifest.run_id,
        tables=loaded.count,
        table_files=len(refs),
        skipped_files=len(fetched.bad),
        verified_all=verified_all,
    )
    return loaded


def _verification_due(spec: ExtractionSpec, manifest: Manifest) -> bool:
    """Whether this run is the one that reads every file (see `state.verifyEveryRuns`)."""
    every = spec.state.verify_every_runs
    return every > 0 and manifest.runs_since_verified() + 1 >= every


async def _classify_and_write(
    spec: ExtractionSpec,
    store: Store,
    run_id: RunId,
    baseline: Baseline,
    loaded: Previous,
    listing: Listing,
    next_marker: datetime,
    started_at: datetime,
) -> PlanDocument:
    manifest = baseline.manifest
    marker = (
        manifest.marker if manifest else default_marker(spec.marker.default, spec.marker.format)
    )
    full = manifest is None or spec.force_full_extraction
    found = await asyncio.to_thread(
        classify,
        loaded.connection,
        listing.tables,
        loaded.tables,
        effective_marker(marker, spec.marker.prepone_hours),
        Scope(spec.source.scope),
    )
    classified, deleted = found.tables, found.deleted
    check_mass_delete(
        loaded.count,
        classified.num_rows,
        deleted.num_rows - found.renamed,
        spec.mass_delete_guard,
    )
    bucket_count = choose_bucket_count(
        classified.num_rows,
        spec.state.tables_per_bucket,
        manifest.bucket_count if manifest else None,
    )
    same_buckets = manifest is not None and manifest.bucket_count == bucket_count
    planned = _with_buckets(classified, bucket_count, full, same_buckets)
    known = deleted.column("bucket") if same_buckets else None
    deleted = deleted.set_column(
        deleted.schema.get_field_index("bucket"),
        "bucket",
        assign_buckets(deleted, bucket_count, known),
    )
    batch_count = await _write_batches(store, run_id, planned, spec.columns.batch_size)
    await write_table(store, plan_key(run_id, "database.parquet"), listing.databases)
    await write_table(store, plan_key(run_id, "schema.parquet"), listing.schemas)
    await write_table(store, plan_key(run_id, "table.parquet"), planned)
    await write_table(store, plan_key(run_id, "deleted.parquet"), deleted)
    states = _counts(planned.column("state"))
    why = _counts(planned.column("reason"))
    reasons = _counts(deleted.column("reason"))
    return PlanDocument(
        run_id=run_id,
        parent_run_id=manifest.run_id if manifest else None,
        parent_content_hash=manifest.content_hash if manifest else None,
        full_extraction=full,
        marker_used=marker,
        next_marker=next_marker,
        bucket_count=bucket_count,
        batch_count=batch_count,
        batch_size=spec.columns.batch_size,
        tables_total=planned.num_rows,
        tables_by_state={state: states.get(state, 0) for state in TABLE_STATES},
        tables_by_reason={reason: why.get(reason, 0) for reason in TABLE_REASONS},
        tables_deleted={reason: reasons.get(reason, 0) for reason in ("dropped", "out_of_scope")},
        tables_to_extract=int(pc.sum(planned.column("needs_columns")).as_py() or 0),
        started_at=started_at,
        duration_seconds=0.0,
        parent_manifest_sha256=baseline.committed_sha256,
        previous_tables=loaded.count,
        verified_all=loaded.verified_all,
        baseline_problems=[*baseline.problems, *map(str, loaded.skipped)],
        lease_seconds=spec.state.lease_seconds,
        tables_renamed=found.renamed,
    )


def _with_buckets(
    classified: pa.Table, bucket_count: int, full: bool, same_buckets: bool
) -> pa.Table:
    """Add bucket and needs_columns: every table on a full run, else all but NO CHANGE.

    At an unchanged bucket count a table stays in the bucket the state keeps it in; only
    new tables are hashed.
    """
    changed = pc.not_equal(classified.column("state"), "NO CHANGE")
    needs = pa.repeat(True, classified.num_rows) if full else changed
    known = classified.column("previous_bucket") if same_buckets else None
    buckets = assign_buckets(classified, bucket_count, known)
    return (
        classified.drop_columns(["previous_bucket"])
        .append_column(pa.field("bucket", pa.int32(), nullable=False), buckets)
        .append_column(pa.field("needs_columns", pa.bool_(), nullable=False), needs)
    )


def _counts(values: pa.ChunkedArray) -> dict[str, int]:
    """How often each value occurs (vectorised: a listing may have a million rows)."""
    counted = pc.value_counts(values)
    return dict(
        zip(
            counted.field("values").to_pylist(),
            counted.field("counts").to_pylist(),
            strict=True,
        )
    )


async def _write_batches(store: Store, run_id: RunId, planned: pa.Table, batch_size: int) -> int:
    """Split the tables to extract into batch request files; returns the batch count."""
    wanted = planned.filter(planned.column("needs_columns")).select(list(TABLE_KEY_COLUMNS))
    count: int = math.ceil(wanted.num_rows / batch_size)
    for index in range(count):
        chunk = wanted.slice(index * batch_size, batch_size)
        await write_table(store, batch_request_key(run_id, index), chunk)
    return count


def plan_result(document: PlanDocument) -> PlanResult:
    """The result plan prints on stdout (the operator reads batch_count from it): the plan
    document's fields that the result line carries, named alike in both."""
    carried = set(PlanResult.model_fields) - {"phase"}
    fields = document.model_dump(include=carried)
    return PlanResult.model_validate(
        {**fields, "duration_seconds": round(document.duration_seconds, 3)}
    )
