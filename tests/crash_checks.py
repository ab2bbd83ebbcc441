"""Crash-recovery checks shared by the SQLite and the PostgreSQL/S3 crash tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from metatide.extractor.core.spec import ExtractionSpec
from metatide.extractor.phases.run import run
from metatide.extractor.state.files import read_committed
from metatide.extractor.storage import open_store
from tests.faults import CrashPoint, FaultyStore, InjectedCrashError
from tests.harness import assert_same_state, committed_state, full_state, run_pipeline


def crash_in_process(spec: ExtractionSpec, point: CrashPoint, workdir: Path) -> None:
    store = FaultyStore(open_store(spec), point, "raise")
    with pytest.raises(InjectedCrashError):
        asyncio.run(run(spec, store, workdir))
    assert store.crashed


def crash_in_child(spec: ExtractionSpec, point: CrashPoint, workdir: Path) -> None:
    spec_file = workdir / "spec.json"
    workdir.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(spec.to_json())
    child = Path(__file__).with_name("crash_child.py")
    completed = subprocess.run(
        [sys.executable, str(child), str(spec_file), point.name, str(workdir)],
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == -signal.SIGKILL, completed.stderr[-3000:]


def check_recovery(
    spec: ExtractionSpec,
    point: CrashPoint,
    crash: Callable[[ExtractionSpec, CrashPoint, Path], None],
    change_source: Callable[[], None],
    tmp_path: Path,
    reference_url: str,
) -> None:
    """Commit once, change the source, crash the next run, then a clean run must recover."""
    asyncio.run(run_pipeline(spec, tmp_path / "first"))
    change_source()
    before = asyncio.run(read_committed(open_store(spec)))
    crash(spec, point, tmp_path / "crashed")
    after_crash = asyncio.run(read_committed(open_store(spec)))
    assert before is not None
    assert after_crash is not None
    if point.name == "after-manifest-before-marker":
        assert after_crash.manifest.parent_run_id == before.manifest.run_id  # committed, kept
    else:
        assert after_crash.manifest == before.manifest  # nothing of the crashed run committed
    asyncio.run(run_pipeline(spec, tmp_path / "recovery"))
    recovered = asyncio.run(committed_state(spec, tmp_path / "read"))
    assert_same_state(recovered, asyncio.run(full_state(spec, reference_url, tmp_path / "ref")))
    marker = asyncio.run(open_store(spec).get("marker.txt")).data.decode()
    final = asyncio.run(read_committed(open_store(spec)))
    assert final is not None
    assert marker == final.manifest.marker.strftime(spec.marker.format)
