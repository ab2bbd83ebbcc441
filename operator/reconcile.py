"""The operator's decision for one resource at one moment: a pure function of what it sees.

Given the resource (spec, typed status, annotations), the state of the current run's Job and
the time, `reconcile` returns what to do: objects to create, a run to stop, events to post, the
new status (the controller writes only what differs), and when time alone will change the
answer (the next schedule tick). It never calls the API, so every transition is tested
without a cluster, and it is deterministic: the same facts give the same status, which is what
lets an idle resource cost nothing.

A run moves Planning -> Extracting (only when there are column batches) -> Finalizing. The
run is written into status *before* its objects are created (the next reconcile creates them
by deterministic names), so a restarted operator resumes the run it recorded and never starts
a second one. Plan's result and finalize's summary are read as the typed documents the engine
prints (`metatide.extractor.core.documents`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from metatide.extractor.core.documents import (
    BatchProgress,
    CurrentRun,
    ExtractionStatus,
    HistoryEntry,
    JobProblem,
    LastFailure,
    LastSuccessfulRun,
    Outcome,
    PlanResult,
    RunPhase,
    RunSummary,
    ScheduleStop,
    Trigger,
)
from metatide.extractor.core.ids import new_run_id
from metatide.extractor.core.wire import first_problem
from metatide.operator.jobs import JobDefaults, phase_job, spec_config_map
from metatide.operator.model import (
    RUN_REQUESTED_ANNOTATION,
    IncrementalExtractionSpec,
    next_fire_time,
)
from metatide.operator.names import Phase, object_name
from metatide.operator.schedule import latest_due
from metatide.operator.status import Health, conditions

JOB_OF: dict[RunPhase, Phase] = {
    "Planning": "plan",
    "Extracting": "columns",
    "Finalizing": "finalize",
}
_MESSAGE_LIMIT = 1000
_Doc = TypeVar("_Doc", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class JobView:
    """What the operator knows about the current phase's Job (absent when it does not exist)."""

    exists: bool = False
    complete: bool = False
    failed: bool = False
    active: int = 0
    succeeded: int = 0
    failed_indexes: str = ""
    result: str | None = None
    """The termination message of the pod that completed the Job (its result line)."""
    failure: str | None = None
    problem: JobProblem | None = None
    """Why the Job cannot start or make progress, if the operator found a reason."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one reconcile looks at."""

    name: str
    uid: str
    generation: int
    created_at: datetime
    annotations: dict[str, str]
    spec: IncrementalExtractionSpec
    status: ExtractionStatus
    now: datetime
    defaults: JobDefaults
    job: JobView | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """A Kubernetes Event to post on the resource (or, with `post` False, only to log: a
    phase change, which the status shows, is not worth an API write per run)."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    post: bool = True


@dataclass(frozen=True, slots=True)
class FinishedRun:
    """A run that ended in this reconcile (for metrics)."""

    outcome: Outcome
    seconds: float
    summary: RunSummary | None


@dataclass
class Decision:
    """What to do: create objects, stop a run, post events, write the status."""

    status: ExtractionStatus
    create: list[dict[str, Any]] = field(default_factory=list)
    stop_run: str | None = None
    events: list[Event] = field(default_factory=list)
    finished: list[FinishedRun] = field(default_factory=list)
    wake_at: datetime | None = None
    """When the decision changes with time alone (the next schedule tick), if ever."""

    def update(self, **fields: Any) -> None:
        """Replace status fields (the status model is immutable)."""
        self.status = self.status.model_copy(update=fields)


def reconcile(snapshot: Snapshot) -> Decision:
    """Advance the current run, start a due one, and compute the new status."""
    decision = Decision(status=snapshot.status)
    current = snapshot.status.current_run
    if current is not None:
        current = _advance(snapshot, current, decision)
    current = _start_if_due(snapshot, current, decision)
    decision.update(current_run=current)
    _summarise(snapshot, decision)
    return decision


def invalid_spec(
    snapshot_status: ExtractionStatus, generation: int, now: datetime, message: str
) -> ExtractionStatus:
    """The status of a resource whose spec the model rejects: Failed and Stalled until fixed."""
    health = Health(
        running=False, stalled=("InvalidSpec", message), ready_reason="InvalidSpec", message=message
    )
    return snapshot_status.model_copy(
        update={
            "phase": "Failed",
            "observed_generation": generation,
            "conditions": conditions(snapshot_status.conditions, health, generation, now),
        }
    )


def blocked(snapshot: Snapshot, decision: Decision, problem: JobProblem) -> None:
    """Record that the API refused what the current run needs (e.g. creating its Job is
    forbidden): the run stays current, the resource says why, one Warning event per cause."""
    current = decision.status.current_run
    if current is None:
        return
    decision.update(current_run=_with_problem(current, problem, decision))
    _summarise(snapshot, decision)


# -- a run in progress ----------------------------------------------------------------------


def _advance(snapshot: Snapshot, current: CurrentRun, decision: Decision) -> CurrentRun | None:
    job = snapshot.job or JobView()
    if not job.exists:
        decision.create += _objects_for(snapshot, current)
        return current
    if current.phase == "Extracting":
        progress = BatchProgress(
            total=current.batches.total,
            succeeded=job.succeeded,
            failed=len(_indexes(job.failed_indexes)),
            active=job.active,
        )
        current = current.model_copy(update={"batches": progress})
    if job.failed:
        _finish(snapshot, current, decision, "Failed", job.failure or "the Job failed")
        return None
    if not job.complete:
        return _with_problem(current, job.problem, decision)
    if current.phase == "Planning":
        return _after_plan(snapshot, current, decision, job.result)
    if current.phase == "Extracting":
        return _next_phase(current, "Finalizing", decision)
    summary, why = _document(job.result, RunSummary)
    if summary is None:
        decision.events.append(
            Event(
                "Warning",
                "SummaryUnreadable",
                f"run {current.id} committed, but its summary could not be read from the "
                f"finalize pod ({why}); the counts are in runs/{current.id}/summary.json",
            )
        )
    _finish(snapshot, current, decision, "Succeeded", None, summary)
    return None


def _with_problem(
    current: CurrentRun, problem: JobProblem | None, decision: Decision
) -> CurrentRun:
    """The run with the Job's problem recorded; a Warning event when a new problem appears."""
    if problem == current.blocked:
        return current
    if problem is not None:
        decision.events.append(
            Event(
                "Warning",
                problem.reason,
                f"run {current.id}: Job {problem.job} cannot make progress: {problem.message}",
            )
        )
    else:
        decision.events.append(
            Event("Normal", "JobProgressing", f"run {current.id}: the {current.phase} Job runs")
        )
    return current.model_copy(update={"blocked": problem})


