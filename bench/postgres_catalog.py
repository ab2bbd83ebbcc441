"""Benchmark `metatide run` against a real PostgreSQL catalog of 10,000 tables / 200,000 columns.

Creates (or reuses) the database ``metatide_bench``: SCHEMAS schemas x TABLES relations x
COLUMNS columns of mixed types, every tenth relation a view, some table and column comments,
primary keys, defaults. Then, into a fresh local-directory store, measures three scenarios,
each in a fresh process so that its peak RSS is its own:

  a. full run (empty store)                 target <= 10 s, peak RSS <= 500 MiB
  b. no-change run                          target <= 3 s, nothing but the manifest written
  c. 1 % of the tables altered (ADD COLUMN) target <= 4 s, <= 5 % of the state's bytes written
  v. no-change run that verifies every file (state.verifyEveryRuns due): what the periodic
     audit costs; a and b must not read the column files of untouched buckets

once through the CLI (``metatide run --config spec.json``, the headline: what users run)
and once through the API (``metatide.extractor.phases.run.run`` in ``bench/_runner.py``,
which also reports import and in-process time). Added columns are dropped again afterwards,
so the cached catalog stays valid. Figures go to stdout and to bench/results.json.

    PYTHONSAFEPATH=1 uv run python bench/postgres_catalog.py [--recreate] [--repeat 2]

The admin DSN comes from METATIDE_TEST_PG_DSN (default: the CI PostgreSQL on 127.0.0.1:55432);
start that server with ``bash .ci/services/postgres.sh start``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
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

DEFAULT_ADMIN_DSN = "postgresql://metatide:metatide-test@127.0.0.1:55432/postgres"
DATABASE = "metatide_bench"
DSN_ENV = "METATIDE_BENCH_DSN"
LAYOUT_VERSION = 1
ADDED_PREFIX = "bench_added"
TABLES_PER_STATEMENT = 50

# name, type, NOT NULL, default; relations cycle through these (20 columns by default).
COLUMN_TEMPLATE: tuple[tuple[str, str, bool, str | None], ...] = (
    ("id", "bigint", True, None),
    ("created_at", "timestamp with time zone", True, "now()"),
    ("updated_at", "timestamp without time zone", False, None),
    ("name", "character varying(128)", True, None),
    ("description", "text", False, None),
    ("status", "character(3)", False, "'new'"),
    ("amount", "numeric(12,2)", False, "0"),
    ("quantity", "integer", True, "1"),
    ("owner_id", "bigint", False, None),
    ("ratio", "double precision", False, None),
    ("score", "real", False, None),
    ("is_active", "boolean", True, "true"),
    ("payload", "jsonb", False, None),
    ("tags", "text[]", False, None),
    ("external_id", "uuid", False, None),
    ("birth_date", "date", False, None),
    ("duration", "interval", False, None),
    ("client_ip", "inet", False, None),
    ("raw", "bytea", False, None),
    ("priority", "smallint", False, "3"),
)

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
        return f"bench_s{index:03d}"

    def is_view(self, index: int) -> bool:
        return index % self.view_every == self.view_every - 1


def ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A quoted SQL string literal (standard_conforming_strings is on since PostgreSQL 9.1)."""
    return "'" + text.replace("'", "''") + "'"


def dsn_for(admin_dsn: str, database: str) -> str:
    """The admin DSN pointed at another database."""
    return urlunsplit(urlsplit(admin_dsn)._replace(path="/" + quote(database, safe="")))


def relation_ddl(layout: Layout, schema_index: int, index: int) -> str:
    """CREATE TABLE or VIEW (with comments) for one relation of a schema."""
    schema = ident(layout.schema_name(schema_index))
    if layout.is_view(index):
        name = f"v_{index:04d}"
        base = f"t_{index - 1:04d}"
        statements = [f"CREATE VIEW {schema}.{ident(name)} AS SELECT * FROM {schema}.{ident(base)}"]
        if index % 20 == 19:
            statements.append(
                f"COMMENT ON VIEW {schema}.{ident(name)} IS {literal(f'View over {base}')}"
            )
        return ";\n".join(statements) + ";\n"
    name = f"t_{index:04d}"
    qualified = f"{schema}.{ident(name)}"
    columns = []
    comments = []
    for position in range(layout.columns):
        slot = (position + index * layout.varied) % len(COLUMN_TEMPLATE)
        base, data_type, not_null, default = COLUMN_TEMPLATE[slot]
        column = base if position < len(COLUMN_TEMPLATE) else f"{base}_{position}"
        if layout.varied:  # real catalogs rarely hold thousands of tables of one shape
            column = f"{base}_{(index * 7 + position * 13) % 97}_{position}"
        text = f"{ident(column)} {data_type}"
        if position == 0 and index % 4 != 3:
            text += " PRIMARY KEY"
        elif not_null:
            text += " NOT NULL"
        if default is not None:
            text += f" DEFAULT {default}"
        columns.append(text)
        if (index + position) % 7 == 0:
            comments.append(
                f"COMMENT ON COLUMN {qualified}.{ident(column)} IS "
                f"{literal(f'Column {column} of {name}: synthetic, for the benchmark')}"
            )
    if index % 5 == 0:
        comments.append(f"COMMENT ON TABLE {qualified} IS {literal(f'Synthetic table {name}')}")
    create = f"CREATE TABLE {qualified} (\n  " + ",\n  ".join(columns) + "\n)"
    return ";\n".join([create, *comments]) + ";\n"


