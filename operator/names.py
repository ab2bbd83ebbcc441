"""Deterministic names and labels of the objects a run creates.

Names depend only on the resource and the run id, so an operator that restarts mid-run
finds the run's Jobs by name instead of creating them twice.
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal

Phase = Literal["plan", "columns", "finalize"]

LABEL_RESOURCE: Final = "metatide.dev/extraction"
LABEL_RUN: Final = "metatide.dev/run-id"
LABEL_PHASE: Final = "metatide.dev/phase"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGER: Final = "metatide-operator"

_MAX_NAME = 63


def run_suffix(run_id: str) -> str:
    """A short, unique-enough tag of a run for object names (the label holds the full id)."""
    return run_id.rsplit("-", 1)[-1][:8]


def object_name(resource: str, run_id: str, part: Phase | Literal["spec"]) -> str:
    """`{resource}-{run tag}-{part}`, shortened with a hash when the resource name is long."""
    tail = f"-{run_suffix(run_id)}-{part}"
    if len(resource) + len(tail) <= _MAX_NAME:
        return resource + tail
    digest = hashlib.sha256(resource.encode()).hexdigest()[:6]
    keep = _MAX_NAME - len(tail) - len(digest) - 1
    return f"{resource[:keep].rstrip('-')}-{digest}{tail}"


def labels(resource: str, run_id: str, phase: Phase | None = None) -> dict[str, str]:
    """Labels to find a run's objects (label values are at most 63 characters)."""
    found = {
        LABEL_RESOURCE: resource[:_MAX_NAME],
        LABEL_RUN: run_id,
        LABEL_MANAGED_BY: MANAGER,
    }
    if phase is not None:
        found[LABEL_PHASE] = phase
    return found