def _after_plan(
    snapshot: Snapshot, current: CurrentRun, decision: Decision, result: str | None
) -> CurrentRun | None:
    plan, why = _document(result, PlanResult)
    if plan is None or plan.run_id != current.id:
        reason = why if plan is None else f"it reports run {plan.run_id}"
        message = f"plan finished without a readable result line for this run ({reason})"
        _finish(snapshot, current, decision, "Failed", message)
        return None
    current = current.model_copy(update={"batches": BatchProgress(total=plan.batch_count)})
    return _next_phase(current, "Extracting" if plan.batch_count else "Finalizing", decision)


def _next_phase(current: CurrentRun, phase: RunPhase, decision: Decision) -> CurrentRun:
    decision.events.append(Event("Normal", phase, f"run {current.id}: {phase.lower()}", post=False))
    return current.model_copy(update={"phase": phase, "blocked": None})


def _objects_for(snapshot: Snapshot, current: CurrentRun) -> list[dict[str, Any]]:
    phase = JOB_OF[current.phase]
    objects = []
    if phase == "plan":
        objects.append(spec_config_map(snapshot.name, snapshot.uid, current.id, snapshot.spec))
    if current.image is None or current.image_pull_policy is None:  # an older operator's run
        image, pull_policy = snapshot.defaults.for_spec(snapshot.spec)
        current = current.model_copy(update={"image": image, "image_pull_policy": pull_policy})
    objects.append(phase_job(snapshot.name, snapshot.uid, current, phase, snapshot.spec))
    return objects


def _document(text: str | None, model: type[_Doc]) -> tuple[_Doc | None, str]:
    """The typed result a phase left as its termination message (its last JSON line), or
    None and why not."""
    if not text:
        return None, "no termination message"
    problem = "no JSON line"
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(value, dict):
            continue
        try:
            return model.model_validate(value), ""
        except ValidationError as exc:
            problem = f"not a {model.__name__}: {first_problem(exc)}"
    return None, problem


def _indexes(text: str) -> list[int]:
    """Expand the Job's failedIndexes notation ("1,3-5")."""
    found: list[int] = []
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        found.extend(range(int(low), int(high or low) + 1))
    return found


