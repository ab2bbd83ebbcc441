"""The whole pipeline on SQLite and the local store: incremental equals full, diff is exact."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from metatide.extractor.core.errors import MassDeleteRefusedError
from metatide.extractor.core.ids import RunId
from metatide.extractor.core.spec import ExtractionSpec
from metatide.extractor.state.manifest import MANIFEST_KEY
from metatide.extractor.state.marker import MARKER_KEY
from metatide.extractor.state.runfiles import diff_key
from metatide.extractor.storage import open_store
from tests.harness import (
    assert_same_state,
    committed_state,
    expected_diff,
    full_state,
    make_spec,
    published_diff,
    run_pipeline,
    with_fields,
)
from tests.harness import execute_sqlite as execute


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "source.sqlite"
    execute(path, "CREATE TABLE a (id INTEGER PRIMARY KEY, name TEXT NOT NULL);")
    return path


@pytest.fixture
def spec(tmp_path: Path, database: Path) -> ExtractionSpec:
    return make_spec(
        {"kind": "sqlite", "path": str(database)},
        f"file://{tmp_path}/store",
        columns={"batchSize": 2, "parallelism": 2},
        state={"tablesPerBucket": 1},
    )


def check_run(spec: ExtractionSpec, tmp_path: Path, name: str) -> dict[str, object]:
    """Run once; assert state == full extraction and diff == difference of states."""
    before = asyncio.run(committed_state(spec, tmp_path / f"{name}-before"))
    summary = asyncio.run(run_pipeline(spec, tmp_path / f"{name}-work"))
    after = asyncio.run(committed_state(spec, tmp_path / f"{name}-after"))
    reference = asyncio.run(full_state(spec, f"file://{tmp_path}/full-{name}", tmp_path / name))
    assert_same_state(after, reference)
    published = asyncio.run(published_diff(open_store(spec), RunId(str(summary["run_id"]))))
    assert published == expected_diff(before, after)
    return summary


SEQUENCE = [
    "CREATE TABLE b (x TEXT, y REAL); CREATE VIEW v AS SELECT id FROM a;",
    "ALTER TABLE a ADD COLUMN email TEXT;",
    'CREATE TABLE "we""ird.na{me} ü" ("col ""q""" INTEGER, "x.y" TEXT DEFAULT \'{}\');',
    "DROP TABLE b; ALTER TABLE a RENAME COLUMN name TO full_name;",
    "DROP VIEW v; CREATE VIEW v AS SELECT id, email FROM a;",
    "ALTER TABLE a RENAME TO a2; CREATE TABLE c (k INTEGER -- the key\n);",
    "",
]


def test_incremental_state_equals_full_state_after_each_change(
    spec: ExtractionSpec, database: Path, tmp_path: Path
) -> None:
    check_run(spec, tmp_path, "first")
    for step, script in enumerate(SEQUENCE):
        execute(database, script)
        check_run(spec, tmp_path, f"step{step}")


def test_counts_follow_the_classification(
    spec: ExtractionSpec, database: Path, tmp_path: Path
) -> None:
    first = asyncio.run(run_pipeline(spec, tmp_path / "w1"))
    assert first["full_extraction"] is True
    assert first["tables"]["CREATED"] == 1
    execute(database, "CREATE TABLE b (x TEXT); ALTER TABLE a ADD COLUMN z INT; ")
    execute(database, "CREATE TABLE c (x TEXT); DROP TABLE c;")
    second = asyncio.run(run_pipeline(spec, tmp_path / "w2"))
    assert second["tables"] == {
        "CREATED": 1,
        "UPDATED": 1,
        "NO CHANGE": 0,
        "BACKFILL": 0,
        "deleted": 0,
    }
    assert second["columns"]["extracted"] == 4  # b.x + a.id, a.name, a.z
    assert second["diff"]["column"] == {"created": 2, "updated": 0, "deleted": 0}
    execute(database, "DROP TABLE b;")
    third = asyncio.run(run_pipeline(spec, tmp_path / "w3"))
    assert third["tables"]["deleted"] == 1
    assert third["tables_deleted_by_reason"] == {"dropped": 1, "out_of_scope": 0}
    assert third["columns"] == {"extracted": 0, "carried_forward": 3, "deleted": 1}


