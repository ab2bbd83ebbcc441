"""The run lease on the local store: re-entry, exclusion, expiry, dead holders, release."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from metatide.extractor.core.errors import (
    EXIT_RETRYABLE,
    EXIT_TERMINAL,
    LeaseHeldError,
    LeaseLostError,
)
from metatide.extractor.core.ids import RunId
from metatide.extractor.state.lease import (
    LEASE_KEY,
    LeaseDocument,
    acquire_lease,
    kept_lease,
    release_lease,
    renew_lease,
)
from metatide.extractor.storage import LocalStore

RUN_A = RunId("20250101t000000z-aaaaaaaa")
RUN_B = RunId("20250101t000001z-bbbbbbbb")


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def holder(store: LocalStore) -> LeaseDocument:
    document = LeaseDocument.parse(asyncio.run(store.get(LEASE_KEY)).data)
    assert document is not None
    return document


def plant(
    store: LocalStore,
    run_id: str,
    pid: int,
    expires_in: timedelta,
    host: str | None = None,
    pid_bound: bool = True,
) -> None:
    document = LeaseDocument(
        run_id=run_id,
        host=host or socket.gethostname(),
        pid=pid,
        expires_at=datetime.now(UTC) + expires_in,
        pid_bound=pid_bound,
    )
    asyncio.run(store.put(LEASE_KEY, document.to_bytes()))


def dead_pid() -> int:
    """The pid of a process this test started and reaped: certainly not running any more."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_acquire_writes_a_lease_naming_this_process(store: LocalStore) -> None:
    asyncio.run(acquire_lease(store, RUN_A, 60))
    lease = holder(store)
    assert lease.run_id == RUN_A
    assert lease.pid == os.getpid()
    assert lease.host == socket.gethostname()
    assert timedelta(seconds=50) < lease.expires_at - datetime.now(UTC) <= timedelta(seconds=60)
    assert lease.pid_bound is False


def test_the_same_run_acquires_twice(store: LocalStore) -> None:
    asyncio.run(acquire_lease(store, RUN_A, 60))
    first = holder(store)
    asyncio.run(acquire_lease(store, RUN_A, 3600))
    second = holder(store)
    assert second.run_id == RUN_A
    assert second.expires_at > first.expires_at


def test_another_run_is_refused_naming_the_holder(store: LocalStore) -> None:
    asyncio.run(acquire_lease(store, RUN_A, 60))
    with pytest.raises(LeaseHeldError) as caught:
        asyncio.run(acquire_lease(store, RUN_B, 60))
    message = str(caught.value)
    assert RUN_A in message
    assert holder(store).expires_at.isoformat() in message
    assert store.location in message
    assert LEASE_KEY in message
    assert caught.value.exit_code == EXIT_RETRYABLE
    assert holder(store).run_id == RUN_A


def test_a_live_holder_on_this_host_keeps_the_lease(store: LocalStore) -> None:
    plant(store, RUN_A, os.getpid(), timedelta(minutes=5))
    with pytest.raises(LeaseHeldError, match=RUN_A):
        asyncio.run(acquire_lease(store, RUN_B, 60))


def test_a_holder_on_another_host_is_not_presumed_dead(store: LocalStore) -> None:
    plant(store, RUN_A, dead_pid(), timedelta(minutes=5), host="some-other-host.invalid")
    with pytest.raises(LeaseHeldError, match=RUN_A):
        asyncio.run(acquire_lease(store, RUN_B, 60))


def test_an_expired_lease_is_taken_over(store: LocalStore) -> None:
    plant(store, RUN_A, os.getpid(), timedelta(seconds=-1), host="some-other-host.invalid")
    asyncio.run(acquire_lease(store, RUN_B, 60))
    assert holder(store).run_id == RUN_B


def test_a_lease_of_a_dead_whole_run_process_on_this_host_is_taken_over(store: LocalStore) -> None:
    plant(store, RUN_A, dead_pid(), timedelta(hours=1), pid_bound=True)
    asyncio.run(acquire_lease(store, RUN_B, 60))
    lease = holder(store)
    assert lease.run_id == RUN_B
    assert lease.pid == os.getpid()


def test_a_dead_phase_process_keeps_the_lease_until_it_expires(store: LocalStore) -> None:
    """Between phases (plan exited, the column batches not started yet) the holder's pid is
    gone by design: only expiry (or the orchestrator) frees the lease."""
    plant(store, RUN_A, dead_pid(), timedelta(hours=1), pid_bound=False)
    with pytest.raises(LeaseHeldError, match=RUN_A):
        asyncio.run(acquire_lease(store, RUN_B, 60))


