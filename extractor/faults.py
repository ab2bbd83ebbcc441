"""Fault injection for end-to-end tests of retry and failure policies; never set in production.

``METATIDE_FAULT_INJECTION=PHASE:BATCH:ACTION[:ARG]`` makes a phase command misbehave before it
starts, so a test can watch the Job controller's podFailurePolicy and backoffLimitPerIndex act
on real exit codes:

- ``columns:1:75:/shared/marker`` — batch 1 exits 75 (retryable) once: the first attempt
  creates the marker file, later attempts run normally;
- ``columns:1:3`` — batch 1 exits 3 (terminal) every time;
- ``columns:*:sleep:90`` — every batch sleeps 90 seconds first (a long run);
- ``plan:*:sleep:70`` — plan sleeps 70 seconds first (plan has no batch: use ``*``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from metatide.extractor.errors import SpecError

VARIABLE = "METATIDE_FAULT_INJECTION"


def inject(phase: str, batch: int | None = None) -> None:
    """Apply the configured fault if it names this phase and batch."""
    setting = os.environ.get(VARIABLE)
    if not setting:
        return
    parts = setting.split(":", 3)
    if len(parts) < 3:
        raise SpecError(f"{VARIABLE}={setting!r} must look like PHASE:BATCH:ACTION[:ARG]")
    target_phase, target_batch, action = parts[:3]
    argument = parts[3] if len(parts) > 3 else ""
    if target_phase != phase or target_batch not in ("*", str(batch)):
        return
    if action == "sleep":
        time.sleep(float(argument or 60))
        return
    marker = Path(argument) if argument else None
    if marker is not None:
        try:
            marker.open("x").close()
        except FileExistsError:
            return  # the fault already happened once
    print(f"injected fault: {phase} batch {batch} exits {action}", file=sys.stderr)
    raise SystemExit(int(action))
