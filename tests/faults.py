"""Fault injection for crash tests: a Store wrapper that fails at a chosen write.

`CrashPoint` names a moment of the pipeline by the write that happens there; the wrapper
either raises `InjectedCrashError` (an exception inside the process) or SIGKILLs its own process
(a real crash: no finally blocks, no lease release) just before that write reaches the store.
"""

from __future__ import annotations

import fnmatch
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from metatide.extractor.storage import ObjectInfo, Store, StoredObject


@dataclass(frozen=True)
class CrashPoint:
    """Crash before the `occurrence`-th write whose key matches `pattern`."""

    name: str
    pattern: str
    occurrence: int = 1


CRASH_POINTS = [
    CrashPoint("after-plan", "runs/*/columns/batch-*"),
    CrashPoint("mid-columns", "runs/*/columns/batch-*", occurrence=2),
    CrashPoint("mid-finalize-state", "current-state/column/*", occurrence=2),
    CrashPoint("before-manifest", "current-state/_manifest.json"),
    CrashPoint("after-manifest-before-marker", "marker.txt"),
]


class InjectedCrashError(RuntimeError):
    """The failure a crash test injected (not a MetatideError: an unexpected crash)."""


class FaultyStore:
    """Delegates to a real store and crashes at the configured write."""

    def __init__(self, inner: Store, point: CrashPoint, mode: Literal["raise", "kill"]) -> None:
        self._inner = inner
        self._point = point
        self._mode = mode
        self._seen = 0
        self.crashed = False

    def _maybe_crash(self, key: str) -> None:
        if self.crashed or not fnmatch.fnmatchcase(key, self._point.pattern):
            return
        self._seen += 1
        if self._seen < self._point.occurrence:
            return
        self.crashed = True
        if self._mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise InjectedCrashError(f"injected crash at {self._point.name} ({key})")

    @property
    def location(self) -> str:
        return self._inner.location

    async def get(self, key: str) -> StoredObject:
        return await self._inner.get(key)

    async def put(self, key: str, data: bytes) -> None:
        self._maybe_crash(key)
        await self._inner.put(key, data)

    async def put_file(self, key: str, path: Path) -> None:
        self._maybe_crash(key)
        await self._inner.put_file(key, path)

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        self._maybe_crash(key)
        return await self._inner.put_if_absent(key, data)

    async def replace_if_match(self, key: str, data: bytes, version: str) -> bool:
        self._maybe_crash(key)
        return await self._inner.replace_if_match(key, data, version)

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        async for info in self._inner.list(prefix):
            yield info

    async def delete(self, keys: list[str]) -> None:
        await self._inner.delete(keys)

    async def local_file(self, key: str, destination: Path) -> Path:
        return await self._inner.local_file(key, destination)
