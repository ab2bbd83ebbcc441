"""The operator's decision for one resource at one moment: a pure function of what it sees.

Given the resource (spec, status, annotations) and the state of the current run's Job,
`reconcile` returns what to do: objects to create, a run to stop, events to post, and ONE
status patch. The kopf layer (main.py) gathers the snapshot and applies the decision; this
module never calls the API, so every transition is tested without a cluster.

A run moves Planning -> Extracting (only when there are column batches) -> Finalizing. The
run is written into status *before* its objects are created (the next tick creates them by
deterministic names), so a restarted operator resumes the run it recorded and never starts
a second one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from metatide.extractor.ids import new_run_id
from metatide.operator.jobs import phase_job, spec_config_map
from metatide.operator.model import (
    RUN_REQUESTED_ANNOTATION,
    IncrementalExtractionSpec,
    next_fire_time,
)
from metatide.operator.names import Phase
from metatide.operator.schedule import latest_due
from metatide.operator.status import conditions, timestamp

RunPhase = Literal["Planning", "Extracting", "Finalizing"]
JOB_OF: dict[RunPhase, Phase] = {
    "Planning": "plan",
    "Extracting": "columns",
    "Finalizing": "finalize",
}


@dataclass(frozen=True, slots=True)
class JobView:
    """What the operator read about one phase Job (absent when it does not exist yet)."""

    exists: bool = False
    complete: bool = False
    failed: bool = False
    active: int = 0
    succeeded: int = 0
    failed_pods: int = 0
    failed_indexes: str = ""
    result: str | None = None
    failure: str | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one reconcile looks at."""

    name: str
    uid: str
    generation: int
    created_at: datetime
    annotations: dict[str, str]
    spec: IncrementalExtractionSpec
    status: dict[str, Any]
    now: datetime
    job: JobView | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """A Kubernetes Event to post on the resource."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class FinishedRun:
    """A run that ended in this reconcile (for metrics)."""

    outcome: Literal["Succeeded", "Failed", "Replaced"]
    seconds: float
    summary: dict[str, Any] | None


@dataclass
class Decision:
    """What to do: create objects, stop a run, post events, patch status once."""

    status: dict[str, Any]
    create: list[dict[str, Any]] = field(default_factory=list)
    stop_run: str | None = None
    events: list[Event] = field(default_factory=list)
    finished: list[FinishedRun] = field(default_factory=list)


def reconcile(snapshot: Snapshot) -> Decision:
    """Advance the current run, start a due one, and compute the new status."""
    status = dict(snapshot.status)
    decision = Decision(status={})
    current = status.get("currentRun")
    if current:
        current = _advance(snapshot, current, status, decision)
    current = _start_if_due(snapshot, current, status, decision)
    status["currentRun"] = current
    _summarise(snapshot, status)
    decision.status = status
    return decision


def _advance(
    snapshot: Snapshot, current: dict[str, Any], status: dict[str, Any], decision: Decision
) -> dict[str, Any] | None:
    job = snapshot.job or JobView()
    phase: RunPhase = current["phase"]
    if not job.exists:
        decision.create += _objects_for(snapshot, current)
        return current
    if phase == "Extracting":
        current = {
            **current,
            "batches": {
                "total": current.get("batches", {}).get("total", 0),
                "succeeded": job.succeeded,
                "failed": len(_indexes(job.failed_indexes)),
                "active": job.active,
            },
        }
    if job.failed:
        _finish(snapshot, current, status, decision, "Failed", job.failure or "the Job failed")
        return None
    if not job.complete:
        return current
    if phase == "Planning":
        return _after_plan(snapshot, current, status, decision, job.result)
    if phase == "Extracting":
        return _next_phase(current, "Finalizing", decision)
    _finish(snapshot, current, status, decision, "Succeeded", None, _result(job.result))
    return None


def _after_plan(
    snapshot: Snapshot,
    current: dict[str, Any],
    status: dict[str, Any],
    decision: Decision,
    result: str | None,
) -> dict[str, Any] | None:
    plan = _result(result)
    if plan is None or not isinstance(plan.get("batch_count"), int):
        message = "plan finished without a readable result (batch_count) in its termination message"
        _finish(snapshot, current, status, decision, "Failed", message)
        return None
    batches = plan["batch_count"]
    current = {**current, "batches": {"total": batches, "succeeded": 0, "failed": 0, "active": 0}}
    return _next_phase(current, "Extracting" if batches else "Finalizing", decision)


def _next_phase(current: dict[str, Any], phase: RunPhase, decision: Decision) -> dict[str, Any]:
    decision.events.append(Event("Normal", phase, f"run {current['id']}: {phase.lower()}"))
    return {**current, "phase": phase}


def _objects_for(snapshot: Snapshot, current: dict[str, Any]) -> list[dict[str, Any]]:
    phase = JOB_OF[current["phase"]]
    objects = []
    if phase == "plan":
        objects.append(spec_config_map(snapshot.name, snapshot.uid, current["id"], snapshot.spec))
    objects.append(
        phase_job(
            snapshot.name,
            snapshot.uid,
            current["id"],
            phase,
            snapshot.spec,
            batches=current.get("batches", {}).get("total", 0),
            take_over_from=current.get("takeOverFrom"),
        )
    )
    return objects


def _result(text: str | None) -> dict[str, Any] | None:
    """The JSON line a phase left as its termination message."""
    if not text:
        return None
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _indexes(text: str) -> list[int]:
    """Expand the Job's failedIndexes notation ("1,3-5")."""
    found: list[int] = []
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        found.extend(range(int(low), int(high or low) + 1))
    return found


