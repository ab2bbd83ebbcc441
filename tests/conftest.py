"""Test-wide guards: warnings are errors (pyproject) and no asyncio task may leak.

Tests drive the async code with `asyncio.run`, which quietly cancels every task still pending
when the main coroutine returns. A task left behind that way is a leak in the code under test
(a phase that returns or fails without awaiting or cancelling what it started), so
`_no_leaked_tasks` records those tasks as `asyncio.run` shuts its loop down and fails the test
that left them, naming each task and the coroutine it was running.
"""

from __future__ import annotations

import asyncio
import asyncio.runners
import os
import threading
from collections.abc import Callable, Iterator

import pytest

os.environ.setdefault("METATIDE_LOG_FORMAT", "console")

# `asyncio.run` (through `asyncio.Runner.close`) calls this module-level function of
# asyncio.runners to cancel what is left; wrapping it is the one place that sees those tasks.
_cancel_all_tasks: Callable[[asyncio.AbstractEventLoop], None] = asyncio.runners._cancel_all_tasks


class _LeakRecorder:
    """Wraps `_cancel_all_tasks`; thread-safe, as tests also run loops in worker threads."""

    def __init__(self) -> None:
        self.leaked: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, loop: asyncio.AbstractEventLoop) -> None:
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        if pending:
            with self._lock:
                self.leaked.extend(f"{task.get_name()} ({task.get_coro()!r})" for task in pending)
        _cancel_all_tasks(loop)


@pytest.fixture(autouse=True)
def _no_leaked_tasks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    recorder = _LeakRecorder()
    monkeypatch.setattr(asyncio.runners, "_cancel_all_tasks", recorder)
    yield
    if recorder.leaked:
        pytest.fail(
            f"{len(recorder.leaked)} asyncio task(s) still pending when asyncio.run returned: "
            + "; ".join(recorder.leaked),
            pytrace=False,
        )
