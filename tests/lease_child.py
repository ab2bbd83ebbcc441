"""Plan a run, then extract its batch 0 slowly, as separate phases would: a lease holder to kill.

Usage: python lease_child.py SPEC_JSON_FILE RUN_ID WORKDIR SECONDS
Prints "columns started" once the batch holds the lease and sleeps SECONDS before reading.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # append: never shadow the stdlib

from metatide.extractor.core.ids import parse_run_id
from metatide.extractor.core.spec import load_spec_file
from metatide.extractor.phases.columns import extract_batch
from metatide.extractor.phases.plan import plan
from metatide.extractor.sources import open_source
from metatide.extractor.storage import open_store
from tests.slow_source import SlowColumns


async def main() -> None:
    spec = load_spec_file(Path(sys.argv[1]))
    run_id = parse_run_id(sys.argv[2])
    store = open_store(spec)
    await plan(spec, store, open_source(spec), Path(sys.argv[3]), run_id)
    print("columns started", flush=True)
    await extract_batch(store, SlowColumns(open_source(spec), float(sys.argv[4])), run_id, 0)


if __name__ == "__main__":
    asyncio.run(main())