def _finish(
    snapshot: Snapshot,
    current: dict[str, Any],
    status: dict[str, Any],
    decision: Decision,
    outcome: Literal["Succeeded", "Failed", "Replaced"],
    message: str | None,
    summary: dict[str, Any] | None = None,
) -> None:
    started = datetime.fromisoformat(current["startedAt"].replace("Z", "+00:00"))
    seconds = (snapshot.now - started).total_seconds()
    entry = {
        "id": current["id"],
        "outcome": outcome,
        "startedAt": current["startedAt"],
        "finishedAt": timestamp(snapshot.now),
        "message": (message or "")[:1000],
    }
    status["history"] = _bounded_history([*status.get("history", []), entry], snapshot.spec)
    decision.finished.append(FinishedRun(outcome, seconds, summary))
    if outcome == "Succeeded":
        status["lastSuccessfulRun"] = _success_summary(current["id"], snapshot.now, summary or {})
        status["marker"] = (summary or {}).get("next_marker")
        status["lastFailure"] = None
        status.pop("takeOverFrom", None)
        decision.events.append(Event("Normal", "RunSucceeded", _describe_success(entry, summary)))
    else:
        failed_phase = JOB_OF[current["phase"]]
        text = f"run {current['id']} failed in {failed_phase}: {message}"
        status["lastFailure"] = {"id": current["id"], "phase": failed_phase, "message": text[:1000]}
        status["takeOverFrom"] = current["id"]
        decision.events.append(Event("Warning", f"Run{outcome}", text[:1000]))


def _bounded_history(
    history: list[dict[str, Any]], spec: IncrementalExtractionSpec
) -> list[dict[str, Any]]:
    """The newest successful and unsuccessful runs, each up to its history limit."""
    limits = {
        True: spec.history.successful_runs_history_limit,
        False: spec.history.failed_runs_history_limit,
    }
    counts = {True: 0, False: 0}
    kept = []
    for entry in reversed(history):
        succeeded = entry["outcome"] == "Succeeded"
        if counts[succeeded] < limits[succeeded]:
            kept.append(entry)
            counts[succeeded] += 1
    return kept[::-1]


def _success_summary(run_id: str, now: datetime, summary: dict[str, Any]) -> dict[str, Any]:
    tables = summary.get("tables", {})
    columns = summary.get("columns", {})
    return {
        "id": run_id,
        "finishedAt": timestamp(now),
        "createdTables": tables.get("CREATED", 0),
        "updatedTables": tables.get("UPDATED", 0),
        "backfillTables": tables.get("BACKFILL", 0),
        "unchangedTables": tables.get("NO CHANGE", 0),
        "deletedTables": tables.get("deleted", 0),
        "changedTables": sum(tables.get(state, 0) for state in ("CREATED", "UPDATED", "BACKFILL")),
        "columnsExtracted": columns.get("extracted", 0),
        "columnsCarriedForward": columns.get("carried_forward", 0),
        "columnsDeleted": columns.get("deleted", 0),
        "marker": summary.get("next_marker"),
    }