def test_reasons_are_recorded_in_plan_diff_and_summary(
    spec: ExtractionSpec, database: Path, tmp_path: Path
) -> None:
    asyncio.run(run_pipeline(spec, tmp_path / "w1"))
    execute(database, "CREATE TABLE b (x TEXT); ALTER TABLE a ADD COLUMN z INT;")
    summary = asyncio.run(run_pipeline(spec, tmp_path / "w2"))
    assert summary["tables_by_reason"] == {
        "new_after_marker": 1,
        "new_before_marker": 0,
        "type_changed": 0,
        "object_replaced": 0,
        "ddl_time_after_marker": 0,
        "fingerprint_changed": 1,
        "ddl_time_changed": 0,
        "unchanged": 0,
    }
    store = open_store(spec)
    run_id = RunId(str(summary["run_id"]))
    plan = json.loads(asyncio.run(store.get(f"runs/{run_id}/plan/plan.json")).data)
    assert plan["tables_by_reason"]["fingerprint_changed"] == 1
    planned = pq.read_table(
        io.BytesIO(asyncio.run(store.get(f"runs/{run_id}/plan/table.parquet")).data)
    )
    assert dict(
        zip(planned["table_name"].to_pylist(), planned["reason"].to_pylist(), strict=True)
    ) == {"a": "fingerprint_changed", "b": "new_after_marker"}
    diff = pq.read_table(
        io.BytesIO(asyncio.run(store.get(diff_key(run_id, "table", "parquet"))).data)
    ).to_pylist()
    assert [(r["table_name"], r["change"], r["reason"]) for r in diff] == [
        ("a", "updated", "fingerprint_changed"),
        ("b", "created", "new_after_marker"),
    ]


def test_no_change_run_writes_only_the_manifest(spec: ExtractionSpec, tmp_path: Path) -> None:
    execute(Path(spec.source.path), "CREATE TABLE b (x TEXT); CREATE TABLE c (y TEXT);")  # type: ignore[union-attr]
    asyncio.run(run_pipeline(spec, tmp_path / "w1"))
    root = tmp_path / "store" / spec.connection_prefix / "current-state"
    before = {path: path.stat().st_mtime_ns for path in root.rglob("*.parquet")}
    summary = asyncio.run(run_pipeline(spec, tmp_path / "w2"))
    after = {path: path.stat().st_mtime_ns for path in root.rglob("*.parquet")}
    assert before == after
    assert summary["state_bytes_written"] == 0
    assert summary["tables"]["NO CHANGE"] == 3
    assert summary["batches"] == 0


def test_only_touched_buckets_are_rewritten(
    spec: ExtractionSpec, database: Path, tmp_path: Path
) -> None:
    execute(database, "".join(f"CREATE TABLE t{i} (x INT);" for i in range(40)))
    spec = with_fields(spec, state={**spec.state.model_dump(by_alias=True), "keepRuns": 2})
    asyncio.run(run_pipeline(spec, tmp_path / "w1"))
    root = tmp_path / "store" / spec.connection_prefix / "current-state"
    before = set(root.rglob("*.parquet"))
    execute(database, "ALTER TABLE t7 ADD COLUMN y INT;")
    summary = asyncio.run(run_pipeline(spec, tmp_path / "w2"))
    manifest = json.loads((root / "_manifest.json").read_text())
    new_keys = [
        ref["key"]
        for refs in manifest["files"].values()
        for ref in refs
        if summary["run_id"] in ref["key"]
    ]
    assert sorted(key.split("/")[1] for key in new_keys) == ["column", "table"]
    after = set(root.rglob("*.parquet"))
    assert len(after - before) == 2
    assert before <= after  # the kept states' files stay (keepRuns 2: this one and w1) ...
    asyncio.run(run_pipeline(spec, tmp_path / "w3"))
    assert len(before - set(root.rglob("*.parquet"))) == 2  # ... until w1 is no longer kept


def test_marker_follows_the_manifest(spec: ExtractionSpec, tmp_path: Path) -> None:
    summary = asyncio.run(run_pipeline(spec, tmp_path / "w1"))
    root = tmp_path / "store" / spec.connection_prefix
    marker = (root / MARKER_KEY).read_text()
    manifest = json.loads((root / MANIFEST_KEY).read_text())
    assert marker == manifest["marker"].replace("+00:00", "Z")
    assert summary["next_marker"].startswith(marker[:19])


def test_a_connection_with_zero_tables_runs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite"
    execute(empty, "")
    spec = make_spec({"kind": "sqlite", "path": str(empty)}, f"file://{tmp_path}/store")
    for name in ("w1", "w2"):
        summary = asyncio.run(run_pipeline(spec, tmp_path / name))
        assert summary["state_rows"]["table"] == 0


