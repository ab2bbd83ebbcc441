"""The queue of resources to reconcile: each key at most once, never by two workers at once.

Watch events add a resource's key; workers take keys and reconcile them. Like client-go's
workqueue: a key added while it waits is not added twice (ten events in a burst cost one
reconcile); a key added while a worker holds it is queued again when that worker is done (the
event is never lost, and one resource is never reconciled concurrently); `add` with a delay
schedules a later look (the next schedule tick, a safety resync), keeping only the earliest
time per key.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    """Keys to process, deduplicated, with delayed adds (call `run_timers` in a task)."""

    def __init__(self) -> None:
        self._ready: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._active: set[K] = set()
        self._dirty: set[K] = set()
        self._due: dict[K, float] = {}
        self._timers: list[tuple[float, int, K]] = []
        self._order = itertools.count()
        self._timer_changed = asyncio.Event()

    def __len__(self) -> int:
        """Keys waiting for a worker (not those only scheduled for later)."""
        return len(self._queued)

    @property
    def scheduled(self) -> int:
        """Keys with a later look scheduled."""
        return len(self._due)

    def add(self, key: K, delay: float = 0.0) -> None:
        """Queue `key` now, or after `delay` seconds (an earlier time already set wins)."""
        if delay > 0:
            self._add_later(key, time.monotonic() + delay)
            return
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.put_nowait(key)

    def _add_later(self, key: K, due: float) -> None:
        known = self._due.get(key)
        if known is not None and known <= due:
            return
        self._due[key] = due
        heapq.heappush(self._timers, (due, next(self._order), key))
        if self._timers[0][2] == key:
            self._timer_changed.set()

    async def get(self) -> K:
        """The next key; the caller owns it until `done`."""
        key = await self._ready.get()
        self._queued.discard(key)
        self._active.add(key)
        return key

    def done(self, key: K) -> None:
        """Release a key; it is queued again if it was added meanwhile."""
        self._active.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    async def run_timers(self) -> None:
        """Move keys whose time has come to the queue (runs until cancelled)."""
        while True:
            self._timer_changed.clear()
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                due, _, key = heapq.heappop(self._timers)
                if self._due.get(key) == due:
                    del self._due[key]
                    self.add(key)
            wait = self._timers[0][0] - now if self._timers else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_changed.wait(), timeout=wait)
