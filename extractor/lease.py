"""The run lease: at most one run of a connection at a time, without a coordinator.

The lease is a small JSON document (``lease.json``) created with put-if-absent and taken
over with compare-and-swap. A run re-acquires its own lease (a retried Job keeps its run id),
an expired lease may be taken by anyone, and a lease held by a process that died on this
same host is stale at once (a SIGKILLed local run must not block the next one for an hour).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from metatide.extractor.errors import LeaseHeldError
from metatide.extractor.ids import RunId
from metatide.extractor.storage import KeyNotFoundError, Store, StoredObject

LEASE_KEY = "lease.json"


@dataclass(frozen=True, slots=True)
class LeaseDocument:
    """Who holds the lease, and until when."""

    run_id: str
    host: str
    pid: int
    expires_at: str

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def parse(cls, data: bytes) -> LeaseDocument | None:
        try:
            document = cls(**json.loads(data))
            aware = datetime.fromisoformat(document.expires_at).tzinfo is not None
        except (ValueError, TypeError):
            return None  # a damaged lease protects nothing; treat it as free
        return document if aware else None

    def expired(self, now: datetime) -> bool:
        return datetime.fromisoformat(self.expires_at) <= now

    def holder_died(self) -> bool:
        """True when the holder ran on this host and its process is gone."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def _document(run_id: RunId, seconds: int) -> LeaseDocument:
    expires = datetime.now(UTC) + timedelta(seconds=seconds)
    return LeaseDocument(
        run_id=run_id, host=socket.gethostname(), pid=os.getpid(), expires_at=expires.isoformat()
    )


async def acquire_lease(
    store: Store, run_id: RunId, seconds: int, take_over_from: RunId | None = None
) -> None:
    """Take the lease for `run_id`, or raise LeaseHeldError naming the holder.

    `take_over_from` names a run its orchestrator knows to be dead (the operator saw its
    Jobs fail or replaced it): that run's lease is taken at once instead of expiring.
    """
    mine = _document(run_id, seconds)
    if await store.put_if_absent(LEASE_KEY, mine.to_bytes()):
        return
    try:
        current = await store.get(LEASE_KEY)
    except KeyNotFoundError:
        if await store.put_if_absent(LEASE_KEY, mine.to_bytes()):
            return
        raise LeaseHeldError(f"the lease of {store.location} was taken concurrently") from None
    if not await _take_over(store, current, mine, take_over_from):
        holder = LeaseDocument.parse(current.data)
        raise LeaseHeldError(
            f"run {holder.run_id if holder else '?'} holds the lease of {store.location} until "
            f"{holder.expires_at if holder else '?'}; wait for it to finish, or delete "
            f"{LEASE_KEY} if you are sure it is dead"
        )


async def _take_over(
    store: Store, current: StoredObject, mine: LeaseDocument, dead_run: RunId | None
) -> bool:
    holder = LeaseDocument.parse(current.data)
    free = (
        holder is None
        or holder.run_id in (mine.run_id, dead_run)
        or holder.expired(datetime.now(UTC))
        or holder.holder_died()
    )
    return free and await store.replace_if_match(LEASE_KEY, mine.to_bytes(), current.version)


async def release_lease(store: Store, run_id: RunId) -> None:
    """Give the lease back if this run still holds it (never someone else's)."""
    try:
        current = await store.get(LEASE_KEY)
    except KeyNotFoundError:
        return
    holder = LeaseDocument.parse(current.data)
    if holder is not None and holder.run_id == run_id:
        await store.delete([LEASE_KEY])
