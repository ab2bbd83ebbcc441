"""Rich progress bars for the terminal (the CLI's view of `Progress`)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class RichProgress:
    """Draws one bar per step on stderr; steps without a total show a pulsing bar."""

    def __init__(self) -> None:
        self._bars = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._started = False

    def start(self, task: str, total: int | None = None) -> None:
        if not self._started:
            self._bars.start()
            self._started = True
        self._tasks[task] = self._bars.add_task(task, total=total)

    def advance(self, task: str, amount: int = 1) -> None:
        if task in self._tasks:
            self._bars.advance(self._tasks[task], amount)

    def finish(self, task: str) -> None:
        if task in self._tasks:
            task_id = self._tasks.pop(task)
            total = self._bars.tasks[task_id].total
            self._bars.update(task_id, completed=total or 1, total=total or 1)

    def close(self) -> None:
        """Stop redrawing (the bars stay on the terminal)."""
        if self._started:
            self._bars.stop()
            self._started = False
