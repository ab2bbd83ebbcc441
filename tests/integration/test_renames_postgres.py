"""Renames kept as renames on a real PostgreSQL: the oid survives RENAME and SET SCHEMA, the
attnum survives RENAME COLUMN; an oid that comes back for another table is not a rename.

Each step changes the catalog, runs incrementally, and checks the run's change records, the
state against a fresh full extraction, and `diff` between the two states against the
records the run wrote.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped,unused-ignore]
import pyarrow.parquet as pq
import pytest

from metatide.extractor.core.ids import RunId
from metatide.extractor.core.spec import ExtractionSpec
from metatide.extractor.engine.changes import sorted_records
from metatide.extractor.engine.history import diff_between, kept, read_rows, table_history
from metatide.extractor.state.files import bucket_of
from metatide.extractor.state.runfiles import changes_key
from metatide.extractor.storage import open_store
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
    require_postgres,
    require_s3,
    s3_settings,
)

pytestmark = pytest.mark.integration

PG_BIN = Path("/usr/lib/postgresql/15/bin")

SCHEMA = """
CREATE SCHEMA archive;
CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric(10,2) NOT NULL DEFAULT 0);
CREATE TABLE customers (id int PRIMARY KEY, email text, name text);
"""


@pytest.fixture
def spec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ExtractionSpec]:
    require_postgres()
    name = f"metatide_renames_{uuid.uuid4().hex[:8]}"
    dsn = create_database(name)
    execute_sql(dsn, SCHEMA)
    monkeypatch.setenv("METATIDE_SOURCE_DSN", dsn)
    monkeypatch.setenv("METATIDE_TEST_RENAMES_DSN", dsn)
    yield make_spec({"kind": "postgresql", "databases": [name]}, f"file://{tmp_path / 'store'}")
    drop_database(name)


def step(spec: ExtractionSpec, tmp_path: Path, sql: str) -> list[dict[str, Any]]:
    """Apply DDL, run, check the state and the diff; returns the run's change records."""
    execute_sql(os.environ["METATIDE_TEST_RENAMES_DSN"], sql)
    name = uuid.uuid4().hex[:6]
    summary = asyncio.run(run_pipeline(spec, tmp_path / f"run-{name}"))
    store = open_store(spec)
    data = asyncio.run(store.get(changes_key(RunId(summary["run_id"])))).data
    records = sorted_records(pq.read_table(io.BytesIO(data))).to_pylist()
    state = asyncio.run(committed_state(spec, tmp_path / f"read-{name}"))
    reference = asyncio.run(
        full_state(spec, f"file://{tmp_path / f'ref-{name}'}", tmp_path / f"full-{name}")
    )
    assert_same_state(state, reference)

    async def recomputed() -> list[dict[str, Any]]:
        newer, older = (await kept(store, spec.state.keep_runs))[:2]
        found, _ = await diff_between(store, spec, older, newer, tmp_path / f"diff-{name}")
        rows: list[dict[str, Any]] = sorted_records(found).to_pylist()
        return rows

    assert asyncio.run(recomputed()) == records
    return records


def brief(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (
            r["entity"],
            r["change"],
            r["schema_name"],
            r["table_name"],
            r["column_name"],
            r["previous_schema_name"],
            r["previous_table_name"],
            r["previous_column_name"],
            tuple(r["changed_fields"]),
        )
        for r in records
        if r["entity"] in ("table", "column")
    ]


