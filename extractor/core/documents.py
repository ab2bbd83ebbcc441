"""The documents the engine hands to the operator, and the status the operator writes: one
typed definition of each, used by both sides.

- `PlanResult`: the JSON line ``metatide plan`` prints (and leaves as its Job's termination
  message); the operator reads ``batch_count`` from it to shape the column Job.
- `RunSummary`: ``runs/{run_id}/summary.json``, and the line ``metatide finalize`` and
  ``metatide run`` print (the same document plus ``"phase": "finalize"``); the operator copies
  its counts into the status and its metrics.
- `ExtractionStatus`: the ``status`` of an IncrementalExtraction. The operator builds it, the
  CRD's status schema is generated from it (`metatide.operator.crd`), and tests read it back
  through it, so a field renamed on one side is renamed on all of them, and a document written
  by an older or newer side fails to parse loudly instead of losing a count silently.

Readers ignore fields they do not know (a newer writer may add some), but every field this
version needs is required, so a renamed field is an error at the boundary, never a zero.
`tests/fixtures/documents/` holds frozen examples of the wire format; a unit test checks that
they still parse and dump to the same bytes. This module depends on pydantic only: the
operator imports it without the engine's heavy dependencies (pyarrow, DuckDB).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PlainSerializer

from metatide.extractor.core.ids import Entity
from metatide.extractor.core.wire import camel_case_config

TERMINATION_MESSAGE_LIMIT: Final = 4000
"""Kubernetes keeps at most 4096 bytes of a container's termination message."""

IsoTime = Annotated[
    datetime, PlainSerializer(lambda value: value.isoformat(), return_type=str, when_used="json")
]
"""A time as Python's isoformat writes it (``2026-03-01T12:00:00+00:00``): the format the
result lines have always used."""


class _Document(BaseModel):
    """A document the engine writes: snake_case keys, unknown keys ignored, all frozen."""

    model_config = ConfigDict(
        extra="ignore", frozen=True, populate_by_name=True, use_attribute_docstrings=True
    )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (by alias: the table states are keyed ``CREATED``, ``NO CHANGE``...)."""
        return self.model_dump(mode="json", by_alias=True)


class PlanResult(_Document):
    """What plan decided, as its result line: the run id and how many column batches follow."""

    phase: Literal["plan"] = "plan"
    run_id: str
    batch_count: int = Field(ge=0)
    """Column batches (indexes of the column Job); 0 means straight to finalize."""
    full_extraction: bool
    tables_total: int = Field(ge=0)
    tables_by_state: dict[str, int]
    tables_by_reason: dict[str, int]
    tables_deleted: dict[str, int]
    tables_to_extract: int = Field(ge=0)
    marker_used: IsoTime
    next_marker: IsoTime
    duration_seconds: float

    def result_line(self) -> str:
        """The JSON line on stdout (keys sorted, one line)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def termination_message(self) -> str:
        """The same line (a plan result is always far below the 4 KiB limit)."""
        return self.result_line()


def _state_count(state: str) -> Any:
    """A count keyed by the table state's name on the wire (``NO CHANGE``), read by either."""
    return Field(
        ge=0,
        validation_alias=AliasChoices(state, state.lower().replace(" ", "_")),
        serialization_alias=state,
    )


class TableCounts(_Document):
    """Tables of the run per classification, plus the deleted ones."""

    created: int = _state_count("CREATED")
    updated: int = _state_count("UPDATED")
    unchanged: int = _state_count("NO CHANGE")
    backfill: int = _state_count("BACKFILL")
    deleted: int = Field(ge=0)

    @property
    def changed(self) -> int:
        """Tables whose columns were extracted because they are new or changed."""
        return self.created + self.updated + self.backfill


class ColumnCounts(_Document):
    """Columns read from the source, carried forward from the previous state, and deleted."""

    extracted: int = Field(ge=0)
    carried_forward: int = Field(ge=0)
    deleted: int = Field(ge=0)


