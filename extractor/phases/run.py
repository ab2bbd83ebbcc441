"""`metatide run`: the three phases chained in one process, column batches in parallel.

This is what a Kubernetes run does with Jobs, done with asyncio tasks: plan, then at most
`columns.parallelism` batches at once (each with its own source connection), then finalize.
A failure releases the lease, so the next run starts at once instead of waiting it out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from metatide.extractor.core.documents import RunSummary
from metatide.extractor.core.errors import TerminalError
from metatide.extractor.core.ids import RunId
from metatide.extractor.core.progress import NoProgress, Progress
from metatide.extractor.core.spec import ExtractionSpec
from metatide.extractor.phases.columns import BatchResult, extract_batch
from metatide.extractor.phases.finalize import finalize
from metatide.extractor.phases.plan import plan
from metatide.extractor.sources import Source, open_source
from metatide.extractor.state.lease import release_lease
from metatide.extractor.storage import Store


async def run(
    spec: ExtractionSpec,
    store: Store,
    workdir: Path,
    run_id: RunId | None = None,
    progress: Progress | None = None,
    source_factory: Callable[[ExtractionSpec], Source] = open_source,
) -> RunSummary:
    """Plan, extract every batch, finalize; returns the run summary."""
    progress = progress or NoProgress()
    document = await plan(
        spec, store, source_factory(spec), workdir, run_id, progress, whole_run=True
    )
    try:
        started = time.monotonic()
        await _extract_all(
            spec, store, document.run_id, document.batch_count, progress, source_factory
        )
        columns_seconds = time.monotonic() - started
        return await finalize(
            spec, store, workdir, document.run_id, progress, {"columns": columns_seconds}
        )
    except BaseException:
        await release_lease(store, document.run_id)
        raise


async def _extract_all(
    spec: ExtractionSpec,
    store: Store,
    run_id: RunId,
    batch_count: int,
    progress: Progress,
    source_factory: Callable[[ExtractionSpec], Source],
) -> list[BatchResult]:
    semaphore = asyncio.Semaphore(spec.columns.parallelism)
    progress.start("column batches", total=batch_count)

    async def one(index: int) -> BatchResult:
        async with semaphore:
            result = await extract_batch(store, source_factory(spec), run_id, index)
        progress.advance("column batches")
        return result

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(one(index), name=f"batch-{index}") for index in range(batch_count)
            ]
    except BaseExceptionGroup as failed:
        raise _most_telling(failed) from None
    finally:
        progress.finish("column batches")
    return [task.result() for task in tasks]


def _most_telling(group: BaseExceptionGroup) -> BaseException:
    """One error to report for failed batches: a terminal one if any (retrying cannot help)."""
    errors = list(_leaves(group))
    terminal = [error for error in errors if isinstance(error, TerminalError)]
    return (terminal or errors)[0]


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    leaves: list[BaseException] = []
    for error in group.exceptions:
        leaves.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return leaves
