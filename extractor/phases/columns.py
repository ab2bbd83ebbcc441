"""Phase 2, columns: extract the columns of one batch of tables and store one file for it.

A batch is one index of the Kubernetes Indexed Job (``JOB_COMPLETION_INDEX``) or one task of
``metatide run``. The output key depends only on the run and the index, and its content only
on the source, so a retried index overwrites the same file with the same kind of content.
Every requested table is accounted for: with its columns, present with zero columns, or
absent because it was dropped after plan listed it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pyarrow as pa

from metatide.extractor.core.errors import SpecError
from metatide.extractor.core.ids import RunId
from metatide.extractor.core.logs import log, phase_logging
from metatide.extractor.core.records import TABLE_KEY_SCHEMA, table_to_keys
from metatide.extractor.sources import ColumnsResult, Source
from metatide.extractor.state.lease import kept_lease, read_plan_of_live_run
from metatide.extractor.state.runfiles import (
    BATCH_SCHEMA,
    batch_request_key,
    batch_result_key,
    read_table,
    write_table,
)
from metatide.extractor.storage import Store


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one batch extracted."""

    run_id: RunId
    index: int
    tables_requested: int
    tables_present: int
    columns: int
    duration_seconds: float

    def to_json(self) -> str:
        """The JSON line the columns command prints."""
        return json.dumps(
            {
                "phase": "columns",
                "run_id": self.run_id,
                "batch": self.index,
                "tables_requested": self.tables_requested,
                "tables_present": self.tables_present,
                "tables_dropped_since_plan": self.tables_requested - self.tables_present,
                "columns": self.columns,
                "duration_seconds": round(self.duration_seconds, 3),
            },
            sort_keys=True,
        )


async def extract_batch(store: Store, source: Source, run_id: RunId, index: int) -> BatchResult:
    """Extract one batch's columns and store them; the source is opened and closed here."""
    with phase_logging("columns", run_id, index):
        started = time.monotonic()
        plan = await read_plan_of_live_run(store, run_id)
        if not 0 <= index < plan.batch_count:
            raise SpecError(
                f"batch {index} does not exist in run {run_id}: plan made {plan.batch_count} "
                f"batch(es), numbered 0 to {plan.batch_count - 1}"
            )
        log.info("phase_started", batches=plan.batch_count)
        async with kept_lease(store, run_id, plan.lease_seconds) as lease:
            request = await read_table(
                store, batch_request_key(run_id, index), TABLE_KEY_SCHEMA, f"batch {index} request"
            )
            keys = table_to_keys(request)
            async with source:
                result = await source.columns(keys)
            lease.check()
            await write_table(store, batch_result_key(run_id, index), batch_file(request, result))
        batch = BatchResult(
            run_id=run_id,
            index=index,
            tables_requested=len(keys),
            tables_present=len(result.present),
            columns=result.columns.num_rows,
            duration_seconds=time.monotonic() - started,
        )
        log.info(
            "phase_finished",
            duration_seconds=round(batch.duration_seconds, 3),
            tables_requested=batch.tables_requested,
            tables_dropped_since_plan=batch.tables_requested - batch.tables_present,
            columns=batch.columns,
        )
        return batch


def batch_file(request: pa.Table, result: ColumnsResult) -> pa.Table:
    """The batch file: an accounting row per present table, in the request's order, then the
    columns in the source's order.

    Nothing reads the file in order (finalize selects rows by kind and key), so it is not
    sorted: sorting 210,000 rows on six keys took 0.1 s, a fifth of a 10k-table batch.
    """
    present = pa.array([key in result.present for key in table_to_keys(request)], pa.bool_())
    accounting = request.filter(present)
    accounting = accounting.append_column("row_kind", pa.repeat("table", accounting.num_rows))
    columns = result.columns.append_column("row_kind", pa.repeat("column", result.columns.num_rows))
    return pa.concat_tables([_conform(accounting), _conform(columns)])


def _conform(table: pa.Table) -> pa.Table:
    arrays = [
        table.column(field.name).cast(field.type)
        if field.name in table.column_names
        else pa.nulls(table.num_rows, field.type)
        for field in BATCH_SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=BATCH_SCHEMA)
