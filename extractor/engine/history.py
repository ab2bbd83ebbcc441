"""Looking back over kept states: the state as of a run, the changes between any two, one table's
versions.

`state.keepRuns` committed states stay readable: their manifests (``runs/{id}/manifest.json``)
and every file they list. These functions read only what they need of them: a table's
history reads, per kept state, the one bucket that holds the table; a diff between two states
reads only the buckets whose files differ between them (copy-on-write leaves every other
bucket identical); `show` reads one whole state. Changes are computed from the states by
`changes.change_records`, the code that writes each run's change records, so a diff over two
consecutive runs gives exactly what the later run recorded.
"""

from __future__ import annotations

import asyncio
import fnmatch
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from metatide.extractor.core.errors import SpecError, StateCorruptError
from metatide.extractor.core.ids import ENTITIES, Entity, RunId, TableKey
from metatide.extractor.core.records import KEY_COLUMNS, SCHEMAS, TABLE_KEY_COLUMNS
from metatide.extractor.core.scope import Scope
from metatide.extractor.core.spec import ExtractionSpec
from metatide.extractor.engine import duck
from metatide.extractor.engine.changes import (
    ChangeHeader,
    Reasons,
    StatePair,
    change_records,
    stable_column_ids,
)
from metatide.extractor.state.files import (
    bucket_of,
    fetch_verified,
    read_committed,
    read_parquet_files,
)
from metatide.extractor.state.gc import kept_states
from metatide.extractor.state.layered import load_previous, logical_rows
from metatide.extractor.state.manifest import FileRef, Manifest
from metatide.extractor.state.runfiles import changes_key, plan_key
from metatide.extractor.storage import KeyNotFoundError, Store
from metatide.extractor.storage.meter import IOMeter, metering

State = dict[Entity, pa.Table]


async def kept(store: Store, keep_runs: int) -> list[Manifest]:
    """The kept committed states, newest first (empty before the first commit)."""
    committed = await read_committed(store)
    if committed is None:
        return []
    return await kept_states(store, committed.manifest, keep_runs)


def pick(states: Sequence[Manifest], run_id: str | None, what: str) -> Manifest:
    """The kept state of `run_id` (the newest when None); the error lists what is kept."""
    if not states:
        raise SpecError(f"there is no committed state yet to {what}; run an extraction first")
    if run_id is None:
        return states[0]
    for manifest in states:
        if manifest.run_id == run_id:
            return manifest
    listed = ", ".join(manifest.run_id for manifest in states)
    raise SpecError(
        f"run {run_id} is not a kept state; the kept runs, newest first: {listed} "
        "(state.keepRuns decides how many are kept)"
    )


async def read_rows(
    store: Store,
    spec: ExtractionSpec,
    manifest: Manifest,
    workdir: Path,
    buckets: set[int] | None = None,
    *,
    columns: bool = True,
) -> State:
    """The rows a reader of `manifest` sees; tables and columns only of `buckets` if given,
    and no column rows at all with `columns=False`."""

    def chosen(entity: Entity) -> list[FileRef]:
        if entity == "column" and not columns:
            return []
        return [ref for ref in manifest.files[entity] if buckets is None or ref.bucket in buckets]

    state: State = {}
    small: tuple[Entity, ...] = ("database", "schema")
    for entity in small:
        paths = await fetch_verified(store, manifest.files[entity], workdir)
        state[entity] = read_parquet_files(paths, entity)
    files = {}
    bucketed: tuple[Entity, ...] = ("table", "column")
    for entity in bucketed:
        refs = chosen(entity)
        files[entity] = list(zip(refs, await fetch_verified(store, refs, workdir), strict=True))

    def resolve() -> tuple[pa.Table, pa.Table]:
        connection = duck.connect(spec.duckdb)
        try:
            load_previous(connection, files["table"], files["column"])
            return logical_rows(connection, "table"), logical_rows(connection, "column")
        finally:
            connection.close()

    state["table"], state["column"] = await asyncio.to_thread(resolve)
    return state


def differing_buckets(older: Manifest, newer: Manifest) -> set[int] | None:
    """Buckets whose files differ between two states; None when the layouts differ (all)."""
    if older.bucket_count != newer.bucket_count:
        return None

    def files(manifest: Manifest) -> dict[int, set[str]]:
        found: dict[int, set[str]] = {}
        for entity in ("table", "column"):
            for ref in manifest.files[entity]:
                found.setdefault(ref.bucket or 0, set()).add(ref.key)
        return found

    old, new = files(older), files(newer)
    return {bucket for bucket in old.keys() | new.keys() if old.get(bucket) != new.get(bucket)}


