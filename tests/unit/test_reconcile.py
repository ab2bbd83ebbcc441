"""The operator's decisions, without a cluster: runs start, advance, finish, fail, schedule.

The phases' results are the engine's own documents (the frozen result lines of a real run in
tests/fixtures/documents, or models built by the engine's types), never hand-written JSON, and
the status is read back through `ExtractionStatus`: a field renamed on either side fails here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from metatide.extractor.core.documents import (
    CurrentRun,
    ExtractionStatus,
    JobProblem,
    PlanResult,
    RunSummary,
)
from metatide.operator.jobs import JobDefaults, phase_job, spec_config_map
from metatide.operator.model import RUN_REQUESTED_ANNOTATION, IncrementalExtractionSpec
from metatide.operator.names import object_name
from metatide.operator.reconcile import Decision, JobView, Snapshot, reconcile
from metatide.operator.status import merge_patch

NOW = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)
CREATED = datetime(2026, 3, 1, 11, 0, tzinfo=UTC)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "documents"
DEFAULTS = JobDefaults("registry.example/metatide:1.2.3", "Always")
RUN_ID = "20260301t120000z-1a2b3c4d"


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
    status: ExtractionStatus | None = None,
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
        status=status or ExtractionStatus(),
        now=now,
        defaults=DEFAULTS,
        job=job,
    )


def stored(decision: Decision) -> ExtractionStatus:
    """The status as the operator writes it and reads it back (JSON, camelCase)."""
    return ExtractionStatus.model_validate(json.loads(json.dumps(decision.status.to_dict())))


def condition(status: ExtractionStatus, kind: str) -> tuple[str, str, str]:
    found = status.condition(kind)  # type: ignore[arg-type]
    assert found is not None
    return found.status, found.reason, found.message


def current(status: ExtractionStatus) -> CurrentRun:
    assert status.current_run is not None
    return status.current_run


def start_run(**kwargs: Any) -> ExtractionStatus:
    return stored(reconcile(snapshot(**kwargs)))


def plan_result(run_id: str, batches: int) -> str:
    """A real plan result line (frozen fixture) for this run and batch count."""
    line = (FIXTURES / "plan-result.jsonl").read_text().strip()
    result = PlanResult.model_validate_json(line)
    return (
        "a log line\n"
        + result.model_copy(update={"run_id": run_id, "batch_count": batches}).result_line()
    )


def plan_done(status: ExtractionStatus, batches: int) -> JobView:
    return JobView(exists=True, complete=True, result=plan_result(current(status).id, batches))


def summary() -> RunSummary:
    return RunSummary.model_validate_json((FIXTURES / "finalize-result.jsonl").read_text())


def finalize_done() -> JobView:
    return JobView(exists=True, complete=True, result=summary().termination_message())


def test_a_new_resource_without_schedule_starts_a_run_and_records_it_first() -> None:
    decision = reconcile(snapshot())
    status = stored(decision)
    assert current(status).phase == "Planning"
    assert current(status).image == DEFAULTS.image
    assert decision.create == []  # objects come next, after the status is stored
    assert condition(status, "Reconciling")[0] == "True"
    assert condition(status, "Ready")[0] == "False"
    assert [event.reason for event in decision.events] == ["RunStarted"]


def test_the_next_reconcile_creates_the_frozen_spec_and_the_plan_job() -> None:
    status = start_run()
    decision = reconcile(snapshot(status, JobView()))
    kinds = [manifest["kind"] for manifest in decision.create]
    assert kinds == ["ConfigMap", "Job"]
    config_map, job = decision.create
    assert json.loads(config_map["data"]["spec.json"])["connectionId"] == "prod"
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["plan"]
    assert decision.status.current_run == status.current_run


def test_jobs_use_the_operators_image_unless_the_resource_names_one() -> None:
    status = start_run()
    (_, job) = reconcile(snapshot(status, JobView())).create
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert (container["image"], container["imagePullPolicy"]) == (DEFAULTS.image, "Always")
    own = make_spec(job={"image": "mine/metatide:9"})
    status = start_run(spec=own)
    (_, job) = reconcile(snapshot(status, JobView(), spec=own)).create
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert (container["image"], container["imagePullPolicy"]) == ("mine/metatide:9", "IfNotPresent")


def test_the_image_is_fixed_for_the_whole_run() -> None:
    status = start_run()
    upgraded = JobDefaults("registry.example/metatide:2.0.0", "Always")
    after_plan = stored(reconcile(snapshot(status, plan_done(status, 2))))
    moved = snapshot(after_plan, JobView())
    decision = reconcile(Snapshot(**{**_fields(moved), "defaults": upgraded}))
    (job,) = decision.create
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == DEFAULTS.image


def _fields(value: Snapshot) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__slots__}


def test_job_pods_use_the_namespaces_default_service_account_unless_one_is_named() -> None:
    status = start_run()
    (_, job) = reconcile(snapshot(status, JobView())).create
    pod = job["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod
    assert pod["automountServiceAccountToken"] is False
    named = make_spec(job={"serviceAccountName": "bucket-reader"})
    status = start_run(spec=named)
    (_, job) = reconcile(snapshot(status, JobView(), spec=named)).create
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "bucket-reader"


def test_plan_result_decides_between_columns_and_finalize() -> None:
    status = start_run()
    with_batches = current(stored(reconcile(snapshot(status, plan_done(status, 3)))))
    assert with_batches.phase == "Extracting"
    assert with_batches.batches.total == 3
    without = current(stored(reconcile(snapshot(status, plan_done(status, 0)))))
    assert without.phase == "Finalizing"


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (None, "no termination message"),
        ("Traceback ...", "no JSON line"),
        ('{"phase": "plan", "run_id": "x"}', "not a PlanResult: Field required at batch_count"),
        ('{"phase": "plan", "batches": 3}', "not a PlanResult: Field required"),
    ],
)
def test_an_unreadable_plan_result_fails_the_run_and_says_why(
    result: str | None, expected: str
) -> None:
    status = start_run()
    done = JobView(exists=True, complete=True, result=result)
    after = stored(reconcile(snapshot(status, done)))
    assert after.current_run is None
    assert after.last_failure is not None
    assert expected in after.last_failure.message


def test_a_plan_result_of_another_run_fails_the_run() -> None:
    status = start_run()
    done = JobView(exists=True, complete=True, result=plan_result("20260101t000000z-ffffffff", 1))
    after = stored(reconcile(snapshot(status, done)))
    assert after.last_failure is not None
    assert "reports run 20260101t000000z-ffffffff" in after.last_failure.message


def test_the_column_job_is_indexed_with_one_index_per_batch() -> None:
    status = start_run()
    status = stored(reconcile(snapshot(status, plan_done(status, 5))))
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
    status = start_run()
    status = stored(reconcile(snapshot(status, plan_done(status, 5))))
    running = JobView(exists=True, active=2, succeeded=2, failed_indexes="3")
    batches = current(stored(reconcile(snapshot(status, running)))).batches
    assert batches.model_dump() == {"total": 5, "succeeded": 2, "failed": 1, "active": 2}


def finished_run(spec: IncrementalExtractionSpec | None = None) -> ExtractionStatus:
    status = start_run(spec=spec)
    status = stored(reconcile(snapshot(status, plan_done(status, 0), spec=spec)))
    later = NOW + timedelta(minutes=1)
    return stored(reconcile(snapshot(status, finalize_done(), spec=spec, now=later)))


def test_a_successful_run_records_its_summary_and_becomes_ready() -> None:
    status = finished_run()
    expected = summary()
    assert status.current_run is None
    assert status.phase == "Succeeded"
    last = status.last_successful_run
    assert last is not None
    assert last.changed_tables == expected.tables.created + expected.tables.updated
    assert (last.deleted_tables, last.columns_extracted) == (
        expected.tables.deleted,
        expected.columns.extracted,
    )
    assert last.unchanged_tables == expected.tables.unchanged
    assert status.marker == expected.next_marker.isoformat() == last.marker
    assert condition(status, "Ready")[0] == "True"
    assert condition(status, "Reconciling")[0] == "False"
    assert [entry.outcome for entry in status.history] == ["Succeeded"]


def test_an_unreadable_summary_still_records_the_committed_run_and_warns() -> None:
    status = start_run()
    status = stored(reconcile(snapshot(status, plan_done(status, 0))))
    truncated = JobView(exists=True, complete=True, result=summary().result_line()[:500])
    decision = reconcile(snapshot(status, truncated))
    after = stored(decision)
    assert after.last_successful_run is not None
    assert after.last_successful_run.changed_tables is None
    assert "SummaryUnreadable" in [event.reason for event in decision.events]


def test_an_idle_resource_gets_the_same_status_so_nothing_is_written() -> None:
    status = finished_run()
    for minutes in (2, 30, 600):
        again = reconcile(snapshot(status, now=NOW + timedelta(minutes=minutes)))
        assert merge_patch(status.to_dict(), again.status.to_dict()) == {}
        assert again.create == []
        assert again.events == []


def test_no_new_run_without_a_reason() -> None:
    status = finished_run()
    decision = reconcile(snapshot(status, now=NOW + timedelta(minutes=2)))
    assert decision.status.current_run is None
    assert decision.create == []


def test_a_spec_change_starts_a_run() -> None:
    status = finished_run()
    decision = reconcile(snapshot(status, generation=2, now=NOW + timedelta(minutes=2)))
    assert current(decision.status).trigger == "spec changed"


def test_a_manual_trigger_runs_once() -> None:
    status = finished_run()
    annotations = {RUN_REQUESTED_ANNOTATION: "2026-03-01T12:05:00Z"}
    triggered = stored(reconcile(snapshot(status, annotations=annotations)))
    assert current(triggered).trigger == "manual"
    idle = triggered.model_copy(update={"current_run": None})
    again = stored(reconcile(snapshot(idle, annotations=annotations)))
    assert again.current_run is None


def test_a_failed_phase_fails_the_run_readably_and_the_next_run_takes_over_its_lease() -> None:
    status = start_run()
    failed = JobView(exists=True, failed=True, failure="SpecError: source.path is missing")
    decision = reconcile(snapshot(status, failed))
    after = stored(decision)
    assert after.current_run is None
    assert after.phase == "Failed"
    stalled = condition(after, "Stalled")
    assert stalled[0] == "True"
    assert "failed in plan: SpecError: source.path is missing" in stalled[2]
    assert after.consecutive_failures == 1
    assert decision.events[-1].type == "Warning"
    annotations = {RUN_REQUESTED_ANNOTATION: "again"}
    restarted = stored(reconcile(snapshot(after, annotations=annotations)))
    job = reconcile(snapshot(restarted, JobView(), annotations=annotations)).create[1]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["plan", "--take-over-from", current(status).id]


def test_a_job_that_cannot_start_stalls_the_resource_with_kubernetes_words() -> None:
    status = start_run()
    problem = JobProblem(
        job="shop-1a2b3c4d-plan",
        reason="FailedCreate",
        message='Error creating: pods "shop-1a2b3c4d-plan-x" is forbidden: error looking up '
        'service account shop/nope: serviceaccount "nope" not found',
    )
    stuck = JobView(exists=True, active=0, problem=problem)
    decision = reconcile(snapshot(status, stuck))
    after = stored(decision)
    assert condition(after, "Stalled")[:2] == ("True", "FailedCreate")
    assert 'serviceaccount "nope" not found' in condition(after, "Stalled")[2]
    assert condition(after, "Reconciling")[0] == "True"
    assert condition(after, "Ready")[0] == "False"
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "FailedCreate")]
    assert current(after).blocked == problem
    again = reconcile(snapshot(after, stuck, now=NOW + timedelta(seconds=10)))
    assert again.events == []  # one event per problem, not one per look
    assert merge_patch(after.to_dict(), again.status.to_dict()) == {}
    running = reconcile(snapshot(after, JobView(exists=True, active=1)))
    assert condition(stored(running), "Stalled")[0] == "False"
    assert current(stored(running)).blocked is None


def scheduled(**schedule: Any) -> IncrementalExtractionSpec:
    return make_spec(schedule={"cron": "*/5 * * * *", **schedule})


def test_a_schedule_starts_a_run_when_due_and_reports_the_times() -> None:
    spec = scheduled()
    status = ExtractionStatus.model_validate({"lastScheduleTime": "2026-03-01T11:55:00Z"})
    decision = reconcile(snapshot(status, spec=spec))
    after = stored(decision)
    assert current(after).trigger == "schedule"
    assert after.to_dict()["lastScheduleTime"] == "2026-03-01T12:00:00Z"
    assert after.to_dict()["nextScheduleTime"] == "2026-03-01T12:05:00Z"
    assert decision.wake_at == datetime(2026, 3, 1, 12, 5, tzinfo=UTC)
    idle = after.model_copy(update={"current_run": None})
    assert reconcile(snapshot(idle, spec=spec)).status.current_run is None


def test_missed_ticks_run_once_within_the_deadline_and_not_at_all_after_it() -> None:
    long_ago = ExtractionStatus.model_validate({"lastScheduleTime": "2026-03-01T09:00:00Z"})
    within = reconcile(snapshot(long_ago, spec=scheduled(startingDeadlineSeconds=60)))
    assert within.status.current_run is not None
    late = NOW + timedelta(minutes=2)
    missed = reconcile(snapshot(long_ago, spec=scheduled(startingDeadlineSeconds=60), now=late))
    assert missed.status.current_run is None
    assert missed.events[0].reason == "MissedSchedule"
    assert missed.status.to_dict()["lastScheduleTime"] == "2026-03-01T09:00:00Z"


def test_suspend_stops_scheduled_runs_and_drops_their_ticks() -> None:
    spec = scheduled(suspend=True)
    decision = reconcile(snapshot(spec=spec))
    assert decision.status.current_run is None
    assert decision.status.next_schedule_time is None
    assert decision.wake_at is None
    suspended = stored(decision)
    resumed = reconcile(snapshot(suspended, spec=scheduled(), generation=2))
    assert resumed.status.current_run is None  # the tick passed while suspended is not owed


def test_a_run_requested_while_suspended_runs_and_the_status_says_so() -> None:
    spec = scheduled(suspend=True)
    annotations = {RUN_REQUESTED_ANNOTATION: "now"}
    decision = reconcile(snapshot(spec=spec, annotations=annotations))
    after = stored(decision)
    run = current(after)
    assert run.trigger == "manual"
    assert run.note is not None
    assert "suspended" in run.note
    assert "suspended" in condition(after, "Reconciling")[2]
    assert "schedule stays suspended" in decision.events[0].message
    assert after.next_schedule_time is None


def test_forbid_skips_a_due_run_while_one_is_active_and_keeps_the_last_schedule_time() -> None:
    spec = scheduled()
    active = start_run().model_copy(
        update={"last_schedule_time": datetime(2026, 3, 1, 11, 55, tzinfo=UTC)}
    )
    decision = reconcile(snapshot(active, JobView(exists=True, active=1), spec=spec))
    after = stored(decision)
    assert current(after).id == current(active).id
    assert decision.stop_run is None
    assert "ScheduleSkipped" in [event.reason for event in decision.events]
    assert after.to_dict()["lastScheduleTime"] == "2026-03-01T11:55:00Z"  # no run started
    assert after.to_dict()["lastScheduleTick"] == "2026-03-01T12:00:00Z"  # but handled
    assert (
        reconcile(snapshot(after, JobView(exists=True, active=1), spec=spec)).events == []
    )


def test_replace_stops_the_active_run_and_starts_a_new_one() -> None:
    spec = scheduled(concurrencyPolicy="Replace")
    active = start_run().model_copy(
        update={"last_schedule_time": datetime(2026, 3, 1, 11, 55, tzinfo=UTC)}
    )
    decision = reconcile(snapshot(active, JobView(exists=True, active=1), spec=spec))
    assert decision.stop_run == current(active).id
    assert current(decision.status).id != current(active).id
    assert decision.status.history[-1].outcome == "Replaced"


def fail_scheduled_run(
    status: ExtractionStatus, spec: IncrementalExtractionSpec, at: datetime
) -> Decision:
    started = stored(reconcile(snapshot(status, spec=spec, now=at)))
    assert started.current_run is not None, "a scheduled run should have started"
    failed = JobView(exists=True, failed=True, failure="CredentialsError: password refused")
    return reconcile(snapshot(started, failed, spec=spec, now=at + timedelta(seconds=30)))


def test_scheduling_stops_after_too_many_consecutive_failures_and_a_request_resumes_it() -> None:
    spec = scheduled(maxConsecutiveFailures=2)
    status = ExtractionStatus.model_validate({"lastScheduleTime": "2026-03-01T11:55:00Z"})
    first = fail_scheduled_run(status, spec, NOW)
    status = stored(first)
    assert (status.consecutive_failures, status.schedule_stopped) == (1, None)
    second = fail_scheduled_run(status, spec, NOW + timedelta(minutes=5))
    status = stored(second)
    assert status.consecutive_failures == 2
    assert status.schedule_stopped is not None
    assert "2 consecutive failed runs" in status.schedule_stopped.message
    assert "password refused" in status.schedule_stopped.message
    assert ("Warning", "SchedulingStopped") in [(e.type, e.reason) for e in second.events]
    assert condition(status, "Stalled")[:2] == ("True", "SchedulingStopped")
    assert status.next_schedule_time is None
    later = reconcile(snapshot(status, spec=spec, now=NOW + timedelta(minutes=10, seconds=1)))
    assert later.status.current_run is None  # due ticks do not run
    annotations = {RUN_REQUESTED_ANNOTATION: "try again"}
    resumed = reconcile(snapshot(status, spec=spec, annotations=annotations))
    after = stored(resumed)
    assert current(after).trigger == "manual"
    assert (after.schedule_stopped, after.consecutive_failures) == (None, 0)
    assert "SchedulingResumed" in [e.reason for e in resumed.events]
    assert after.next_schedule_time is not None


def test_a_spec_change_resumes_stopped_scheduling() -> None:
    spec = scheduled(maxConsecutiveFailures=1)
    status = ExtractionStatus.model_validate({"lastScheduleTime": "2026-03-01T11:55:00Z"})
    status = stored(fail_scheduled_run(status, spec, NOW))
    assert status.schedule_stopped is not None
    changed = reconcile(snapshot(status, spec=spec, generation=2, now=NOW + timedelta(minutes=1)))
    assert changed.status.schedule_stopped is None
    assert changed.status.next_schedule_time is not None


def test_history_is_bounded_per_outcome() -> None:
    spec = make_spec(history={"successfulRunsHistoryLimit": 2, "failedRunsHistoryLimit": 1})
    status = ExtractionStatus()
    for index in range(4):
        status = stored(reconcile(snapshot(status, spec=spec, generation=index + 1)))
        if index % 2:
            outcome = JobView(exists=True, failed=True, failure="x")
        else:
            outcome = plan_done(status, 0)
        status = stored(reconcile(snapshot(status, outcome, spec=spec, generation=index + 1)))
        if status.current_run:
            status = stored(
                reconcile(snapshot(status, finalize_done(), spec=spec, generation=index + 1))
            )
    assert [entry.outcome for entry in status.history] == ["Succeeded", "Succeeded", "Failed"]
    assert [entry.trigger for entry in status.history] == [
        "created",
        "spec changed",
        "spec changed",
    ]


def test_condition_transition_time_changes_only_with_the_status() -> None:
    first = start_run()
    later = NOW + timedelta(minutes=1)
    again = stored(reconcile(snapshot(first, JobView(exists=True, active=1), now=later)))
    assert first.condition("Reconciling") is not None
    assert again.condition("Reconciling") == first.condition("Reconciling")


def test_names_are_deterministic_and_fit_kubernetes_limits() -> None:
    long_name = "x" * 60
    name = object_name(long_name, RUN_ID, "columns")
    assert len(name) <= 63
    assert name == object_name(long_name, RUN_ID, "columns")


def a_run(**fields: Any) -> CurrentRun:
    return CurrentRun.model_validate(
        {
            "id": RUN_ID,
            "phase": "Planning",
            "startedAt": "2026-03-01T12:00:00Z",
            "trigger": "manual",
            "generation": 1,
            "image": "metatide:1",
            "imagePullPolicy": "IfNotPresent",
            **fields,
        }
    )


@pytest.mark.parametrize("phase", ["plan", "finalize"])
def test_phase_jobs_are_secure_and_get_secrets_from_secret_keys(phase: str) -> None:
    spec = make_spec()
    job = phase_job("shop", "uid-1", a_run(), phase, spec)  # type: ignore[arg-type]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {item["name"]: item for item in container["env"]}
    assert env["METATIDE_SOURCE_DSN"]["valueFrom"]["secretKeyRef"] == {"name": "db", "key": "dsn"}
    assert env["METATIDE_RUN_ID"]["value"] == RUN_ID
    assert job["spec"]["podFailurePolicy"]["rules"][0]["action"] == "FailJob"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    config_map = spec_config_map("shop", "uid-1", RUN_ID, spec)
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
    run = a_run(phase="Extracting", batches={"total": 2})
    job = phase_job("shop", "uid-1", run, "columns", spec)
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
