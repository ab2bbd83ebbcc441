"""Status conditions in the kstatus convention, so Flux, Argo CD and kubectl wait can read health.

``Ready`` says the last run succeeded and nothing is failing, ``Reconciling`` that a run is
in progress, ``Stalled`` that the last run failed and needs a person (retrying the same run
cannot help: a terminal error or exhausted retries). A condition's lastTransitionTime changes
only when its status does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

ConditionType = Literal["Ready", "Reconciling", "Stalled"]


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, as Kubernetes writes times."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    previous: list[dict[str, Any]],
    kind: ConditionType,
    value: bool,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> dict[str, Any]:
    """One condition, keeping the previous transition time when the status did not change."""
    status = "True" if value else "False"
    old = next((item for item in previous if item.get("type") == kind), None)
    kept = old.get("lastTransitionTime") if old and old.get("status") == status else None
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": kept or timestamp(now),
    }


def conditions(
    previous: list[dict[str, Any]],
    *,
    running: bool,
    failed: str | None,
    ready_reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """The three conditions for one of: a run in progress, a failed last run, or idle and fine."""
    if running:
        ready = ("Ready", False, "RunInProgress", message)
        reconciling = ("Reconciling", True, "RunInProgress", message)
        stalled = ("Stalled", False, "RunInProgress", message)
    elif failed is not None:
        ready = ("Ready", False, "RunFailed", failed)
        reconciling = ("Reconciling", False, "RunFailed", failed)
        stalled = ("Stalled", True, "RunFailed", failed)
    else:
        ready = ("Ready", True, ready_reason, message)
        reconciling = ("Reconciling", False, ready_reason, message)
        stalled = ("Stalled", False, ready_reason, message)
    return [
        condition(previous, kind, value, reason, text, generation, now)  # type: ignore[arg-type]
        for kind, value, reason, text in (ready, reconciling, stalled)
    ]
