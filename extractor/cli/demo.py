"""`metatide demo`: the whole product in one command, on an embedded SQLite database.

It creates a small shop database in a temporary folder, runs a full extraction into a
local-directory store, changes the schema (create, alter, rename, drop, comment), runs again,
and prints what the second run recorded: its change records (before and after of every
changed attribute, the rename as a rename), read back from the store the same way a
consumer would read them.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from metatide.extractor.cli.console import changes_table
from metatide.extractor.core.ids import RunId
from metatide.extractor.core.spec import ExtractionSpec, parse_spec
from metatide.extractor.engine.changes import sorted_records
from metatide.extractor.phases.run import run
from metatide.extractor.state.runfiles import changes_key
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
ALTER TABLE products RENAME TO catalog_items;
DROP VIEW order_totals;
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
            f"[bold]run 1[/] ({first.run_id}): full extraction, tables {first.tables.to_dict()}"
        )
        _execute(database, CHANGES)
        console.print(
            "[bold]DDL:[/] create invoices, add orders.shipped_at, rename products to "
            "catalog_items, drop the view order_totals, comment customers.email"
        )
        second = asyncio.run(run(spec, store, folder))
        console.print(f"[bold]run 2[/] ({second.run_id}): tables {second.tables.to_dict()}")
        records = asyncio.run(_read_changes(store, RunId(second.run_id)))
        console.print(changes_table(records, "change records of run 2"))
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


async def _read_changes(store: Store, run_id: RunId) -> pa.Table:
    return sorted_records(pq.read_table(io.BytesIO((await store.get(changes_key(run_id))).data)))
