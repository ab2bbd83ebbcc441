"""Damaged state on real PostgreSQL with the local store and MinIO: found, reported, recovered.

For every kind of committed file (the manifest, database and schema files, table and column
files in both layers) a byte is flipped or the file removed. Then:

- a run that reads the damaged file fails with a StateCorruptError that names it and advises a
  full extraction, and commits nothing; a run that does not read it (a column file carried by
  reference) succeeds, and `metatide verify` (and the periodic check) finds the damage;
- following the advice succeeds: the full extraction needs no old file, reports which files
  its baseline skipped, leaves a state equal to a fresh full extraction's and no manifest
  listing a damaged file; the next incremental run is ordinary again.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from metatide.extractor.core.errors import StateCorruptError
from metatide.extractor.core.spec import ExtractionSpec
from metatide.extractor.state.files import read_committed
from metatide.extractor.state.manifest import MANIFEST_KEY, FileRef, Manifest
from metatide.extractor.state.verify import verify_state
from metatide.extractor.storage import Store, open_store
from tests.harness import (
    assert_same_state,
    committed_state,
    full_state,
    make_spec,
    run_pipeline,
    with_fields,
)
from tests.services import (
    create_database,
    delete_bucket,
    drop_database,
    execute_sql,
    fresh_bucket,
    postgres_dsn_for,
    require_postgres,
    require_s3,
    s3_settings,
)

pytestmark = pytest.mark.integration

TABLES = 10
SCHEMA = "".join(f"CREATE TABLE t{i} (id int PRIMARY KEY, v text);" for i in range(TABLES))
CHANGE = "ALTER TABLE t3 ADD COLUMN w int; COMMENT ON TABLE t4 IS 'changed';"


@dataclass(frozen=True)
class Damage:
    """Which committed file to damage, and how."""

    name: str
    entity: str
    layer: str | None
    how: str = "flip"  # flip a byte, or "delete" the file


DAMAGES = [
    Damage("database", "database", None),
    Damage("schema", "schema", None),
    Damage("table-base", "table", "base"),
    Damage("table-delta", "table", "delta"),
    Damage("column-base", "column", "base"),
    Damage("column-delta", "column", "delta"),
    Damage("column-base-missing", "column", "base", "delete"),
    Damage("manifest-checksum", "manifest", None),
    Damage("manifest-garbage", "manifest", None, "garbage"),
]


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    require_postgres()
    name = f"metatide_integrity_{uuid.uuid4().hex[:8]}"
    dsn = create_database(name)
    execute_sql(dsn, SCHEMA)
    monkeypatch.setenv("METATIDE_SOURCE_DSN", dsn)
    yield name
    drop_database(name)


@pytest.fixture(params=["file", "s3"])
def storage(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    if request.param == "file":
        yield {"url": f"file://{tmp_path / 'store'}"}
        return
    require_s3()
    settings = s3_settings()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", settings.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", settings.secret_key)
    bucket = fresh_bucket("integrity")
    yield {"url": f"s3://{bucket}/main", "endpoint": settings.endpoint, "secure": False}
    delete_bucket(bucket)


def spec_for(database: str, storage: dict[str, Any], **fields: Any) -> ExtractionSpec:
    # One bucket: the second run's change lands in a delta file (2 of 10 tables < ratio 0.3).
    state = {"tablesPerBucket": 100, "compactionRatio": 0.3, "verifyEveryRuns": 0}
    return make_spec(
        {"kind": "postgresql", "databases": [database]}, storage, state=state, **fields
    )


def committed(spec: ExtractionSpec) -> Manifest:
    found = asyncio.run(read_committed(open_store(spec)))
    assert found is not None
    return found.manifest


def target_file(manifest: Manifest, damage: Damage) -> FileRef:
    refs = [
        ref
        for ref in manifest.files[damage.entity]  # type: ignore[index]
        if damage.layer is None or ref.layer == damage.layer
    ]
    assert refs, f"the state has no {damage.name} file to damage"
    return refs[0]


async def _damage(store: Store, key: str, how: str) -> None:
    if how == "delete":
        await store.delete([key])
        return
    data = bytearray((await store.get(key)).data)
    if how == "garbage":
        data = bytearray(b'{"format_version": 3, "run_id": ')
    elif key == MANIFEST_KEY:  # still JSON, but a row count no longer matches the checksum
        position = data.index(b'"rows":') + len(b'"rows":')
        data[position] = ord("9") if data[position] != ord("9") else ord("8")
    else:
        data[len(data) // 2] ^= 0x20
    await store.put(key, bytes(data))


def damage_state(spec: ExtractionSpec, damage: Damage) -> str:
    """Damage one committed file; returns its key."""
    key = MANIFEST_KEY if damage.entity == "manifest" else target_file(committed(spec), damage).key
    asyncio.run(_damage(open_store(spec), key, damage.how))
    return key


def build_layered_state(spec: ExtractionSpec, database: str, tmp_path: Path) -> None:
    """Two runs: a base file per entity, then a delta file for the changed tables."""
    asyncio.run(run_pipeline(spec, tmp_path / "first"))
    execute_sql(postgres_dsn_for(database), CHANGE)
    second = asyncio.run(run_pipeline(spec, tmp_path / "second"))
    assert second["tables"]["UPDATED"] == 2
    manifest = committed(spec)
    assert manifest.layer("column", "delta"), "expected a delta file"
    # Counts are what a reader sees, not the rows stored in base and delta files together.
    state = asyncio.run(committed_state(spec, tmp_path / "counted"))
    assert second["state_rows"] == {entity: rows.num_rows for entity, rows in state.items()}
    assert manifest.physical_rows("table") == TABLES + 2
    assert second["columns"]["carried_forward"] == 2 * (TABLES - 2)


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda d: d.name)
def test_damage_is_found_reported_and_recovered_by_following_the_advice(
    damage: Damage, database: str, storage: dict[str, Any], tmp_path: Path
) -> None:
    spec = spec_for(database, storage)
    build_layered_state(spec, database, tmp_path)
    before = committed(spec)
    key = damage_state(spec, damage)

    carried_by_reference = damage.entity == "column"
    if carried_by_reference:
        # A no-change run does not read column files: it succeeds (it never found the
        # damage), and the audit and the periodic check do find it.
        summary = asyncio.run(run_pipeline(spec, tmp_path / "no-change"))
        assert summary["tables"]["NO CHANGE"] == TABLES
        report = asyncio.run(verify_state(open_store(spec)))
        assert [bad.key for bad in report.bad] == [key]
        checking = with_fields(
            spec, state={**spec.state.model_dump(by_alias=True), "verifyEveryRuns": 1}
        )
        with pytest.raises(StateCorruptError) as caught:
            asyncio.run(run_pipeline(checking, tmp_path / "checking"))
    else:
        with pytest.raises(StateCorruptError) as caught:
            asyncio.run(run_pipeline(spec, tmp_path / "failing"))
        expected = "unreadable" if damage.entity == "manifest" else before.run_id
        assert committed_run(spec) == expected  # nothing was committed
    message = str(caught.value)
    if damage.entity != "manifest":
        assert key in message
    assert "forceFullExtraction: true" in message
    assert "--force-full" in message

    # Following the advice: a full extraction, which needs no old file.
    recovered = asyncio.run(
        run_pipeline(with_fields(spec, forceFullExtraction=True), tmp_path / "recovery")
    )
    assert recovered["full_extraction"] is True
    assert recovered["baseline"]["complete"] is False
    problems = " ".join(recovered["baseline"]["problems"])
    assert (MANIFEST_KEY if damage.entity == "manifest" else key) in problems
    assert recovered["state_verified"] is True
    assert recovered["state_rows"]["table"] == TABLES
    report = asyncio.run(verify_state(open_store(spec)))
    assert report.ok, report.bad
    assert key not in committed(spec).referenced_keys() or damage.entity == "manifest"
    state = asyncio.run(committed_state(spec, tmp_path / "read"))
    reference = asyncio.run(
        full_state(spec, reference_url(storage, tmp_path), tmp_path / "reference")
    )
    assert_same_state(state, reference)

    after = asyncio.run(run_pipeline(spec, tmp_path / "after"))
    assert after["full_extraction"] is False
    assert after["baseline"] == {"complete": True, "problems": []}
    assert after["tables"]["NO CHANGE"] == TABLES


def committed_run(spec: ExtractionSpec) -> str | None:
    try:
        found = asyncio.run(read_committed(open_store(spec)))
    except StateCorruptError:
        return "unreadable"
    return found.manifest.run_id if found else None


def reference_url(storage: dict[str, Any], tmp_path: Path) -> str:
    if storage["url"].startswith("file://"):
        return f"file://{tmp_path / 'reference-store'}"
    return storage["url"].rsplit("/", 1)[0] + f"/reference-{uuid.uuid4().hex[:6]}"