async def diff_between(
    store: Store, spec: ExtractionSpec, older: Manifest, newer: Manifest, workdir: Path
) -> tuple[pa.Table, IOMeter]:
    """Change records from `older` to `newer`, computed from the two states."""
    with metering() as meter:
        buckets = differing_buckets(older, newer)
        before = await read_rows(store, spec, older, workdir / "older", buckets)
        after = await read_rows(store, spec, newer, workdir / "newer", buckets)
        header = ChangeHeader(newer.run_id, older.run_id, newer.marker)
        reasons = await reasons_between(store, spec, older, newer, before, after)
        records = await asyncio.to_thread(_records, spec, before, after, header, reasons)
    return records, meter


async def reasons_between(
    store: Store,
    spec: ExtractionSpec,
    older: Manifest | None,
    newer: Manifest,
    before: State,
    after: State,
) -> Reasons:
    """Why things changed, as the run that made `newer` recorded it.

    Deletions are `out_of_scope` when the scope excludes them now, else `dropped` (the rule
    plan applies). Classification reasons exist only for consecutive states (or a first
    state): they are the newer run's, from its plan (kept with the run).
    """
    scope = Scope(spec.source.scope)
    deleted: dict[Entity, pa.Table] = {}
    for entity in ("database", "schema", "table"):
        keys = list(KEY_COLUMNS[entity])
        gone = _anti(before[entity].select(keys), after[entity].select(keys), keys)
        reasons = [
            "dropped" if _in_scope(scope, entity, tuple(row.values())) else "out_of_scope"
            for row in gone.to_pylist()
        ]
        deleted[entity] = gone.append_column("reason", pa.array(reasons, pa.string()))
    tables = None
    if newer.parent_run_id == (older.run_id if older else None):
        tables = await _plan_reasons(store, newer.run_id)
    return Reasons(tables=tables, deleted=deleted)


def _in_scope(scope: Scope, entity: Entity, key: tuple[str, ...]) -> bool:
    if entity == "database":
        return scope.database(key[0])
    if entity == "schema":
        return scope.schema(key[0], key[1])
    return scope.table(key[0], key[1], key[2])


def _anti(left: pa.Table, right: pa.Table, keys: list[str]) -> pa.Table:
    """Rows of `left` whose key is not in `right`."""
    return left.join(right, keys=keys, join_type="left anti")


async def _plan_reasons(store: Store, run_id: RunId) -> pa.Table | None:
    """The classification reasons of the tables a run extracted (None if its plan is gone)."""
    try:
        data = (await store.get(plan_key(run_id, "table.parquet"))).data
    except KeyNotFoundError:
        return None
    planned = pq.read_table(
        io.BytesIO(data), columns=[*TABLE_KEY_COLUMNS, "reason", "needs_columns"]
    )
    return planned.filter(planned["needs_columns"]).select([*TABLE_KEY_COLUMNS, "reason"])


def _records(
    spec: ExtractionSpec,
    before: State,
    after: State,
    header: ChangeHeader,
    reasons: Reasons | None = None,
) -> pa.Table:
    connection = duck.connect(spec.duckdb)
    try:
        return change_records(
            connection,
            StatePair(before, after),
            header,
            reasons=reasons or Reasons(),
            stable_column_ids=stable_column_ids(spec.source.kind),
        )
    finally:
        connection.close()


@dataclass(frozen=True, slots=True)
class TableVersion:
    """One kept state's view of a table: its name there, its rows, and what changed into it."""

    manifest: Manifest
    key: TableKey
    table: pa.Table
    columns: pa.Table
    changes: pa.Table


async def table_history(
    store: Store, spec: ExtractionSpec, key: TableKey, workdir: Path
) -> tuple[list[TableVersion], IOMeter]:
    """The table's versions across kept states, oldest first, each with the changes into it.

    Walking from the newest state back, a rename recorded by a run (its change records) makes
    the older states be read under the previous name. Per state, only the bucket holding the
    table is read. The walk ends at a state whose files are no longer all there.
    """
    with metering() as meter:
        slices = []
        name = key
        for manifest in await kept(store, spec.state.keep_runs):
            bucket = bucket_of(*name, manifest.bucket_count)
            try:
                rows = await read_rows(store, spec, manifest, workdir / manifest.run_id, {bucket})
            except StateCorruptError:
                break  # an older state whose files are gone (kept by an earlier metatide)
            slices.append((manifest, name, only_table(rows, name)))
            name = await _name_before(store, manifest.run_id, name)
        versions = []
        previous: State = _empty()
        previous_manifest: Manifest | None = None
        for manifest, name, rows in reversed(slices):
            header = ChangeHeader(
                manifest.run_id,
                previous_manifest.run_id if previous_manifest else None,
                manifest.marker,
            )
            reasons = await reasons_between(
                store, spec, previous_manifest, manifest, previous, rows
            )
            changes = await asyncio.to_thread(_records, spec, previous, rows, header, reasons)
            changes = changes.filter(pc.is_in(changes["entity"], pa.array(["table", "column"])))
            versions.append(TableVersion(manifest, name, rows["table"], rows["column"], changes))
            previous, previous_manifest = rows, manifest
    return versions, meter


