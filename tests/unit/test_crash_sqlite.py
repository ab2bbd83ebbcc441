"""Crash tests on SQLite and the local store: an exception and a real SIGKILL at each point."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from metatide.extractor.core.spec import ExtractionSpec
from tests.crash_checks import check_recovery, crash_in_child, crash_in_process
from tests.faults import CRASH_POINTS, CrashPoint
from tests.harness import execute_sqlite as execute
from tests.harness import make_spec


@pytest.mark.crash
@pytest.mark.parametrize("point", CRASH_POINTS, ids=lambda p: p.name)
@pytest.mark.parametrize("how", ["exception", "sigkill"])
def test_next_run_recovers_from_a_crash(point: CrashPoint, how: str, tmp_path: Path) -> None:
    database = tmp_path / "source.sqlite"
    execute(database, "".join(f"CREATE TABLE t{i} (id INT, v TEXT);" for i in range(12)))
    spec = make_spec(
        {"kind": "sqlite", "path": str(database)},
        f"file://{tmp_path}/store",
        columns={"batchSize": 2, "parallelism": 1},
        state={"tablesPerBucket": 1},
    )
    crash: Callable[[ExtractionSpec, CrashPoint, Path], None] = (
        crash_in_process if how == "exception" else crash_in_child
    )
    check_recovery(
        spec,
        point,
        crash,
        lambda: execute(
            database,
            "ALTER TABLE t1 ADD COLUMN w INT; DROP TABLE t2; CREATE TABLE n1 (x INT);"
            "CREATE TABLE n2 (x INT); ALTER TABLE t5 RENAME COLUMN v TO vv;",
        ),
        tmp_path,
        f"file://{tmp_path}/reference",
    )
