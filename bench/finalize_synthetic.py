"""Benchmark finalize alone on a synthetic state of 100,000 tables / 2,000,000 columns.

No database is involved: `SyntheticSource` implements the `Source` protocol in memory and
generates a deterministic catalog (listing with fingerprints, columns as Arrow tables). A
full `run()` creates the committed state once; it is cached under
~/.cache/metatide/bench/ keyed by the parameters and the engine's state-format files, and
hard-linked into a fresh folder before each measurement (state files are immutable and the
store replaces files by rename, so the cache is never modified). Then 1 % of the tables get
a new fingerprint and new columns (one column's type changes, one column is added), plan
and the column batches run in this process, and ONLY finalize is timed, in a fresh process
whose peak RSS is its own.

Targets: finalize <= 1 s, peak RSS <= 1 GiB. For scale: the seed's finalize (DuckDB over
JSON Lines, rewriting the whole state every run) took about 20 s here and rewrote 570 MB.

    uv run python bench/finalize_synthetic.py [--repeat 2] [--rebuild]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    REPO_DIR,
    RUNNER,
    child_env,
    human_bytes,
    manifest_state_bytes,
    python,
    run_child,
    snapshot,
    table,
    update_results,
    verdict,
    written_files,
)
from report import print_final_table

from metatide.extractor.core.ids import RunId, TableKey
from metatide.extractor.core.records import (
    COLUMN_SCHEMA,
    DATABASE_SCHEMA,
    SCHEMA_SCHEMA,
    TABLE_SCHEMA,
    row_numbers,
)
from metatide.extractor.core.scope import Scope
from metatide.extractor.core.spec import ExtractionSpec, parse_spec
from metatide.extractor.phases.columns import extract_batch
from metatide.extractor.phases.plan import plan
from metatide.extractor.phases.run import run
from metatide.extractor.sources import ColumnsResult
from metatide.extractor.sources.base import ClosingSource
from metatide.extractor.state.files import read_committed
from metatide.extractor.storage import LocalStore

GENERATOR_VERSION = 1
CACHE_ROOT = Path.home() / ".cache" / "metatide" / "bench"
# Engine files whose change can make a cached state unreadable or different.
STATE_FORMAT_FILES = (
    "core/records.py",
    "state/manifest.py",
    "state/files.py",
    "state/runfiles.py",
)
DATABASE = "synth"
TARGET_SECONDS = 1.0
TARGET_RSS_MIB = 1024.0
SEED_SECONDS = 20.0
SEED_BYTES = 570_000_000

# name, type, nullable, default, primary key: one table's columns (cycled past 20).
COLUMNS: tuple[tuple[str, str, bool, str | None, bool], ...] = (
    ("id", "bigint", False, None, True),
    ("created_at", "timestamp with time zone", False, "now()", False),
    ("updated_at", "timestamp without time zone", True, None, False),
    ("name", "character varying(128)", False, None, False),
    ("description", "text", True, None, False),
    ("status", "character(3)", True, "'new'::bpchar", False),
    ("amount", "numeric(12,2)", True, "0", False),
    ("quantity", "integer", False, "1", False),
    ("owner_id", "bigint", True, None, False),
    ("ratio", "double precision", True, None, False),
    ("score", "real", True, None, False),
    ("is_active", "boolean", False, "true", False),
    ("payload", "jsonb", True, None, False),
    ("tags", "text[]", True, None, False),
    ("external_id", "uuid", True, None, False),
    ("birth_date", "date", True, None, False),
    ("duration", "interval", True, None, False),
    ("client_ip", "inet", True, None, False),
    ("raw", "bytea", True, None, False),
    ("priority", "smallint", True, "3", False),
)


@dataclass(frozen=True, slots=True)
class Params:
    """The synthetic catalog's shape."""

    tables: int
    columns: int
    schemas: int
    tables_per_bucket: int | None = None  # None: the spec's default

    @property
    def per_schema(self) -> int:
        return -(-self.tables // self.schemas)

    def key(self) -> str:
        """Cache key: parameters, generator version and the state-format files' content."""
        digest = hashlib.sha256()
        shape: list[int | None] = [self.tables, self.columns, self.schemas, GENERATOR_VERSION]
        if self.tables_per_bucket is not None:
            shape.append(self.tables_per_bucket)
        digest.update(json.dumps(shape).encode())
        for name in STATE_FORMAT_FILES:
            digest.update((REPO_DIR / "extractor" / name).read_bytes())
        per_bucket = f"-{self.tables_per_bucket}pb" if self.tables_per_bucket else ""
        return (
            f"finalize-synthetic-{self.tables}t-{self.columns}c{per_bucket}-"
            f"{digest.hexdigest()[:12]}"
        )


def _template(
    columns: int, changed: bool
) -> list[tuple[str, str, bool, str | None, bool, str | None]]:
    """The columns of one table (a changed table: one type changed, one column added)."""
    rows = []
    for position in range(columns):
        name, data_type, nullable, default, primary = COLUMNS[position % len(COLUMNS)]
        name = name if position < len(COLUMNS) else f"{name}_{position}"
        if changed and position == 3:
            data_type = "text"
        comment = f"Column {name}: synthetic, for the benchmark" if position % 7 == 3 else None
        rows.append((name, data_type, nullable, default, primary, comment))
    if changed:
        rows.append(("added_by_bench", "integer", True, "7", False, "added by the 1 % change"))
    return rows


@dataclass
class Catalog:
    """The deterministic catalog: table i is schema i // per_schema, table i % per_schema."""

    params: Params
    schema_names: pa.Array = field(init=False)
    table_names: pa.Array = field(init=False)
    schema_of: pa.Array = field(init=False)
    index_of: dict[TableKey, int] = field(init=False)
    listing: pa.Table = field(init=False)

    def __post_init__(self) -> None:
        p = self.params
        schema_of = [i // p.per_schema for i in range(p.tables)]
        self.schema_of = pa.array(schema_of, pa.int64())
        self.schema_names = pa.array([f"s_{s:04d}" for s in range(p.schemas)], pa.string())
        names = [f"{'v' if i % 10 == 9 else 't'}_{i % p.per_schema:05d}" for i in range(p.tables)]
        self.table_names = pa.array(names, pa.string())
        schema_list = self.schema_names.to_pylist()
        self.index_of = {
            (DATABASE, schema_list[schema_of[i]], names[i]): i for i in range(p.tables)
        }
        is_view = [i % 10 == 9 for i in range(p.tables)]
        view_definitions = [
            (
                f" SELECT {', '.join(c[0] for c in COLUMNS)}\n   FROM "
                f"{schema_list[schema_of[i]]}.t_{(i - 1) % p.per_schema:05d};"
            )
            if is_view[i]
            else None
            for i in range(p.tables)
        ]
        self.listing = pa.Table.from_arrays(
            [
                pa.array([DATABASE] * p.tables, pa.string()),
                self.schema_names.take(self.schema_of),
                self.table_names,
                pa.array(["VIEW" if view else "TABLE" for view in is_view], pa.string()),
                pa.array(
                    [f"Synthetic table {i}" if i % 5 == 0 else None for i in range(p.tables)],
                    pa.string(),
                ),
                pa.array(view_definitions, pa.string()),
                pa.nulls(p.tables, pa.timestamp("us", tz="UTC")),
                pa.nulls(p.tables, pa.timestamp("us", tz="UTC")),
                pa.array([fingerprint(i, 0) for i in range(p.tables)], pa.string()),
                pa.array([str(16384 + i) for i in range(p.tables)], pa.string()),  # object ids
            ],
            schema=TABLE_SCHEMA,
        )


def fingerprint(index: int, version: int) -> str:
    """A sha256-sized fingerprint of one table version."""
    return hashlib.sha256(f"{index}:{version}".encode()).hexdigest()


class SyntheticSource(ClosingSource):
    """An in-memory `Source`: the catalog, with `changed` tables at version 1 (nothing to close)."""

    def __init__(self, catalog: Catalog, changed: frozenset[int] = frozenset()) -> None:
        self._catalog = catalog
        self._changed = changed

    async def __aenter__(self) -> Self:
        return self

    async def close(self) -> None:
        return None

    async def clock(self) -> datetime:
        return datetime.now(UTC)

    async def databases(self, scope: Scope) -> pa.Table:
        return pa.table({"database_name": [DATABASE], "comment": ["synthetic"]}, DATABASE_SCHEMA)

    async def schemas(self, databases: Sequence[str], scope: Scope) -> pa.Table:
        names = self._catalog.schema_names
        return pa.Table.from_arrays(
            [pa.array([DATABASE] * len(names)), names, pa.nulls(len(names), pa.string())],
            schema=SCHEMA_SCHEMA,
        )

    async def tables(self, schemas: pa.Table, scope: Scope) -> pa.Table:
        listing = self._catalog.listing
        if not self._changed:
            return listing
        changed = sorted(self._changed)
        mask = [False] * listing.num_rows
        for index in changed:
            mask[index] = True
        new_prints = pa.array([fingerprint(index, 1) for index in changed], pa.string())
        prints = pc.replace_with_mask(
            listing.column("fingerprint").combine_chunks(), pa.array(mask), new_prints
        )
        position = listing.schema.get_field_index("fingerprint")
        return listing.set_column(position, "fingerprint", prints)

    async def columns(self, tables: Sequence[TableKey]) -> ColumnsResult:
        index_of = self._catalog.index_of
        indexes = [index_of[key] for key in tables if key in index_of]
        parts = [
            self._columns([i for i in indexes if i not in self._changed], changed=False),
            self._columns([i for i in indexes if i in self._changed], changed=True),
        ]
        present = frozenset(key for key in tables if key in index_of)
        return ColumnsResult(columns=pa.concat_tables(parts).combine_chunks(), present=present)

    def _columns(self, indexes: list[int], changed: bool) -> pa.Table:
        """The columns of the given tables, vectorised: each table repeats one template."""
        template = _template(self._catalog.params.columns, changed)
        width = len(template)
        rows = row_numbers(len(indexes) * width)
        per_row = pa.array(indexes, pa.int64()).take(pc.divide(rows, width))
        take = pc.subtract(rows, pc.multiply(pc.divide(rows, width), width))
        fields = list(zip(*template, strict=True))
        names, types, nullable, defaults, primary, comments = (
            pa.array(values) for values in fields
        )
        return pa.Table.from_arrays(
            [
                pa.repeat(pa.scalar(DATABASE, pa.string()), len(per_row)),
                self._catalog.schema_names.take(self._catalog.schema_of.take(per_row)),
                self._catalog.table_names.take(per_row),
                names.take(take),
                pc.add(take, 1).cast(pa.int32()),
                types.take(take),
                nullable.take(take),
                defaults.cast(pa.string()).take(take),
                comments.cast(pa.string()).take(take),
                primary.take(take),
            ],
            schema=COLUMN_SCHEMA,
        )


def make_spec(
    store_dir: Path, temp_dir: Path, tables_per_bucket: int | None = None
) -> ExtractionSpec:
    """A spec with the defaults (batch size, parallelism, buckets); the source is never opened."""
    document: dict[str, Any] = {
        "applicationName": "bench",
        "connectionId": "synthetic",
        "source": {"kind": "sqlite", "path": "/nonexistent/synthetic.db"},
        "storage": {"url": f"file://{store_dir}"},
        "duckdb": {"tempDirectory": str(temp_dir / "duckdb")},
    }
    if tables_per_bucket is not None:
        document["state"] = {"tablesPerBucket": tables_per_bucket}
    return parse_spec(document)


def connection_root(spec: ExtractionSpec, store_dir: Path) -> Path:
    return store_dir / spec.connection_prefix


async def _cached_state_ok(spec: ExtractionSpec, store_dir: Path, params: Params) -> bool:
    try:
        committed = await read_committed(LocalStore(connection_root(spec, store_dir)))
    except Exception:  # noqa: BLE001 - any doubt means: rebuild
        return False
    return (
        committed is not None
        and (committed.manifest.logical_rows or {}).get("table") == params.tables
    )


def ensure_cache(params: Params, catalog: Catalog, rebuild: bool) -> tuple[Path, dict[str, Any]]:
    """The cached committed state (built by a full run if missing); returns its store dir."""
    folder = CACHE_ROOT / params.key()
    store_dir = folder / "store"
    spec = make_spec(store_dir, folder, params.tables_per_bucket)
    if not rebuild and asyncio.run(_cached_state_ok(spec, store_dir, params)):
        info: dict[str, Any] = json.loads((folder / "build.json").read_text())
        return store_dir, {**info, "reused": True}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"building the cached state in {folder} (a full run; slow is fine) …", flush=True)
    started = time.perf_counter()
    summary = asyncio.run(
        run(
            spec,
            LocalStore(connection_root(spec, store_dir)),
            folder / "work",
            source_factory=lambda _spec: SyntheticSource(catalog),
        )
    )
    shutil.rmtree(folder / "work", ignore_errors=True)
    state_bytes, state_files = manifest_state_bytes(connection_root(spec, store_dir))
    info = {
        "build_seconds": time.perf_counter() - started,
        "build_durations": summary.durations_seconds,
        "state_bytes": state_bytes,
        "state_files": state_files,
        "state_rows": summary.state_rows,
    }
    (folder / "build.json").write_text(json.dumps(info, indent=1))
    print(
        f"  built in {info['build_seconds']:.1f} s: {state_files:,} files, "
        f"{human_bytes(state_bytes)}",
        flush=True,
    )
    return store_dir, {**info, "reused": False}


def link_copy(source: Path, target: Path) -> None:
    """Copy a store folder as hard links (falls back to copying across file systems)."""
    try:
        shutil.copytree(source, target, copy_function=os.link)
    except OSError:
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)


