"""The `Store` contract, checked against `LocalStore` (and, by subclassing, against S3).

`StoreContract` holds the behaviour every backend must share: reads and writes, conditional
writes under contention, listing below a folder-like prefix, idempotent deletes, atomic
overwrites and rejected escaping keys. A backend's test module subclasses it and provides a
``make_store`` fixture (a factory: each call is a new store instance over the same location,
like a second process); `tests/integration/test_s3_store.py` runs the same checks on MinIO.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from metatide.extractor.storage import KeyNotFoundError, LocalStore, Store

_T = TypeVar("_T")
StoreFactory = Callable[[], Store]

CONTENDERS = 8


def run(coro: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(coro)


async def listing(store: Store, prefix: str) -> dict[str, int]:
    return {info.key: info.size async for info in store.list(prefix)}


def contend(action: Callable[[int], bool]) -> list[bool]:
    """Run action(i) in CONTENDERS threads released at once; the results in thread order."""
    barrier = threading.Barrier(CONTENDERS)

    def worker(index: int) -> bool:
        barrier.wait(timeout=30)
        return action(index)

    with ThreadPoolExecutor(max_workers=CONTENDERS) as pool:
        return list(pool.map(worker, range(CONTENDERS)))


class StoreContract:
    """Behaviour shared by every `Store`; subclasses provide the `make_store` fixture."""

    @pytest.fixture
    def store(self, make_store: StoreFactory) -> Store:
        return make_store()

    def test_put_then_get_returns_the_bytes_and_a_version(self, store: Store) -> None:
        run(store.put("a/b/data.bin", b"\x00payload\xff"))
        stored = run(store.get("a/b/data.bin"))
        assert stored.data == b"\x00payload\xff"
        assert stored.version

    def test_put_overwrites_and_changes_the_version(self, store: Store) -> None:
        run(store.put("k", b"one"))
        first = run(store.get("k"))
        run(store.put("k", b"two"))
        second = run(store.get("k"))
        assert second.data == b"two"
        assert second.version != first.version

    def test_empty_object_round_trips(self, store: Store) -> None:
        run(store.put("empty", b""))
        assert run(store.get("empty")).data == b""

    def test_get_of_an_absent_key_raises_key_not_found(self, store: Store) -> None:
        with pytest.raises(KeyNotFoundError) as caught:
            run(store.get("nope/missing.json"))
        assert caught.value.key == "nope/missing.json"
        assert "nope/missing.json" in str(caught.value)

    def test_put_file_uploads_the_file(self, store: Store, tmp_path: Path) -> None:
        source = tmp_path / "upload.parquet"
        source.write_bytes(bytes(range(256)) * 1000)
        run(store.put_file("files/upload.parquet", source))
        assert run(store.get("files/upload.parquet")).data == source.read_bytes()

    def test_local_file_holds_the_bytes(self, store: Store, tmp_path: Path) -> None:
        run(store.put("state/table/0.parquet", b"PAR1 rows PAR1"))
        path = run(store.local_file("state/table/0.parquet", tmp_path / "work" / "0.parquet"))
        assert path.read_bytes() == b"PAR1 rows PAR1"

    def test_local_file_of_an_absent_key_raises_key_not_found(
        self, store: Store, tmp_path: Path
    ) -> None:
        with pytest.raises(KeyNotFoundError):
            run(store.local_file("state/missing.parquet", tmp_path / "work" / "missing.parquet"))

    def test_put_if_absent_creates_once(self, store: Store) -> None:
        assert run(store.put_if_absent("lease.json", b"first")) is True
        assert run(store.put_if_absent("lease.json", b"second")) is False
        assert run(store.get("lease.json")).data == b"first"

    def test_put_if_absent_after_delete_creates_again(self, store: Store) -> None:
        assert run(store.put_if_absent("lease.json", b"first"))
        run(store.delete(["lease.json"]))
        assert run(store.put_if_absent("lease.json", b"again")) is True
        assert run(store.get("lease.json")).data == b"again"

    def test_replace_if_match_with_the_current_version_swaps(self, store: Store) -> None:
        run(store.put("manifest.json", b"v1"))
        current = run(store.get("manifest.json"))
        assert run(store.replace_if_match("manifest.json", b"v2", current.version)) is True
        assert run(store.get("manifest.json")).data == b"v2"

    def test_replace_if_match_with_a_stale_version_loses(self, store: Store) -> None:
        run(store.put("manifest.json", b"v1"))
        stale = run(store.get("manifest.json")).version
        run(store.put("manifest.json", b"v2 by someone else"))
        assert run(store.replace_if_match("manifest.json", b"v3", stale)) is False
        assert run(store.get("manifest.json")).data == b"v2 by someone else"

    def test_replace_if_match_on_an_absent_key_is_false(self, store: Store) -> None:
        run(store.put("manifest.json", b"v1"))
        version = run(store.get("manifest.json")).version
        run(store.delete(["manifest.json"]))
        assert run(store.replace_if_match("manifest.json", b"v2", version)) is False
        with pytest.raises(KeyNotFoundError):
            run(store.get("manifest.json"))

    def test_concurrent_put_if_absent_has_exactly_one_winner(
        self, make_store: StoreFactory
    ) -> None:
        stores = [make_store() for _ in range(CONTENDERS)]
        wins = contend(lambda i: run(stores[i].put_if_absent("lease.json", f"run-{i}".encode())))
        assert wins.count(True) == 1, wins
        winner = wins.index(True)
        assert run(stores[0].get("lease.json")).data == f"run-{winner}".encode()

    def test_concurrent_replace_if_match_has_exactly_one_winner(
        self, make_store: StoreFactory
    ) -> None:
        stores = [make_store() for _ in range(CONTENDERS)]
        run(stores[0].put("manifest.json", b"base"))
        base = run(stores[0].get("manifest.json")).version
        wins = contend(
            lambda i: run(stores[i].replace_if_match("manifest.json", f"run-{i}".encode(), base))
        )
        assert wins.count(True) == 1, wins
        assert run(stores[0].get("manifest.json")).data == f"run-{wins.index(True)}".encode()

    def test_list_yields_keys_below_a_prefix_with_sizes(self, store: Store) -> None:
        run(store.put("runs/r1/plan/scope.json", b"12345"))
        run(store.put("runs/r1/columns/batch-0.parquet", b"123"))
        run(store.put("runs/r1-other/summary.json", b"1"))
        run(store.put("current-state/_manifest.json", b"{}"))
        expected = {"runs/r1/plan/scope.json": 5, "runs/r1/columns/batch-0.parquet": 3}
        assert run(listing(store, "runs/r1")) == expected
        assert run(listing(store, "runs/r1/")) == expected
        assert run(listing(store, "runs/r1/plan")) == {"runs/r1/plan/scope.json": 5}

    def test_list_of_everything_and_of_nothing(self, store: Store) -> None:
        assert run(listing(store, "")) == {}
        run(store.put("a.txt", b"a"))
        run(store.put("d/b.txt", b"bb"))
        assert run(listing(store, "")) == {"a.txt": 1, "d/b.txt": 2}
        assert run(listing(store, "no/such/prefix")) == {}

    def test_list_of_an_exact_key_yields_it(self, store: Store) -> None:
        run(store.put("marker.txt", b"2024-01-01T00:00:00Z"))
        assert run(listing(store, "marker.txt")) == {"marker.txt": 20}

    def test_delete_is_idempotent(self, store: Store) -> None:
        run(store.put("x/1", b"1"))
        run(store.put("x/2", b"2"))
        run(store.delete(["x/1", "x/2", "x/never-existed"]))
        run(store.delete(["x/1", "x/2"]))
        run(store.delete([]))
        assert run(listing(store, "x")) == {}
        with pytest.raises(KeyNotFoundError):
            run(store.get("x/1"))

    def test_delete_leaves_other_keys(self, store: Store) -> None:
        run(store.put("keep", b"k"))
        run(store.put("drop", b"d"))
        run(store.delete(["drop"]))
        assert run(listing(store, "")) == {"keep": 1}

    def test_overwrite_is_atomic_for_readers(self, store: Store) -> None:
        old, new = b"o" * 1_000_000, b"n" * 1_000_000
        run(store.put("big.bin", old))
        seen: set[bytes] = set()
        done = threading.Event()

        def write() -> None:
            for index in range(10):
                run(store.put("big.bin", new if index % 2 == 0 else old))
            done.set()

        writer = threading.Thread(target=write)
        writer.start()
        while not done.is_set():
            seen.add(run(store.get("big.bin")).data)
        writer.join()
        assert seen <= {old, new}, "a reader saw a partial or mixed object"

    @pytest.mark.parametrize("key", ["../escape", "a/../../b", "/etc/passwd"])
    def test_escaping_keys_are_rejected(self, store: Store, key: str) -> None:
        with pytest.raises(ValueError, match="store key"):
            run(store.put(key, b"x"))
        with pytest.raises(ValueError, match="store key"):
            run(store.get(key))
        with pytest.raises(ValueError, match="store key"):
            run(store.put_if_absent(key, b"x"))


class TestLocalStore(StoreContract):
    """The contract on a directory, plus what only a local directory can offer."""

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        root = tmp_path / "store"
        return lambda: LocalStore(root)

    def test_location_is_a_file_url(self, store: Store, tmp_path: Path) -> None:
        assert store.location == f"file://{tmp_path / 'store'}"

    def test_local_file_is_the_stored_file_itself(self, store: Store, tmp_path: Path) -> None:
        run(store.put("state/a.parquet", b"PAR1"))
        path = run(store.local_file("state/a.parquet", tmp_path / "copy" / "a.parquet"))
        assert path == tmp_path / "store" / "state" / "a.parquet"
        assert not (tmp_path / "copy").exists()

    def test_temporary_and_lock_files_are_not_listed(self, store: Store, tmp_path: Path) -> None:
        run(store.put("manifest.json", b"v1"))
        version = run(store.get("manifest.json")).version
        assert run(store.replace_if_match("manifest.json", b"v2", version))
        (tmp_path / "store" / ".tmp-leftover").write_bytes(b"crash debris")
        assert run(listing(store, "")) == {"manifest.json": 2}

    @pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
    def test_files_get_the_mode_the_umask_allows(
        self, tmp_path: Path, umask: int, mode: int
    ) -> None:
        """Another user (a BI tool, a sidecar) reads the state as the umask allows, whatever
        mode the temporary file had; the umask is read when the module loads, so each case
        runs in a fresh interpreter."""
        root = tmp_path / f"umask-{umask:o}"
        script = (
            "import asyncio, os, sys\n"
            f"os.umask({umask})\n"
            "from metatide.extractor.storage import LocalStore\n"
            "store = LocalStore(__import__('pathlib').Path(sys.argv[1]))\n"
            "asyncio.run(store.put('a/b.parquet', b'x'))\n"
            "asyncio.run(store.put_if_absent('lease.json', b'x'))\n"
            "v = asyncio.run(store.get('lease.json')).version\n"
            "asyncio.run(store.replace_if_match('lease.json', b'y', v))\n"
        )
        subprocess.run(
            [sys.executable, "-c", script, str(root)],
            check=True,
            env={**os.environ},
        )
        for key in ("a/b.parquet", "lease.json"):
            assert stat.S_IMODE((root / key).stat().st_mode) == mode, key

    def test_deleting_the_last_keys_removes_emptied_folders(
        self, store: Store, tmp_path: Path
    ) -> None:
        run(store.put("runs/r1/plan/batches/batch-0.parquet", b"1"))
        run(store.put("runs/r1/summary.json", b"2"))
        run(store.put("runs/r2/summary.json", b"3"))
        run(store.delete(["runs/r1/plan/batches/batch-0.parquet", "runs/r1/summary.json"]))
        assert not (tmp_path / "store" / "runs" / "r1").exists()
        assert (tmp_path / "store" / "runs" / "r2").is_dir()
        run(store.delete(["runs/r2/summary.json"]))
        assert not (tmp_path / "store" / "runs").exists()
        assert (tmp_path / "store").is_dir()  # never the root itself
        run(store.put("runs/r3/summary.json", b"4"))  # and writing below it again works
        assert run(store.get("runs/r3/summary.json")).data == b"4"
