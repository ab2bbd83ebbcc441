"""The files one run hands from phase to phase under ``runs/{run_id}/``.

Plan, columns and finalize never call each other: plan writes the scope and the batch lists
here, each columns task writes one batch file, finalize reads them all. This module names
those keys, defines the plan document and reads the files back (a missing one is an
IncompleteRunError, a damaged document a StateCorruptError), so the hand-over has one
definition.
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Final, Literal, TypeVar, get_args

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from metatide.extractor.core.errors import IncompleteRunError, StateCorruptError
from metatide.extractor.core.ids import RunId
from metatide.extractor.core.records import COLUMN_SCHEMA, TABLE_KEY_COLUMNS, TABLE_SCHEMA
from metatide.extractor.core.wire import first_problem
from metatide.extractor.state.files import encode_parquet
from metatide.extractor.storage import KeyNotFoundError, Store

DocumentT = TypeVar("DocumentT", bound=BaseModel)

TableState = Literal["CREATED", "UPDATED", "NO CHANGE", "BACKFILL"]
TABLE_STATES: Final[tuple[TableState, ...]] = ("CREATED", "UPDATED", "NO CHANGE", "BACKFILL")
DeleteReason = Literal["dropped", "out_of_scope"]
TableReason = Literal[
    "new_after_marker",
    "new_before_marker",
    "type_changed",
    "ddl_time_after_marker",
    "fingerprint_changed",
    "ddl_time_changed",
    "object_replaced",
    "unchanged",
]
TABLE_REASONS: Final[tuple[TableReason, ...]] = get_args(TableReason)
"""Why plan classified a table as it did (see `metatide.extractor.engine.classify`)."""

PLAN_FORMAT_VERSION: Final = 2

PLANNED_TABLE_SCHEMA = (
    TABLE_SCHEMA.append(pa.field("state", pa.string(), nullable=False))
    .append(pa.field("reason", pa.string(), nullable=False))
    .append(pa.field("bucket", pa.int32(), nullable=False))
    .append(pa.field("needs_columns", pa.bool_(), nullable=False))
)

DELETED_TABLE_SCHEMA = pa.schema(
    [TABLE_SCHEMA.field(name) for name in TABLE_KEY_COLUMNS]
    + [pa.field("reason", pa.string(), nullable=False), pa.field("bucket", pa.int32())]
)

BATCH_SCHEMA = pa.schema(
    [COLUMN_SCHEMA.field(name) for name in TABLE_KEY_COLUMNS]
    + [pa.field("row_kind", pa.string(), nullable=False)]
    + [COLUMN_SCHEMA.field(name).with_nullable(True) for name in COLUMN_SCHEMA.names[3:]]
)
"""A batch file: one 'table' row per requested table that still exists, one 'column' row per
column. A requested table with no 'table' row was dropped after plan listed it."""


def plan_key(run_id: RunId, name: str) -> str:
    return f"runs/{run_id}/plan/{name}"


def batch_request_key(run_id: RunId, index: int) -> str:
    return f"runs/{run_id}/plan/batches/batch-{index:05d}.parquet"


def batch_result_key(run_id: RunId, index: int) -> str:
    return f"runs/{run_id}/columns/batch-{index:05d}.parquet"


def diff_key(run_id: RunId, entity: str, extension: str, deleted: bool = False) -> str:
    folder = f"incremental-diff/delete/{entity}" if deleted else f"incremental-diff/{entity}"
    return f"runs/{run_id}/{folder}/part-00000.{extension}"


def changes_key(run_id: RunId, extension: str = "parquet") -> str:
    """The run's change records (`changes`), as Parquet and as JSON Lines."""
    return f"runs/{run_id}/changes.{extension}"


def summary_key(run_id: RunId) -> str:
    return f"runs/{run_id}/summary.json"


HISTORY_MANIFEST_NAME: Final = "manifest.json"
"""Each committed run keeps a copy of its manifest in its runs/ folder."""


def history_manifest_key(run_id: RunId) -> str:
    return f"runs/{run_id}/{HISTORY_MANIFEST_NAME}"


class PlanDocument(BaseModel):
    """What plan decided: read by the columns tasks, finalize and the operator."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = PLAN_FORMAT_VERSION
    run_id: RunId
    parent_run_id: RunId | None
    parent_content_hash: str | None
    full_extraction: bool
    marker_used: datetime
    next_marker: datetime
    bucket_count: int = Field(ge=1)
    batch_count: int = Field(ge=0)
    batch_size: int = Field(ge=1)
    tables_total: int = Field(ge=0)
    tables_by_state: dict[str, int]
    tables_by_reason: dict[str, int] = Field(default_factory=dict)
    tables_deleted: dict[str, int]
    tables_to_extract: int = Field(ge=0)
    started_at: datetime
    duration_seconds: float
    parent_manifest_sha256: str | None = None
    """SHA-256 of the committed manifest's bytes plan saw; a full extraction commits only over
    exactly those bytes (its parent may be unreadable, so run id and hash cannot be compared)."""
    previous_tables: int = Field(default=0, ge=0)
    """Tables in the previous state as readers see them (the mass-delete guard's base)."""
    verified_all: bool = False
    """Plan read and verified every file of the committed manifest (`state.verifyEveryRuns`)."""
    baseline_problems: list[str] = Field(default_factory=list)
    """What a full extraction could not read of the previous state (empty: all of it)."""
    bytes_read: int = Field(default=0, ge=0)
    """Bytes plan read from the store."""
    lease_seconds: int = Field(default=300, ge=1)
    """The lease term the later phases renew (`state.leaseSeconds` at plan)."""
    tables_renamed: int = Field(default=0, ge=0)
    """Deleted tables whose object id reappeared under a new name: not deletions to the
    mass-delete guard."""


async def write_table(store: Store, key: str, table: pa.Table) -> None:
    await store.put(key, encode_parquet(table))


async def _run_file_bytes(store: Store, key: str, missing: str) -> bytes:
    """A file one phase of a run handed over. Its absence means the phase that writes it did
    not finish, so the IncompleteRunError carries `missing`, which says what to run."""
    try:
        return (await store.get(key)).data
    except KeyNotFoundError:
        raise IncompleteRunError(missing) from None


async def read_run_document(
    store: Store, key: str, model: type[DocumentT], *, what: str, missing: str
) -> DocumentT:
    """A JSON document of a run (`what`, e.g. "the plan of run X"), validated by `model`.

    A damaged one is a StateCorruptError naming the document and its first bad field: a
    retry reads the same bytes, so it cannot help.
    """
    data = await _run_file_bytes(store, key, missing)
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise StateCorruptError(
            f"{what} ({key}) in {store.location} is unreadable: {first_problem(exc)}"
        ) from None


async def read_table(store: Store, key: str, schema: pa.Schema, what: str) -> pa.Table:
    """A Parquet hand-over file; a missing one means an earlier phase did not finish."""
    missing = f"{what} ({key}) is missing in {store.location}; run the phase that writes it first"
    data = await _run_file_bytes(store, key, missing)
    return pq.read_table(io.BytesIO(data), schema=schema)


async def read_plan(store: Store, run_id: RunId) -> PlanDocument:
    """The plan of a run; a missing plan means `metatide plan` did not finish for it."""
    return await read_run_document(
        store,
        plan_key(run_id, "plan.json"),
        PlanDocument,
        what=f"the plan of run {run_id}",
        missing=f"run {run_id} has no plan in {store.location}; "
        f"run `metatide plan --run-id {run_id}`",
    )
