"""The `Store` seam: what every phase needs from an object store.

Eight operations and a `location` for messages: reads (`get`, `list`, and `local_file` for
state files DuckDB reads from disk), plain writes (`put`, and `put_file` for large Parquet and
JSON-lines files finalize publishes without copying them into memory), the two conditional
writes below, and idempotent `delete`. `local_file` lets a store on this filesystem hand out
its own file instead of a copy, without the caller knowing which kind of store it has.

Phases talk to each other only through a store (plan writes the scope, columns writes batch
files, finalize reads both and commits), so this protocol is the whole contract between them
and the backends. Keys are '/'-separated and relative to the connection's prefix.

Conditional writes make the commit and the lease safe without a coordinator:
``put_if_absent`` creates a key only if no one else did, and ``replace_if_match`` swaps a key
only if it still holds the version the caller read (compare-and-swap on an opaque version).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoredObject:
    """A key's content with the opaque version that conditional writes compare against."""

    data: bytes
    version: str


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed key and its size in bytes."""

    key: str
    size: int


class Store(Protocol):
    """An object store rooted at one connection's prefix."""

    @property
    def location(self) -> str:
        """Where the store points, for messages (never contains credentials)."""
        ...

    async def get(self, key: str) -> StoredObject:
        """The object's bytes and version; raises KeyNotFoundError when absent."""
        ...

    async def put(self, key: str, data: bytes) -> None:
        """Create or overwrite a key atomically (readers see the old or the new bytes)."""
        ...

    async def put_file(self, key: str, path: Path) -> None:
        """Upload a local file as a key (large Parquet files avoid a copy into memory)."""
        ...

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create a key only if it does not exist; False when it already did."""
        ...

    async def replace_if_match(self, key: str, data: bytes, version: str) -> bool:
        """Overwrite a key only if it still has `version`; False when someone changed it."""
        ...

    def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every key under `prefix`, in no particular order."""
        ...

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete keys; absent keys are not an error (deletion is idempotent)."""
        ...

    async def local_file(self, key: str, destination: Path) -> Path:
        """A local file with the key's bytes: a download to `destination`, or the store's own
        file where the store is on this filesystem (the caller only reads it).

        Raises KeyNotFoundError when absent.
        """
        ...


class KeyNotFoundError(LookupError):
    """Raised by `Store.get` for an absent key (the caller decides if that is an error)."""

    def __init__(self, location: str, key: str) -> None:
        super().__init__(f"{key} does not exist in {location}")
        self.key = key
