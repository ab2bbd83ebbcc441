"""The run lease on MinIO with a real PostgreSQL source: it lives as long as the run.

- A phase busy for longer than the lease's term keeps the lease (its heartbeat renews it):
  another run cannot start meanwhile, and can once the first run is done.
- A holder killed mid-phase keeps the lease until it expires (phase processes are not the
  whole run, so their pid tells nothing), then another run takes it over; the killed run's
  later phases stop with LeaseLostError: two runs never both reach finalize.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from metatide.extractor.core.documents import RunSummary
from metatide.extractor.core.errors import IncompleteRunError, LeaseHeldError, LeaseLostError
from metatide.extractor.core.ids import new_run_id
from metatide.extractor.core.spec import ExtractionSpec
from metatide.extractor.phases.columns import extract_batch
from metatide.extractor.phases.finalize import finalize
from metatide.extractor.phases.plan import plan
from metatide.extractor.phases.run import run
from metatide.extractor.sources import open_source
from metatide.extractor.state.lease import LEASE_KEY, LeaseDocument
from metatide.extractor.storage import open_store
from tests.harness import make_spec
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
from tests.slow_source import SlowColumns

pytestmark = pytest.mark.integration

LEASE_SECONDS = 10


@pytest.fixture
def spec(monkeypatch: pytest.MonkeyPatch) -> Iterator[ExtractionSpec]:
    require_postgres()
    require_s3()
    name = f"metatide_lease_{uuid.uuid4().hex[:8]}"
    dsn = create_database(name)
    execute_sql(dsn, "CREATE TABLE a (id int); CREATE TABLE b (id int);")
    monkeypatch.setenv("METATIDE_SOURCE_DSN", dsn)
    settings = s3_settings()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", settings.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", settings.secret_key)
    bucket = fresh_bucket("lease")
    yield make_spec(
        {"kind": "postgresql", "databases": [name]},
        {"url": f"s3://{bucket}/main", "endpoint": settings.endpoint, "secure": False},
        state={"leaseSeconds": LEASE_SECONDS},
    )
    delete_bucket(bucket)
    drop_database(name)


def test_a_phase_busy_longer_than_the_lease_keeps_it(spec: ExtractionSpec, tmp_path: Path) -> None:
    busy_seconds = LEASE_SECONDS * 1.5

    async def scenario() -> tuple[RunSummary, list[float], float]:
        first = asyncio.create_task(
            run(
                spec,
                open_store(spec),
                tmp_path / "first",
                source_factory=lambda s: SlowColumns(open_source(s), busy_seconds),
            )
        )
        refused_at: list[float] = []
        started = time.monotonic()
        await asyncio.sleep(1.0)
        while not first.done():
            try:
                await plan(spec, open_store(spec), open_source(spec), tmp_path / "second")
            except LeaseHeldError:
                refused_at.append(time.monotonic() - started)
            else:
                pytest.fail("a second run planned while the first held the lease")
            await asyncio.sleep(1.0)
        finished = time.monotonic() - started
        return await first, refused_at, finished

    summary, refused_at, finished = asyncio.run(scenario())
    assert summary.tables.created == 2
    assert finished > LEASE_SECONDS * 1.4  # the first run outlived its lease's term ...
    assert max(refused_at) > LEASE_SECONDS + 1  # ... and still held it after the term
    later = asyncio.run(run(spec, open_store(spec), tmp_path / "third"))
    assert later.tables.unchanged == 2


def test_a_killed_holder_is_taken_over_after_expiry_and_never_finalizes(
    spec: ExtractionSpec, tmp_path: Path
) -> None:
    killed_run = new_run_id()
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.to_json())
    child = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve().parents[1] / "lease_child.py"),
            str(spec_file),
            killed_run,
            str(tmp_path / "child"),
            "600",
        ],
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "columns started"
        time.sleep(2.0)  # the batch has renewed the lease
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    store = open_store(spec)
    holder = LeaseDocument.parse(asyncio.run(store.get(LEASE_KEY)).data)
    assert holder is not None
    assert holder.run_id == killed_run
    assert not holder.pid_bound

    with pytest.raises(LeaseHeldError, match=killed_run):  # not expired yet: still held
        asyncio.run(plan(spec, store, open_source(spec), tmp_path / "early"))
    wait = (holder.expires_at.timestamp() - time.time()) + 0.5
    time.sleep(max(wait, 0.0))

    async def take_over_and_race() -> RunSummary:
        taker = await plan(spec, open_store(spec), open_source(spec), tmp_path / "taker")
        # The killed run's remaining phases, retried by an orchestrator, must stop: only
        # one of the two runs may reach finalize.
        with pytest.raises(LeaseLostError, match=killed_run):
            await extract_batch(open_store(spec), open_source(spec), killed_run, 0)
        with pytest.raises(LeaseLostError, match=killed_run):
            await finalize(spec, open_store(spec), tmp_path / "late", killed_run)
        for index in range(taker.batch_count):
            await extract_batch(open_store(spec), open_source(spec), taker.run_id, index)
        return await finalize(spec, open_store(spec), tmp_path / "taker-final", taker.run_id)

    summary = asyncio.run(take_over_and_race())
    assert summary.tables.created == 2
    # Once the taker has collected the killed run's files, a late phase still cannot go on.
    with pytest.raises(IncompleteRunError, match=killed_run):
        asyncio.run(finalize(spec, open_store(spec), tmp_path / "later", killed_run))
