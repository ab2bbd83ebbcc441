"""The kind run (e2e/kind/run.sh) as a test, for hosts with a Docker engine.

This is the one test of the suite that may skip: kind needs a Docker engine and its node image
from a container registry, and the machines without them run the same operator paths against
the local control plane instead. The skip reason is printed at the end of every run (see
conftest.pytest_terminal_summary). A host that has an engine but lacks kind, kubectl or helm
fails: that is a broken setup, not a skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent / "kind" / "run.sh"


def docker_engine_problem() -> str | None:
    """Why there is no usable Docker engine here, or None when ``docker info`` answers."""
    if shutil.which("docker") is None:
        return "no docker command on PATH"
    try:
        done = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30s"
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no output"])[0]
        return f"no Docker engine (`docker info` failed: {first})"
    return None


@pytest.mark.kind
def test_kind_script_installs_the_chart_and_runs_the_example_extraction() -> None:
    problem = docker_engine_problem()
    if problem:
        pytest.skip(
            f"{problem}; kind needs one, and its node image (kindest/node), which only a "
            "container registry serves. Run e2e/kind/run.sh on a Docker host that reaches a "
            "registry (CI: .github/workflows/kind.yml); here the same operator paths run on "
            "the local control plane and node"
        )
    missing = [tool for tool in ("kind", "kubectl", "helm") if shutil.which(tool) is None]
    assert not missing, (
        f"a Docker engine is here but {missing} are not on PATH: install them to run {RUN}"
    )

    done = subprocess.run([str(RUN)], check=False, capture_output=True, text=True, timeout=3600)

    assert done.returncode == 0, (
        f"{RUN} exited {done.returncode}:\n{done.stdout[-5000:]}\n{done.stderr[-5000:]}"
    )
