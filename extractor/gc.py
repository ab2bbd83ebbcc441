"""Garbage collection after a commit: delete what no manifest we keep refers to.

The seed never deleted stale keys, and old chunk files resurrected data. Here every state file
that neither the new nor the previous manifest lists is deleted, and so are the ``runs/``
folders of runs that never committed and of committed runs beyond `keepRuns`. It runs while
the lease is still held, so no other run can be writing files that look like garbage.
"""

from __future__ import annotations

from metatide.extractor.ids import RunId
from metatide.extractor.manifest import MANIFEST_KEY, Manifest
from metatide.extractor.runfiles import history_manifest_key
from metatide.extractor.storage import Store


async def collect_garbage(
    store: Store, manifest: Manifest, previous: Manifest | None, keep_runs: int
) -> int:
    """Delete unreferenced state files and old run folders; returns the number of keys deleted."""
    keep = manifest.referenced_keys() | (previous.referenced_keys() if previous else set())
    keep.add(MANIFEST_KEY)
    doomed = [info.key async for info in store.list("current-state/") if info.key not in keep]
    doomed += await _old_run_keys(store, manifest.run_id, keep_runs)
    for start in range(0, len(doomed), 1000):
        await store.delete(doomed[start : start + 1000])
    return len(doomed)


async def _old_run_keys(store: Store, current: RunId, keep_runs: int) -> list[str]:
    keys_by_run: dict[str, list[str]] = {}
    async for info in store.list("runs/"):
        run = info.key.split("/", 2)[1]
        keys_by_run.setdefault(run, []).append(info.key)
    committed = sorted(
        run
        for run, keys in keys_by_run.items()
        if history_manifest_key(RunId(run)) in keys and run <= current
    )
    kept = set(committed[-keep_runs:]) | {current}
    return [
        key
        for run, keys in keys_by_run.items()
        if run not in kept and run < current
        for key in keys
    ]
