"""Garbage collection on a local store: what no kept manifest lists goes, the rest stays."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from metatide.extractor.core.ids import ENTITIES, Entity, RunId
from metatide.extractor.state.files import state_key
from metatide.extractor.state.gc import collect_garbage
from metatide.extractor.state.manifest import MANIFEST_KEY, FileRef, Manifest
from metatide.extractor.state.marker import MARKER_KEY
from metatide.extractor.state.runfiles import history_manifest_key, summary_key
from metatide.extractor.storage import LocalStore

RUN1 = RunId("20250101t000000z-00000001")
RUN2 = RunId("20250102t000000z-00000002")
RUN3 = RunId("20250103t000000z-00000003")
ABORTED_OLD = RunId("20250102t120000z-0000000a")
ABORTED_OLDEST = RunId("20241231t000000z-0000000b")
NEWER = RunId("20250104t000000z-0000000c")


def manifest(run_id: RunId, parent: RunId | None, keys: dict[Entity, list[str]]) -> Manifest:
    return Manifest(
        run_id=run_id,
        parent_run_id=parent,
        marker=datetime(2025, 1, 1, tzinfo=UTC),
        committed_at=datetime(2025, 1, 1, tzinfo=UTC),
        bucket_count=1,
        files={
            entity: [
                FileRef(key=key, rows=1, bytes=1, sha256="0" * 64) for key in keys.get(entity, [])
            ]
            for entity in ENTITIES
        },
    ).sealed()


def put(store: LocalStore, *keys: str) -> None:
    for key in keys:
        asyncio.run(store.put(key, b"x"))


def keys(store: LocalStore) -> set[str]:
    async def listed() -> set[str]:
        return {info.key async for info in store.list("")}

    return asyncio.run(listed())


PARENTS = {RUN1: None, RUN2: RUN1, RUN3: RUN2}


def run_folder(run_id: RunId, committed: bool) -> list[str]:
    files = [f"runs/{run_id}/plan/plan.json", f"runs/{run_id}/columns/batch-00000.parquet"]
    if committed:
        files += [
            history_manifest_key(run_id),
            summary_key(run_id),
            f"runs/{run_id}/incremental-diff/table/part-00000.parquet",
        ]
    return files


def put_run(store: LocalStore, run_id: RunId, committed: bool) -> None:
    """A run's folder; a committed run's holds a real copy of its manifest (GC walks them)."""
    put(store, *run_folder(run_id, committed))
    if committed:
        copy = manifest(run_id, PARENTS.get(run_id), {})
        asyncio.run(store.put(history_manifest_key(run_id), copy.to_bytes()))


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_unreferenced_state_files_go_and_both_manifests_files_stay(store: LocalStore) -> None:
    old_table = state_key("table", RUN1, 0)
    kept_table = state_key("table", RUN2, 0)
    new_table = state_key("table", RUN3, 1)
    schema1, schema3 = state_key("schema", RUN1), state_key("schema", RUN3)
    column2, column3 = state_key("column", RUN2, 0), state_key("column", RUN3, 0)
    orphan = state_key("column", ABORTED_OLD, 0)
    put(
        store,
        old_table,
        kept_table,
        new_table,
        schema1,
        schema3,
        column2,
        column3,
        orphan,
        MANIFEST_KEY,
        MARKER_KEY,
        "lease.json",
    )
    previous = manifest(
        RUN2, RUN1, {"table": [kept_table], "schema": [schema1], "column": [column2]}
    )
    current = manifest(
        RUN3, RUN2, {"table": [kept_table, new_table], "schema": [schema3], "column": [column3]}
    )
    deleted = asyncio.run(collect_garbage(store, current, previous, keep_runs=10))
    assert keys(store) == {
        kept_table,
        new_table,
        schema1,
        schema3,
        column2,
        column3,
        MANIFEST_KEY,
        MARKER_KEY,
        "lease.json",
    }
    assert deleted == 2  # old_table and orphan


def test_without_a_previous_manifest_only_the_new_one_is_kept(store: LocalStore) -> None:
    mine, stale = state_key("database", RUN1), state_key("database", ABORTED_OLDEST)
    put(store, mine, stale, MANIFEST_KEY)
    current = manifest(RUN1, None, {"database": [mine]})
    assert asyncio.run(collect_garbage(store, current, None, keep_runs=3)) == 1
    assert keys(store) == {mine, MANIFEST_KEY}


def test_old_run_folders_beyond_keep_runs_and_aborted_runs_go(store: LocalStore) -> None:
    for run_id in (RUN1, RUN2, RUN3):
        put_run(store, run_id, committed=True)
    for run_id in (ABORTED_OLD, ABORTED_OLDEST, NEWER):
        put_run(store, run_id, committed=False)
    current = manifest(RUN3, RUN2, {})
    deleted = asyncio.run(collect_garbage(store, current, None, keep_runs=2))
    runs = {key.split("/")[1] for key in keys(store) if key.startswith("runs/")}
    assert runs == {RUN2, RUN3, NEWER}  # a newer folder may belong to a run still planning
    assert deleted == len(run_folder(RUN1, True)) + 2 * len(run_folder(ABORTED_OLD, False))
    assert set(run_folder(RUN3, committed=True)) <= keys(store)


def test_keep_one_run_keeps_only_the_current_run(store: LocalStore) -> None:
    for run_id in (RUN1, RUN2, RUN3):
        put_run(store, run_id, committed=True)
    asyncio.run(collect_garbage(store, manifest(RUN3, RUN2, {}), None, keep_runs=1))
    assert {key.split("/")[1] for key in keys(store)} == {RUN3}


def test_the_current_run_is_kept_before_its_history_manifest_exists(store: LocalStore) -> None:
    put(store, *run_folder(RUN2, committed=False), *run_folder(ABORTED_OLDEST, committed=False))
    asyncio.run(collect_garbage(store, manifest(RUN2, RUN1, {}), None, keep_runs=1))
    assert keys(store) == set(run_folder(RUN2, committed=False))


def test_garbage_collection_is_idempotent(store: LocalStore) -> None:
    stale = state_key("table", RUN1, 0)
    put(store, stale, MANIFEST_KEY, *run_folder(ABORTED_OLDEST, committed=False))
    current = manifest(RUN2, RUN1, {})
    first = asyncio.run(collect_garbage(store, current, None, keep_runs=5))
    assert first == 1 + len(run_folder(ABORTED_OLDEST, False))
    assert asyncio.run(collect_garbage(store, current, None, keep_runs=5)) == 0
    assert keys(store) == {MANIFEST_KEY}


def test_many_keys_are_deleted_in_chunks(store: LocalStore) -> None:
    garbage = [f"current-state/column/b{i:06d}-{RUN1}.parquet" for i in range(1001)]
    put(store, *garbage)
    assert asyncio.run(collect_garbage(store, manifest(RUN2, RUN1, {}), None, 1)) == 1001
    assert keys(store) == set()


def test_kept_states_keep_their_files_and_the_chain_decides_not_the_run_id(
    store: LocalStore,
) -> None:
    """Run ids sort by second only: the chain of parents says which states are newest."""
    late = RunId("20250105t000000z-00000001")  # committed first, in the same second ...
    early = RunId("20250105t000000z-ffffffff")  # ... as this one, which sorts after it
    newest = RunId("20250105t000000z-0000000f")
    files = {run: state_key("table", run, 0) for run in (late, early, newest)}
    put(store, *files.values(), MANIFEST_KEY)
    chain = [(late, None), (early, late), (newest, early)]
    for run, parent in chain:
        put(store, *run_folder(run, committed=True))
        copy = manifest(run, parent, {"table": [files[run]]})
        asyncio.run(store.put(history_manifest_key(run), copy.to_bytes()))
    current = manifest(newest, early, {"table": [files[newest]]})
    asyncio.run(collect_garbage(store, current, None, keep_runs=2))
    runs = {key.split("/")[1] for key in keys(store) if key.startswith("runs/")}
    assert runs == {newest, early}
    assert files[early] in keys(store)  # a kept state keeps its files
    assert files[late] not in keys(store)
