"""The `IncrementalExtraction` resource's spec: the engine's spec plus Kubernetes-only fields.

`ExtractionSpec` is defined once, in the engine; this model adds what only the operator
needs (schedule, Job shape, history). The CRD schema is generated from this model, so every
field here carries a description and a default, and validation lives in one place.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import Field, field_validator

from metatide.extractor.core.spec import ExtractionSpec, _Model, crd_rule

GROUP = "metatide.dev"
VERSION = "v1alpha1"
KIND = "IncrementalExtraction"
PLURAL = "incrementalextractions"
SHORT_NAME = "ie"
RUN_REQUESTED_ANNOTATION = "metatide.dev/run-requested-at"

_CRON_FIELD = r"[0-9A-Za-z*/,?#-]+"


class ScheduleSpec(_Model):
    """When runs start; without a schedule a run starts on create and on every spec change."""

    cron: str = Field(
        description="Standard five-field cron expression, e.g. '0 * * * *' (hourly).",
        min_length=9,
        max_length=256,
        json_schema_extra=crd_rule(
            f"self.matches(r'^\\s*{_CRON_FIELD}(\\s+{_CRON_FIELD}){{4}}\\s*$')",
            "must be a five-field cron expression (minute hour day-of-month month day-of-week), "
            "e.g. '0 * * * *'",
        ),
    )
    time_zone: str = Field(
        default="UTC",
        max_length=64,
        json_schema_extra=crd_rule(
            "self.matches(r'^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$')",
            "must be an IANA time zone name, e.g. UTC or Europe/Berlin",
        ),
        description="IANA time zone the cron expression is read in.",
    )
    concurrency_policy: Literal["Forbid", "Replace"] = Field(
        default="Forbid",
        description="When a run is due while one is active: Forbid skips the new run, Replace "
        "stops the active run and starts the new one.",
    )
    suspend: bool = Field(
        default=False,
        description="Stop starting scheduled runs: ticks while suspended are dropped, not run "
        "later. A run requested with the metatide.dev/run-requested-at annotation still runs "
        "(currentRun.note says so); an active run finishes.",
    )
    starting_deadline_seconds: int | None = Field(
        default=None,
        ge=0,
        description="A missed run starts late only within this many seconds of its scheduled "
        "time, and runs once however many ticks were missed; unset means no deadline.",
    )
    max_consecutive_failures: int | None = Field(
        default=None,
        ge=1,
        description="Stop scheduling after this many failed runs in a row: status."
        "scheduleStopped says why, a Warning event is posted, and the run-now annotation or a "
        "spec change resumes scheduling (and resets the count). Unset means never stop.",
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a five-field cron expression")
        return value

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Berlin)") from None
        return value


class ResourceRequirements(_Model):
    """CPU and memory of each Job container."""

    requests: dict[str, str] = Field(
        default_factory=lambda: {"cpu": "250m", "memory": "512Mi"},
        description="Resource requests, e.g. {cpu: 250m, memory: 512Mi}.",
    )
    limits: dict[str, str] = Field(
        default_factory=lambda: {"memory": "2Gi"}, description="Resource limits."
    )


class JobTemplate(_Model):
    """How the operator shapes the plan, columns and finalize Jobs."""

    image: str | None = Field(
        default=None,
        min_length=1,
        description="Image with the `metatide` command. Unset: the operator's own image (the "
        "chart's image values), so upgrading the chart upgrades the extractor too.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None,
        description="Image pull policy of Job containers. Unset: the operator's (the chart's "
        "image.pullPolicy) when the image is the operator's, else IfNotPresent.",
    )
    service_account_name: str | None = Field(
        default=None,
        min_length=1,
        description="ServiceAccount of Job pods, e.g. one bound to a cloud IAM role for the "
        "bucket (IRSA, workload identity); it must exist in the resource's namespace. Unset: "
        "the namespace's default ServiceAccount. Job pods never get an API token.",
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Container resources."
    )
    backoff_limit_per_index: int = Field(
        default=3, ge=0, le=20, description="Retries of one column batch before it fails."
    )
    backoff_limit: int = Field(
        default=3, ge=0, le=20, description="Retries of the plan and finalize Jobs."
    )
    active_deadline_seconds: int = Field(
        default=6 * 3600, ge=60, description="Longest a phase Job may run (seconds)."
    )
    ttl_seconds_after_finished: int = Field(
        default=24 * 3600, ge=0, description="Finished Jobs are deleted after this (seconds)."
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment variables of phase containers, e.g. METATIDE_LOG_LEVEL "
        "or proxy settings (never secrets: use the spec's secretKeyRefs).",
    )


class HistorySpec(_Model):
    """How many finished runs the status remembers."""

    successful_runs_history_limit: int = Field(
        default=5, ge=0, le=50, description="Successful runs kept in status.history."
    )
    failed_runs_history_limit: int = Field(
        default=5, ge=0, le=50, description="Failed runs kept in status.history."
    )


class IncrementalExtractionSpec(ExtractionSpec):
    """An incremental extraction run by the operator as Kubernetes Jobs."""

    schedule: ScheduleSpec | None = Field(
        default=None,
        description="Cron schedule; without one, a run starts on create and on spec change.",
    )
    job: JobTemplate = Field(default_factory=JobTemplate, description="Shape of the phase Jobs.")
    history: HistorySpec = Field(default_factory=HistorySpec, description="Run history limits.")

    def extraction(self) -> ExtractionSpec:
        """The engine's part, as Job pods receive it."""
        fields = set(ExtractionSpec.model_fields)
        return ExtractionSpec.model_validate(self.model_dump(include=fields))


def next_fire_time(schedule: ScheduleSpec, after: datetime) -> datetime:
    """The first scheduled time strictly after `after`, in UTC."""
    zone = ZoneInfo(schedule.time_zone)
    moment: datetime = croniter(schedule.cron, after.astimezone(zone)).get_next(datetime)
    return moment.astimezone(ZoneInfo("UTC"))


def previous_fire_time(schedule: ScheduleSpec, at: datetime) -> datetime:
    """The latest scheduled time at or before `at`, in UTC."""
    zone = ZoneInfo(schedule.time_zone)
    probe = at.astimezone(zone) + timedelta(microseconds=1)  # get_prev is strictly before
    moment: datetime = croniter(schedule.cron, probe).get_prev(datetime)
    return moment.astimezone(ZoneInfo("UTC"))
