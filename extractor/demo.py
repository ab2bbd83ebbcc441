"""`metatide demo`: the whole product in one command, on an embedded SQLite database.

It creates a small shop database in a temporary folder, runs a full extraction into a
local-directory store, changes the schema (create, alter, drop, comment), runs again, and
prints what the second run found: the incremental diff, read back from the store the same
way a consumer would read it.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from metatide.extractor.ids import RunId
from metatide.extractor.phases.run import run
from metatide.extractor.runfiles import diff_key
from metatide.extractor.spec import ExtractionSpec, parse_spec
from metatide.extractor.storage import Store, open_store

FIRST_SCHEMA = """
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    total NUMERIC(10, 2) NOT NULL DEFAULT 0
);
CREATE TABLE products (id INTEGER PRIMARY KEY, title TEXT);
CREATE VIEW order_totals AS SELECT customer_id, SUM(total) AS spent FROM orders GROUP BY 1;
"""

CHANGES = """
CREATE TABLE invoices (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL, issued_on DATE);
ALTER TABLE orders ADD COLUMN shipped_at TIMESTAMP;
DROP TABLE products;
CREATE TABLE customers_new (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT -- where invoices are sent
);
INSERT INTO customers_new SELECT * FROM customers;
DROP TABLE customers;
ALTER TABLE customers_new RENAME TO customers;
"""


def demo_spec(database: Path, store: Path) -> ExtractionSpec:
    """The spec the demo runs with: SQLite source, local store, small batches."""
    return parse_spec(
        {
            "applicationName": "demo",
            "connectionId": "shop",
            "source": {"kind": "sqlite", "path": str(database)},
            "storage": {"url": f"file://{store}"},
            "columns": {"batchSize": 2, "parallelism": 2},
            "duckdb": {"tempDirectory": str(store.parent / "duckdb")},
        },
        origin="demo spec",
    )


def run_demo(keep: Path | None = None) -> None:
    """Run the demo and print the second run's diff."""
    console = Console()
    folder = Path(tempfile.mkdtemp(prefix="metatide-demo-")) if keep is None else keep
    folder.mkdir(parents=True, exist_ok=True)
    try:
        database = folder / "shop.sqlite"
        database.unlink(missing_ok=True)
        _execute(database, FIRST_SCHEMA)
        spec = demo_spec(database, folder / "store")
        store = open_store(spec)
        first = asyncio.run(run(spec, store, folder))
        console.print(
            f"[bold]run 1[/] ({first['run_id']}): full extraction, tables {first['tables']}"
        )
        _execute(database, CHANGES)
        console.print(
            "[bold]DDL:[/] create invoices, alter orders, drop products, comment customers.email"
        )
        second = asyncio.run(run(spec, store, folder))
        console.print(f"[bold]run 2[/] ({second['run_id']}): tables {second['tables']}")
        console.print(_diff_table(asyncio.run(_read_diff(store, RunId(second["run_id"])))))
        if keep is None:
            console.print("(the demo's files were removed; `metatide demo --keep DIR` keeps them)")
        else:
            console.print(f"state and diffs are in {store.location}")
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def _execute(database: Path, script: str) -> None:
    with sqlite3.connect(database) as connection:
        connection.executescript(script)


async def _read_diff(store: Store, run_id: RunId) -> list[dict[str, Any]]:
    rows = []
    for entity in ("database", "schema", "table", "column"):
        for deleted in (False, True):
            data = (await store.get(diff_key(run_id, entity, "parquet", deleted))).data
            for row in pq.read_table(io.BytesIO(data)).to_pylist():
                rows.append({"entity": entity, **row, "change": row.get("change") or "deleted"})
    return rows


def _diff_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="incremental diff of run 2")
    for name in ("change", "entity", "name", "detail"):
        table.add_column(name)
    for row in rows:
        parts = [row.get(key) for key in ("schema_name", "table_name", "column_name")]
        name = ".".join(str(part) for part in parts if part)
        detail = row.get("reason") or row.get("data_type") or row.get("table_type") or ""
        if row.get("comment"):
            detail = f"{detail} -- {row['comment']}"
        table.add_row(row["change"], row["entity"], name, str(detail))
    return table
