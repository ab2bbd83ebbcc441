"""The manifest: sealed round trip, tamper detection, versioning, and frozen v1 and v2 fixtures."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from metatide.extractor.core.errors import NewerStateFormatError, StateCorruptError
from metatide.extractor.core.ids import ENTITIES, Entity, RunId
from metatide.extractor.state.manifest import FORMAT_VERSION, FileRef, Manifest, parse_manifest

FIXTURE = Path(__file__).parent.parent / "fixtures" / "manifest-v1.json"
FIXTURE_V2 = Path(__file__).parent.parent / "fixtures" / "manifest-v2.json"
LOCATION = "file:///somewhere/conn"
RUN = RunId("20250102t030405z-0a1b2c3d")
PARENT = RunId("20250101t000000z-deadbeef")


def ref(entity: Entity, rows: int, bucket: int | None = None) -> FileRef:
    name = f"b{bucket:06d}-{RUN}" if bucket is not None else str(RUN)
    return FileRef(
        key=f"current-state/{entity}/{name}.parquet",
        rows=rows,
        bytes=rows * 10,
        sha256=format(rows, "x")[-1] * 64,
        bucket=bucket,
    )


def make_manifest(entities: tuple[Entity, ...] = ENTITIES) -> Manifest:
    files: dict[Entity, list[FileRef]] = {
        "database": [ref("database", 1)],
        "schema": [ref("schema", 2)],
        "table": [ref("table", 3, 0), ref("table", 4, 1)],
        "column": [ref("column", 9, 0), ref("column", 7, 1)],
    }
    return Manifest(
        run_id=RUN,
        parent_run_id=PARENT,
        marker=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        committed_at=datetime(2025, 1, 2, 3, 5, 6, 789, tzinfo=UTC),
        bucket_count=2,
        files={entity: files[entity] for entity in entities},
    ).sealed()


def document(manifest: Manifest) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(manifest.to_bytes())
    return decoded


def encode(decoded: dict[str, Any]) -> bytes:
    return json.dumps(decoded).encode()


def test_sealed_manifest_round_trips() -> None:
    manifest = make_manifest()
    assert len(manifest.content_hash) == 64
    parsed = parse_manifest(manifest.to_bytes(), LOCATION)
    assert parsed == manifest
    assert parsed.format_version == FORMAT_VERSION
    assert parsed.physical_rows("table") == 7
    assert parsed.physical_rows("column") == 16
    assert sorted(parsed.layer("column", "base")) == [0, 1]
    assert parsed.layer("database", "base") == {}
    assert len(parsed.referenced_keys()) == 6


def test_sealing_is_deterministic_and_ignores_formatting() -> None:
    manifest = make_manifest()
    assert manifest.sealed().content_hash == manifest.content_hash
    compact = json.dumps(document(manifest), separators=(",", ":"), sort_keys=True).encode()
    assert parse_manifest(compact, LOCATION) == manifest


def test_an_unsealed_manifest_is_refused() -> None:
    unsealed = make_manifest().model_copy(update={"content_hash": ""})
    with pytest.raises(StateCorruptError, match=r"fails its checksum.*missing"):
        parse_manifest(unsealed.to_bytes(), LOCATION)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("files", "table", 0, "rows"), 30),
        (("files", "column", 1, "key"), "current-state/column/other.parquet"),
        (("files", "schema", 0, "sha256"), "f" * 64),
        (("marker",), "2030-01-01T00:00:00Z"),
        (("parent_run_id",), None),
        (("bucket_count",), 3),
    ],
)
def test_an_edited_field_fails_the_checksum(path: tuple[Any, ...], value: Any) -> None:
    decoded = document(make_manifest())
    target = decoded
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(StateCorruptError) as caught:
        parse_manifest(encode(decoded), LOCATION)
    message = str(caught.value)
    assert "fails its checksum" in message
    assert "forceFullExtraction" in message
    assert LOCATION in message


def test_a_flipped_byte_is_detected() -> None:
    data = bytearray(make_manifest().to_bytes())
    position = data.index(b'"rows":3') + len(b'"rows":')
    data[position] = ord("8")
    with pytest.raises(StateCorruptError, match="forceFullExtraction"):
        parse_manifest(bytes(data), LOCATION)


def test_a_flipped_byte_in_every_position_is_detected() -> None:
    data = make_manifest().to_bytes()
    accepted = []
    for position in range(0, len(data), 7):
        damaged = bytearray(data)
        damaged[position] ^= 0x01
        try:
            parse_manifest(bytes(damaged), LOCATION)
        except StateCorruptError:
            continue
        accepted.append(bytes(damaged[max(0, position - 10) : position + 10]))
    assert accepted == []


@pytest.mark.parametrize(
    "damage",
    [(b'"format_version"', b'"format_versiom"'), (b'"format_version":4', b'"format_version":0')],
)
def test_a_damaged_format_version_gives_the_recovery_advice(damage: tuple[bytes, bytes]) -> None:
    """A flipped byte in format_version is corruption like any other: same advice, same location."""
    data = make_manifest().to_bytes().replace(*damage)
    with pytest.raises(StateCorruptError) as caught:
        parse_manifest(data, LOCATION)
    assert "forceFullExtraction" in str(caught.value)
    assert LOCATION in str(caught.value)


@pytest.mark.parametrize("data", [b"", b"{not json", b"\xff\xfe\x00", b"[]", b"42", b"null"])
def test_not_a_json_object_is_corruption(data: bytes) -> None:
    with pytest.raises(StateCorruptError) as caught:
        parse_manifest(data, LOCATION)
    assert "forceFullExtraction" in str(caught.value)
    assert LOCATION in str(caught.value)


def test_a_manifest_from_a_newer_metatide_asks_for_an_upgrade() -> None:
    decoded = document(make_manifest())
    decoded["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(NewerStateFormatError) as caught:
        parse_manifest(encode(decoded), LOCATION)
    message = str(caught.value)
    assert f"format_version {FORMAT_VERSION + 1}" in message
    assert "upgrade metatide" in message


@pytest.mark.parametrize("version", [None, 0, -1, "1", 1.0, True])
def test_an_invalid_format_version_is_corruption(version: Any) -> None:
    decoded = document(make_manifest())
    if version is None:
        del decoded["format_version"]
    else:
        decoded["format_version"] = version
    with pytest.raises(StateCorruptError, match="format_version"):
        parse_manifest(encode(decoded), LOCATION)


def test_a_field_of_the_wrong_shape_names_its_path() -> None:
    decoded = document(make_manifest())
    decoded["files"]["table"][1]["rows"] = -5
    with pytest.raises(StateCorruptError) as caught:
        parse_manifest(encode(decoded), LOCATION)
    assert "files.table.1.rows" in str(caught.value)
    assert "forceFullExtraction" in str(caught.value)


def test_an_unknown_field_is_refused() -> None:
    decoded = document(make_manifest())
    decoded["surprise"] = 1
    with pytest.raises(StateCorruptError, match="surprise"):
        parse_manifest(encode(decoded), LOCATION)


@pytest.mark.parametrize("missing", ENTITIES)
def test_a_manifest_without_an_entity_is_corruption(missing: Entity) -> None:
    sealed = make_manifest(tuple(entity for entity in ENTITIES if entity != missing))
    with pytest.raises(StateCorruptError) as caught:
        parse_manifest(sealed.to_bytes(), LOCATION)
    assert repr(missing) in str(caught.value)
    assert "forceFullExtraction" in str(caught.value)


def test_frozen_v1_fixture_keeps_parsing() -> None:
    """Guards format changes: a v1 manifest written by an earlier metatide must stay readable."""
    manifest = parse_manifest(FIXTURE.read_bytes(), str(FIXTURE))
    assert manifest.run_id == "20250102t030405z-0a1b2c3d"
    assert manifest.parent_run_id == "20250101t000000z-deadbeef"
    assert manifest.marker == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert manifest.committed_at == datetime(2025, 1, 2, 3, 5, 0, 123456, tzinfo=UTC)
    assert manifest.bucket_count == 2
    assert {entity: manifest.physical_rows(entity) for entity in ENTITIES} == {
        "database": 1,
        "schema": 2,
        "table": 7,
        "column": 22,
    }
    assert manifest.format_version == 4  # migrated on read
    assert (manifest.sequence, manifest.verified_sequence, manifest.logical_rows) == (0, 0, None)
    assert sorted(manifest.layer("table", "base")) == [0, 1]
    assert manifest.layer("table", "delta") == {}
    assert manifest.layer("column", "base")[1].key == (
        "current-state/column/b000001-20250102t030405z-0a1b2c3d.parquet"
    )
    assert len(manifest.referenced_keys()) == 6


def test_frozen_v1_fixture_migrates_and_round_trips_as_the_current_format() -> None:
    """A migrated v1 manifest is sealed anew as v2 and reads back equal."""
    manifest = parse_manifest(FIXTURE.read_bytes(), str(FIXTURE))
    resealed = manifest.sealed()
    assert json.loads(FIXTURE.read_bytes())["content_hash"] != resealed.content_hash
    assert parse_manifest(resealed.to_bytes(), "memory") == resealed


def test_frozen_v2_fixture_migrates_to_v3_without_logical_counts() -> None:
    """A v2 manifest (layered buckets) reads as v4: sequence 0, never verified, counts unknown."""
    manifest = parse_manifest(FIXTURE_V2.read_bytes(), str(FIXTURE_V2))
    assert manifest.format_version == FORMAT_VERSION == 4
    assert manifest.run_id == "20250301t101010z-0badcafe"
    assert manifest.sequence == 0
    assert manifest.verified_sequence == 0
    assert manifest.logical_rows is None
    assert sorted(manifest.layer("table", "delta")) == [0]
    assert manifest.physical_rows("column") == 32
    resealed = manifest.sealed()
    assert parse_manifest(resealed.to_bytes(), "memory") == resealed


def test_a_manifest_failing_its_checksum_still_decodes_leniently() -> None:
    """A full extraction uses a damaged manifest's file list (each file verified on its own)."""
    decoded = document(make_manifest())
    decoded["files"]["table"][0]["rows"] = 30
    with pytest.raises(StateCorruptError):
        parse_manifest(encode(decoded), LOCATION)
    lenient = parse_manifest(encode(decoded), LOCATION, check_hash=False)
    assert lenient.files["table"][0].rows == 30


def test_runs_since_verified_counts_commits() -> None:
    manifest = make_manifest().model_copy(update={"sequence": 30, "verified_sequence": 24})
    assert manifest.runs_since_verified() == 6


FIXTURE_V3 = Path(__file__).parent.parent / "fixtures" / "manifest-v3.json"


def test_frozen_v3_fixture_migrates_to_v4_with_record_version_1() -> None:
    """v3 state files have tables without object ids: record_version 1, rewritten later."""
    manifest = parse_manifest(FIXTURE_V3.read_bytes(), str(FIXTURE_V3))
    assert manifest.format_version == FORMAT_VERSION == 4
    assert (manifest.sequence, manifest.verified_sequence) == (7, 5)
    assert manifest.logical_rows == {"database": 1, "schema": 2, "table": 7, "column": 27}
    assert manifest.record_version == 1
    resealed = manifest.sealed()
    assert parse_manifest(resealed.to_bytes(), "memory") == resealed
