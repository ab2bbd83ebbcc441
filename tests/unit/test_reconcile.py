"""The operator's decisions, without a cluster: runs start, advance, finish, fail, schedule."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from metatide.operator.jobs import phase_job, spec_config_map
from metatide.operator.model import RUN_REQUESTED_ANNOTATION, IncrementalExtractionSpec
from metatide.operator.names import object_name
from metatide.operator.reconcile import Decision, JobView, Snapshot, reconcile

NOW = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)
CREATED = datetime(2026, 3, 1, 11, 0, tzinfo=UTC)


def make_spec(**fields: Any) -> IncrementalExtractionSpec:
    document = {
        "applicationName": "shop",
        "connectionId": "prod",
        "source": {
            "kind": "postgresql",
            "dsnFrom": {"env": "METATIDE_SOURCE_DSN", "secretKeyRef": {"name": "db", "key": "dsn"}},
        },
        "storage": {
            "url": "s3://bucket/x",
            "endpoint": "minio:9000",
            "accessKeyFrom": {
                "env": "AWS_ACCESS_KEY_ID",
                "secretKeyRef": {"name": "s3", "key": "a"},
            },
            "secretKeyFrom": {
                "env": "AWS_SECRET_ACCESS_KEY",
                "secretKeyRef": {"name": "s3", "key": "s"},
            },
        },
        "columns": {"batchSize": 10, "parallelism": 2},
        **fields,
    }
    return IncrementalExtractionSpec.model_validate(document)


def snapshot(
    status: dict[str, Any] | None = None,
    job: JobView | None = None,
    spec: IncrementalExtractionSpec | None = None,
    now: datetime = NOW,
    generation: int = 1,
    annotations: dict[str, str] | None = None,
) -> Snapshot:
    return Snapshot(
        name="shop",
        uid="uid-1",
        generation=generation,
        created_at=CREATED,
        annotations=annotations or {},
        spec=spec or make_spec(),
        status=status or {},
        now=now,
        job=job,
    )


def step(decision: Decision) -> dict[str, Any]:
    return decision.status


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(item for item in status["conditions"] if item["type"] == kind)


def start_run() -> dict[str, Any]:
    return step(reconcile(snapshot()))


def test_a_new_resource_without_schedule_starts_a_run_and_records_it_first() -> None:
    decision = reconcile(snapshot())
    current = decision.status["currentRun"]
    assert current["phase"] == "Planning"
    assert decision.create == []  # objects come next tick, after the status is stored
    assert condition(decision.status, "Reconciling")["status"] == "True"
    assert condition(decision.status, "Ready")["status"] == "False"
    assert [event.reason for event in decision.events] == ["RunStarted"]


def test_the_next_tick_creates_the_frozen_spec_and_the_plan_job() -> None:
    status = start_run()
    decision = reconcile(snapshot(status, JobView()))
    kinds = [manifest["kind"] for manifest in decision.create]
    assert kinds == ["ConfigMap", "Job"]
    config_map, job = decision.create
    assert json.loads(config_map["data"]["spec.json"])["connectionId"] == "prod"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["plan"]
    assert decision.status["currentRun"] == status["currentRun"]


def plan_done(batches: int) -> JobView:
    line = json.dumps({"phase": "plan", "batch_count": batches})
    return JobView(exists=True, complete=True, result=f"log line\n{line}")


def test_plan_result_decides_between_columns_and_finalize() -> None:
    status = start_run()
    with_batches = reconcile(snapshot(status, plan_done(3))).status["currentRun"]
    assert with_batches["phase"] == "Extracting"
    assert with_batches["batches"]["total"] == 3
    without = reconcile(snapshot(status, plan_done(0))).status["currentRun"]
    assert without["phase"] == "Finalizing"


def test_the_column_job_is_indexed_with_one_index_per_batch() -> None:
    status = step(reconcile(snapshot(start_run(), plan_done(5))))
    decision = reconcile(snapshot(status, JobView()))
    (job,) = decision.create
    body = job["spec"]
    assert body["completionMode"] == "Indexed"
    assert body["completions"] == 5
    assert body["parallelism"] == 2
    assert body["backoffLimitPerIndex"] == 3
    rule = body["podFailurePolicy"]["rules"][0]
    assert rule == {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [3]}}


def test_batch_progress_is_reported() -> None:
    status = step(reconcile(snapshot(start_run(), plan_done(5))))
    running = JobView(exists=True, active=2, succeeded=2, failed_indexes="3")
    batches = reconcile(snapshot(status, running)).status["currentRun"]["batches"]
    assert batches == {"total": 5, "succeeded": 2, "failed": 1, "active": 2}


SUMMARY = {
    "phase": "finalize",
    "tables": {"CREATED": 2, "UPDATED": 1, "NO CHANGE": 7, "BACKFILL": 1, "deleted": 3},
    "columns": {"extracted": 40, "carried_forward": 100, "deleted": 9},
    "next_marker": "2026-03-01T12:00:00+00:00",
    "durations_seconds": {"plan": 1.0, "finalize": 2.0},
}


def finished_run() -> dict[str, Any]:
    status = step(reconcile(snapshot(start_run(), plan_done(0))))
    done = JobView(exists=True, complete=True, result=json.dumps(SUMMARY))
    return step(reconcile(snapshot(status, done, now=NOW + timedelta(minutes=1))))


def test_a_successful_run_records_its_summary_and_becomes_ready() -> None:
    status = finished_run()
    assert status["currentRun"] is None
    assert status["phase"] == "Succeeded"
    last = status["lastSuccessfulRun"]
    assert (last["changedTables"], last["deletedTables"], last["columnsExtracted"]) == (4, 3, 40)
    assert status["marker"] == SUMMARY["next_marker"]
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "Reconciling")["status"] == "False"
    assert [entry["outcome"] for entry in status["history"]] == ["Succeeded"]


def test_no_new_run_without_a_reason() -> None:
    status = finished_run()
    decision = reconcile(snapshot(status, now=NOW + timedelta(minutes=2)))
    assert decision.status["currentRun"] is None
    assert decision.create == []


def test_a_spec_change_starts_a_run() -> None:
    status = finished_run()
    decision = reconcile(snapshot(status, generation=2, now=NOW + timedelta(minutes=2)))
    assert decision.status["currentRun"]["trigger"] == "spec changed"


def test_a_manual_trigger_runs_once() -> None:
    status = finished_run()
    annotations = {RUN_REQUESTED_ANNOTATION: "2026-03-01T12:05:00Z"}
    triggered = reconcile(snapshot(status, annotations=annotations)).status
    assert triggered["currentRun"]["trigger"] == "manual"
    again = step(reconcile(snapshot({**triggered, "currentRun": None}, annotations=annotations)))
    assert again["currentRun"] is None


def test_a_failed_phase_fails_the_run_readably_and_the_next_run_takes_over_its_lease() -> None:
    status = start_run()
    failed = JobView(exists=True, failed=True, failure="SpecError: source.path is missing")
    decision = reconcile(snapshot(status, failed))
    after = decision.status
    assert after["currentRun"] is None
    assert after["phase"] == "Failed"
    stalled = condition(after, "Stalled")
    assert stalled["status"] == "True"
    assert "failed in plan: SpecError: source.path is missing" in stalled["message"]
    assert decision.events[-1].type == "Warning"
    annotations = {RUN_REQUESTED_ANNOTATION: "again"}
    restarted = step(reconcile(snapshot(after, annotations=annotations)))
    job = reconcile(snapshot(restarted, JobView(), annotations=annotations)).create[1]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["plan", "--take-over-from", status["currentRun"]["id"]]


def scheduled(**schedule: Any) -> IncrementalExtractionSpec:
    return make_spec(schedule={"cron": "*/5 * * * *", **schedule})


def test_a_schedule_starts_a_run_when_due_and_reports_the_next_time() -> None:
    spec = scheduled()
    status = {"lastScheduleTime": "2026-03-01T11:55:00Z"}
    decision = reconcile(snapshot(status, spec=spec))
    assert decision.status["currentRun"]["trigger"] == "schedule"
    assert decision.status["lastScheduleTime"] == "2026-03-01T12:00:00Z"
    assert decision.status["nextScheduleTime"] == "2026-03-01T12:05:00Z"
    idle = reconcile(snapshot({**decision.status, "currentRun": None}, spec=spec))
    assert idle.status["currentRun"] is None


def test_missed_ticks_run_once_within_the_deadline_and_not_at_all_after_it() -> None:
    long_ago = {"lastScheduleTime": "2026-03-01T09:00:00Z"}
    within = reconcile(snapshot(long_ago, spec=scheduled(startingDeadlineSeconds=60)))
    assert within.status["currentRun"] is not None
    late = NOW + timedelta(minutes=2)
    missed = reconcile(snapshot(long_ago, spec=scheduled(startingDeadlineSeconds=60), now=late))
    assert missed.status["currentRun"] is None
    assert missed.events[0].reason == "MissedSchedule"


def test_suspend_stops_scheduled_runs() -> None:
    decision = reconcile(snapshot({}, spec=scheduled(suspend=True)))
    assert decision.status["currentRun"] is None
    assert decision.status["nextScheduleTime"] is None


def test_forbid_skips_a_due_run_while_one_is_active() -> None:
    spec = scheduled()
    active = {**start_run(), "lastScheduleTime": "2026-03-01T11:55:00Z"}
    decision = reconcile(snapshot(active, JobView(exists=True, active=1), spec=spec))
    assert decision.status["currentRun"]["id"] == active["currentRun"]["id"]
    assert decision.stop_run is None
    assert "ScheduleSkipped" in [event.reason for event in decision.events]


def test_replace_stops_the_active_run_and_starts_a_new_one() -> None:
    spec = scheduled(concurrencyPolicy="Replace")
    active = {**start_run(), "lastScheduleTime": "2026-03-01T11:55:00Z"}
    decision = reconcile(snapshot(active, JobView(exists=True, active=1), spec=spec))
    assert decision.stop_run == active["currentRun"]["id"]
    assert decision.status["currentRun"]["id"] != active["currentRun"]["id"]
    assert decision.status["history"][-1]["outcome"] == "Replaced"


def test_history_is_bounded_per_outcome() -> None:
    spec = make_spec(history={"successfulRunsHistoryLimit": 2, "failedRunsHistoryLimit": 1})
    status: dict[str, Any] = {}
    for index in range(4):
        status = step(reconcile(snapshot(status, spec=spec, generation=index + 1)))
        outcome = JobView(exists=True, failed=True, failure="x") if index % 2 else plan_done(0)
        status = step(reconcile(snapshot(status, outcome, spec=spec, generation=index + 1)))
        if status["currentRun"]:
            done = JobView(exists=True, complete=True, result=json.dumps(SUMMARY))
            status = step(reconcile(snapshot(status, done, spec=spec, generation=index + 1)))
    assert [entry["outcome"] for entry in status["history"]] == ["Succeeded", "Succeeded", "Failed"]


def test_condition_transition_time_changes_only_with_the_status() -> None:
    first = start_run()
    later = NOW + timedelta(minutes=1)
    again = step(reconcile(snapshot(first, JobView(exists=True, active=1), now=later)))
    assert (
        condition(again, "Reconciling")["lastTransitionTime"]
        == condition(first, "Reconciling")["lastTransitionTime"]
    )


def test_names_are_deterministic_and_fit_kubernetes_limits() -> None:
    long_name = "x" * 60
    name = object_name(long_name, "20260301t120000z-1a2b3c4d", "columns")
    assert len(name) <= 63
    assert name == object_name(long_name, "20260301t120000z-1a2b3c4d", "columns")


@pytest.mark.parametrize("phase", ["plan", "finalize"])
def test_phase_jobs_are_secure_and_get_secrets_from_secret_keys(phase: str) -> None:
    spec = make_spec()
    job = phase_job("shop", "uid-1", "20260301t120000z-1a2b3c4d", phase, spec)  # type: ignore[arg-type]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {item["name"]: item for item in container["env"]}
    assert env["METATIDE_SOURCE_DSN"]["valueFrom"]["secretKeyRef"] == {"name": "db", "key": "dsn"}
    assert env["METATIDE_RUN_ID"]["value"] == "20260301t120000z-1a2b3c4d"
    assert job["spec"]["podFailurePolicy"]["rules"][0]["action"] == "FailJob"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    config_map = spec_config_map("shop", "uid-1", "20260301t120000z-1a2b3c4d", spec)
    assert "secretKeyRef" in config_map["data"]["spec.json"]  # references, never values


def _ref(env: str, name: str, key: str) -> dict[str, Any]:
    return {"env": env, "secretKeyRef": {"name": name, "key": key}}


def test_every_secret_the_spec_names_reaches_the_pods_whatever_the_source() -> None:
    # The operator has no source-specific code: the spec model lists its secret references.
    spec = make_spec(
        source={
            "kind": "mysql",
            "dsnFrom": _ref("SHOP_DSN", "shop-db", "dsn"),
            "passwordFrom": _ref("SHOP_PASSWORD", "shop-db", "password"),
            "tls": {"mode": "verify-ca", "caFrom": _ref("SHOP_CA", "shop-ca", "ca.crt")},
        }
    )
    job = phase_job("shop", "uid-1", "20260301t120000z-1a2b3c4d", "columns", spec, batches=2)
    env = {item["name"]: item for item in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    wanted = {
        "SHOP_DSN": {"name": "shop-db", "key": "dsn"},
        "SHOP_PASSWORD": {"name": "shop-db", "key": "password"},
        "SHOP_CA": {"name": "shop-ca", "key": "ca.crt"},
        "AWS_ACCESS_KEY_ID": {"name": "s3", "key": "a"},
        "AWS_SECRET_ACCESS_KEY": {"name": "s3", "key": "s"},
    }
    assert {name: env[name]["valueFrom"]["secretKeyRef"] for name in wanted} == wanted
    assert [ref.env for ref in spec.secret_refs()] == [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "SHOP_DSN",
        "SHOP_PASSWORD",
        "SHOP_CA",
    ]