async def catalog_counts(conn: Any) -> dict[str, Any]:
    """Relations, views and live columns of the bench schemas, and the layout label."""
    row = await conn.fetchrow(
        r"""
        WITH rel AS (
          SELECT c.oid, c.relkind FROM pg_catalog.pg_class AS c
          JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
          WHERE n.nspname LIKE 'bench\_s%' AND c.relkind IN ('r', 'v')
        )
        SELECT (SELECT count(*) FROM rel) AS relations,
               (SELECT count(*) FROM rel WHERE relkind = 'v') AS views,
               (SELECT count(*) FROM pg_catalog.pg_attribute AS a JOIN rel ON rel.oid = a.attrelid
                 WHERE a.attnum > 0 AND NOT a.attisdropped) AS columns,
               pg_catalog.shobj_description(
                 (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()),
                 'pg_database') AS label
        """
    )
    return dict(row)


async def drop_added_columns(conn: Any) -> int:
    """Undo scenario c (also after a crash): drop every column the benchmark added."""
    rows = await conn.fetch(
        r"""
        SELECT n.nspname, c.relname, a.attname FROM pg_catalog.pg_attribute AS a
        JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname LIKE 'bench\_s%' AND a.attname LIKE $1 AND NOT a.attisdropped
        """,
        ADDED_PREFIX.replace("_", r"\_") + "%",
    )
    if rows:
        script = "".join(
            f"ALTER TABLE {ident(s)}.{ident(t)} DROP COLUMN {ident(a)};\n" for s, t, a in rows
        )
        async with conn.transaction():
            await conn.execute(script)
    return len(rows)


async def ensure_catalog(admin_dsn: str, layout: Layout, recreate: bool) -> dict[str, Any]:
    """Reuse metatide_bench if it holds exactly the layout, else (re)create it; returns timings."""
    bench_dsn = dsn_for(admin_dsn, DATABASE)
    if not recreate:
        try:
            conn = await asyncpg.connect(bench_dsn)
        except asyncpg.InvalidCatalogNameError:
            conn = None
        if conn is not None:
            try:
                await drop_added_columns(conn)
                counts = await catalog_counts(conn)
            finally:
                await conn.close()
            expected = {
                "relations": layout.relations,
                "views": layout.views,
                "columns": layout.relations * layout.columns,
                "label": layout.label,
            }
            if counts == expected:
                return {"reused": True, "create_seconds": 0.0, **counts}
            print(f"catalog differs from the layout ({counts} != {expected}): recreating")
    started = time.perf_counter()
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {ident(DATABASE)} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {ident(DATABASE)}")
        await admin.execute(f"COMMENT ON DATABASE {ident(DATABASE)} IS {literal(layout.label)}")
    finally:
        await admin.close()
    work = list(range(layout.schemas))

    async def worker() -> None:
        conn = await asyncpg.connect(bench_dsn)
        try:
            while work:
                schema_index = work.pop(0)
                await _create_schema(conn, layout, schema_index)
                print(f"  schema {layout.schema_name(schema_index)} created", flush=True)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(2)))
    conn = await asyncpg.connect(bench_dsn)
    try:
        await conn.execute(
            "ANALYZE pg_catalog.pg_class, pg_catalog.pg_attribute, pg_catalog.pg_attrdef, "
            "pg_catalog.pg_description, pg_catalog.pg_index, pg_catalog.pg_namespace, "
            "pg_catalog.pg_type, pg_catalog.pg_depend, pg_catalog.pg_rewrite"
        )
        counts = await catalog_counts(conn)
    finally:
        await conn.close()
    return {"reused": False, "create_seconds": time.perf_counter() - started, **counts}


async def _create_schema(conn: Any, layout: Layout, schema_index: int) -> None:
    """One schema in one transaction, TABLES_PER_STATEMENT relations per round trip."""
    async with conn.transaction():
        await conn.execute(f"CREATE SCHEMA {ident(layout.schema_name(schema_index))}")
        for start in range(0, layout.tables, TABLES_PER_STATEMENT):
            stop = min(start + TABLES_PER_STATEMENT, layout.tables)
            await conn.execute(
                "".join(relation_ddl(layout, schema_index, i) for i in range(start, stop))
            )


