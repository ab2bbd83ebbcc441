"""Shared test machinery: build specs, run the pipeline, compare states and diffs.

The central property of metatide is that an incremental run's state equals a full
extraction's state. `full_state` produces the reference by running a forced full extraction
into a fresh store; `expected_diff` derives the diff two consecutive states imply, so tests
can check the published diff against it.
"""

from __future__ import annotations

import io
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from metatide.extractor.core.errors import StateCorruptError
from metatide.extractor.core.ids import ENTITIES, Entity, RunId
from metatide.extractor.core.records import KEY_COLUMNS, SCHEMAS, conform, table_to_keys
from metatide.extractor.core.scope import Scope
from metatide.extractor.core.spec import DuckDBSpec, ExtractionSpec, parse_spec
from metatide.extractor.engine import duck
from metatide.extractor.engine.changes import (
    ChangeHeader,
    StatePair,
    change_records,
    sorted_records,
    stable_column_ids,
)
from metatide.extractor.engine.diff import EntityDiff
from metatide.extractor.engine.history import kept, reasons_between
from metatide.extractor.phases.run import run
from metatide.extractor.sources import open_source
from metatide.extractor.state.files import (
    fetch_verified,
    read_committed,
    read_parquet_files,
    sort_by_key,
)
from metatide.extractor.state.layered import load_previous, logical_rows
from metatide.extractor.state.marker import ISO_FORMAT
from metatide.extractor.state.runfiles import changes_key, diff_key
from metatide.extractor.storage import KeyNotFoundError, Store, open_store

State = dict[Entity, pa.Table]


def make_spec(
    source: dict[str, Any], storage: dict[str, Any] | str, **fields: Any
) -> ExtractionSpec:
    """A spec with test defaults; `storage` is a URL or a storage mapping."""
    document: dict[str, Any] = {
        "applicationName": "tests",
        "connectionId": "conn",
        "source": source,
        "storage": {"url": storage} if isinstance(storage, str) else storage,
        "duckdb": {"tempDirectory": "/tmp/metatide-tests/duckdb", "memoryLimit": "1GB"},
    }
    document.update(fields)
    return parse_spec(document)


def with_fields(spec: ExtractionSpec, **fields: Any) -> ExtractionSpec:
    """A copy of a spec with camelCase top-level fields replaced (validated again)."""
    document = spec.model_dump(by_alias=True)
    document.update(fields)
    return parse_spec(document)


async def run_pipeline(spec: ExtractionSpec, workdir: Path, **options: Any) -> dict[str, Any]:
    """One `metatide run` in-process."""
    workdir.mkdir(parents=True, exist_ok=True)
    summary = await run(spec, open_store(spec), workdir, **options)
    return summary.to_dict()  # the wire form, as summary.json and the result line hold it


async def committed_state(spec: ExtractionSpec, workdir: Path) -> State:
    workdir.mkdir(parents=True, exist_ok=True)
    return await read_state(open_store(spec), workdir, spec.duckdb)


async def read_state(
    store: Store, workdir: Path, duckdb_spec: DuckDBSpec
) -> dict[Entity, pa.Table]:
    """The whole committed state, resolved and sorted."""
    committed = await read_committed(store)
    if committed is None:
        return {entity: SCHEMAS[entity].empty_table() for entity in ENTITIES}
    files = committed.manifest.files
    state: dict[Entity, pa.Table] = {}
    small: tuple[Entity, ...] = ("database", "schema")
    for entity in small:
        paths = await fetch_verified(store, files[entity], workdir)
        state[entity] = sort_by_key(entity, read_parquet_files(paths, entity))
    tables = list(
        zip(files["table"], await fetch_verified(store, files["table"], workdir), strict=True)
    )
    columns = list(
        zip(files["column"], await fetch_verified(store, files["column"], workdir), strict=True)
    )
    connection = duck.connect(duckdb_spec)
    try:
        load_previous(connection, tables, columns)
        state["table"] = sort_by_key("table", logical_rows(connection, "table"))
        state["column"] = sort_by_key("column", logical_rows(connection, "column"))
    finally:
        connection.close()
    return state


async def full_state(spec: ExtractionSpec, store_url: str, workdir: Path) -> State:
    """The reference: a forced full extraction of the same source into a fresh store."""
    reference = with_fields(
        spec,
        storage={**spec.storage.model_dump(by_alias=True), "url": store_url},
        forceFullExtraction=True,
    )
    await run_pipeline(reference, workdir)
    return await committed_state(reference, workdir)


def assert_same_state(actual: State, expected: State) -> None:
    """Equal row sets per entity, with a readable difference when they are not."""
    for entity in ENTITIES:
        left = sort_by_key(entity, actual[entity]).to_pylist()
        right = sort_by_key(entity, expected[entity]).to_pylist()
        if left != right:
            missing = [row for row in right if row not in left][:5]
            extra = [row for row in left if row not in right][:5]
            raise AssertionError(
                f"{entity} state differs from a full extraction: {len(left)} vs {len(right)} rows; "
                f"missing {missing}; unexpected {extra}"
            )


def _keyed(entity: Entity, table: pa.Table) -> dict[tuple[Any, ...], dict[str, Any]]:
    keys = KEY_COLUMNS[entity]
    return {tuple(row[k] for k in keys): row for row in table.to_pylist()}


