"""State integrity on SQLite and the local store: logical counts, the periodic check, migration.

The damage-and-recovery matrix runs on real PostgreSQL with the local store and MinIO
(tests/integration/test_state_integrity.py); these tests pin the bookkeeping around it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from metatide.extractor.core.errors import (
    MassDeleteRefusedError,
    NewerStateFormatError,
    StateCorruptError,
)
from metatide.extractor.core.spec import ExtractionSpec
from metatide.extractor.phases.columns import extract_batch
from metatide.extractor.phases.finalize import finalize
from metatide.extractor.phases.plan import plan
from metatide.extractor.sources import open_source
from metatide.extractor.state.files import read_committed
from metatide.extractor.state.manifest import MANIFEST_KEY, _document_hash
from metatide.extractor.storage import open_store
from tests.harness import (
    assert_same_state,
    committed_state,
    full_state,
    make_spec,
    run_pipeline,
    with_fields,
)
from tests.harness import execute_sqlite as execute

TABLES = 10


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "source.sqlite"
    execute(
        path, "".join(f"CREATE TABLE t{i} (id INTEGER PRIMARY KEY, v TEXT);" for i in range(TABLES))
    )
    return path


def spec_for(database: Path, store: Path, **state: Any) -> ExtractionSpec:
    return make_spec(
        {"kind": "sqlite", "path": str(database)},
        f"file://{store}",
        state={"tablesPerBucket": 100, "compactionRatio": 0.5, **state},
    )


def run(spec: ExtractionSpec, workdir: Path) -> dict[str, Any]:
    return asyncio.run(run_pipeline(spec, workdir))


def state_counts(spec: ExtractionSpec, workdir: Path) -> dict[str, int]:
    state = asyncio.run(committed_state(spec, workdir))
    return {entity: table.num_rows for entity, table in state.items()}


def test_counts_are_logical_rows_whatever_the_layers(database: Path, tmp_path: Path) -> None:
    """Base and delta files hold more rows than a reader sees; the summary counts what it sees,
    and two stores with different bucket sizes report the same numbers."""
    specs = [
        spec_for(database, tmp_path / "one-bucket"),
        spec_for(database, tmp_path / "small-buckets", tablesPerBucket=3),
    ]
    for spec in specs:
        run(spec, tmp_path / "first")
    execute(database, "ALTER TABLE t1 ADD COLUMN w INTEGER; ALTER TABLE t2 ADD COLUMN w INTEGER;")
    seconds = [run(spec, tmp_path / "second") for spec in specs]
    execute(database, "ALTER TABLE t1 ADD COLUMN z INTEGER; DROP TABLE t5;")
    thirds = [run(spec, tmp_path / "third") for spec in specs]
    layered = asyncio.run(read_committed(open_store(specs[0])))
    assert layered is not None
    assert layered.manifest.physical_rows("table") > thirds[0]["state_rows"]["table"]
    for spec, second, third in zip(specs, seconds, thirds, strict=True):
        expected = state_counts(spec, tmp_path / "read")
        assert (
            third["state_rows"]
            == expected
            == {
                "database": 1,
                "schema": 1,
                "table": TABLES - 1,
                "column": 2 * (TABLES - 1) + 3,  # t1 gained w and z, t2 gained w, t5 is gone
            }
        )
        assert second["columns"]["carried_forward"] == 2 * (TABLES - 2)
        assert third["columns"] == {
            "extracted": 4,
            "carried_forward": 17,
            "deleted": 2,
        }
    assert thirds[0]["state_rows"] == thirds[1]["state_rows"]


def test_the_mass_delete_guard_counts_logical_tables_in_finalize(
    database: Path, tmp_path: Path
) -> None:
    """Tables dropped between plan and their column batch join the deletions at finalize;
    the guard's fraction is over the tables a reader sees (10), not stored rows (12)."""
    spec = spec_for(database, tmp_path / "store")
    guarded = with_fields(spec, massDeleteGuard={"maxDeletedFraction": 0.45})
    run(spec, tmp_path / "first")
    execute(database, "ALTER TABLE t1 ADD COLUMN w INTEGER; ALTER TABLE t2 ADD COLUMN w INTEGER;")
    run(spec, tmp_path / "second")  # a delta file: 12 table rows stored for 10 tables
    execute(database, "".join(f"ALTER TABLE t{i} ADD COLUMN q INTEGER;" for i in range(5)))

    async def plan_then_drop_then_finalize() -> None:
        store = open_store(guarded)
        document = await plan(guarded, store, open_source(guarded), tmp_path / "plan")
        execute(database, "".join(f"DROP TABLE t{i};" for i in range(5)))
        for index in range(document.batch_count):
            await extract_batch(store, open_source(guarded), document.run_id, index)
        await finalize(guarded, store, tmp_path / "finalize", document.run_id)

    with pytest.raises(MassDeleteRefusedError, match="5 of 10 tables"):
        asyncio.run(plan_then_drop_then_finalize())


