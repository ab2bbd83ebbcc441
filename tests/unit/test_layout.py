"""The repository layout: its top-level `operator/` folder must never shadow the standard
library, whatever the working directory, and the package must map onto the folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _from_repo_root(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", "PYTHONPATH")}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )


def test_the_repository_root_on_sys_path_does_not_shadow_the_stdlib_operator() -> None:
    code = (
        "import sys, operator, collections, minio\n"
        "assert sys.path[0] == '', sys.path[0]\n"
        "assert operator.__file__.endswith('/operator.py'), operator.__file__\n"
        "assert hasattr(operator, 'or_')\n"
        "import metatide.operator.main\n"
    )
    result = _from_repo_root("-c", code)
    assert result.returncode == 0, result.stderr


def test_pytest_runs_from_the_repository_root_without_safe_path() -> None:
    result = _from_repo_root("-m", "pytest", "--collect-only", "-q", "tests/unit/test_marker.py")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_package_resolves_to_the_top_level_folders() -> None:
    from metatide.extractor.core import spec
    from metatide.operator import crd

    assert Path(spec.__file__).resolve() == REPO / "extractor" / "core" / "spec.py"
    assert Path(crd.__file__).resolve() == REPO / "operator" / "crd.py"
    assert not (REPO / "operator" / "__init__.py").exists()