def test_mass_delete_guard_refuses_and_commits_nothing(
    spec: ExtractionSpec, database: Path, tmp_path: Path
) -> None:
    execute(database, "CREATE TABLE b (x INT); CREATE TABLE c (x INT);")
    asyncio.run(run_pipeline(spec, tmp_path / "w1"))
    root = tmp_path / "store" / spec.connection_prefix
    manifest_before = (root / MANIFEST_KEY).read_bytes()
    execute(database, "DROP TABLE b; DROP TABLE c;")
    with pytest.raises(MassDeleteRefusedError, match="maxDeletedFraction"):
        asyncio.run(run_pipeline(spec, tmp_path / "w2"))
    assert (root / MANIFEST_KEY).read_bytes() == manifest_before
    allowed = with_fields(spec, massDeleteGuard={"maxDeletedFraction": 1.0})
    summary = asyncio.run(run_pipeline(allowed, tmp_path / "w3"))
    assert summary["tables"]["deleted"] == 2


def test_empty_source_is_refused_while_state_has_tables(
    spec: ExtractionSpec, database: Path, tmp_path: Path
) -> None:
    asyncio.run(run_pipeline(spec, tmp_path / "w1"))
    execute(database, "DROP TABLE a;")
    with pytest.raises(MassDeleteRefusedError, match="allowEmptySource"):
        asyncio.run(run_pipeline(spec, tmp_path / "w2"))


def test_narrowed_scope_deletes_as_out_of_scope(
    spec: ExtractionSpec, database: Path, tmp_path: Path
) -> None:
    execute(database, "CREATE TABLE keep_me (x INT); CREATE TABLE tmp_1 (x INT);")
    asyncio.run(run_pipeline(spec, tmp_path / "w1"))
    narrowed = with_fields(
        spec,
        source={
            "kind": "sqlite",
            "path": str(database),
            "scope": {"exclude": [{"table": "tmp_*"}]},
        },
    )
    summary = asyncio.run(run_pipeline(narrowed, tmp_path / "w2"))
    assert summary["tables_deleted_by_reason"] == {"dropped": 0, "out_of_scope": 1}
    widened = asyncio.run(run_pipeline(spec, tmp_path / "w3"))
    assert widened["tables"]["CREATED"] == 1  # no creation time in SQLite: CREATED, not BACKFILL


def test_jsonl_output(spec: ExtractionSpec, tmp_path: Path) -> None:
    jsonl = with_fields(spec, output={"format": "jsonl"})
    summary = asyncio.run(run_pipeline(jsonl, tmp_path / "w1"))
    path = (
        tmp_path
        / "store"
        / spec.connection_prefix
        / "runs"
        / summary["run_id"]
        / "incremental-diff"
        / "column"
        / "part-00000.jsonl"
    )
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert {row["column_name"] for row in rows} == {"id", "name"}
    assert {row["change"] for row in rows} == {"created"}


def test_changes_go_to_a_delta_until_the_bucket_is_compacted(
    spec: ExtractionSpec, database: Path, tmp_path: Path
) -> None:
    layered = with_fields(spec, state={"tablesPerBucket": 1000, "compactionRatio": 0.1})
    execute(database, "".join(f"CREATE TABLE t{i} (x INT);" for i in range(40)))
    check_run(layered, tmp_path, "full")
    root = tmp_path / "store" / spec.connection_prefix / "current-state"

    def layers() -> list[str]:
        manifest = json.loads((root / "_manifest.json").read_text())
        return sorted(ref["layer"] for ref in manifest["files"]["column"])

    assert layers() == ["base"]
    execute(database, "ALTER TABLE t7 ADD COLUMN y INT; DROP TABLE t8;")
    first = check_run(layered, tmp_path, "delta1")
    assert layers() == ["base", "delta"]
    assert first["state_bytes_written"] > 0
    execute(database, "ALTER TABLE t9 ADD COLUMN y INT; CREATE TABLE t8 (z TEXT);")
    check_run(layered, tmp_path, "delta2")
    assert layers() == ["base", "delta"]
    execute(database, "".join(f"ALTER TABLE t{i} ADD COLUMN w INT;" for i in range(10, 16)))
    check_run(layered, tmp_path, "compacted")
    assert layers() == ["base"]


def test_renaming_the_only_table_is_not_a_mass_delete(
    spec: ExtractionSpec, database: Path, tmp_path: Path
) -> None:
    """The guard counts a table whose id reappears under a new name as renamed, not deleted."""
    asyncio.run(run_pipeline(spec, tmp_path / "w1"))
    execute(database, "ALTER TABLE a RENAME TO a_renamed;")
    summary = asyncio.run(run_pipeline(spec, tmp_path / "w2"))
    assert summary["changes"]["table"]["renamed"] == 1
    assert summary["changes"]["table"]["deleted"] == 0