def test_every_nth_run_verifies_every_file(database: Path, tmp_path: Path) -> None:
    spec = spec_for(database, tmp_path / "store", verifyEveryRuns=3)
    verified = []
    for number in range(7):
        summary = run(spec, tmp_path / f"run-{number}")
        verified.append(summary["state_verified"])
    # Run 1 is a full extraction (it writes every file anew); then every third commit.
    assert verified == [True, False, False, True, False, False, True]


def test_a_verifying_run_fails_on_a_damaged_carried_file(database: Path, tmp_path: Path) -> None:
    spec = spec_for(database, tmp_path / "store", verifyEveryRuns=0)
    run(spec, tmp_path / "first")
    found = asyncio.run(read_committed(open_store(spec)))
    assert found is not None
    column_file = found.manifest.files["column"][0].key
    path = tmp_path / "store" / spec.connection_prefix / column_file
    path.write_bytes(path.read_bytes()[:-1])
    assert run(spec, tmp_path / "unaware")["tables"]["NO CHANGE"] == TABLES
    checking = with_fields(
        spec, state={**spec.state.model_dump(by_alias=True), "verifyEveryRuns": 1}
    )
    with pytest.raises(StateCorruptError, match=column_file):
        run(checking, tmp_path / "checking")


def test_a_v2_manifest_is_migrated_by_rewriting_the_state_once(
    database: Path, tmp_path: Path
) -> None:
    spec = spec_for(database, tmp_path / "store")
    run(spec, tmp_path / "first")
    execute(database, "ALTER TABLE t1 ADD COLUMN w INTEGER;")
    run(spec, tmp_path / "second")
    key = tmp_path / "store" / spec.connection_prefix / MANIFEST_KEY
    document = json.loads(key.read_bytes())
    for field in ("sequence", "verified_sequence", "logical_rows"):
        del document[field]
    document["format_version"] = 2
    document["content_hash"] = _document_hash(document)
    key.write_text(json.dumps(document))

    execute(database, "ALTER TABLE t2 ADD COLUMN w INTEGER;")
    summary = run(spec, tmp_path / "third")
    assert summary["tables"]["UPDATED"] == 1
    assert summary["state_rows"] == state_counts(spec, tmp_path / "read")
    migrated = asyncio.run(read_committed(open_store(spec)))
    assert migrated is not None
    assert migrated.manifest.sequence == 1  # counted on from the v2 manifest's 0
    assert migrated.manifest.logical_rows == summary["state_rows"]
    assert not migrated.manifest.layer("table", "delta")  # rewritten as base files
    reference = asyncio.run(full_state(spec, f"file://{tmp_path / 'ref'}", tmp_path / "full"))
    assert_same_state(asyncio.run(committed_state(spec, tmp_path / "read2")), reference)


def test_a_state_from_a_newer_metatide_is_never_overwritten(database: Path, tmp_path: Path) -> None:
    spec = spec_for(database, tmp_path / "store")
    run(spec, tmp_path / "first")
    key = tmp_path / "store" / spec.connection_prefix / MANIFEST_KEY
    document = json.loads(key.read_bytes())
    document["format_version"] = 99
    key.write_text(json.dumps(document))
    for attempt in (spec, with_fields(spec, forceFullExtraction=True)):
        with pytest.raises(NewerStateFormatError, match="upgrade metatide"):
            run(attempt, tmp_path / "again")
    assert json.loads(key.read_bytes())["format_version"] == 99


def test_a_missing_manifest_copy_is_replaced_by_the_newest_kept_one(
    database: Path, tmp_path: Path
) -> None:
    """An undecodable manifest: a full extraction's baseline is the newest verified copy
    under runs/, so its diff still knows what existed."""
    spec = spec_for(database, tmp_path / "store")
    first = run(spec, tmp_path / "first")
    key = tmp_path / "store" / spec.connection_prefix / MANIFEST_KEY
    key.write_bytes(b"\x00garbage")
    execute(database, "DROP TABLE t9;")
    recovered = run(with_fields(spec, forceFullExtraction=True), tmp_path / "recovery")
    assert recovered["baseline"]["complete"] is False
    assert f"runs/{first['run_id']}/manifest.json" in recovered["baseline"]["problems"][0]
    assert recovered["diff"]["table"] == {"created": 0, "updated": 0, "deleted": 1}


def test_garbage_collection_leaves_no_empty_folders(database: Path, tmp_path: Path) -> None:
    spec = with_fields(spec_for(database, tmp_path / "store"), state={"keepRuns": 2})
    for number in range(6):
        execute(database, f"CREATE TABLE extra{number} (id INTEGER);")
        run(spec, tmp_path / f"run-{number}")
    root = tmp_path / "store" / spec.connection_prefix
    empty = [
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir() and not any(p.iterdir())
    ]
    assert empty == []
    assert len(list((root / "runs").iterdir())) == 2
