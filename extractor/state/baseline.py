"""The previous state a run compares with: strict for incremental runs, best effort for full ones.

An incremental run builds on the committed state, so any damage in what it reads fails it
with a StateCorruptError whose advice is a full extraction. A full extraction
(`forceFullExtraction`) needs no old file at all: it rebuilds every file from the source and
reads the old state only to publish a diff against it. So it takes whatever of the old state
still verifies:

- a committed manifest that fails its checksum but still decodes is used for its file list
  only (each listed file is verified against its own recorded SHA-256, so a damaged entry
  just makes that file unreadable);
- one that does not decode is replaced by the newest kept copy under
  ``runs/{run_id}/manifest.json`` that verifies;
- listed files that are missing or damaged are skipped.

Everything skipped is reported, so the run's summary can say that its baseline was incomplete
(its diff then shows as created what it could not see before, and never deletes what it
could not see). A manifest written by a newer metatide is never overwritten, even by a full
extraction: that needs an upgrade, not a rebuild (`NewerStateFormatError` passes through).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from metatide.extractor.core.errors import StateCorruptError
from metatide.extractor.state.manifest import MANIFEST_KEY, Manifest, parse_manifest
from metatide.extractor.state.runfiles import HISTORY_MANIFEST_NAME
from metatide.extractor.storage import KeyNotFoundError, Store


@dataclass(frozen=True, slots=True)
class Baseline:
    """The state a run compares with, and how far it can be trusted."""

    manifest: Manifest | None
    """The manifest whose files are the previous state (None: nothing readable, or first run)."""
    committed_sha256: str | None
    """SHA-256 of the committed manifest's bytes as read (None: no manifest committed)."""
    version: str | None
    """The store version of the committed manifest, for the compare-and-swap commit."""
    trusted: bool
    """True when `manifest` is the committed manifest and it verified."""
    problems: tuple[str, ...] = ()
    """Why the baseline is not the whole committed state (empty when it is)."""


async def read_baseline(store: Store, *, full_extraction: bool) -> Baseline:
    """The committed state as a baseline; see the module docstring for the full-run leniency."""
    try:
        stored = await store.get(MANIFEST_KEY)
    except KeyNotFoundError:
        return Baseline(None, None, None, trusted=True)
    digest = hashlib.sha256(stored.data).hexdigest()
    try:
        manifest = parse_manifest(stored.data, store.location)
        return Baseline(manifest, digest, stored.version, trusted=True)
    except StateCorruptError as exc:
        if not full_extraction:
            raise
        damage = str(exc)
    lenient = _lenient(stored.data, store.location)
    if lenient is not None:
        problem = f"{MANIFEST_KEY} fails its checksum; its file list was used, file by file"
        return Baseline(lenient, digest, stored.version, trusted=False, problems=(problem,))
    kept, where = await _newest_kept_manifest(store)
    problem = f"{MANIFEST_KEY} is unreadable ({damage.split(';', 1)[0]})"
    if kept is not None:
        problem += f"; the baseline is the kept copy {where}"
    else:
        problem += "; no kept copy verifies either, so the baseline is empty"
    return Baseline(kept, digest, stored.version, trusted=False, problems=(problem,))


def _lenient(data: bytes, location: str) -> Manifest | None:
    """The manifest without its own checksum check, if it still decodes."""
    try:
        return parse_manifest(data, location, check_hash=False)
    except StateCorruptError:
        return None


async def _newest_kept_manifest(store: Store) -> tuple[Manifest | None, str]:
    """The newest copy of a committed manifest kept under runs/ that verifies."""
    listed = [info.key async for info in store.list("runs/")]
    keys = sorted((key for key in listed if key.endswith(HISTORY_MANIFEST_NAME)), reverse=True)
    for key in keys:
        try:
            return parse_manifest((await store.get(key)).data, store.location), key
        except (KeyNotFoundError, StateCorruptError):
            continue
    return None, ""
