"""The pipeline against real servers: PostgreSQL 15 as the source, MinIO as the store.

Covers what only real servers can show: conditional commits on S3, crash recovery with S3
state, and the errors a user meets (unreachable source, wrong password, missing bucket,
corrupted manifest) with messages that never contain a secret.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from metatide.extractor.core.errors import (
    EXIT_TERMINAL,
    CredentialsError,
    MetatideError,
    SourceUnavailableError,
    StateCorruptError,
)
from metatide.extractor.core.ids import RunId
from metatide.extractor.core.spec import ExtractionSpec
from metatide.extractor.state.manifest import MANIFEST_KEY
from metatide.extractor.storage import open_store
from tests.crash_checks import check_recovery, crash_in_child, crash_in_process
from tests.faults import CRASH_POINTS, CrashPoint
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
from tests.services import (
    create_database,
    delete_bucket,
    drop_database,
    fresh_bucket,
    require_postgres,
    require_s3,
    s3_settings,
)
from tests.services import execute_sql as sql

pytestmark = pytest.mark.integration

METATIDE = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "metatide"


@pytest.fixture
def database(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    require_postgres()
    name = f"metatide_pipe_{uuid.uuid4().hex[:8]}"
    dsn = create_database(name)
    monkeypatch.setenv("METATIDE_SOURCE_DSN", dsn)
    yield name, dsn
    drop_database(name)


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    require_s3()
    settings = s3_settings()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", settings.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", settings.secret_key)
    name = fresh_bucket("pipeline")
    yield name
    delete_bucket(name)


def s3_spec(
    database: str, bucket: str, prefix: str = "main", timeout: float = 10, **fields: Any
) -> ExtractionSpec:
    return make_spec(
        {"kind": "postgresql", "databases": [database], "connectTimeoutSeconds": timeout},
        {"url": f"s3://{bucket}/{prefix}", "endpoint": s3_settings().endpoint, "secure": False},
        **fields,
    )


def reference_url(bucket: str, name: str) -> str:
    return f"s3://{bucket}/{name}-{uuid.uuid4().hex[:6]}"


SCHEMA = """
CREATE SCHEMA sales;
CREATE TABLE sales.orders (id bigint PRIMARY KEY, total numeric(12,2) NOT NULL DEFAULT 0);
CREATE TABLE sales."line items" (order_id bigint, "sku.code" text);
CREATE TABLE public.customers (id int, "e""mail" varchar(200));
COMMENT ON TABLE public.customers IS 'people who buy';
CREATE VIEW sales.big_orders AS SELECT id FROM sales.orders WHERE total > 100;
CREATE MATERIALIZED VIEW sales.totals AS SELECT count(*) AS n FROM sales.orders;
"""

CHANGES = """
ALTER TABLE sales.orders ADD COLUMN shipped_at timestamptz;
DROP TABLE sales."line items";
CREATE TABLE sales."new {table}" (k int);
COMMENT ON COLUMN public.customers."e""mail" IS 'contact';
CREATE SCHEMA empty_schema;
"""


def test_postgres_to_s3_incremental_equals_full(
    database: tuple[str, str], bucket: str, tmp_path: Path
) -> None:
    name, dsn = database
    sql(dsn, SCHEMA)
    spec = s3_spec(name, bucket, columns={"batchSize": 2, "parallelism": 3})
    first = asyncio.run(run_pipeline(spec, tmp_path / "w1"))
    assert first["tables"]["CREATED"] == 5
    before = asyncio.run(committed_state(spec, tmp_path / "r1"))
    sql(dsn, CHANGES)
    second = asyncio.run(run_pipeline(spec, tmp_path / "w2"))
    assert second["tables"] == {
        "CREATED": 1,
        "UPDATED": 2,
        "NO CHANGE": 2,
        "BACKFILL": 0,
        "deleted": 1,
    }
    after = asyncio.run(committed_state(spec, tmp_path / "r2"))
    reference = asyncio.run(full_state(spec, reference_url(bucket, "full"), tmp_path / "full"))
    assert_same_state(after, reference)
    published = asyncio.run(published_diff(open_store(spec), RunId(second["run_id"])))
    assert published == expected_diff(before, after)
    assert published["schema"]["created"] == {(name, "empty_schema")}
    third = asyncio.run(run_pipeline(spec, tmp_path / "w3"))
    assert third["state_bytes_written"] == 0
    assert third["batches"] == 0


@pytest.mark.crash
@pytest.mark.parametrize("point", CRASH_POINTS, ids=lambda p: p.name)
@pytest.mark.parametrize("how", ["exception", "sigkill"])
def test_crash_recovery_with_s3_state(
    point: CrashPoint, how: str, database: tuple[str, str], bucket: str, tmp_path: Path
) -> None:
    name, dsn = database
    sql(dsn, "".join(f"CREATE TABLE t{i} (id int, v text);" for i in range(8)))
    spec = s3_spec(
        name, bucket, columns={"batchSize": 2, "parallelism": 1}, state={"tablesPerBucket": 1}
    )
    crash: Callable[[ExtractionSpec, CrashPoint, Path], None] = (
        crash_in_process if how == "exception" else crash_in_child
    )
    check_recovery(
        spec,
        point,
        crash,
        lambda: sql(
            dsn,
            "ALTER TABLE t1 ADD COLUMN w int; DROP TABLE t2; CREATE TABLE n1 (x int);"
            "CREATE TABLE n2 (x int); ALTER TABLE t5 RENAME COLUMN v TO vv;",
        ),
        tmp_path,
        reference_url(bucket, "reference"),
    )


def test_unreachable_source_is_retryable(
    bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METATIDE_SOURCE_DSN", "postgresql://nobody:pw@127.0.0.1:1/nothing")
    spec = s3_spec("nothing", bucket, timeout=2)
    with pytest.raises(SourceUnavailableError, match=r"127\.0\.0\.1:1"):
        asyncio.run(run_pipeline(spec, tmp_path))


def test_wrong_password_is_terminal_and_secret_free(
    database: tuple[str, str], bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, dsn = database
    secret = "not-the-password-4711"
    monkeypatch.setenv("METATIDE_SOURCE_DSN", dsn.replace("metatide-test", secret))
    spec = s3_spec(name, bucket)
    with pytest.raises(CredentialsError) as caught:
        asyncio.run(run_pipeline(spec, tmp_path))
    assert secret not in str(caught.value)
    assert secret not in repr(caught.value.__cause__)


def test_missing_bucket_is_a_clear_error(
    database: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_s3()
    settings = s3_settings()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", settings.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", settings.secret_key)
    missing = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    spec = s3_spec(database[0], missing)
    with pytest.raises(MetatideError, match=missing) as caught:
        asyncio.run(run_pipeline(spec, tmp_path))
    assert settings.secret_key not in str(caught.value)


def test_corrupted_manifest_fails_then_force_full_recovers(
    database: tuple[str, str], bucket: str, tmp_path: Path
) -> None:
    name, dsn = database
    sql(dsn, SCHEMA)
    spec = s3_spec(name, bucket)
    asyncio.run(run_pipeline(spec, tmp_path / "w1"))
    store = open_store(spec)
    data = bytearray(asyncio.run(store.get(MANIFEST_KEY)).data)
    position = data.index(b'"rows":') + len(b'"rows":')
    data[position] = ord("9") if data[position] != ord("9") else ord("8")
    asyncio.run(store.put(MANIFEST_KEY, bytes(data)))
    with pytest.raises(StateCorruptError, match="forceFullExtraction"):
        asyncio.run(run_pipeline(spec, tmp_path / "w2"))
    recovered = asyncio.run(
        run_pipeline(with_fields(spec, forceFullExtraction=True), tmp_path / "w3")
    )
    assert recovered["full_extraction"] is True
    state = asyncio.run(committed_state(spec, tmp_path / "r"))
    reference = asyncio.run(full_state(spec, reference_url(bucket, "full"), tmp_path / "full"))
    assert_same_state(state, reference)
    after = asyncio.run(run_pipeline(spec, tmp_path / "w4"))  # and incremental runs go on
    assert after["full_extraction"] is False


def _cli(spec: ExtractionSpec, tmp_path: Path, env: dict[str, str], *args: str) -> Any:
    spec_file = tmp_path / f"spec-{uuid.uuid4().hex[:6]}.json"
    spec_file.write_text(spec.to_json())
    return subprocess.run(
        [str(METATIDE), *args, "--config", str(spec_file)],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "METATIDE_LOG_FORMAT": "json"},
        timeout=300,
        check=False,
    )


def test_phase_logs_never_contain_a_secret(
    database: tuple[str, str], bucket: str, tmp_path: Path
) -> None:
    """Logs of successful and failing phases, on PostgreSQL and MinIO, name no password."""
    name, dsn = database
    sql(dsn, SCHEMA)
    pg_password = "metatide-test"
    s3_secret = s3_settings().secret_key
    spec = s3_spec(name, bucket)
    env = {"METATIDE_SOURCE_DSN": dsn}
    outputs = []
    done = _cli(spec, tmp_path, env, "run")
    assert done.returncode == 0, done.stderr
    outputs.append(done)
    events = [json.loads(line) for line in done.stderr.splitlines()]
    assert {e["phase"] for e in events} == {"plan", "columns", "finalize"}
    assert all(e["run_id"] == json.loads(done.stdout)["run_id"] for e in events)
    refused = _cli(
        spec, tmp_path, {"METATIDE_SOURCE_DSN": dsn.replace(pg_password, "wr0ng-pw")}, "run"
    )
    assert refused.returncode == EXIT_TERMINAL
    outputs.append(refused)
    wrong_key = _cli(spec, tmp_path, {**env, "AWS_SECRET_ACCESS_KEY": "wr0ng-s3-secret"}, "run")
    assert wrong_key.returncode == EXIT_TERMINAL
    outputs.append(wrong_key)
    outputs.append(_cli(spec, tmp_path, env, "verify"))
    for output in outputs:
        for secret in (pg_password, s3_secret, "wr0ng-pw", "wr0ng-s3-secret"):
            assert secret not in output.stdout + output.stderr