async def prepare_run(
    spec: ExtractionSpec, root: Path, catalog: Catalog, changed: frozenset[int], workdir: Path
) -> tuple[RunId, dict[str, float]]:
    """Plan and extract every batch with the changed source; returns the run id and timings."""
    store = LocalStore(root)
    source = SyntheticSource(catalog, changed)
    started = time.perf_counter()
    document = await plan(spec, store, source, workdir)
    planned = time.perf_counter()
    for index in range(document.batch_count):
        await extract_batch(store, source, document.run_id, index)
    extracted = time.perf_counter()
    if document.tables_by_state.get("UPDATED") != len(changed):
        raise RuntimeError(f"plan classified {document.tables_by_state}, expected {len(changed)}")
    return document.run_id, {
        "plan_seconds": planned - started,
        "columns_seconds": extracted - planned,
        "batches": float(document.batch_count),
    }


def measure(
    params: Params,
    catalog: Catalog,
    cached: Path,
    repetition: int,
    fraction: float,
    keep: bool,
    profile: Path | None,
) -> dict[str, Any]:
    """One measurement: fresh copy of the cached state, 1 % change, finalize in a child."""
    base = Path(tempfile.mkdtemp(prefix="metatide-bench-finalize-"))
    try:
        store_dir = base / "store"
        link_copy(cached, store_dir)
        spec = make_spec(store_dir, base, params.tables_per_bucket)
        spec_path = base / "spec.json"
        spec_path.write_text(spec.to_json())
        root = connection_root(spec, store_dir)
        count = max(1, round(params.tables * fraction))
        changed = frozenset(random.Random(repetition).sample(range(params.tables), count))
        run_id, prepared = asyncio.run(prepare_run(spec, root, catalog, changed, base / "plan"))
        before_state = snapshot(root / "current-state")
        before_all = snapshot(root)
        argv = [
            python(),
            str(RUNNER),
            "finalize",
            "--spec",
            str(spec_path),
            "--workdir",
            str(base / "finalize"),
            "--run-id",
            run_id,
        ]
        if profile is not None:
            argv += ["--profile", str(profile)]
        result = run_child(argv, child_env()).check()
        payload = result.payload()
        summary = payload["summary"]
        written_state = written_files(before_state, snapshot(root / "current-state"))
        written_all = written_files(before_all, snapshot(root))
        state_bytes, state_files = manifest_state_bytes(root)
        expected_updated = summary["tables"].get("UPDATED")
        if expected_updated != count:
            raise RuntimeError(
                f"finalize summary says {summary['tables']}, expected {count} UPDATED"
            )
        row = {
            "repetition": repetition,
            "changed_tables": count,
            "finalize_seconds": payload["work_seconds"],
            "finalize_process_seconds": result.wall_seconds,
            "import_seconds": payload["import_seconds"],
            "peak_rss_mib": result.maxrss_mib,
            "written_state_bytes": sum(written_state.values()),
            "written_state_files": len(written_state),
            "written_total_bytes": sum(written_all.values()),
            "written_total_files": len(written_all),
            "state_bytes": state_bytes,
            "state_files": state_files,
            "summary_durations": summary.get("durations_seconds"),
            "summary_state_bytes_written": summary.get("state_bytes_written"),
            "diff": summary.get("diff"),
            **prepared,
        }
        print(
            f"  #{repetition}: finalize {row['finalize_seconds']:.2f} s in-process "
            f"(process {row['finalize_process_seconds']:.2f} s, "
            f"import {row['import_seconds']:.2f} s), peak RSS {row['peak_rss_mib']:.0f} MiB, "
            f"wrote {human_bytes(row['written_state_bytes'])} to current-state "
            f"({row['written_state_files']:,} files), {human_bytes(row['written_total_bytes'])} "
            f"in all; plan {prepared['plan_seconds']:.1f} s, "
            f"columns {prepared['columns_seconds']:.1f} s (not timed)",
            flush=True,
        )
        return row
    finally:
        if keep:
            print(f"  kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Parse options, build or reuse the cached state, measure finalize, report."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tables", type=int, default=100_000)
    parser.add_argument("--columns", type=int, default=20, help="columns per table")
    parser.add_argument("--schemas", type=int, default=100)
    parser.add_argument("--changed", type=float, default=0.01, help="fraction of tables changed")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--tables-per-bucket", type=int, help="override state.tablesPerBucket (default: spec's)"
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached state")
    parser.add_argument("--keep", action="store_true", help="keep the temporary stores")
    parser.add_argument(
        "--profile",
        type=Path,
        help="write a pyinstrument text profile of finalize here (main thread only: DuckDB and "
        "Parquet work in worker threads shows as waiting; use `py-spy record --threads` for it)",
    )
    parser.add_argument("--no-results", action="store_true", help="do not write bench/results.json")
    args = parser.parse_args(argv)
    params = Params(args.tables, args.columns, args.schemas, args.tables_per_bucket)
    started = time.perf_counter()
    catalog = Catalog(params)
    print(
        f"catalog: {params.tables:,} tables x {params.columns} columns in {params.schemas} schemas "
        f"(generated in {time.perf_counter() - started:.1f} s)"
    )
    cached, cache_info = ensure_cache(params, catalog, args.rebuild)
    print(
        f"cached state: {cached} ({'reused' if cache_info['reused'] else 'built'}, "
        f"{cache_info['state_files']:,} files, {human_bytes(cache_info['state_bytes'])})"
    )
    rows = [
        measure(params, catalog, cached, repetition, args.changed, args.keep, args.profile)
        for repetition in range(1, args.repeat + 1)
    ]
    worst_seconds = max(r["finalize_seconds"] for r in rows)
    worst_rss = max(r["peak_rss_mib"] for r in rows)
    print()
    print(
        table(
            [
                "rep",
                "changed",
                "finalize s",
                "process s",
                "RSS MiB",
                "written current-state",
                "written all",
                "state",
                "% state written",
                "files written",
            ],
            [
                [
                    r["repetition"],
                    r["changed_tables"],
                    r["finalize_seconds"],
                    r["finalize_process_seconds"],
                    r["peak_rss_mib"],
                    human_bytes(r["written_state_bytes"]),
                    human_bytes(r["written_total_bytes"]),
                    human_bytes(r["state_bytes"]),
                    100.0 * r["written_state_bytes"] / r["state_bytes"],
                    r["written_state_files"],
                ]
                for r in rows
            ],
        )
    )
    checks = {
        "seconds": verdict(worst_seconds, TARGET_SECONDS),
        "rss_mib": verdict(worst_rss, TARGET_RSS_MIB),
    }
    print(
        f"\ntargets: finalize <= {TARGET_SECONDS:g} s: {checks['seconds']} "
        f"(worst {worst_seconds:.2f} s); "
        f"peak RSS <= {TARGET_RSS_MIB:.0f} MiB: {checks['rss_mib']} (worst {worst_rss:.0f} MiB)\n"
        f"seed for scale: ~{SEED_SECONDS:.0f} s, rewrote {SEED_BYTES / 1e6:.0f} MB every run"
    )
    if not args.no_results:
        path = update_results(
            "finalize_synthetic",
            {
                "params": {
                    "tables": params.tables,
                    "columns": params.columns,
                    "schemas": params.schemas,
                    "changed_fraction": args.changed,
                    "tables_per_bucket": args.tables_per_bucket or "spec default",
                },
                "cache": {**cache_info, "path": str(cached)},
                "runs": rows,
                "verdicts": {
                    "worst": {"seconds": worst_seconds, "rss_mib": worst_rss},
                    "target": {"seconds": TARGET_SECONDS, "rss_mib": TARGET_RSS_MIB},
                    "checks": checks,
                },
                "seed": {"seconds": SEED_SECONDS, "bytes_written": SEED_BYTES},
                "notes": "finalize_seconds = finalize() in-process in a fresh child (imports "
                "excluded); peak RSS = that child's, imports included",
            },
        )
        print(f"wrote {path}")
        print_final_table()


if __name__ == "__main__":
    main(sys.argv[1:])