def test_renames_through_a_sequence_of_ddl(spec: ExtractionSpec, tmp_path: Path) -> None:
    asyncio.run(run_pipeline(spec, tmp_path / "first"))

    assert brief(step(spec, tmp_path, "ALTER TABLE orders RENAME TO purchases;")) == [
        ("table", "renamed", "public", "purchases", None, "public", "orders", None, ()),
    ]
    assert brief(step(spec, tmp_path, "ALTER TABLE purchases SET SCHEMA archive;")) == [
        ("table", "renamed", "archive", "purchases", None, "public", "purchases", None, ()),
    ]
    assert brief(step(spec, tmp_path, "ALTER TABLE customers RENAME COLUMN email TO mail;")) == [
        ("column", "renamed", "public", "customers", "mail", "public", "customers", "email", ()),
    ]
    records = step(
        spec,
        tmp_path,
        "ALTER TABLE customers RENAME TO clients;"
        "ALTER TABLE clients RENAME COLUMN mail TO contact;"
        "ALTER TABLE clients ALTER COLUMN contact TYPE varchar(300);"
        "ALTER TABLE archive.purchases ALTER COLUMN amount TYPE numeric(12,2);",
    )
    assert brief(records) == [  # in sorted_records' order: entity, change, key
        (
            "column",
            "renamed",
            "public",
            "clients",
            "contact",
            "public",
            "customers",
            "mail",
            ("data_type",),
        ),
        ("column", "updated", "archive", "purchases", "amount", None, None, None, ("data_type",)),
        ("table", "renamed", "public", "clients", None, "public", "customers", None, ()),
    ]
    amount = next(r for r in records if r["column_name"] == "amount")
    assert (amount["before"], amount["after"]) == (
        '{"data_type":"numeric(10,2)"}',
        '{"data_type":"numeric(12,2)"}',
    )
    contact = next(r for r in records if r["column_name"] == "contact")
    assert contact["before"] == '{"data_type":"text"}'
    assert contact["after"] == '{"data_type":"character varying(300)"}'

    # Dropped and created again with the very same DDL: the fingerprint cannot tell, the oid
    # can (classified UPDATED, reason object_replaced).
    records = step(
        spec,
        tmp_path,
        "DROP TABLE archive.purchases;"
        "CREATE TABLE archive.purchases (id bigint PRIMARY KEY,"
        " amount numeric(12,2) NOT NULL DEFAULT 0);",
    )
    assert brief(records) == [
        ("table", "updated", "archive", "purchases", None, None, None, None, ("object_id",)),
    ]
    assert records[0]["reason"] == "object_replaced"


# -- an oid that comes back ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_postgres(*args: str) -> None:
    command = list(args)
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)