class DiffCounts(_Document):
    """Rows of one entity's diff."""

    created: int = Field(ge=0)
    updated: int = Field(ge=0)
    deleted: int = Field(ge=0)


class ChangeCounts(_Document):
    """Change records of one entity per kind (a rename counted once, as a rename)."""

    created: int = Field(ge=0)
    updated: int = Field(ge=0)
    renamed: int = Field(ge=0)
    deleted: int = Field(ge=0)


class Baseline(_Document):
    """How much of the previous state a full extraction could read."""

    complete: bool
    problems: list[str]
    """Files skipped as missing or damaged, or a manifest that could not be trusted."""


class BytesRead(_Document):
    """Bytes each phase read from the store."""

    plan: int = Field(ge=0)
    finalize: int = Field(ge=0)


class RunSummary(_Document):
    """The summary of one committed run (``runs/{run_id}/summary.json``)."""

    run_id: str
    parent_run_id: str | None
    full_extraction: bool
    marker_used: IsoTime
    next_marker: IsoTime
    """The marker this run committed (the source's clock at plan)."""
    tables: TableCounts
    tables_by_reason: dict[str, int]
    tables_deleted_by_reason: dict[str, int]
    columns: ColumnCounts
    diff: dict[Entity, DiffCounts]
    changes: dict[Entity, ChangeCounts]
    state_rows: dict[Entity, int]
    """Rows a reader of the committed state sees, per entity."""
    state_bytes_written: int = Field(ge=0)
    state_verified: bool
    baseline: Baseline
    bytes_read: BytesRead
    batches: int = Field(ge=0)
    durations_seconds: dict[str, float]

    def to_json(self) -> bytes:
        """The bytes of summary.json (indented, keys sorted)."""
        return json.dumps(self.to_dict(), indent=1, sort_keys=True).encode()

    def result_line(self) -> str:
        """The JSON line finalize (and ``metatide run``) prints: the summary plus its phase."""
        return json.dumps({"phase": "finalize", **self.to_dict()}, sort_keys=True)

    def termination_message(self, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
        """The result line, cut to fit Kubernetes' limit by shortening the list of baseline
        problems (the full list stays in summary.json); everything else always fits."""
        line = self.result_line()
        problems = self.baseline.problems
        keep = len(problems)
        while len(line.encode()) > limit and keep > 0:
            keep //= 2
            shown = [
                *problems[:keep],
                f"... {len(problems) - keep} more in runs/{self.run_id}/summary.json",
            ]
            baseline = self.baseline.model_copy(update={"problems": shown})
            line = self.model_copy(update={"baseline": baseline}).result_line()
        return line


ResultDocument = PlanResult | RunSummary
"""A phase's result: printed as its result line, left as its Job's termination message."""


# -- the status the operator writes ----------------------------------------------------------


def _utc_text(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


Timestamp = Annotated[datetime, PlainSerializer(_utc_text, return_type=str, when_used="json")]
"""A time in the status: RFC 3339 in UTC with a Z, whole seconds (as Kubernetes writes times)."""

ConditionType = Literal["Ready", "Reconciling", "Stalled"]
RunPhase = Literal["Planning", "Extracting", "Finalizing"]
PhaseName = Literal["plan", "columns", "finalize"]
Trigger = Literal["created", "spec changed", "schedule", "manual"]
Outcome = Literal["Succeeded", "Failed", "Replaced"]
ResourcePhase = Literal["Pending", "Running", "Succeeded", "Failed"]


class _Status(BaseModel):
    """A part of the status: camelCase on the wire, unknown fields ignored, frozen."""

    model_config = camel_case_config(extra="ignore")


class Condition(_Status):
    """One condition, as in metav1.Condition."""

    type: ConditionType = Field(description="Ready, Reconciling or Stalled.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="Machine-readable CamelCase reason of the last transition.")
    message: str = Field(description="Human-readable detail.")
    observed_generation: int = Field(
        description="metadata.generation the condition was computed from."
    )
    last_transition_time: Timestamp = Field(
        description="When the status last changed (RFC 3339, UTC)."
    )


class BatchProgress(_Status):
    """Column batches of the run's Indexed Job."""

    total: int = Field(default=0, description="Batches planned.")
    succeeded: int = Field(default=0, description="Batches finished.")
    failed: int = Field(default=0, description="Batches failed for good.")
    active: int = Field(default=0, description="Batches running now.")


class JobProblem(_Status):
    """Why a run's Job cannot start or make progress, as Kubernetes reports it."""

    job: str = Field(description="The Job's name.")
    reason: str = Field(
        description="Kubernetes' reason, e.g. FailedCreate, ImagePullBackOff, Unschedulable, "
        "CreateContainerConfigError."
    )
    message: str = Field(description="Kubernetes' message, e.g. which ServiceAccount is missing.")


class CurrentRun(_Status):
    """The run in progress."""

    id: str = Field(description="Run id (part of the Job names).")
    phase: RunPhase = Field(description="Planning, Extracting (column batches) or Finalizing.")
    started_at: Timestamp = Field(description="When the run started (RFC 3339, UTC).")
    trigger: Trigger = Field(
        description="Why the run started: created, spec changed, schedule or manual (the "
        "metatide.dev/run-requested-at annotation)."
    )
    generation: int = Field(description="metadata.generation the run was started for.")
    image: str | None = Field(
        default=None,
        description="Image of the run's Jobs, fixed at its start (unset in runs an older "
        "operator started: the current default applies).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Pull policy of the run's Job containers."
    )
    take_over_from: str | None = Field(
        default=None, description="Id of a failed run whose lease this run's plan takes over."
    )
    batches: BatchProgress = Field(
        default_factory=BatchProgress, description="Column batches of the Indexed Job."
    )
    note: str | None = Field(
        default=None,
        description="Something the user should know about this run, e.g. that it was requested "
        "while the schedule is suspended (it runs; the schedule stays suspended).",
    )
    blocked: JobProblem | None = Field(
        default=None,
        description="Set while the current phase's Job cannot start or make progress (pod "
        "creation forbidden, image pull failure, unschedulable, quota exceeded).",
    )


class LastSuccessfulRun(_Status):
    """Counts of the last committed run (its full summary is runs/{id}/summary.json)."""

    id: str = Field(description="Run id; its diff is under runs/{id}/incremental-diff/.")
    finished_at: Timestamp = Field(description="When the run committed (RFC 3339, UTC).")
    changed_tables: int | None = Field(
        default=None, description="Tables created, updated or backfilled by the run."
    )
    deleted_tables: int | None = Field(
        default=None, description="Tables the run removed from the state."
    )
    created_tables: int | None = Field(default=None, description="Tables new since the marker.")
    updated_tables: int | None = Field(
        default=None, description="Tables whose DDL time or fingerprint changed."
    )
    backfill_tables: int | None = Field(
        default=None, description="Tables that existed but were never extracted before."
    )
    unchanged_tables: int | None = Field(
        default=None, description="Tables whose columns were carried forward."
    )
    columns_extracted: int | None = Field(default=None, description="Columns read from the source.")
    columns_carried_forward: int | None = Field(
        default=None, description="Columns kept from the previous state."
    )
    columns_deleted: int | None = Field(
        default=None, description="Columns in the diff's delete set."
    )
    marker: str | None = Field(default=None, description="The marker the run committed.")

    @classmethod
    def of(
        cls, run_id: str, finished_at: datetime, summary: RunSummary | None
    ) -> LastSuccessfulRun:
        """The status's copy of a summary; without one (unreadable) only id and time."""
        if summary is None:
            return cls(id=run_id, finished_at=finished_at)
        tables, columns = summary.tables, summary.columns
        return cls(
            id=run_id,
            finished_at=finished_at,
            changed_tables=tables.changed,
            deleted_tables=tables.deleted,
            created_tables=tables.created,
            updated_tables=tables.updated,
            backfill_tables=tables.backfill,
            unchanged_tables=tables.unchanged,
            columns_extracted=columns.extracted,
            columns_carried_forward=columns.carried_forward,
            columns_deleted=columns.deleted,
            marker=summary.next_marker.isoformat(),
        )


class LastFailure(_Status):
    """The last failed run, until a run succeeds."""

    id: str = Field(description="Run id.")
    phase: PhaseName = Field(description="The phase that failed: plan, columns or finalize.")
    message: str = Field(description="Why it failed (the phase's termination message).")


class HistoryEntry(_Status):
    """One finished run."""

    id: str = Field(description="Run id.")
    outcome: Outcome = Field(description="Succeeded, Failed or Replaced.")
    trigger: Trigger | None = Field(default=None, description="Why the run started.")
    started_at: Timestamp = Field(description="When the run started (RFC 3339, UTC).")
    finished_at: Timestamp = Field(description="When the run finished (RFC 3339, UTC).")
    message: str = Field(default="", description="Summary, or why the run failed.")


class ScheduleStop(_Status):
    """Scheduling stopped after too many consecutive failed runs."""

    at: Timestamp = Field(description="When scheduling stopped (RFC 3339, UTC).")
    failures: int = Field(description="Consecutive failed runs that stopped it.")
    generation: int = Field(
        description="metadata.generation when it stopped; a spec change resumes scheduling."
    )
    message: str = Field(description="Why, and how to resume.")


class ExtractionStatus(_Status):
    """Observed state of an IncrementalExtraction, written by the operator."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})

    phase: ResourcePhase | None = Field(
        default=None,
        description="Pending (no run yet), Running, Succeeded (last run committed) or Failed "
        "(last run failed, see lastFailure; or the spec is invalid).",
    )
    observed_generation: int | None = Field(
        default=None, description="metadata.generation the status was computed from."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="kstatus conditions: Ready (last run succeeded and the spec is applied), "
        "Reconciling (a run is in progress), Stalled (cannot progress without a change: an "
        "invalid spec, a terminal error, a Job that cannot start, scheduling stopped).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    current_run: CurrentRun | None = Field(default=None, description="The run in progress, if any.")
    last_successful_run: LastSuccessfulRun | None = Field(
        default=None, description="Counts of the last committed run."
    )
    last_failure: LastFailure | None = Field(
        default=None, description="The last failed run, until a run succeeds."
    )
    take_over_from: str | None = Field(
        default=None, description="Id of the failed run the next run takes over (its lease)."
    )
    last_run_generation: int | None = Field(
        default=None, description="metadata.generation the last run was started for."
    )
    marker: str | None = Field(
        default=None, description="The committed marker (source clock at the last plan)."
    )
    next_schedule_time: Timestamp | None = Field(
        default=None,
        description="When the next scheduled run is due (RFC 3339, UTC); unset without a "
        "schedule, while it is suspended, and after scheduling stopped.",
    )
    last_schedule_time: Timestamp | None = Field(
        default=None,
        description="The scheduled time of the last run the schedule started (RFC 3339, UTC).",
    )
    last_schedule_tick: Timestamp | None = Field(
        default=None,
        description="The latest schedule tick handled: a run started, skipped (Forbid), missed "
        "(startingDeadlineSeconds) or dropped (suspended, scheduling stopped). Later ticks are "
        "still due.",
    )
    last_handled_trigger: str | None = Field(
        default=None,
        description="Value of the metatide.dev/run-requested-at annotation last acted on.",
    )
    consecutive_failures: int = Field(
        default=0,
        description="Failed runs since the last successful one (or since scheduling resumed).",
    )
    schedule_stopped: ScheduleStop | None = Field(
        default=None,
        description="Set when schedule.maxConsecutiveFailures stopped scheduling; the run-now "
        "annotation or a spec change resumes it.",
    )
    history: list[HistoryEntry] = Field(
        default_factory=list, description="Finished runs, oldest first, bounded by spec.history."
    )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the operator writes (camelCase, unset fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def condition(self, kind: ConditionType) -> Condition | None:
        """The condition of that type, if set."""
        return next((item for item in self.conditions if item.type == kind), None)