def test_take_over_from_names_a_dead_run_whose_lease_is_taken_at_once(store: LocalStore) -> None:
    plant(store, RUN_A, os.getpid(), timedelta(hours=1), pid_bound=False)
    asyncio.run(acquire_lease(store, RUN_B, 60, take_over_from=RUN_A))
    assert holder(store).run_id == RUN_B


def test_renewal_extends_the_term_and_keeps_the_holder(store: LocalStore) -> None:
    asyncio.run(acquire_lease(store, RUN_A, 20, pid_bound=True))
    first = holder(store)
    asyncio.run(renew_lease(store, RUN_A, 60))
    renewed = holder(store)
    assert renewed.run_id == RUN_A
    assert renewed.expires_at - first.expires_at > timedelta(seconds=35)
    assert renewed.pid_bound  # the same process renewed: still the whole run


@pytest.mark.parametrize("taken", [True, False], ids=["taken-over", "gone"])
def test_renewal_of_a_lost_lease_raises_lease_lost(store: LocalStore, taken: bool) -> None:
    asyncio.run(acquire_lease(store, RUN_A, 60))
    asyncio.run(release_lease(store, RUN_A))
    if taken:
        asyncio.run(acquire_lease(store, RUN_B, 60))
    with pytest.raises(LeaseLostError, match=RUN_A) as caught:
        asyncio.run(renew_lease(store, RUN_A, 60))
    assert caught.value.exit_code == EXIT_TERMINAL


def test_kept_lease_renews_while_the_body_works(store: LocalStore) -> None:
    async def expiry() -> datetime:
        document = LeaseDocument.parse((await store.get(LEASE_KEY)).data)
        assert document is not None
        return document.expires_at

    async def scenario() -> tuple[datetime, datetime]:
        await acquire_lease(store, RUN_A, 1)
        initial = await expiry()
        async with kept_lease(store, RUN_A, 1) as lease:
            await asyncio.sleep(2.5)  # beats every 1/3 s: the lease never lapses
            lease.check()
            return initial, await expiry()

    initial, later = asyncio.run(scenario())
    assert later - initial > timedelta(seconds=2)
    assert later > datetime.now(UTC)


def test_kept_lease_marks_a_lease_taken_over_meanwhile(store: LocalStore) -> None:
    async def scenario() -> None:
        await acquire_lease(store, RUN_A, 1)
        async with kept_lease(store, RUN_A, 1) as lease:
            await release_lease(store, RUN_A)
            await acquire_lease(store, RUN_B, 60)
            await asyncio.sleep(1.0)
            with pytest.raises(LeaseLostError, match=RUN_B):
                lease.check()

    asyncio.run(scenario())


def test_a_damaged_lease_is_taken_over(store: LocalStore) -> None:
    asyncio.run(store.put(LEASE_KEY, b"{not json"))
    asyncio.run(acquire_lease(store, RUN_B, 60))
    assert holder(store).run_id == RUN_B


@pytest.mark.parametrize("expires_at", ["soon", "", "2025-01-01T00:00:00"])
def test_a_lease_with_an_unreadable_expiry_is_taken_over(
    store: LocalStore, expires_at: str
) -> None:
    """The module treats a damaged lease as free; an expiry that is not an aware ISO time (the
    only kind this module writes) is damage too, and must not crash the run."""
    document = {"run_id": RUN_A, "host": "elsewhere.invalid", "pid": 1, "expires_at": expires_at}
    asyncio.run(store.put(LEASE_KEY, json.dumps(document).encode()))
    asyncio.run(acquire_lease(store, RUN_B, 60))
    assert holder(store).run_id == RUN_B


def test_release_gives_back_only_your_own_lease(store: LocalStore, tmp_path: Path) -> None:
    asyncio.run(acquire_lease(store, RUN_A, 60))
    asyncio.run(release_lease(store, RUN_B))
    assert holder(store).run_id == RUN_A
    asyncio.run(release_lease(store, RUN_A))
    assert not (tmp_path / "store" / LEASE_KEY).exists()
    asyncio.run(acquire_lease(store, RUN_B, 60))
    assert holder(store).run_id == RUN_B


def test_release_without_a_lease_is_a_no_op(store: LocalStore, tmp_path: Path) -> None:
    asyncio.run(release_lease(store, RUN_A))
    assert not (tmp_path / "store" / LEASE_KEY).exists()


def test_lease_document_round_trip() -> None:
    document = LeaseDocument(
        run_id=RUN_A, host="h", pid=7, expires_at=datetime(2025, 1, 1, tzinfo=UTC)
    )
    assert LeaseDocument.parse(document.to_bytes()) == document
    assert LeaseDocument.parse(b'{"run_id": "x"}') is None
    assert LeaseDocument.parse(b"[1, 2]") is None
    assert document.expired(datetime(2025, 1, 1, tzinfo=UTC))
    assert not document.expired(datetime(2024, 12, 31, tzinfo=UTC))