@pytest.fixture
def private_cluster() -> Iterator[tuple[Path, int]]:
    """A throwaway PostgreSQL 15 cluster of its own: this test rewinds its OID counter."""
    if not (PG_BIN / "pg_resetwal").exists():
        pytest.fail(f"{PG_BIN}/pg_resetwal is missing: install postgresql-15")
    folder = Path(tempfile.mkdtemp(prefix="metatide-oid-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", _free_port()
    _as_postgres(
        str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"
    )
    start = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-o"]
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    _as_postgres(*start, options, "-l", str(folder / "log"), "start")
    try:
        yield folder, port
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-m",
                "immediate",
                "stop",
            ]
            if os.geteuid() == 0
            else [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


def test_an_oid_that_comes_back_for_another_table_is_a_drop_and_a_create(
    private_cluster: tuple[Path, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, port = private_cluster
    data = folder / "data"
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    monkeypatch.setenv("METATIDE_SOURCE_DSN", dsn)

    async def sql(statement: str) -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(statement)
        finally:
            await conn.close()

    asyncio.run(sql("CREATE TABLE pad (x int)"))  # keeps the oid of interest above the first
    asyncio.run(sql("CREATE TABLE ledger (entry bigint, booked date, amount numeric)"))
    oid = asyncio.run(sql("SELECT 'public.ledger'::regclass::oid"))
    spec = make_spec({"kind": "postgresql"}, f"file://{tmp_path / 'store'}")
    asyncio.run(run_pipeline(spec, tmp_path / "first"))
    asyncio.run(sql("DROP TABLE ledger"))
    # A dead pg_class row and the dropped table's file both hold its oid until vacuum and
    # the next checkpoint remove them.
    asyncio.run(sql("VACUUM pg_catalog.pg_class"))
    asyncio.run(sql("CHECKPOINT"))
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = str(PG_BIN / "pg_ctl")
    # Rewind the OID counter so the next table gets the dropped one's oid (a neighbour is
    # tried too, in case a server version hands out the first OID after a reset elsewhere).
    for start_at in (oid, oid - 1):
        _as_postgres(pg_ctl, "-D", str(data), "-w", "stop")
        _as_postgres(str(PG_BIN / "pg_resetwal"), "-o", str(start_at), str(data))
        _as_postgres(
            pg_ctl, "-D", str(data), "-w", "-o", options, "-l", str(folder / "log"), "start"
        )
        asyncio.run(sql("CREATE TABLE sessions (token uuid, started timestamptz)"))
        if asyncio.run(sql("SELECT 'public.sessions'::regclass::oid")) == oid:
            break
        asyncio.run(sql("DROP TABLE sessions"))
    else:
        pytest.fail(f"could not make PostgreSQL give a new table the oid {oid} again")

    summary = asyncio.run(run_pipeline(spec, tmp_path / "second"))
    store = open_store(spec)
    data_bytes = asyncio.run(store.get(changes_key(RunId(summary["run_id"])))).data
    tables = sorted(
        (r["change"], r["table_name"], r["previous_table_name"])
        for r in pq.read_table(io.BytesIO(data_bytes)).to_pylist()
        if r["entity"] == "table"
    )
    assert tables == [("created", "sessions", None), ("deleted", "ledger", None)]


def test_looking_back_on_minio(
    spec: ExtractionSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """show, diff and history read kept states from S3 as from a folder, and history of one
    table reads only the bucket that holds it in each state."""
    require_s3()
    settings = s3_settings()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", settings.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", settings.secret_key)
    bucket = fresh_bucket("history")
    try:
        s3 = with_fields(
            spec,
            storage={"url": f"s3://{bucket}/main", "endpoint": settings.endpoint, "secure": False},
            state={"tablesPerBucket": 1},
        )
        first = asyncio.run(run_pipeline(s3, tmp_path / "first"))
        execute_sql(
            os.environ["METATIDE_TEST_RENAMES_DSN"],
            "ALTER TABLE orders RENAME TO purchases; ALTER TABLE purchases ADD COLUMN note text;",
        )
        second = asyncio.run(run_pipeline(s3, tmp_path / "second"))
        store = open_store(s3)

        async def look() -> tuple[Any, ...]:
            states = await kept(store, s3.state.keep_runs)
            newest = await read_rows(store, s3, states[0], tmp_path / "show")
            records, _ = await diff_between(store, s3, states[1], states[0], tmp_path / "diff")
            key = (newest["table"]["database_name"][0].as_py(), "public", "purchases")
            versions, meter = await table_history(store, s3, key, tmp_path / "history")
            return states, newest, records, versions, meter

        states, newest, records, versions, meter = asyncio.run(look())
        assert [m.run_id for m in states] == [second["run_id"], first["run_id"]]
        assert sorted(newest["table"]["table_name"].to_pylist()) == ["customers", "purchases"]
        assert [
            (r["change"], r["table_name"]) for r in records.to_pylist() if r["entity"] == "table"
        ] == [("renamed", "purchases")]
        assert [v.key[2] for v in versions] == ["orders", "purchases"]
        held = sum(
            ref.bytes
            for version in versions
            for entity in ("table", "column")
            for ref in version.manifest.files[entity]
            if ref.bucket == bucket_of(*version.key, version.manifest.bucket_count)
        )
        small = sum(
            ref.bytes
            for version in versions
            for entity in ("database", "schema")
            for ref in version.manifest.files[entity]
        )
        assert meter.bytes_read <= held + small + 64 * 1024  # plus manifests and change records
    finally:
        delete_bucket(bucket)
