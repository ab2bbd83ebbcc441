"""`metatide verify`: check that every file the committed manifest lists holds its recorded bytes.

A run verifies what it reads, but a run that changes little reads little: files it carries
forward by reference are only checked every `state.verifyEveryRuns` runs. This audit reads
the whole committed state once (its cost is the state's size in bytes, listed in the result)
and names every damaged file, so a schedule or a person can check a store at any time. It
takes no lease and writes nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from metatide.extractor.core.errors import StateCorruptError
from metatide.extractor.state.files import BadFile, verify_files
from metatide.extractor.state.manifest import MANIFEST_KEY, REBUILD_ADVICE, parse_manifest
from metatide.extractor.storage import KeyNotFoundError, Store
from metatide.extractor.storage.meter import metering


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What an audit found: the committed run, what was checked, and every damaged file."""

    location: str
    run_id: str | None
    files: int
    bytes_listed: int
    bytes_read: int
    bad: list[BadFile] = field(default_factory=list)
    duration_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.bad

    def to_json(self) -> str:
        """The JSON line the verify command prints."""
        return json.dumps(
            {
                "command": "verify",
                "ok": self.ok,
                "location": self.location,
                "run_id": self.run_id,
                "files": self.files,
                "bytes_listed": self.bytes_listed,
                "bytes_read": self.bytes_read,
                "bad": [{"key": bad.key, "problem": bad.problem} for bad in self.bad],
                "advice": None if self.ok else REBUILD_ADVICE,
                "duration_seconds": round(self.duration_seconds, 3),
            },
            sort_keys=True,
        )


async def verify_state(store: Store) -> VerifyReport:
    """Check the committed manifest and every file it lists (an absent state is fine)."""
    started = time.monotonic()
    with metering() as meter:
        try:
            stored = await store.get(MANIFEST_KEY)
        except KeyNotFoundError:
            return VerifyReport(store.location, None, 0, 0, meter.bytes_read)
        try:
            manifest = parse_manifest(stored.data, store.location)
        except StateCorruptError as exc:
            bad = [BadFile(MANIFEST_KEY, str(exc).split(";", 1)[0])]
            return VerifyReport(store.location, None, 0, 0, meter.bytes_read, bad)
        refs = [ref for refs in manifest.files.values() for ref in refs]
        bad = await verify_files(store, refs)
    return VerifyReport(
        location=store.location,
        run_id=manifest.run_id,
        files=len(refs),
        bytes_listed=sum(ref.bytes for ref in refs),
        bytes_read=meter.bytes_read,
        bad=bad,
        duration_seconds=time.monotonic() - started,
    )
