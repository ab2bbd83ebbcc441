"""Print the final table of all benchmarks from bench/results.json (targets and verdicts).

    uv run python bench/report.py [--json]

The benchmark scripts write their sections of results.json (postgres_catalog.py,
mysql_catalog.py, finalize_synthetic.py) and print this table at their end; run this to see it
again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_PATH, human_bytes, table

SCENARIO_LABELS = {
    "a_full": "a. full run (10k tables)",
    "b_no_change": "b. no-change run",
    "c_one_percent": "c. 1 % tables altered",
}
CATALOGS = {"postgres_catalog": "pg", "mysql_catalog": "mysql"}


def _catalog_rows(section: dict[str, Any] | None, short: str) -> list[list[Any]]:
    """The three scenario rows of one catalog benchmark (none if it has not run)."""
    rows: list[list[Any]] = []
    if not section:
        return rows
    for scenario, label in SCENARIO_LABELS.items():
        runs = [r for r in section["runs"] if r["scenario"] == scenario]
        cli = [r for r in runs if r["mode"] == "cli"] or runs
        api = [r for r in runs if r["mode"] == "api"]
        verdict = section["verdicts"][scenario]
        target = verdict["target"]
        wanted = [f"<= {target['seconds']:g} s"]
        if "rss_mib" in target:
            wanted.append(f"<= {target['rss_mib']:g} MiB")
        if "written_pct" in target:
            wanted.append(f"<= {target['written_pct']:g} % written")
        if scenario == "b_no_change":
            wanted.append("manifest only")
        rows.append(
            [
                f"{short} {label}",
                " / ".join(f"{r['wall_seconds']:.2f}" for r in cli),
                " / ".join(f"{r['work_seconds']:.2f}" for r in api) or "-",
                f"{verdict['worst']['rss_mib']:.0f}",
                " / ".join(
                    f"{human_bytes(r['written_bytes'])} ({r['written_pct']:.1f} %)" for r in cli
                ),
                ", ".join(wanted),
                " ".join(f"{k}:{v}" for k, v in verdict["checks"].items()),
            ]
        )
    return rows


def final_rows(results: dict[str, Any]) -> list[list[Any]]:
    """One row per measured target."""
    rows: list[list[Any]] = []
    for section, short in CATALOGS.items():
        rows += _catalog_rows(results.get(section), short)
    fin = results.get("finalize_synthetic")
    if fin:
        verdict = fin["verdicts"]
        rows.append(
            [
                f"finalize 100k tables, {fin['params']['changed_fraction']:.0%} changed",
                " / ".join(f"{r['finalize_process_seconds']:.2f}" for r in fin["runs"]),
                " / ".join(f"{r['finalize_seconds']:.2f}" for r in fin["runs"]),
                f"{verdict['worst']['rss_mib']:.0f}",
                " / ".join(
                    f"{human_bytes(r['written_state_bytes'])} "
                    f"({100 * r['written_state_bytes'] / r['state_bytes']:.1f} %)"
                    for r in fin["runs"]
                ),
                f"<= {verdict['target']['seconds']:g} s in-process, "
                f"<= {verdict['target']['rss_mib']:g} MiB",
                " ".join(f"{k}:{v}" for k, v in verdict["checks"].items()),
            ]
        )
    return rows


def print_final_table(path: Path = RESULTS_PATH) -> None:
    """Print the table (nothing if results.json is missing)."""
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        print(f"no {path} yet: run bench/postgres_catalog.py and bench/finalize_synthetic.py")
        return
    machine = results.get("machine", {})
    print(
        f"\nFINAL ({path.name}; nproc {machine.get('nproc')}, {machine.get('date')}, "
        f"load avg {machine.get('loadavg_1_5_15')})"
    )
    print(
        table(
            [
                "benchmark",
                "process wall s (each rep)",
                "in-process s",
                "peak RSS MiB",
                "written (% of state)",
                "target",
                "verdict",
            ],
            final_rows(results),
        )
    )


def main(argv: list[str] | None = None) -> None:
    """Print the final table, or the raw JSON with --json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--json", action="store_true", help="print bench/results.json as is")
    args = parser.parse_args(argv)
    if args.json:
        print(RESULTS_PATH.read_text())
    else:
        print_final_table()


if __name__ == "__main__":
    main(sys.argv[1:])
