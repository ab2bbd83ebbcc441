"""Fault injection for end-to-end tests of retry and failure policies; never set in production.

``METATIDE_FAULT_INJECTION=PHASE:BATCH:ACTION[:ARG]`` makes a phase command misbehave before it
starts, so a test can watch the Job controller's podFailurePolicy and backoffLimitPerIndex act
on real exit codes:

- ``columns:1:75:/shared/marker`` — batch 1 exits 75 (retryable) once: the first attempt
  creates the marker file, later attempts run normally;
- ``columns:1:3`` — batch 1 exits 3 (terminal) every time;
- ``columns:*:sleep:90`` — every batch sleeps 90 seconds first (a long run);
- ``plan:*:sleep:70`` — plan sleeps 70 seconds first (plan has no batch: use ``*``).

The variable alone does nothing: it is honoured only next to ``METATIDE_TEST_HARNESS=1``,
which the e2e tests set beside it (e2e/test_operator.py `fault_env`) and the chart and the
operator never set. A production spec that carries the fault variable by accident (copied
from a test, say) logs a warning once and runs normally.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from metatide.extractor.core.errors import SpecError

VARIABLE = "METATIDE_FAULT_INJECTION"
HARNESS_VARIABLE = "METATIDE_TEST_HARNESS"

_warned = False


def inject(phase: str, batch: int | None = None) -> None:
    """Apply the configured fault if it names this phase and batch (test harness only)."""
    setting = os.environ.get(VARIABLE)
    if not setting or not _harness_allows(setting):
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


def _harness_allows(setting: str) -> bool:
    """Whether the test harness asked for faults; refuses (with one warning) otherwise."""
    global _warned  # noqa: PLW0603 - one warning per process, however many phases ask
    if os.environ.get(HARNESS_VARIABLE) == "1":
        return True
    if not _warned:
        _warned = True
        from metatide.extractor.core.logs import log

        log.warning(
            "fault_injection_ignored",
            variable=VARIABLE,
            value=setting,
            reason=f"{VARIABLE} is for the test harness only ({HARNESS_VARIABLE}=1 is not set); "
            f"remove it from spec.job.env",
        )
    return False