def expected_diff(before: State, after: State) -> dict[Entity, dict[str, set[tuple[Any, ...]]]]:
    """created / updated / deleted keys per entity between two full states."""
    result = {}
    for entity in ENTITIES:
        old, new = _keyed(entity, before[entity]), _keyed(entity, after[entity])
        result[entity] = {
            "created": set(new) - set(old),
            "updated": {key for key in set(new) & set(old) if new[key] != old[key]},
            "deleted": set(old) - set(new),
        }
    return result


async def published_diff(
    store: Store, run_id: RunId
) -> dict[Entity, dict[str, set[tuple[Any, ...]]]]:
    """created / updated / deleted keys per entity as the run published them."""
    result = {}
    for entity in ENTITIES:
        keys = KEY_COLUMNS[entity]
        changed = _read(await store.get(diff_key(run_id, entity, "parquet")))
        deleted = _read(await store.get(diff_key(run_id, entity, "parquet", deleted=True)))
        result[entity] = {
            change: {tuple(r[k] for k in keys) for r in changed if r["change"] == change}
            for change in ("created", "updated")
        }
        result[entity]["deleted"] = {tuple(r[k] for k in keys) for r in deleted}
    return result


def _read(stored: Any) -> list[dict[str, Any]]:
    return pq.read_table(io.BytesIO(stored.data)).to_pylist()


async def exists(store: Store, key: str) -> bool:
    try:
        await store.get(key)
    except KeyNotFoundError:
        return False
    return True


def empty_state() -> State:
    return {entity: SCHEMAS[entity].empty_table() for entity in ENTITIES}


def execute_sqlite(database: Path, script: str) -> None:
    """Run a SQL script (DDL of a test) against a SQLite file."""
    with sqlite3.connect(database) as connection:
        connection.executescript(script)


async def check_change_records(
    spec: ExtractionSpec, before: State, after: State, workdir: Path
) -> None:
    """The committed run's change records equal those computed from the two whole states."""
    store = open_store(spec)
    kept_states = await kept(store, 2)
    newer = kept_states[0]
    older = kept_states[1] if len(kept_states) > 1 else None
    data = (await store.get(changes_key(newer.run_id))).data
    stored = sorted_records(pq.read_table(io.BytesIO(data))).to_pylist()
    reasons = await reasons_between(store, spec, older, newer, before, after)
    header = ChangeHeader(newer.run_id, older.run_id if older else None, newer.marker)
    connection = duck.connect(spec.duckdb)
    try:
        direct = change_records(
            connection,
            StatePair(before, after),
            header,
            reasons=reasons,
            stable_column_ids=stable_column_ids(spec.source.kind),
        )
    finally:
        connection.close()
    direct = sorted_records(direct).to_pylist()
    if stored != direct:
        missing = [row for row in direct if row not in stored][:3]
        extra = [row for row in stored if row not in direct][:3]
        raise AssertionError(
            f"run {newer.run_id} recorded {len(stored)} change records, the states imply "
            f"{len(direct)}; missing {missing}; unexpected {extra}"
        )


async def source_snapshot(spec: ExtractionSpec) -> State:
    """What a full extraction's state holds, read straight from the source: the scoped
    listing and the columns of every listed table (no pipeline, no store). Cheaper than
    `full_state`, so the property test can compare with it after every run."""
    scope = Scope(spec.source.scope)
    async with open_source(spec) as source:
        databases = await source.databases(scope)
        names = databases.column("database_name").to_pylist()
        schemas = scope.filter_schemas(await source.schemas(names, scope))
        tables = scope.filter_tables(await source.tables(schemas, scope))
        found = await source.columns(table_to_keys(tables))
    present = pa.array([key in found.present for key in table_to_keys(tables)], pa.bool_())
    return {
        "database": sort_by_key("database", conform(databases, SCHEMAS["database"])),
        "schema": sort_by_key("schema", conform(schemas, SCHEMAS["schema"])),
        "table": sort_by_key("table", conform(tables.filter(present), SCHEMAS["table"])),
        "column": sort_by_key("column", conform(found.columns, SCHEMAS["column"])),
    }


def empty_diff(entity: Entity) -> EntityDiff:
    """The diff of an entity that did not change: the shapes every published diff file has."""
    key_schema = pa.schema([SCHEMAS[entity].field(name) for name in KEY_COLUMNS[entity]])
    return EntityDiff(
        changed=SCHEMAS[entity].append(pa.field("change", pa.string())).empty_table(),
        deleted=key_schema.append(pa.field("reason", pa.string(), nullable=False)).empty_table(),
    )


def parse_marker(text: str, fmt: str = ISO_FORMAT) -> datetime:
    """Read marker.txt as its consumers do (metatide itself reads the marker from the manifest,
    never from marker.txt); a bad one is corruption. Checks that `format_marker` round-trips."""
    try:
        return datetime.strptime(text.strip(), fmt).replace(tzinfo=UTC)
    except ValueError as exc:
        raise StateCorruptError(
            f"marker text {text.strip()!r} does not match marker.format {fmt!r}; metatide keeps "
            "its marker in current-state/_manifest.json and rewrites marker.txt from it after "
            "every commit"
        ) from exc
