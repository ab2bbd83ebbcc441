"""Run the pipeline in a child process that SIGKILLs itself at a crash point.

Usage: python crash_child.py SPEC_JSON_FILE CRASH_POINT_NAME WORKDIR
The parent test checks that the process died of SIGKILL and that the next run recovers.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # append: never shadow the stdlib

from metatide.extractor.core.spec import load_spec_file
from metatide.extractor.phases.run import run
from metatide.extractor.storage import open_store
from tests.faults import CRASH_POINTS, FaultyStore


def main() -> None:
    spec = load_spec_file(Path(sys.argv[1]))
    point = next(p for p in CRASH_POINTS if p.name == sys.argv[2])
    store = FaultyStore(open_store(spec), point, "kill")
    asyncio.run(run(spec, store, Path(sys.argv[3])))
    sys.exit(f"the crash point {point.name} was never reached")


if __name__ == "__main__":
    main()
