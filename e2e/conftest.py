"""Fixtures of the end-to-end suite: one real local control plane per test session.

``cluster`` reuses a cluster that ``e2e/cluster up`` already started from the same state
directory (as .ci/run does) and otherwise starts one, and stops it again at the end of the
session only if it started it. A component that cannot start fails the tests that need it, with
that component's log tail: an e2e test never skips because something is missing. Every test in
this folder carries the ``e2e`` marker; the kind script's test also carries ``kind``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

E2E_DIR = Path(__file__).resolve().parent
if str(E2E_DIR) not in sys.path:  # pytest's importlib mode does not add rootless folders
    sys.path.insert(0, str(E2E_DIR))
if str(E2E_DIR.parent) not in sys.path:  # for tests.services; appended, so the repository's
    sys.path.append(str(E2E_DIR.parent))  # operator/ folder never shadows the stdlib module

from localkube import controlplane  # noqa: E402
from localkube.settings import layout  # noqa: E402
from localkube.testkit import Cluster  # noqa: E402

CLUSTER = E2E_DIR / "cluster"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.e2e)


_SKIPPED: list[str] = []
_IMAGE: list[str] = []
_LATENCY: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remembers why the kind test skipped, so the reason is printed even without ``-rs``,
    the image line test_image records and the latencies the operator tests measure."""
    if report.skipped and "kind" in report.keywords and isinstance(report.longrepr, tuple):
        _SKIPPED.append(f"{report.nodeid}: {report.longrepr[2].removeprefix('Skipped: ')}")
    if report.when == "call":
        _IMAGE.extend(str(value) for name, value in report.user_properties if name == "image")
        _LATENCY.extend(str(value) for name, value in report.user_properties if name == "latency")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SKIPPED:
        terminalreporter.section("e2e skips")
        for line in _SKIPPED:
            terminalreporter.write_line(line)
    if _IMAGE:
        terminalreporter.section("image")
        for line in _IMAGE:
            terminalreporter.write_line(line)
    if _LATENCY:
        terminalreporter.section("operator latency (README steps)")
        for line in _LATENCY:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The running local cluster; started here (building if needed) unless already up."""
    where = layout()
    reused = controlplane.running(where) is not None
    if not reused:
        done = subprocess.run([str(CLUSTER), "up"], check=False, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(
                f"e2e/cluster up failed (exit {done.returncode}):\n{done.stderr[-8000:]}",
                pytrace=False,
            )
    try:
        yield Cluster.connect(where)
    finally:
        if not reused:
            subprocess.run([str(CLUSTER), "down"], check=False, capture_output=True, text=True)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting for it to go)."""
    name = cluster.create_namespace()
    yield name
    cluster.delete_namespace(name)
