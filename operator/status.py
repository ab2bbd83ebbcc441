"""Status conditions in the kstatus convention, and the patch that writes only what changed.

``Ready`` says the last run succeeded and nothing is failing, ``Reconciling`` that a run is
in progress, ``Stalled`` that progress needs a person: the last run failed, the spec is
invalid, scheduling stopped after too many failures, or the current Job cannot start (a
missing ServiceAccount, an image that cannot be pulled...). Stalled and Reconciling may both
be true: a run is in progress and stuck. A condition's lastTransitionTime changes only when
its status does, so a status computed twice from the same facts is the same status, and the
operator writes nothing (`merge_patch` is empty).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from metatide.extractor.core.documents import Condition, ConditionType


def condition(
    previous: list[Condition],
    kind: ConditionType,
    value: bool,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> Condition:
    """One condition, keeping the previous transition time when the status did not change."""
    status: Literal["True", "False"] = "True" if value else "False"
    old = next((item for item in previous if item.type == kind), None)
    kept = old.last_transition_time if old is not None and old.status == status else None
    return Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message[:1000],
        observed_generation=generation,
        last_transition_time=kept or now.replace(microsecond=0),
    )


@dataclass(frozen=True, slots=True)
class Health:
    """What the conditions say: each condition's value, reason and message."""

    running: bool
    stalled: tuple[str, str] | None
    """(reason, message) when a person must act, else None."""
    ready_reason: str
    message: str


def conditions(
    previous: list[Condition], health: Health, generation: int, now: datetime
) -> list[Condition]:
    """Ready, Reconciling and Stalled for one moment of the resource."""
    if health.stalled is not None:
        reason, message = health.stalled
        ready = ("Ready", False, reason, message)
        stalled = ("Stalled", True, reason, message)
    elif health.running:
        ready = ("Ready", False, "RunInProgress", health.message)
        stalled = ("Stalled", False, "RunInProgress", health.message)
    else:
        ready = ("Ready", True, health.ready_reason, health.message)
        stalled = ("Stalled", False, health.ready_reason, health.message)
    if health.running:
        reconciling = ("Reconciling", True, "RunInProgress", health.message)
    else:
        reconciling = ("Reconciling", False, ready[2], ready[3])
    return [
        condition(previous, kind, value, reason, text, generation, now)  # type: ignore[arg-type]
        for kind, value, reason, text in (ready, reconciling, stalled)
    ]


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`; {} when they are equal.

    Objects are compared key by key (a key gone from `new` becomes null, which deletes it);
    anything else, lists included, is replaced whole when it differs.
    """
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch
