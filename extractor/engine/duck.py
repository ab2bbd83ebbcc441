"""One configured DuckDB connection per phase, for the set work (joins, anti-joins, diffs).

DuckDB calls block, so phases run them through `asyncio.to_thread`; the memory limit and
spill folder come from the spec, so a large catalog spills to disk instead of OOM-killing the
pod.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from metatide.extractor.core.spec import DuckDBSpec


def connect(spec: DuckDBSpec) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the spec's limits applied."""
    Path(spec.temp_directory).mkdir(parents=True, exist_ok=True)
    connection = duckdb.connect(
        config={
            "memory_limit": spec.memory_limit,
            "temp_directory": spec.temp_directory,
            "threads": spec.threads,
            "preserve_insertion_order": False,
        }
    )
    connection.execute("SET TimeZone = 'UTC'")
    return connection


def register_files(
    connection: duckdb.DuckDBPyConnection, name: str, paths: list[Path], empty: pa.Table
) -> None:
    """Expose Parquet files as a view (an empty table of the right shape when there are none)."""
    if paths:
        relation = connection.read_parquet([str(path) for path in paths])
        connection.register(name, relation)
    else:
        connection.register(name, empty)
