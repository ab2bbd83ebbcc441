"""The run lease: at most one run of a connection at a time, without a coordinator.

The lease is a small JSON document (``lease.json``) created with put-if-absent and taken
over with compare-and-swap. It lasts `state.leaseSeconds` and every phase renews it while it
works (`kept_lease`: a heartbeat every third of the term), so a run keeps it however long a
phase takes, and the lease of a run that died frees itself within one term.

- A run re-acquires its own lease (a retried Job keeps its run id); an expired lease may be
  taken by anyone; `take_over_from` names a run its orchestrator knows dead (taken at once).
- A lease held by a process that died on this same host is free at once, but only when that
  process was the whole run (`metatide run`, ``pid_bound``): between phase processes the
  holder's pid is gone by design, and only expiry or `take_over_from` frees the lease.
- A phase that finds another run holding its run's lease stops with `LeaseLostError`
  (terminal) before its next step that matters (`HeldLease.check`): that run took over, and
  this one must not write results or commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from metatide.extractor.core.errors import (
    IncompleteRunError,
    LeaseHeldError,
    LeaseLostError,
    RetryableError,
)
from metatide.extractor.core.ids import RunId
from metatide.extractor.core.logs import log
from metatide.extractor.state.runfiles import PlanDocument, read_plan
from metatide.extractor.storage import KeyNotFoundError, Store, StoredObject

LEASE_KEY: Final = "lease.json"
RENEWALS_PER_TERM: Final = 3
"""A lease is renewed this many times per term, so one or two missed renewals are harmless."""
_SWAP_ATTEMPTS: Final = 5  # concurrent renewals by the same run's batches race each other


class LeaseDocument(BaseModel):
    """Who holds the lease, and until when (the content of ``lease.json``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    run_id: str
    host: str
    pid: int
    expires_at: AwareDatetime
    pid_bound: bool = False
    """True when the holder process is the whole run, so its death on this host frees the lease."""

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def parse(cls, data: bytes) -> LeaseDocument | None:
        try:
            return cls.model_validate_json(data)
        except ValidationError:
            return None  # a damaged lease protects nothing; treat it as free

    def expired(self, now: datetime) -> bool:
        return self.expires_at <= now

    def holder_died(self) -> bool:
        """True when the holder was the whole run, ran on this host, and its process is gone."""
        if not self.pid_bound or self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def _document(run_id: RunId, seconds: int, pid_bound: bool) -> LeaseDocument:
    return LeaseDocument(
        run_id=run_id,
        host=socket.gethostname(),
        pid=os.getpid(),
        expires_at=datetime.now(UTC) + timedelta(seconds=seconds),
        pid_bound=pid_bound,
    )


async def acquire_lease(
    store: Store,
    run_id: RunId,
    seconds: int,
    take_over_from: RunId | None = None,
    *,
    pid_bound: bool = False,
) -> None:
    """Take the lease for `run_id`, or raise LeaseHeldError naming the holder.

    `take_over_from` names a run its orchestrator knows to be dead (the operator saw its
    Jobs fail or replaced it): that run's lease is taken at once instead of expiring.
    `pid_bound` says this process is the whole run (see the module docstring).
    """
    mine = _document(run_id, seconds, pid_bound)
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
            f"{holder.expires_at.isoformat() if holder else '?'}; it frees itself then if that "
            f"run has died (or delete {LEASE_KEY} if you are sure it is dead)"
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


async def renew_lease(store: Store, run_id: RunId, seconds: int) -> None:
    """Extend this run's lease by a term from now; LeaseLostError if it is not this run's.

    The holder's pid and `pid_bound` follow the renewing process.
    """
    for _ in range(_SWAP_ATTEMPTS):
        current, holder = await _held_by(store, run_id)
        pid_bound = holder is not None and holder.pid_bound and holder.pid == os.getpid()
        mine = _document(run_id, seconds, pid_bound).to_bytes()
        if await store.replace_if_match(LEASE_KEY, mine, current.version):
            return
    log.warning("lease_renewal_contended", run_id=run_id, attempts=_SWAP_ATTEMPTS)


async def read_plan_of_live_run(store: Store, run_id: RunId) -> PlanDocument:
    """The run's plan; when it is missing because another run took over (and collected this
    run's files), LeaseLostError says so instead of "run plan first"."""
    try:
        return await read_plan(store, run_id)
    except IncompleteRunError:
        try:
            holder = LeaseDocument.parse((await store.get(LEASE_KEY)).data)
        except KeyNotFoundError:
            holder = None
        if holder is not None and holder.run_id != run_id:
            raise _taken_over(store, run_id, holder) from None
        raise


async def _held_by(store: Store, run_id: RunId) -> tuple[StoredObject, LeaseDocument | None]:
    """The lease object if it is this run's (a damaged one counts as free to take back).

    A lease that is gone counts as lost: another run may have taken it over and finished, or
    it was deleted by hand for a run thought dead.
    """
    try:
        current = await store.get(LEASE_KEY)
    except KeyNotFoundError:
        raise LeaseLostError(
            f"the lease of {store.location} is gone (another run took it over and finished, "
            f"or it was deleted); run {run_id} stops and commits nothing"
        ) from None
    holder = LeaseDocument.parse(current.data)
    if holder is not None and holder.run_id != run_id:
        raise _taken_over(store, run_id, holder)
    return current, holder


def _taken_over(store: Store, run_id: RunId, holder: LeaseDocument) -> LeaseLostError:
    return LeaseLostError(
        f"run {holder.run_id} took over the lease of {store.location} from run {run_id} (it "
        "expired, or the orchestrator declared this run dead); this run stops and commits "
        "nothing"
    )


class HeldLease:
    """The lease a phase keeps while it works; `check` before a step that must not happen
    once another run has taken the lease over (writing a batch result, committing)."""

    def __init__(self, store: Store, run_id: RunId) -> None:
        self.store = store
        self.run_id = run_id
        self.lost: LeaseLostError | None = None

    def check(self) -> None:
        """Raise LeaseLostError if a renewal found the lease taken by another run."""
        if self.lost is not None:
            raise self.lost


@contextlib.asynccontextmanager
async def kept_lease(store: Store, run_id: RunId, seconds: int) -> AsyncIterator[HeldLease]:
    """Hold this run's lease while the body works: renewed now and every third of its term.

    The first renewal raises LeaseLostError at once if another run holds the lease; a later
    one that finds it taken marks the yielded `HeldLease` lost (its `check` raises). A
    renewal that fails for a retryable reason (storage briefly unreachable) is logged and
    tried again at the next beat.
    """
    await renew_lease(store, run_id, seconds)
    held = HeldLease(store, run_id)

    async def heartbeat() -> None:
        while held.lost is None:
            await asyncio.sleep(seconds / RENEWALS_PER_TERM)
            try:
                await renew_lease(store, run_id, seconds)
            except LeaseLostError as exc:
                log.error("lease_lost", run_id=run_id, error=str(exc))
                held.lost = exc
            except RetryableError as exc:
                log.warning("lease_renewal_failed", run_id=run_id, error=str(exc))

    beating = asyncio.create_task(heartbeat(), name=f"lease-heartbeat-{run_id}")
    try:
        yield held
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


async def release_lease(store: Store, run_id: RunId) -> None:
    """Give the lease back if this run still holds it (never someone else's)."""
    try:
        current = await store.get(LEASE_KEY)
    except KeyNotFoundError:
        return
    holder = LeaseDocument.parse(current.data)
    if holder is not None and holder.run_id == run_id:
        await store.delete([LEASE_KEY])