async def alter_tables(admin_dsn: str, layout: Layout, count: int, seed: int) -> list[str]:
    """ADD COLUMN on `count` random base tables (one transaction); returns their names."""
    rng = random.Random(seed)
    candidates = [
        (schema, index)
        for schema in range(layout.schemas)
        for index in range(layout.tables)
        if not layout.is_view(index)
    ]
    chosen = rng.sample(candidates, count)
    names = [f"{layout.schema_name(s)}.t_{i:04d}" for s, i in chosen]
    script = "".join(
        f"ALTER TABLE {ident(layout.schema_name(s))}.{ident(f't_{i:04d}')} "
        f"ADD COLUMN {ident(f'{ADDED_PREFIX}_{seed}')} integer DEFAULT 7;\n"
        for s, i in chosen
    )
    conn = await asyncpg.connect(dsn_for(admin_dsn, DATABASE))
    try:
        async with conn.transaction():
            await conn.execute(script)
    finally:
        await conn.close()
    return names


async def restore(admin_dsn: str) -> int:
    """Drop the columns scenario c added."""
    conn = await asyncpg.connect(dsn_for(admin_dsn, DATABASE))
    try:
        return await drop_added_columns(conn)
    finally:
        await conn.close()


def write_spec(
    path: Path,
    store_dir: Path,
    temp_dir: Path,
    tables_per_bucket: int | None = None,
    verify_every_runs: int | None = None,
) -> None:
    """The spec: PostgreSQL source (DSN from the environment), local store, spec defaults."""
    document: dict[str, Any] = {
        "applicationName": "bench",
        "connectionId": "postgres",
        "source": {"kind": "postgresql", "dsnFrom": {"env": DSN_ENV}, "databases": [DATABASE]},
        "storage": {"url": f"file://{store_dir}"},
        "duckdb": {"tempDirectory": str(temp_dir / "duckdb")},
    }
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
    from metatide.extractor.spec import load_spec_file

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
    admin_dsn: str,
    layout: Layout,
    mode: str,
    repetition: int,
    keep: bool,
    tables_per_bucket: int | None = None,
) -> list[dict[str, Any]]:
    """a, b, c for one mode, in a fresh store; the catalog is restored afterwards."""
    base = Path(tempfile.mkdtemp(prefix=f"metatide-bench-pg-{mode}-"))
    specs = {"default": base / "spec.json", "verifying": base / "spec-verifying.json"}
    write_spec(specs["default"], base / "store", base, tables_per_bucket)
    write_spec(specs["verifying"], base / "store", base, tables_per_bucket, verify_every_runs=1)
    env = child_env({DSN_ENV: dsn_for(admin_dsn, DATABASE)})
    rows = []
    try:
        for scenario in ("a_full", "b_no_change", "v_verifying", "c_one_percent"):
            spec_path = specs["verifying" if scenario == "v_verifying" else "default"]
            altered: list[str] = []
            if scenario == "c_one_percent":
                count = max(1, layout.relations // 100)
                altered = asyncio.run(alter_tables(admin_dsn, layout, count, seed=repetition))
            try:
                row = measure(mode, spec_path, base / "work" / scenario, env)
            finally:
                if altered:
                    asyncio.run(restore(admin_dsn))
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


def main(argv: list[str] | None = None) -> None:
    """Parse options, prepare the catalog, run the scenarios, report."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        epilog=__doc__.split("\n\n", 1)[1],
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
    admin_dsn = os.environ.get("METATIDE_TEST_PG_DSN") or DEFAULT_ADMIN_DSN
    layout = Layout(args.schemas, args.tables, args.columns, args.view_every, not args.uniform)
    print(f"catalog: {layout.label}")
    catalog = asyncio.run(ensure_catalog(admin_dsn, layout, args.recreate))
    how = "reused" if catalog["reused"] else f"created in {catalog['create_seconds']:.1f} s"
    print(
        f"  {how}: {catalog['relations']:,} relations ({catalog['views']:,} views), "
        f"{catalog['columns']:,} columns"
    )
    if args.create_only:
        return
    startup_dir = Path(tempfile.mkdtemp(prefix="metatide-bench-pg-startup-"))
    try:
        write_spec(startup_dir / "spec.json", startup_dir / "store", startup_dir)
        startup = startup_costs(startup_dir / "spec.json", startup_dir / "work", child_env())
    finally:
        shutil.rmtree(startup_dir, ignore_errors=True)
    rows: list[dict[str, Any]] = []
    for repetition in range(1, args.repeat + 1):
        for mode in args.modes.split(","):
            rows += run_scenarios(
                admin_dsn, layout, mode.strip(), repetition, args.keep, args.tables_per_bucket
            )
    verdicts = report(rows, startup)
    if not args.no_results:
        path = update_results(
            "postgres_catalog",
            {
                "catalog": {**catalog, "layout": layout.label},
                "tables_per_bucket": args.tables_per_bucket or "spec default",
                "startup": startup,
                "runs": rows,
                "verdicts": verdicts,
                "notes": "headline = CLI wall time (process start + imports + run); "
                "bytes written = current-state files new or rewritten by the run "
                "(manifest included); "
                "state bytes = sum of the sizes the committed manifest lists; "
                "read = bytes plan and finalize read from the store (summary.bytes_read)",
            },
        )
        print(f"\nwrote {path}")
        print_final_table()


if __name__ == "__main__":
    main(sys.argv[1:])
