"""Garbage collection after a commit: delete what no kept state refers to.

The seed never deleted stale keys, and old chunk files resurrected data. Here the kept
states are the new commit and its ancestors, up to `state.keepRuns` in all, found by walking
`parent_run_id` through the manifest copies under ``runs/{run_id}/manifest.json`` (run ids
sort by second only, so their order cannot be trusted within a second; the chain can). Every
state file that none of the kept manifests (nor the replaced one) lists is deleted, and so is
every ``runs/`` folder of a committed run outside the chain and of an aborted run older than
this one. It runs while the lease is still held, so no other run can be writing files that
look like garbage; a folder of a run newer than this one is left alone all the same.
"""

from __future__ import annotations

from metatide.extractor.core.errors import StateCorruptError
from metatide.extractor.core.ids import RunId
from metatide.extractor.state.manifest import MANIFEST_KEY, Manifest, parse_manifest
from metatide.extractor.state.runfiles import history_manifest_key
from metatide.extractor.storage import KeyNotFoundError, Store


async def kept_states(store: Store, manifest: Manifest, keep_runs: int) -> list[Manifest]:
    """The committed state and its ancestors, newest first, at most `keep_runs` of them.

    The walk stops early at an ancestor whose manifest copy is gone or does not verify.
    """
    chain = [manifest]
    while len(chain) < keep_runs and chain[-1].parent_run_id is not None:
        key = history_manifest_key(chain[-1].parent_run_id)
        try:
            chain.append(parse_manifest((await store.get(key)).data, store.location))
        except (KeyNotFoundError, StateCorruptError):
            break
    return chain


async def collect_garbage(
    store: Store, manifest: Manifest, previous: Manifest | None, keep_runs: int
) -> int:
    """Delete unreferenced state files and old run folders; returns the number of keys deleted."""
    chain = await kept_states(store, manifest, keep_runs)
    keep = {MANIFEST_KEY}
    for kept in [*chain, *([previous] if previous else [])]:
        keep |= kept.referenced_keys()
    doomed = [info.key async for info in store.list("current-state/") if info.key not in keep]
    doomed += await _old_run_keys(store, manifest.run_id, {kept.run_id for kept in chain})
    for start in range(0, len(doomed), 1000):
        await store.delete(doomed[start : start + 1000])
    return len(doomed)


async def _old_run_keys(store: Store, current: RunId, kept: set[RunId]) -> list[str]:
    """Keys of run folders outside the kept chain: committed runs (they hold a manifest copy)
    and aborted runs older than this one."""
    keys_by_run: dict[RunId, list[str]] = {}
    async for info in store.list("runs/"):
        keys_by_run.setdefault(RunId(info.key.split("/", 2)[1]), []).append(info.key)
    return [
        key
        for run, keys in keys_by_run.items()
        if run not in kept and (run < current or history_manifest_key(run) in keys)
        for key in keys
    ]
