"""Child process of the benchmarks: one metatide phase, timed from inside, as one JSON line.

Run by the benchmark scripts in a fresh interpreter so that the parent can read this
process's own peak RSS (``os.wait4``). It is not a benchmark by itself:

    python bench/_runner.py run --spec SPEC.json --workdir DIR
    python bench/_runner.py finalize --spec SPEC.json --workdir DIR --run-id RUN_ID
    python bench/_runner.py imports --spec SPEC.json --workdir DIR   (baseline: imports only)

The line printed on stdout holds ``import_seconds`` (importing metatide and its
dependencies), ``work_seconds`` (the phase itself, in-process), ``self_maxrss_mib`` and the
run summary.
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()

import argparse  # noqa: E402 - the clock starts before any import
import asyncio  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("mode", choices=("run", "finalize", "imports"))
    parser.add_argument("--spec", type=Path, required=True, help="spec file (JSON or YAML)")
    parser.add_argument("--workdir", type=Path, required=True, help="scratch folder")
    parser.add_argument("--run-id", help="run to finalize (mode finalize)")
    parser.add_argument("--profile", type=Path, help="write a pyinstrument HTML/text profile here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Import metatide, run one phase, print the timings and the summary."""
    args = _arguments(argv)
    before_import = time.perf_counter()
    from metatide.extractor.core import logs
    from metatide.extractor.core.ids import parse_run_id
    from metatide.extractor.core.spec import load_spec_file
    from metatide.extractor.phases.finalize import finalize
    from metatide.extractor.phases.run import run
    from metatide.extractor.storage import open_store

    imported = time.perf_counter()
    logs.configure("WARNING")  # the phases' info events would only slow the figures down
    spec = load_spec_file(args.spec)
    store = open_store(spec)
    args.workdir.mkdir(parents=True, exist_ok=True)

    async def work() -> dict[str, Any]:
        if args.mode == "imports":
            return {}
        if args.mode == "run":
            return (await run(spec, store, args.workdir)).to_dict()
        if not args.run_id:
            raise SystemExit("--run-id is required for mode finalize")
        summary = await finalize(spec, store, args.workdir, parse_run_id(args.run_id))
        return summary.to_dict()

    profiler = None
    if args.profile is not None:
        try:
            from pyinstrument import Profiler  # not a project dependency
        except ImportError:
            raise SystemExit(
                "--profile needs pyinstrument: `uv pip install pyinstrument` (temporarily), or "
                "`uv pip install --target DIR pyinstrument` and PYTHONPATH=DIR"
            ) from None

        profiler = Profiler(async_mode="disabled")
        profiler.start()
    began = time.perf_counter()
    summary = asyncio.run(work())
    finished = time.perf_counter()
    if profiler is not None:
        profiler.stop()
        args.profile.write_text(profiler.output_text(unicode=True, show_all=False))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    hwm_kib = 0
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmHWM:"):
                hwm_kib = int(line.split()[1])
    print(
        json.dumps(
            {
                "seconds_before_import": before_import - _STARTED,
                "import_seconds": imported - before_import,
                "work_seconds": finished - began,
                "vm_hwm_mib": hwm_kib / 1024,  # this process's own peak RSS
                "ru_maxrss_mib": usage.ru_maxrss / 1024,  # includes the parent's RSS at fork
                "summary": summary,
            },
            default=str,
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
