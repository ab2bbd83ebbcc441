"""Starting, recognising and stopping the processes that the harness owns.

Every process is started in its own session (so it is its own process group and a signal reaches
its children too) and recorded in a pid file together with its kernel start time. A pid alone can
be reused by an unrelated process after a crash; pid plus start time cannot, so ``down`` and the
kubelet never signal anything they did not start.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Owned:
    """A process we started: enough to find it again and to prove it is still the same one."""

    name: str
    pid: int
    start_time: int
    argv: list[str]

    def alive(self) -> bool:
        """True while this very process runs (not a zombie, not a newer holder of the pid)."""
        return start_time_of(self.pid) == self.start_time

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Owned | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def start_time_of(pid: int) -> int | None:
    """The kernel start time (clock ticks since boot) of a live, non-zombie process, else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def spawn(
    name: str,
    argv: list[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[subprocess.Popen[bytes], Owned]:
    """Starts ``argv`` in a new session with stdout and stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    started = start_time_of(process.pid)
    return process, Owned(name, process.pid, started if started is not None else -1, argv)


def _signal_group(owned: Owned, signum: int) -> None:
    """Signals the process group that ``owned`` leads, or just the process if it has none."""
    try:
        if os.getpgid(owned.pid) == owned.pid:
            os.killpg(owned.pid, signum)
        else:
            os.kill(owned.pid, signum)
    except ProcessLookupError:
        pass


def _reap(pid: int, process: subprocess.Popen[bytes] | None) -> None:
    """Collects the exit status of our child, so it does not linger as a zombie.

    Through its Popen object when there is one: reaping behind Popen's back would make it
    report exit code 0 for a killed process.
    """
    if process is not None:
        process.poll()
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(owned: Owned, grace: float = 10.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM to the process group, then SIGKILL after ``grace`` seconds; a no-op if gone."""
    if not owned.alive():
        return
    _signal_group(owned, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(owned.pid, process)
        if not owned.alive():
            break
        time.sleep(0.1)
    else:
        _signal_group(owned, signal.SIGKILL)
    # Children that ignored SIGTERM must not outlive their leader.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(owned.pid, signal.SIGKILL)
    _reap(owned.pid, process)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, or a note that it is missing."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])
