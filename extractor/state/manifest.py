"""The manifest: the single commit point of a connection's state.

``current-state/_manifest.json`` lists every file of the committed state with its row count,
size and SHA-256, plus the run that wrote it, its parent, and the marker. Readers read only
files listed here, so a crash before the manifest is replaced leaves the previous state
intact, and files of an uncommitted run are simply garbage.

The document is versioned: `format_version` says how it was written and `upgrade` migrates an
old document one version at a time (tests keep frozen fixtures of every version). A
`content_hash` over the canonical JSON detects a damaged or hand-edited manifest.

Besides the file list it carries what a reader would otherwise have to compute by reading
every file: `logical_rows`, the rows a reader of the state sees per entity (a bucket's base
rows overridden by its delta), and `sequence` / `verified_sequence`, which let a run decide
cheaply whether it is due to verify every listed file (`state.verifyEveryRuns`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from metatide.extractor.core.errors import NewerStateFormatError, StateCorruptError
from metatide.extractor.core.ids import ENTITIES, Entity, RunId
from metatide.extractor.core.records import RECORD_VERSION
from metatide.extractor.core.wire import first_problem

MANIFEST_KEY: Final = "current-state/_manifest.json"
FORMAT_VERSION: Final = 4


def _v1_to_v2(document: dict[str, Any]) -> dict[str, Any]:
    """v2 adds `layer` to file entries; every v1 file is a base file."""
    files = document.get("files", {})
    for refs in files.values() if isinstance(files, dict) else []:
        for ref in refs if isinstance(refs, list) else []:
            if isinstance(ref, dict):
                ref.setdefault("layer", "base")
    return document


def _v2_to_v3(document: dict[str, Any]) -> dict[str, Any]:
    """v3 adds the commit sequence, the last fully verified sequence and logical row counts.

    A v2 manifest knows none of them: its sequence counts from 0, it was never verified, and
    its logical rows are unknown (the next run computes them by reading the state once).
    """
    document.setdefault("sequence", 0)
    document.setdefault("verified_sequence", 0)
    document.setdefault("logical_rows", None)
    return document


def _v3_to_v4(document: dict[str, Any]) -> dict[str, Any]:
    """v4 records the version of the row schemas its state files are written in; a v3
    manifest's files are of version 1 (tables without `object_id`)."""
    document.setdefault("record_version", 1)
    return document


_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    # version n -> n + 1; add one function per format change, never edit an old one.
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _v3_to_v4,
}


class FileRef(BaseModel):
    """One immutable state file; `bucket` is set for bucketed entities (table, column).

    A bucket has a `base` file and at most one `delta` file per entity. The delta names
    tables whose rows replace the base's: table rows with `op` upsert or delete, and all
    columns of the upserted tables.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bucket: int | None = Field(default=None, ge=0)
    layer: Literal["base", "delta"] = "base"


class Manifest(BaseModel):
    """The committed state of one connection, as of one run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = FORMAT_VERSION
    run_id: RunId
    parent_run_id: RunId | None
    marker: datetime
    committed_at: datetime
    bucket_count: int = Field(ge=1)
    files: dict[Entity, list[FileRef]]
    sequence: int = Field(default=1, ge=0)
    """Commits of this connection up to and including this one (0: migrated from v2)."""
    verified_sequence: int = Field(default=0, ge=0)
    """The newest commit whose run read and verified every file this manifest lists (a full
    extraction writes them all anew, so it counts)."""
    logical_rows: dict[Entity, int] | None = None
    """Rows a reader of the state sees, per entity; None only when migrated from v2."""
    record_version: int = Field(default=RECORD_VERSION, ge=1)
    """Version of the row schemas (`records`) the listed files are written in."""
    content_hash: str = ""

    def physical_rows(self, entity: Entity) -> int:
        """Rows stored in an entity's files: base and delta rows together (not what readers see)."""
        return sum(ref.rows for ref in self.files.get(entity, []))

    def runs_since_verified(self) -> int:
        """Commits since every listed file was last verified."""
        return self.sequence - self.verified_sequence

    def layer(self, entity: Entity, layer: Literal["base", "delta"]) -> dict[int, FileRef]:
        """The base (or delta) files of a bucketed entity by bucket number."""
        return {
            ref.bucket: ref
            for ref in self.files.get(entity, [])
            if ref.bucket is not None and ref.layer == layer
        }

    def referenced_keys(self) -> set[str]:
        """Every key this manifest needs to stay readable."""
        return {ref.key for refs in self.files.values() for ref in refs}

    def sealed(self) -> Manifest:
        """A copy with `content_hash` set over everything else."""
        return self.model_copy(update={"content_hash": _content_hash(self)})

    def to_bytes(self) -> bytes:
        """Compact JSON, as committed (it is rewritten by every run, so it stays small)."""
        return self.model_dump_json().encode()


def _content_hash(manifest: Manifest) -> str:
    return _document_hash(manifest.model_dump(mode="json"))


def _document_hash(document: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a manifest document, without its own hash field.

    Verified on the document as stored, before any migration, so an old manifest keeps
    verifying after the format moves on.
    """
    content = {key: value for key, value in document.items() if key != "content_hash"}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


REBUILD_ADVICE: Final = (
    "run once with forceFullExtraction: true (CLI: --force-full) to rebuild the state from the "
    "source; it needs no old state file"
)
_ADVICE = REBUILD_ADVICE


def upgrade(document: dict[str, Any], location: str = "the store") -> dict[str, Any]:
    """Migrate a decoded manifest to the current format, one version at a time."""
    version = document.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StateCorruptError(
            f"the manifest in {location} has no valid format_version (got {version!r}); {_ADVICE}"
        )
    if version > FORMAT_VERSION:
        raise NewerStateFormatError(
            f"manifest format_version {version} was written by a newer metatide (this one reads "
            f"up to {FORMAT_VERSION}); upgrade metatide"
        )
    while version < FORMAT_VERSION:
        document = _MIGRATIONS[version](document)
        version += 1
        document["format_version"] = version
    return document


def parse_manifest(data: bytes, location: str, *, check_hash: bool = True) -> Manifest:
    """Decode, migrate and verify a stored manifest; any doubt is a StateCorruptError.

    `check_hash=False` skips only the document's own checksum: a full extraction uses a damaged
    manifest's file list, verifying each file on its own (see `baseline`).
    """
    advice = _ADVICE
    try:
        document = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StateCorruptError(f"the manifest in {location} is not JSON; {advice}") from exc
    if not isinstance(document, dict):
        raise StateCorruptError(f"the manifest in {location} is not a JSON object; {advice}")
    try:
        manifest = Manifest.model_validate(upgrade(copy.deepcopy(document), location))
    except ValidationError as exc:
        raise StateCorruptError(
            f"the manifest in {location} does not match its format: {first_problem(exc)}; {advice}"
        ) from exc
    stored_hash = document.get("content_hash")
    expected = _document_hash(document)
    if check_hash and stored_hash != expected:
        raise StateCorruptError(
            f"the manifest in {location} fails its checksum (content_hash "
            f"{str(stored_hash or 'missing')[:12]}…, computed {expected[:12]}…); {advice}"
        )
    missing = [entity for entity in ENTITIES if entity not in manifest.files]
    if missing:
        raise StateCorruptError(f"the manifest in {location} lists no {missing} files; {advice}")
    return manifest
