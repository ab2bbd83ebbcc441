"""Benchmark looking back over kept states at 100,000 tables: `history`, `diff`, `show`.

Builds (or reuses, from finalize_synthetic.py's cache) the synthetic 100k-table state, then
commits three more runs of 1 % changed tables each (different tables every time), so four
states are kept. Then it measures, in this process, the bytes each command reads from the
store and its time:

  history of one table   target: reads at most the bucket holding it, per kept state
  diff first -> last     reads the buckets whose files differ (here: the touched ones)
  show (newest, tables)  reads every table file of one state

    uv run python bench/history_synthetic.py [--tables 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import human_bytes, table, update_results
from finalize_synthetic import (
    DATABASE,
    Catalog,
    Params,
    SyntheticSource,
    connection_root,
    ensure_cache,
    link_copy,
    make_spec,
)

from metatide.extractor.core import logs
from metatide.extractor.engine.history import diff_between, kept, read_rows, table_history
from metatide.extractor.phases.run import run
from metatide.extractor.storage import LocalStore
from metatide.extractor.storage.meter import metering


async def commit_changes(spec: Any, store: LocalStore, catalog: Catalog, workdir: Path) -> None:
    """Three runs, each changing 1 % of the tables (the source keeps earlier changes)."""
    changed: set[int] = set()
    tables = catalog.params.tables
    for number in range(3):
        changed |= set(random.Random(number).sample(range(tables), max(1, tables // 100)))
        source = SyntheticSource(catalog, frozenset(changed))
        await run(spec, store, workdir / f"run-{number}", source_factory=lambda _s, src=source: src)


async def measure(spec: Any, store: LocalStore, catalog: Catalog, workdir: Path) -> list[list[Any]]:
    states = await kept(store, spec.state.keep_runs)
    state_bytes = sum(ref.bytes for refs in states[0].files.values() for ref in refs)
    target = (DATABASE, catalog.schema_names[0].as_py(), catalog.table_names[0].as_py())
    rows = []
    started = time.perf_counter()
    versions, meter = await table_history(store, spec, target, workdir / "history")
    rows.append(
        [
            f"history {'.'.join(target)}",
            f"{len(versions)} states",
            meter.bytes_read,
            meter.reads,
            time.perf_counter() - started,
        ]
    )
    bucket_files = sum(
        ref.bytes
        for manifest in states
        for entity in ("table", "column")
        for ref in manifest.files[entity]
        if ref.bucket == _bucket(target, manifest.bucket_count)
    )
    rows.append(["  (files of the buckets holding it)", "", bucket_files, "", ""])
    started = time.perf_counter()
    records, meter = await diff_between(store, spec, states[-1], states[0], workdir / "diff")
    rows.append(
        [
            "diff first -> newest",
            f"{records.num_rows:,} records",
            meter.bytes_read,
            meter.reads,
            time.perf_counter() - started,
        ]
    )
    started = time.perf_counter()
    with metering() as meter:
        shown = await read_rows(store, spec, states[0], workdir / "show", columns=False)
    rows.append(
        [
            "show (tables)",
            f"{shown['table'].num_rows:,} tables",
            meter.bytes_read,
            meter.reads,
            time.perf_counter() - started,
        ]
    )
    rows.append(["  (whole state, for scale)", "", state_bytes, "", ""])
    return rows


def _bucket(key: tuple[str, str, str], count: int) -> int:
    from metatide.extractor.state.files import bucket_of

    return bucket_of(*key, count)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--tables", type=int, default=100_000)
    parser.add_argument("--columns", type=int, default=20)
    parser.add_argument("--schemas", type=int, default=100)
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args(argv)
    logs.configure("WARNING")
    params = Params(args.tables, args.columns, args.schemas)
    catalog = Catalog(params)
    cached, _ = ensure_cache(params, catalog, rebuild=False)
    base = Path(tempfile.mkdtemp(prefix="metatide-bench-history-"))
    try:
        store_dir = base / "store"
        link_copy(cached, store_dir)
        spec = make_spec(store_dir, base)
        store = LocalStore(connection_root(spec, store_dir))
        print(f"{args.tables:,} tables: committing three runs of 1 % changes ...", flush=True)
        asyncio.run(commit_changes(spec, store, catalog, base / "runs"))
        rows = asyncio.run(measure(spec, store, catalog, base / "look"))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(
        table(
            ["command", "result", "bytes read", "reads", "seconds"],
            [[r[0], r[1], human_bytes(r[2]) if r[2] != "" else "", r[3], r[4]] for r in rows],
        )
    )
    if not args.no_results:
        update_results("history_synthetic", {"tables": args.tables, "rows": rows})


if __name__ == "__main__":
    main(sys.argv[1:])
