"""The driver shared by the catalog benchmarks (postgres_catalog.py, mysql_catalog.py).

Not a benchmark itself. A script describes its server as a `Catalog` (how to build the
generated catalog, alter 1 % of it, undo that, and the spec's source) and calls `main`; the
scenarios, measurements, verdicts and results.json section are the same for every server:

  a. full run (empty store)                 target <= 10 s, peak RSS <= 500 MiB
  b. no-change run                          target <= 3 s, nothing but the manifest written
  c. 1 % of the tables altered (ADD COLUMN) target <= 4 s, <= 5 % of the state's bytes written

each once through the CLI (``metatide run --config spec.json``, the headline: what users run)
and once through the API (``bench/_runner.py``, which also reports import and in-process time),
each in a fresh process so that its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from _common import (
    RUNNER,
    child_env,
    cli,
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

LAYOUT_VERSION = 1
ADDED_PREFIX = "bench_added"

TARGETS: dict[str, dict[str, float]] = {
    "a_full": {"seconds": 10.0, "rss_mib": 500.0},
    "b_no_change": {"seconds": 3.0},
    "c_one_percent": {"seconds": 4.0, "written_pct": 5.0},
}


@dataclass(frozen=True, slots=True)
class Layout:
    """The generated catalog's shape."""

    schemas: int
    tables: int  # relations per schema, views included
    columns: int
    view_every: int
    varied: bool = True  # tables of different shapes, as in real catalogs

    @property
    def relations(self) -> int:
        return self.schemas * self.tables

    @property
    def views(self) -> int:
        return self.schemas * (self.tables // self.view_every)

    @property
    def label(self) -> str:
        return (
            f"metatide bench catalog v{LAYOUT_VERSION}: {self.schemas} schemas x {self.tables} "
            f"relations x {self.columns} columns, view every {self.view_every}, "
            f"{'varied' if self.varied else 'uniform'} table shapes"
        )

    def schema_name(self, index: int) -> str:
        """Schema (PostgreSQL) or database (MySQL) of the generated catalog."""
        return f"bench_s{index:03d}"

    def is_view(self, index: int) -> bool:
        return index % self.view_every == self.view_every - 1


# Name and NOT NULL of the generated columns (20 by default); each script types them.
COLUMN_TEMPLATE: tuple[tuple[str, bool], ...] = (
    ("id", True),
    ("created_at", True),
    ("updated_at", False),
    ("name", True),
    ("description", False),
    ("status", False),
    ("amount", False),
    ("quantity", True),
    ("owner_id", False),
    ("ratio", False),
    ("score", False),
    ("is_active", True),
    ("payload", False),
    ("tags", False),
    ("external_id", False),
    ("birth_date", False),
    ("duration", False),
    ("client_ip", False),
    ("raw", False),
    ("priority", False),
)


@dataclass(frozen=True, slots=True)
class PlannedColumn:
    """One column of a generated base table, before a script renders it in its SQL."""

    name: str
    template: str  # the COLUMN_TEMPLATE entry it is made from (decides its type)
    not_null: bool
    primary_key: bool  # the first column of three tables in four
    comment: str | None


def planned_columns(layout: Layout, index: int) -> list[PlannedColumn]:
    """The columns of base table `index` (`t_{index:04d}`) of every generated schema."""
    table_name = f"t_{index:04d}"
    planned = []
    for position in range(layout.columns):
        slot = (position + index * layout.varied) % len(COLUMN_TEMPLATE)
        base, not_null = COLUMN_TEMPLATE[slot]
        column = base if position < len(COLUMN_TEMPLATE) else f"{base}_{position}"
        if layout.varied:  # real catalogs rarely hold thousands of tables of one shape
            column = f"{base}_{(index * 7 + position * 13) % 97}_{position}"
        commented = (index + position) % 7 == 0
        planned.append(
            PlannedColumn(
                name=column,
                template=base,
                not_null=not_null,
                primary_key=position == 0 and index % 4 != 3,
                comment=f"Column {column} of {table_name}: synthetic, for the benchmark"
                if commented
                else None,
            )
        )
    return planned


def table_comment(index: int) -> str | None:
    """The comment of base table `index`, if it has one (one table in five)."""
    return f"Synthetic table t_{index:04d}" if index % 5 == 0 else None


def chosen_tables(layout: Layout, count: int, seed: int) -> list[tuple[int, int]]:
    """(schema index, relation index) of `count` random base tables, the same per seed."""
    rng = random.Random(seed)
    candidates = [
        (schema, index)
        for schema in range(layout.schemas)
        for index in range(layout.tables)
        if not layout.is_view(index)
    ]
    return rng.sample(candidates, count)


class Catalog(Protocol):
    """One server's side of the benchmark."""

    name: str  # "postgres", "mysql": the results.json section is f"{name}_catalog"
    dsn_env: str  # the variable the spec reads the DSN from
    settle_seconds: float  # wait after DDL so whole-second DDL times fall before a marker
    extra_spec: dict[str, Any]  # spec fields beyond the defaults
    spec_notes: str  # why those fields, for results.json

    def dsn(self) -> str:
        """The DSN the runs read the catalog with."""
        ...

    def source(self) -> dict[str, Any]:
        """The spec's `source` (its DSN from `dsn_env`)."""
        ...

    def ensure(self, layout: Layout, recreate: bool) -> dict[str, Any]:
        """Reuse the catalog if it holds exactly `layout`, else (re)create it; counts."""
        ...

    def alter(self, layout: Layout, count: int, seed: int) -> list[str]:
        """ADD COLUMN on `count` random base tables; their names."""
        ...

    def restore(self) -> int:
        """Drop every column `alter` added (also after a crash); how many."""
        ...


def write_spec(
    path: Path,
    store_dir: Path,
    temp_dir: Path,
    catalog: Catalog,
    tables_per_bucket: int | None = None,
    verify_every_runs: int | None = None,
) -> None:
    """The spec: the catalog's source, a local store, spec defaults otherwise."""
    document: dict[str, Any] = {
        "applicationName": "bench",
        "connectionId": catalog.name,
        "source": catalog.source(),
        "storage": {"url": f"file://{store_dir}"},
        "duckdb": {"tempDirectory": str(temp_dir / "duckdb")},
    }
    document.update(catalog.extra_spec)
    state: dict[str, int] = {}
    if tables_per_bucket is not None:
        state["tablesPerBucket"] = tables_per_bucket
    if verify_every_runs is not None:
        state["verifyEveryRuns"] = verify_every_runs
    if state:
        document["state"] = state
    path.write_text(json.dumps(document, indent=1))


def store_root(spec_path: Path) -> Path:
    """The connection's folder inside the store (the URL plus the prefix template)."""
    from metatide.extractor.core.spec import load_spec_file

    spec = load_spec_file(spec_path)
    return Path(urlsplit(spec.storage.url).path) / spec.connection_prefix


def measure(mode: str, spec_path: Path, workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    """One run in a fresh process (CLI or API) and what it wrote to current-state/."""
    root = store_root(spec_path)
    before = snapshot(root / "current-state")
    if mode == "cli":
        argv = [cli(), "run", "--config", str(spec_path)]
    else:
        argv = [python(), str(RUNNER), "run", "--spec", str(spec_path), "--workdir", str(workdir)]
    result = run_child(argv, env).check()
    after = snapshot(root / "current-state")
    payload = result.payload()
    summary = payload.get("summary", payload)
    written = written_files(before, after)
    state_bytes, state_files = manifest_state_bytes(root)
    written_bytes = sum(written.values())
    unexpected = sorted(
        key
        for key in written
        if key != "_manifest.json" and not key.rsplit("/", 1)[-1].startswith(".")
    )
    return {
        "mode": mode,
        "wall_seconds": result.wall_seconds,
        "work_seconds": payload.get("work_seconds"),
        "import_seconds": payload.get("import_seconds"),
        "peak_rss_mib": result.maxrss_mib,
        "written_bytes": written_bytes,
        "written_files": len(written),
        "written_state_files": len(unexpected),
        "manifest_bytes": after.get("_manifest.json", (0, 0, 0))[0],
        "state_bytes": state_bytes,
        "state_files": state_files,
        "written_pct": 100.0 * written_bytes / state_bytes if state_bytes else 0.0,
        "durations": summary.get("durations_seconds", {}),
        "tables": summary.get("tables", {}),
        "summary_state_bytes_written": summary.get("state_bytes_written"),
        "bytes_read": sum(summary.get("bytes_read", {}).values()),
        "bytes_read_by_phase": summary.get("bytes_read", {}),
        "state_verified": summary.get("state_verified"),
    }


def startup_costs(spec_path: Path, workdir: Path, env: dict[str, str]) -> dict[str, float]:
    """Interpreter start, metatide import time and its RSS, `metatide --help` wall time."""
    bare = run_child([python(), "-c", "pass"], env).check()
    imports = run_child(
        [python(), str(RUNNER), "imports", "--spec", str(spec_path), "--workdir", str(workdir)], env
    ).check()
    helped = run_child([cli(), "--help"], env).check()
    return {
        "python_start_seconds": bare.wall_seconds,
        "import_seconds": imports.payload()["import_seconds"],
        "imports_process_seconds": imports.wall_seconds,
        "imports_peak_rss_mib": imports.maxrss_mib,
        "cli_help_seconds": helped.wall_seconds,
    }


def run_scenarios(
    catalog: Catalog,
    layout: Layout,
    mode: str,
    repetition: int,
    keep: bool,
    tables_per_bucket: int | None = None,
) -> list[dict[str, Any]]:
    """a, b, v, c for one mode, in a fresh store; the catalog is restored afterwards.

    v is a no-change run due for the periodic full verification (state.verifyEveryRuns):
    what that audit costs, while a and b must not read the column files of untouched buckets.
    """
    base = Path(tempfile.mkdtemp(prefix=f"metatide-bench-{catalog.name}-{mode}-"))
    specs = {"default": base / "spec.json", "verifying": base / "spec-verifying.json"}
    write_spec(specs["default"], base / "store", base, catalog, tables_per_bucket)
    write_spec(specs["verifying"], base / "store", base, catalog, tables_per_bucket, 1)
    env = child_env({catalog.dsn_env: catalog.dsn()})
    rows = []
    try:
        for scenario in ("a_full", "b_no_change", "v_verifying", "c_one_percent"):
            spec_path = specs["verifying" if scenario == "v_verifying" else "default"]
            altered: list[str] = []
            if scenario == "c_one_percent":
                count = max(1, layout.relations // 100)
                altered = catalog.alter(layout, count, seed=repetition)
            try:
                row = measure(mode, spec_path, base / "work" / scenario, env)
            finally:
                if altered:
                    catalog.restore()
                    time.sleep(catalog.settle_seconds)
            row.update({"scenario": scenario, "repetition": repetition, "altered": len(altered)})
            _check(row, layout)
            rows.append(row)
            print(_one_line(row), flush=True)
    finally:
        if keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return rows


def _check(row: dict[str, Any], layout: Layout) -> None:
    """The run did what the scenario says (else the figures would mean nothing)."""
    tables = row["tables"]
    if (
        row["scenario"] == "a_full"
        and sum(tables.get(s, 0) for s in ("CREATED", "BACKFILL")) != layout.relations
    ):
        raise RuntimeError(f"full run classified {tables}, expected {layout.relations} new tables")
    if row["scenario"] in ("b_no_change", "v_verifying") and (
        tables.get("NO CHANGE") != layout.relations
    ):
        raise RuntimeError(f"no-change run classified {tables}")
    if row["scenario"] == "v_verifying" and not row["state_verified"]:
        raise RuntimeError("the verifying run did not verify the state")
    if row["scenario"] == "c_one_percent" and tables.get("UPDATED") != row["altered"]:
        raise RuntimeError(f"1 % run classified {tables}, expected {row['altered']} UPDATED")


def _one_line(row: dict[str, Any]) -> str:
    durations = ", ".join(f"{k} {v:.2f}" for k, v in row["durations"].items())
    return (
        f"  #{row['repetition']} {row['mode']:3} {row['scenario']:14} "
        f"wall {row['wall_seconds']:6.2f} s"
        f"  rss {row['peak_rss_mib']:6.0f} MiB  wrote {human_bytes(row['written_bytes'])} "
        f"({row['written_pct']:.2f} % of {human_bytes(row['state_bytes'])}), "
        f"read {human_bytes(row['bytes_read'])}  [{durations}]"
    )


def report(rows: Sequence[dict[str, Any]], startup: dict[str, float]) -> dict[str, Any]:
    """Print the figures and the verdicts; returns the verdicts."""
    print()
    print(
        table(
            [
                "rep",
                "mode",
                "scenario",
                "wall s",
                "in-proc s",
                "RSS MiB",
                "written",
                "state",
                "% written",
                "read",
                "plan s",
                "columns s",
                "finalize s",
                "files written",
            ],
            [
                [
                    r["repetition"],
                    r["mode"],
                    r["scenario"],
                    r["wall_seconds"],
                    r["work_seconds"] if r["work_seconds"] is not None else "-",
                    r["peak_rss_mib"],
                    human_bytes(r["written_bytes"]),
                    human_bytes(r["state_bytes"]),
                    r["written_pct"],
                    human_bytes(r["bytes_read"]),
                    r["durations"].get("plan", 0.0),
                    r["durations"].get("columns", 0.0),
                    r["durations"].get("finalize", 0.0),
                    r["written_files"],
                ]
                for r in rows
            ],
        )
    )
    print(
        f"\nstart-up: python {startup['python_start_seconds']:.2f} s, import metatide run path "
        f"{startup['import_seconds']:.2f} s (process {startup['imports_process_seconds']:.2f} s, "
        f"{startup['imports_peak_rss_mib']:.0f} MiB), "
        f"`metatide --help` {startup['cli_help_seconds']:.2f} s"
    )
    verdicts: dict[str, Any] = {}
    lines = []
    for scenario, target in TARGETS.items():
        all_rows = [r for r in rows if r["scenario"] == scenario]
        cli_rows = [r for r in all_rows if r["mode"] == "cli"] or all_rows
        worst = {
            "seconds": max(r["wall_seconds"] for r in cli_rows),
            "rss_mib": max(r["peak_rss_mib"] for r in all_rows),
            "written_pct": max(r["written_pct"] for r in all_rows),
        }
        checks = {name: verdict(worst[name], limit) for name, limit in target.items()}
        if scenario == "b_no_change":
            only_manifest = all(r["written_state_files"] == 0 for r in all_rows)
            checks["only_manifest_written"] = "ok" if only_manifest else "MISS"
        verdicts[scenario] = {"worst": worst, "target": target, "checks": checks}
        lines.append(
            [
                scenario,
                ", ".join(f"{r['wall_seconds']:.2f}" for r in cli_rows),
                worst["rss_mib"],
                worst["written_pct"],
                " ".join(f"{k}:{v}" for k, v in checks.items()),
            ]
        )
    print()
    print(
        table(
            ["scenario", "wall s (CLI, each rep)", "max RSS MiB", "max % written", "verdict"], lines
        )
    )
    return verdicts


def main(catalog: Catalog, doc: str, argv: list[str] | None = None) -> None:
    """Parse options, prepare the catalog, run the scenarios, report (`doc`: the script's)."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n", 1)[0],
        epilog=doc.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--recreate", action="store_true", help="drop and recreate the database")
    parser.add_argument("--schemas", type=int, default=20)
    parser.add_argument("--tables", type=int, default=500, help="relations per schema")
    parser.add_argument("--columns", type=int, default=20, help="columns per relation")
    parser.add_argument("--view-every", type=int, default=10, help="every n-th relation is a view")
    parser.add_argument("--repeat", type=int, default=2, help="repetitions of all scenarios")
    parser.add_argument("--modes", default="cli,api", help="comma list of cli, api")
    parser.add_argument("--create-only", action="store_true", help="prepare the catalog and stop")
    parser.add_argument(
        "--tables-per-bucket", type=int, help="override state.tablesPerBucket (default: spec's)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary stores")
    parser.add_argument(
        "--uniform",
        action="store_true",
        help="every table of one shape (the worst case for the written-bytes ratio: the state "
        "compresses to a few bytes per table)",
    )
    parser.add_argument("--no-results", action="store_true", help="do not write bench/results.json")
    args = parser.parse_args(argv)
    layout = Layout(args.schemas, args.tables, args.columns, args.view_every, not args.uniform)
    print(f"catalog: {layout.label}")
    counts = catalog.ensure(layout, args.recreate)
    how = "reused" if counts["reused"] else f"created in {counts['create_seconds']:.1f} s"
    print(
        f"  {how}: {counts['relations']:,} relations ({counts['views']:,} views), "
        f"{counts['columns']:,} columns"
    )
    time.sleep(catalog.settle_seconds)
    if args.create_only:
        return
    startup_dir = Path(tempfile.mkdtemp(prefix=f"metatide-bench-{catalog.name}-startup-"))
    try:
        write_spec(startup_dir / "spec.json", startup_dir / "store", startup_dir, catalog)
        startup = startup_costs(startup_dir / "spec.json", startup_dir / "work", child_env())
    finally:
        shutil.rmtree(startup_dir, ignore_errors=True)
    rows: list[dict[str, Any]] = []
    for repetition in range(1, args.repeat + 1):
        for mode in args.modes.split(","):
            rows += run_scenarios(
                catalog, layout, mode.strip(), repetition, args.keep, args.tables_per_bucket
            )
    verdicts = report(rows, startup)
    if not args.no_results:
        path = update_results(
            f"{catalog.name}_catalog",
            {
                "catalog": {**counts, "layout": layout.label},
                "spec_notes": catalog.spec_notes,
                "tables_per_bucket": args.tables_per_bucket or "spec default",
                "startup": startup,
                "runs": rows,
                "verdicts": verdicts,
                "notes": "headline = CLI wall time (process start + imports + run); "
                "bytes written = current-state files new or rewritten by the run "
                "(manifest included); "
                "state bytes = sum of the sizes the committed manifest lists",
            },
        )
        print(f"\nwrote {path}")
        print_final_table()