def _finish(
    snapshot: Snapshot,
    current: CurrentRun,
    decision: Decision,
    outcome: Outcome,
    message: str | None,
    summary: RunSummary | None = None,
) -> None:
    now = snapshot.now
    status = decision.status
    entry = HistoryEntry(
        id=current.id,
        outcome=outcome,
        trigger=current.trigger,
        started_at=current.started_at,
        finished_at=now,
        message=(message or _describe_success(current.id, summary))[:_MESSAGE_LIMIT],
    )
    history = _bounded_history([*status.history, entry], snapshot.spec)
    seconds = (now - current.started_at).total_seconds()
    decision.finished.append(FinishedRun(outcome, seconds, summary))
    if outcome == "Succeeded":
        decision.update(
            history=history,
            last_successful_run=LastSuccessfulRun.of(current.id, now, summary),
            marker=summary.next_marker.isoformat() if summary else status.marker,
            last_failure=None,
            take_over_from=None,
            consecutive_failures=0,
        )
        decision.events.append(Event("Normal", "RunSucceeded", entry.message))
        return
    if outcome == "Replaced":
        decision.update(history=history, take_over_from=current.id)
        decision.events.append(Event("Warning", "RunReplaced", f"run {current.id}: {message}"))
        return
    failed_phase = JOB_OF[current.phase]
    text = f"run {current.id} failed in {failed_phase}: {message}"[:_MESSAGE_LIMIT]
    decision.update(
        history=history,
        last_failure=LastFailure(id=current.id, phase=failed_phase, message=text),
        take_over_from=current.id,
        consecutive_failures=status.consecutive_failures + 1,
    )
    decision.events.append(Event("Warning", "RunFailed", text))
    _maybe_stop_schedule(snapshot, decision, text)


def _maybe_stop_schedule(snapshot: Snapshot, decision: Decision, failure: str) -> None:
    """schedule.maxConsecutiveFailures: stop scheduling once that many runs failed in a row."""
    schedule = snapshot.spec.schedule
    status = decision.status
    limit = schedule.max_consecutive_failures if schedule else None
    if limit is None or status.consecutive_failures < limit or status.schedule_stopped:
        return
    message = (
        f"scheduling stopped after {status.consecutive_failures} consecutive failed runs "
        f"(schedule.maxConsecutiveFailures is {limit}); the last: {failure}. Fix the cause, "
        "then annotate metatide.dev/run-requested-at or change the spec to resume"
    )[:_MESSAGE_LIMIT]
    stop = ScheduleStop(
        at=snapshot.now,
        failures=status.consecutive_failures,
        generation=snapshot.generation,
        message=message,
    )
    decision.update(schedule_stopped=stop)
    decision.events.append(Event("Warning", "SchedulingStopped", message))


def _bounded_history(
    history: list[HistoryEntry], spec: IncrementalExtractionSpec
) -> list[HistoryEntry]:
    """The newest successful and unsuccessful runs, each up to its history limit."""
    limits = {
        True: spec.history.successful_runs_history_limit,
        False: spec.history.failed_runs_history_limit,
    }
    counts = {True: 0, False: 0}
    kept = []
    for entry in reversed(history):
        succeeded = entry.outcome == "Succeeded"
        if counts[succeeded] < limits[succeeded]:
            kept.append(entry)
            counts[succeeded] += 1
    return kept[::-1]


def _describe_success(run_id: str, summary: RunSummary | None) -> str:
    if summary is None:
        return f"run {run_id} succeeded"
    counts = ", ".join(f"{state} {count}" for state, count in summary.tables.to_dict().items())
    return f"run {run_id} succeeded: tables {counts}"


# -- starting runs --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Start:
    """Why a run should start now, and the schedule tick it is for (if any)."""

    reason: Trigger
    scheduled_at: datetime | None = None


def _start_if_due(
    snapshot: Snapshot, current: CurrentRun | None, decision: Decision
) -> CurrentRun | None:
    start = _start_reason(snapshot, current, decision)
    if start is None:
        return current
    if current is not None:
        if start.reason != "schedule" or snapshot.spec.schedule is None:
            return current  # manual and spec-change runs wait for the active run
        if snapshot.spec.schedule.concurrency_policy == "Forbid":
            decision.events.append(
                Event("Normal", "ScheduleSkipped", f"run {current.id} is still active (Forbid)")
            )
            return current
        decision.stop_run = current.id
        _finish(snapshot, current, decision, "Replaced", "replaced by a scheduled run")
    return _start(snapshot, decision, start)


