"""The repository layout: its top-level `operator/` folder must never shadow the standard
library, whatever the working directory, and the package must map onto the folders."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

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


def _contracts() -> list[dict[str, Any]]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    contracts: list[dict[str, Any]] = pyproject["tool"]["importlinter"]["contracts"]
    return contracts


def _layered_modules(contract: dict[str, Any]) -> set[str]:
    """The modules a layers contract names: `a | b` is two layers side by side."""
    names = {name.strip() for layer in contract["layers"] for name in layer.split("|")}
    containers = contract.get("containers") or [""]
    return {f"{container}.{name}".lstrip(".") for container in containers for name in names}


def _modules(folder: Path, package: str) -> set[str]:
    return {
        f"{package}.{path.stem}"
        for path in folder.glob("*.py")
        if path.name != "__init__.py" and not path.is_symlink()
    }


def test_every_module_has_a_place_in_a_layers_contract() -> None:
    """A module no contract names may import anything: import-linter cannot see it break a
    layer. So each new module has to be placed, in pyproject.toml, beside its peers."""
    layered = set().union(*(_layered_modules(c) for c in _contracts() if c["type"] == "layers"))
    expected = _modules(REPO / "operator", "metatide.operator")
    for folder in sorted(path for path in (REPO / "extractor").iterdir() if path.is_dir()):
        if (folder / "__init__.py").exists():
            package = f"metatide.extractor.{folder.name}"
            expected |= {package, *_modules(folder, package)}
    assert expected - layered == set(), "add these to a layers contract in pyproject.toml"
    assert _modules(REPO / "extractor", "metatide.extractor") == set(), (
        "modules go in a layer's folder"
    )
