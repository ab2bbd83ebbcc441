"""How phases report progress without knowing who watches (a rich bar, a log, nothing)."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Receives progress of long steps; the CLI draws bars, Jobs log counts."""

    def start(self, task: str, total: int | None = None) -> None: ...

    def advance(self, task: str, amount: int = 1) -> None: ...

    def finish(self, task: str) -> None: ...

    def close(self) -> None: ...


class NoProgress:
    """Discards progress (library use, tests)."""

    def start(self, task: str, total: int | None = None) -> None:
        pass

    def advance(self, task: str, amount: int = 1) -> None:
        pass

    def finish(self, task: str) -> None:
        pass

    def close(self) -> None:
        pass