def _describe_success(entry: dict[str, Any], summary: dict[str, Any] | None) -> str:
    tables = (summary or {}).get("tables", {})
    counts = ", ".join(f"{state} {count}" for state, count in tables.items())
    return f"run {entry['id']} succeeded: tables {counts}"


def _start_if_due(
    snapshot: Snapshot, current: dict[str, Any] | None, status: dict[str, Any], decision: Decision
) -> dict[str, Any] | None:
    reason = _start_reason(snapshot, status, decision)
    if reason is None:
        return current
    if current is not None:
        if reason != "schedule" or snapshot.spec.schedule is None:
            return current  # manual and spec-change runs wait for the active run
        if snapshot.spec.schedule.concurrency_policy == "Forbid":
            decision.events.append(
                Event("Normal", "ScheduleSkipped", f"run {current['id']} is still active (Forbid)")
            )
            return current
        decision.stop_run = current["id"]
        _finish(snapshot, current, status, decision, "Replaced", "replaced by a scheduled run")
    return _start(snapshot, status, decision, reason)


def _start_reason(snapshot: Snapshot, status: dict[str, Any], decision: Decision) -> str | None:
    """Why a run should start now, if it should; records handled triggers and ticks."""
    reason = None
    trigger = snapshot.annotations.get(RUN_REQUESTED_ANNOTATION)
    if trigger and trigger != status.get("lastHandledTrigger") and not status.get("currentRun"):
        status["lastHandledTrigger"] = trigger
        reason = "manual"
    schedule = snapshot.spec.schedule
    if schedule is None:
        if reason is None and status.get("lastRunGeneration") != snapshot.generation:
            reason = "created" if status.get("lastRunGeneration") is None else "spec changed"
        return reason
    since = _parse(status.get("lastScheduleTime")) or snapshot.created_at
    due = latest_due(schedule, since, snapshot.now)
    if due is not None and not schedule.suspend:
        status["lastScheduleTime"] = timestamp(due.scheduled_at)
        if due.within_deadline:
            return reason or "schedule"
        decision.events.append(
            Event(
                "Warning",
                "MissedSchedule",
                f"the run scheduled at {timestamp(due.scheduled_at)} missed its starting "
                f"deadline of {schedule.starting_deadline_seconds}s",
            )
        )
    return reason


def _start(
    snapshot: Snapshot, status: dict[str, Any], decision: Decision, reason: str
) -> dict[str, Any]:
    run_id = new_run_id(snapshot.now)
    status["lastRunGeneration"] = snapshot.generation
    current = {
        "id": run_id,
        "phase": "Planning",
        "startedAt": timestamp(snapshot.now),
        "trigger": reason,
        "generation": snapshot.generation,
        "batches": {"total": 0, "succeeded": 0, "failed": 0, "active": 0},
    }
    if status.get("takeOverFrom"):
        current["takeOverFrom"] = status["takeOverFrom"]
    decision.events.append(Event("Normal", "RunStarted", f"run {run_id} started ({reason})"))
    return current


def _parse(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def _summarise(snapshot: Snapshot, status: dict[str, Any]) -> None:
    """observedGeneration, phase, next schedule time and conditions."""
    current = status.get("currentRun")
    failure = status.get("lastFailure")
    schedule = snapshot.spec.schedule
    status["observedGeneration"] = snapshot.generation
    if schedule is not None and not schedule.suspend:
        after = max(snapshot.now, _parse(status.get("lastScheduleTime")) or snapshot.now)
        status["nextScheduleTime"] = timestamp(next_fire_time(schedule, after))
    else:
        status["nextScheduleTime"] = None
    if current:
        phase, message = "Running", f"run {current['id']}: {current['phase']}"
    elif failure:
        phase, message = "Failed", failure["message"]
    elif status.get("lastSuccessfulRun"):
        phase, message = "Succeeded", f"run {status['lastSuccessfulRun']['id']} succeeded"
    else:
        phase, message = "Pending", "no run yet"
    if schedule is not None and schedule.suspend and not current:
        message = f"{message}; schedule suspended"
    status["phase"] = phase
    status["conditions"] = conditions(
        snapshot.status.get("conditions", []),
        running=bool(current),
        failed=failure["message"] if failure and not current else None,
        ready_reason="RunSucceeded" if status.get("lastSuccessfulRun") else "Waiting",
        message=message,
        generation=snapshot.generation,
        now=snapshot.now,
    )