_RENAME_COLUMNS: Final = [
    "entity",
    "change",
    *TABLE_KEY_COLUMNS,
    *(f"previous_{name}" for name in TABLE_KEY_COLUMNS),
]


async def _name_before(store: Store, run_id: RunId, key: TableKey) -> TableKey:
    """The table's name before run `run_id`, from that run's change records (if it renamed it)."""
    try:
        data = (await store.get(changes_key(run_id))).data
    except KeyNotFoundError:  # a run from before change records: no rename known
        return key
    for row in pq.read_table(io.BytesIO(data), columns=_RENAME_COLUMNS).to_pylist():
        current = (row["database_name"], row["schema_name"], row["table_name"])
        if (row["entity"], row["change"], current) == ("table", "renamed", key):
            return (
                row["previous_database_name"],
                row["previous_schema_name"],
                row["previous_table_name"],
            )
    return key


def only_table(state: State, key: TableKey) -> State:
    """A table's row and its columns' rows of a state, with its schema's and database's rows."""
    result: State = {}
    for entity in ENTITIES:
        rows = state[entity]
        mask = pc.equal(rows["database_name"], key[0])
        if entity != "database":
            mask = pc.and_(mask, pc.equal(rows["schema_name"], key[1]))
        if entity in ("table", "column"):
            mask = pc.and_(mask, pc.equal(rows["table_name"], key[2]))
        result[entity] = rows.filter(mask)
    return result


def _empty() -> State:
    return {entity: SCHEMAS[entity].empty_table() for entity in ENTITIES}


def split_name(name: str) -> list[str]:
    """TABLE, SCHEMA.TABLE or DATABASE.SCHEMA.TABLE; a part in double quotes may hold dots
    ("a.b"), and "" inside quotes is one quote."""
    parts: list[str] = []
    current, quoted, index = "", False, 0
    while index < len(name):
        char = name[index]
        if char == '"' and quoted and name[index + 1 : index + 2] == '"':
            current += '"'
            index += 1
        elif char == '"':
            quoted = not quoted
        elif char == "." and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
        index += 1
    parts.append(current)
    if quoted or len(parts) > 3 or "" in parts:
        raise SpecError(
            f"{name!r} must be TABLE, SCHEMA.TABLE or DATABASE.SCHEMA.TABLE (quote a part that "
            'holds a dot: sales."order.items")'
        )
    return parts


async def resolve_table(store: Store, spec: ExtractionSpec, name: str, workdir: Path) -> TableKey:
    """The key of a table named in full, or found by a shorter name in the newest state.

    A full name needs no read; a shorter one reads the newest state's table files.
    """
    parts = split_name(name)
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    newest = pick(await kept(store, 1), None, "look a table up in")
    tables = (await read_rows(store, spec, newest, workdir, columns=False))["table"]
    matches = [
        (row["database_name"], row["schema_name"], row["table_name"])
        for row in tables.select(list(TABLE_KEY_COLUMNS)).to_pylist()
        if [row["database_name"], row["schema_name"], row["table_name"]][-len(parts) :] == parts
    ]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise SpecError(f"no table {name!r} in the newest state ({newest.run_id})")
    shown = ", ".join(".".join(match) for match in matches[:10])
    raise SpecError(f"{name!r} names {len(matches)} tables ({shown}); add the schema or database")


def select_rows(state: State, entity: str, match: str | None) -> pa.Table:
    """One entity's rows, optionally only those whose SCHEMA.TABLE[.COLUMN] matches a glob."""
    if entity not in ENTITIES:
        raise SpecError(f"--entity must be one of {', '.join(ENTITIES)}, not {entity!r}")
    rows = state[entity].sort_by([(name, "ascending") for name in KEY_COLUMNS[entity]])
    if match is None or entity == "database":
        return rows
    parts = [
        name for name in ("schema_name", "table_name", "column_name") if name in rows.column_names
    ]
    names = [".".join(str(row[name]) for name in parts) for row in rows.select(parts).to_pylist()]
    keep = pa.array([fnmatch.fnmatchcase(name, match) for name in names], pa.bool_())
    return rows.filter(keep)
