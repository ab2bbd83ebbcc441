"""Time the steps of plan and finalize in one warm process on the synthetic state.

    uv run python bench/profile_steps.py --tables 1000000

Wraps the named internal steps with timers (cumulative seconds per step; steps that run
concurrently on the event loop overlap, so their sum exceeds the phase's wall time), then runs
plan + columns and finalize once on a hard-linked copy of finalize_synthetic.py's cached state
with 1 % of tables changed. A diagnostic for bench/README.md's "Where the time goes", not a
benchmark: the step names are internal and move with the code.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finalize_synthetic as synthetic

from metatide.extractor.core import logs
from metatide.extractor.engine import build, changes
from metatide.extractor.engine.newstate import NewState
from metatide.extractor.phases import finalize, plan
from metatide.extractor.state import layered
from metatide.extractor.storage import LocalStore

STEPS: dict[ModuleType | type, list[str]] = {
    plan: ["_list_catalog", "_load_previous", "classify", "_with_buckets", "_write_batches"],
    layered: ["load_previous", "logical_rows"],
    build: ["_fetch_previous", "_write_files", "_write_small"],
    NewState: ["_register", "files", "compared", "diffs", "change_records"],
    changes: ["write_change_records"],
    finalize: ["_read_inputs", "build_state", "_write_diff", "_commit", "_summary"],
}
TIMES: dict[str, float] = {}


def _timed(function: Callable[..., Any], name: str) -> Callable[..., Any]:
    if asyncio.iscoroutinefunction(function):

        @functools.wraps(function)
        async def waiting(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await function(*args, **kwargs)
            finally:
                TIMES[name] = TIMES.get(name, 0.0) + time.perf_counter() - started

        return waiting

    @functools.wraps(function)
    def plain(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            TIMES[name] = TIMES.get(name, 0.0) + time.perf_counter() - started

    return plain


def _instrument() -> None:
    for owner, names in STEPS.items():
        for name in names:
            if hasattr(owner, name):
                setattr(owner, name, _timed(getattr(owner, name), name))
            else:
                print(f"note: {owner.__name__}.{name} no longer exists", file=sys.stderr)


def _report(label: str, seconds: float) -> None:
    print(f"{label}: {seconds:.2f} s")
    for name, spent in sorted(TIMES.items(), key=lambda item: -item[1]):
        print(f"  {name:<24} {spent:7.3f} s")
    TIMES.clear()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tables", type=int, default=100_000)
    parser.add_argument("--columns", type=int, default=20)
    args = parser.parse_args(argv)
    logs.configure("WARNING")
    _instrument()
    params = synthetic.Params(args.tables, args.columns, max(100, args.tables // 1000))
    catalog = synthetic.Catalog(params)
    cached, _ = synthetic.ensure_cache(params, catalog, rebuild=False)
    base = Path(tempfile.mkdtemp(prefix="metatide-profile-"))
    try:
        store_dir = base / "store"
        synthetic.link_copy(cached, store_dir)
        spec = synthetic.make_spec(store_dir, base)
        root = synthetic.connection_root(spec, store_dir)
        count = max(1, params.tables // 100)
        changed = frozenset(random.Random(1).sample(range(params.tables), count))
        started = time.perf_counter()
        run_id, _ = asyncio.run(synthetic.prepare_run(spec, root, catalog, changed, base / "plan"))
        _report("plan + columns", time.perf_counter() - started)
        started = time.perf_counter()
        asyncio.run(finalize.finalize(spec, LocalStore(root), base / "finalize", run_id))
        _report("finalize", time.perf_counter() - started)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
