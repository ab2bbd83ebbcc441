"""Helpers shared by the benchmark scripts: child processes, file snapshots, results.json.

Not a benchmark itself; the scripts import it from their own folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_PATH = BENCH_DIR / "results.json"
RUNNER = BENCH_DIR / "_runner.py"
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ChildResult:
    """One finished child process: wall time, its own peak RSS, its output."""

    argv: list[str]
    returncode: int
    wall_seconds: float
    maxrss_mib: float
    stdout: str
    stderr: str

    def payload(self) -> dict[str, Any]:
        """The last JSON object line the child printed on stdout."""
        for line in reversed(self.stdout.splitlines()):
            if line.startswith("{"):
                value: dict[str, Any] = json.loads(line)
                return value
        raise RuntimeError(f"{self.argv[:3]} printed no JSON line; stderr:\n{self.stderr[-3000:]}")

    def check(self) -> ChildResult:
        """Raise with the child's stderr if it failed."""
        if self.returncode != 0:
            command = " ".join(self.argv[:4])
            raise RuntimeError(
                f"{command} … exited {self.returncode}; stderr:\n{self.stderr[-4000:]}"
            )
        return self


def python() -> str:
    """The interpreter of the project's venv (the one running this script)."""
    return sys.executable


def cli() -> str:
    """The `metatide` console script next to that interpreter."""
    return str(Path(sys.executable).parent / "metatide")


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: quiet logs, plus `extra`."""
    env = dict(os.environ)
    env.setdefault("METATIDE_LOG_LEVEL", "WARNING")
    env.update(extra or {})
    return env


def vm_hwm_kib(pid: int | str) -> int | None:
    """The peak RSS (VmHWM, KiB) of a live process's own address space; None once it exited."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def run_child(
    argv: Sequence[str], env: Mapping[str, str] | None = None, poll_seconds: float = 0.005
) -> ChildResult:
    """Run a command to completion and measure its wall time and its own peak RSS.

    The peak RSS is the child's VmHWM, polled every `poll_seconds` until it exits (VmHWM only
    grows, so only a peak in the last few milliseconds could be missed), and the child's own
    report when it prints `vm_hwm_mib`. Not `ru_maxrss` from `wait4`/`RUSAGE_CHILDREN`: Linux
    folds the parent's RSS at fork into the child's ru_maxrss when it execs, so a large parent
    (this script holding a synthetic catalog) would be reported as the child's peak.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(argv), stdout=out, stderr=err, env=dict(env or child_env()), cwd=REPO_DIR
        )
        peak_kib = 0
        while True:
            pid, status, _ = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak_kib = max(peak_kib, vm_hwm_kib(process.pid) or 0)
            time.sleep(poll_seconds)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = ChildResult(
            argv=list(argv),
            returncode=process.returncode,
            wall_seconds=wall,
            maxrss_mib=peak_kib / 1024,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )
    try:
        reported = float(result.payload().get("vm_hwm_mib") or 0.0)
    except (RuntimeError, ValueError):
        reported = 0.0
    if reported > result.maxrss_mib:
        return dataclasses.replace(result, maxrss_mib=reported)
    return result


FileInfo = tuple[int, int, int]  # size, mtime_ns, inode


def snapshot(root: Path) -> dict[str, FileInfo]:
    """Every file below `root` (hidden ones too) with size, mtime and inode."""
    found: dict[str, FileInfo] = {}
    if not root.exists():
        return found
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            info = path.stat()
            found[path.relative_to(root).as_posix()] = (info.st_size, info.st_mtime_ns, info.st_ino)
    return found


def written_files(before: Mapping[str, FileInfo], after: Mapping[str, FileInfo]) -> dict[str, int]:
    """Files that are new or were rewritten (other size, mtime or inode), with their sizes."""
    return {key: info[0] for key, info in after.items() if before.get(key) != info}


def manifest_state_bytes(store_root: Path) -> tuple[int, int]:
    """(bytes, files) of everything the committed manifest lists."""
    manifest = json.loads((store_root / "current-state" / "_manifest.json").read_bytes())
    refs = [ref for refs in manifest["files"].values() for ref in refs]
    return sum(ref["bytes"] for ref in refs), len(refs)


def machine() -> dict[str, Any]:
    """Where and when the figures were taken (load average: other work on the machine)."""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1_5_15": [round(value, 2) for value in os.getloadavg()],
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
    }


def update_results(section: str, data: Mapping[str, Any]) -> Path:
    """Store one script's figures in bench/results.json, keeping the other scripts' sections."""
    try:
        results: dict[str, Any] = json.loads(RESULTS_PATH.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        results = {}
    results["machine"] = machine()
    results[section] = {"machine": machine(), **data}
    RESULTS_PATH.write_text(json.dumps(results, indent=1, sort_keys=False, default=str) + "\n")
    return RESULTS_PATH


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain fixed-width text table."""
    rows_list = [list(row) for row in rows]
    cells = [[_cell(value) for value in row] for row in rows_list]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(
            cell.rjust(width) if _numeric(value) else cell.ljust(width)
            for cell, value, width in zip(cells_row, row, widths, strict=True)
        ).rstrip()
        for cells_row, row in zip(cells, rows_list, strict=True)
    ]
    return "\n".join(lines)


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def verdict(value: float, limit: float) -> str:
    """'ok' or 'MISS' against a target (lower is better)."""
    return "ok" if value <= limit else "MISS"


def human_bytes(count: float) -> str:
    """Bytes in KiB/MiB for printing."""
    if count >= MIB:
        return f"{count / MIB:,.1f} MiB"
    return f"{count / 1024:,.1f} KiB"