def _start_reason(
    snapshot: Snapshot, current: CurrentRun | None, decision: Decision
) -> _Start | None:
    """Why a run should start now, if it should; records handled triggers and ticks."""
    status = decision.status
    reason: Trigger | None = None
    trigger = snapshot.annotations.get(RUN_REQUESTED_ANNOTATION)
    if trigger and trigger != status.last_handled_trigger and current is None:
        decision.update(last_handled_trigger=trigger)
        reason = "manual"
        _resume(decision, "a run was requested with the metatide.dev/run-requested-at annotation")
    schedule = snapshot.spec.schedule
    if schedule is None:
        if reason is None and status.last_run_generation != snapshot.generation:
            reason = "created" if status.last_run_generation is None else "spec changed"
        return _Start(reason) if reason else None
    stopped = decision.status.schedule_stopped
    if stopped is not None and stopped.generation != snapshot.generation:
        _resume(decision, "the spec changed")
    since = status.last_schedule_tick or status.last_schedule_time or snapshot.created_at
    due = latest_due(schedule, since, snapshot.now)
    if due is None:
        return _Start(reason) if reason else None
    decision.update(last_schedule_tick=due.scheduled_at)
    if schedule.suspend or decision.status.schedule_stopped is not None:
        return _Start(reason) if reason else None  # the tick is dropped, not owed
    if not due.within_deadline:
        decision.events.append(
            Event(
                "Warning",
                "MissedSchedule",
                f"the run scheduled at {due.scheduled_at:%Y-%m-%dT%H:%M:%SZ} missed its starting "
                f"deadline of {schedule.starting_deadline_seconds}s",
            )
        )
        return _Start(reason) if reason else None
    if reason is not None:
        return _Start(reason)
    return _Start("schedule", due.scheduled_at)


def _resume(decision: Decision, why: str) -> None:
    """Scheduling stopped by failures starts again, with the failure count reset."""
    stopped = decision.status.schedule_stopped
    if stopped is None:
        return
    decision.update(schedule_stopped=None, consecutive_failures=0)
    decision.events.append(Event("Normal", "SchedulingResumed", f"scheduling resumed: {why}"))


def _start(snapshot: Snapshot, decision: Decision, start: _Start) -> CurrentRun:
    run_id = new_run_id(snapshot.now)
    image, pull_policy = snapshot.defaults.for_spec(snapshot.spec)
    schedule = snapshot.spec.schedule
    note = None
    if start.reason == "manual" and schedule is not None and schedule.suspend:
        note = (
            "requested while the schedule is suspended: it runs once; the schedule stays suspended"
        )
    current = CurrentRun(
        id=run_id,
        phase="Planning",
        started_at=snapshot.now,
        trigger=start.reason,
        generation=snapshot.generation,
        image=image,
        image_pull_policy=pull_policy,
        take_over_from=decision.status.take_over_from,
        note=note,
    )
    decision.update(last_run_generation=snapshot.generation)
    if start.scheduled_at is not None:
        decision.update(last_schedule_time=start.scheduled_at)
    message = f"run {run_id} started ({start.reason})" + (f": {note}" if note else "")
    decision.events.append(Event("Normal", "RunStarted", message))
    return current


# -- the summary of the status ---------------------------------------------------------------


def _summarise(snapshot: Snapshot, decision: Decision) -> None:
    """observedGeneration, phase, schedule times, conditions; and when to look again."""
    status = decision.status
    current, failure, stopped = status.current_run, status.last_failure, status.schedule_stopped
    schedule = snapshot.spec.schedule
    next_tick = None
    if schedule is not None and not schedule.suspend and stopped is None:
        after = max(snapshot.now, status.last_schedule_tick or snapshot.now)
        next_tick = next_fire_time(schedule, after)
    decision.wake_at = next_tick
    stalled: tuple[str, str] | None = None
    if current is not None:
        phase, message = "Running", f"run {current.id}: {current.phase}"
        if current.note:
            message += f" ({current.note})"
        if current.blocked is not None:
            problem = current.blocked
            stalled = (
                problem.reason,
                f"run {current.id} is stuck in {current.phase}: Job {problem.job}: "
                f"{problem.message}",
            )
            message += f"; stuck: {problem.reason}: {problem.message}"
    elif stopped is not None:
        phase, message = "Failed", stopped.message
        stalled = ("SchedulingStopped", stopped.message)
    elif failure is not None:
        phase, message = "Failed", failure.message
        stalled = ("RunFailed", failure.message)
    elif status.last_successful_run is not None:
        phase, message = "Succeeded", f"run {status.last_successful_run.id} succeeded"
    else:
        phase, message = "Pending", "no run yet"
    if schedule is not None and schedule.suspend and current is None:
        message = f"{message}; schedule suspended"
    health = Health(
        running=current is not None,
        stalled=stalled,
        ready_reason="RunSucceeded" if status.last_successful_run else "Waiting",
        message=message,
    )
    decision.update(
        phase=phase,
        observed_generation=snapshot.generation,
        next_schedule_time=next_tick,
        conditions=conditions(
            snapshot.status.conditions, health, snapshot.generation, snapshot.now
        ),
    )


def current_job_name(resource: str, current: CurrentRun) -> str:
    """The name of the Job of the run's current phase."""
    return object_name(resource, current.id, JOB_OF[current.phase])
