"""The event-driven controller without a cluster: the work queue, the write-only-what-changed
rule, Job diagnostics and API errors turned into status.

The API is a recording stand-in here (`Recorder`), so the tests can count requests: an idle
resource must cost none, and a status must be written only when it changes. The same
controller runs against the real API server in e2e/test_operator.py and bench/operator_fleet.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes.config import kube_config

from metatide.extractor.core.documents import ExtractionStatus
from metatide.operator.controller import Controller, ControllerSettings
from metatide.operator.diagnose import event_problem, pod_problem, termination_message
from metatide.operator.jobs import JobDefaults
from metatide.operator.kube import JobRecord, Kube, KubeConflictError, KubeRefusedError
from metatide.operator.status import merge_patch
from metatide.operator.workqueue import WorkQueue

JSON = dict[str, Any]


# -- the work queue ---------------------------------------------------------------------


def test_a_key_added_many_times_is_queued_once() -> None:
    async def scenario() -> list[str]:
        queue: WorkQueue[str] = WorkQueue()
        for _ in range(5):
            queue.add("a")
        queue.add("b")
        return [await queue.get(), await queue.get(), str(len(queue))]

    assert asyncio.run(scenario()) == ["a", "b", "0"]


def test_a_key_added_while_held_comes_back_after_done() -> None:
    async def scenario() -> tuple[int, str]:
        queue: WorkQueue[str] = WorkQueue()
        queue.add("a")
        key = await queue.get()
        queue.add("a")  # an event while a worker holds it: not handed to a second worker
        waiting = len(queue)
        queue.done(key)
        return waiting, await asyncio.wait_for(queue.get(), 1)

    assert asyncio.run(scenario()) == (0, "a")


def test_delayed_adds_keep_the_earliest_time() -> None:
    async def scenario() -> tuple[str, float]:
        queue: WorkQueue[str] = WorkQueue()
        timers = asyncio.create_task(queue.run_timers())
        loop = asyncio.get_running_loop()
        started = loop.time()
        queue.add("a", 5.0)
        queue.add("a", 0.1)  # earlier wins
        queue.add("a", 3.0)  # later is ignored
        key = await asyncio.wait_for(queue.get(), 2)
        elapsed = loop.time() - started
        timers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await timers
        return key, elapsed

    key, elapsed = asyncio.run(scenario())
    assert key == "a"
    assert 0.05 < elapsed < 1.0


# -- merge patches ----------------------------------------------------------------------


def test_merge_patch_holds_only_what_changed_and_removes_what_went() -> None:
    old = {"phase": "Running", "currentRun": {"id": "r", "phase": "Planning"}, "kopf": {"x": 1}}
    new = {"phase": "Running", "currentRun": {"id": "r", "phase": "Extracting"}}
    assert merge_patch(old, new) == {"currentRun": {"phase": "Extracting"}, "kopf": None}
    assert merge_patch(new, copy.deepcopy(new)) == {}


# -- diagnostics --------------------------------------------------------------------------


def pod(name: str, **status: Any) -> JSON:
    return {
        "metadata": {"name": name, "creationTimestamp": "2026-03-01T12:00:00Z"},
        "status": status,
    }


def test_an_image_that_cannot_be_pulled_is_a_problem() -> None:
    waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "nope:1"'}
    pods = [pod("p1", phase="Pending", containerStatuses=[{"state": {"waiting": waiting}}])]
    problem = pod_problem("job-1", pods)
    assert problem is not None
    assert (problem.reason, problem.message) == (
        "ImagePullBackOff",
        'pod p1: Back-off pulling image "nope:1"',
    )


def test_a_pod_no_node_can_take_is_a_problem_and_a_starting_one_is_not() -> None:
    unschedulable = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/1 nodes are available: 1 Insufficient memory.",
    }
    problem = pod_problem("job-1", [pod("p1", phase="Pending", conditions=[unschedulable])])
    assert problem is not None
    assert problem.reason == "Unschedulable"
    creating = {"waiting": {"reason": "ContainerCreating"}}
    assert pod_problem("job-1", [pod("p2", containerStatuses=[{"state": creating}])]) is None


def test_a_failed_create_event_is_a_problem() -> None:
    events = [
        {
            "type": "Warning",
            "reason": "FailedCreate",
            "message": 'Error creating: pods "x-" is forbidden: exceeded quota: pods, '
            "requested: pods=1, used: pods=2, limited: pods=2",
        }
    ]
    problem = event_problem("job-1", events)
    assert problem is not None
    assert problem.reason == "FailedCreate"
    assert "exceeded quota" in problem.message


def test_termination_messages_come_from_the_newest_pod_in_the_phase() -> None:
    done = {"terminated": {"exitCode": 0, "message": '{"phase": "plan"}'}}
    failed = {"terminated": {"exitCode": 75, "reason": "Error"}}
    pods = [
        pod("a", phase="Failed", containerStatuses=[{"state": failed}]),
        pod("b", phase="Succeeded", containerStatuses=[{"state": done}]),
    ]
    assert termination_message(pods, "Succeeded") == '{"phase": "plan"}'
    assert termination_message(pods, "Failed") == "exit code 75 (Error)"


# -- the controller against a recording API -------------------------------------------


class Recorder(Kube):
    """The controller's API, answered from memory and counted per call."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.refuse: dict[str, KubeRefusedError] = {}
        self.conflicts = 0
        self.stored: JSON = {}

    def _note(self, call: str) -> None:
        self.calls.append(call)
        if call in self.refuse:
            raise self.refuse[call]

    def read_resource(self, namespace: str, name: str) -> JSON | None:
        self._note("get resource")
        return copy.deepcopy(self.stored)

    def patch_status(
        self, namespace: str, name: str, status_patch: JSON, resource_version: str
    ) -> JSON:
        self._note("patch status")
        if self.conflicts:
            self.conflicts -= 1
            self.stored["metadata"]["resourceVersion"] = str(int(resource_version) + 1)
            raise KubeConflictError("patch", 409, "Conflict", "the object has been modified")
        updated = copy.deepcopy(self.stored)
        status = updated.get("status") or {}
        for key, value in status_patch.items():
            if value is None:
                status.pop(key, None)
            elif isinstance(value, dict) and isinstance(status.get(key), dict):
                status[key] = _merged(status[key], value)
            else:
                status[key] = value
        updated["status"] = status
        updated["metadata"]["resourceVersion"] = str(int(resource_version) + 1)
        self.stored = updated
        return copy.deepcopy(updated)

    def create(self, namespace: str, manifest: JSON) -> tuple[JSON, bool]:
        self._note(f"create {manifest['kind']}")
        created = copy.deepcopy(manifest)
        created["metadata"].update(
            {
                "uid": "job-uid",
                "resourceVersion": "500",
                "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
        return created, True

    def read_job(self, namespace: str, name: str) -> JobRecord | None:
        self._note("get job")
        return None

    def delete_job(self, namespace: str, name: str) -> None:
        self._note("delete job")

    def job_pods(self, namespace: str, job: str) -> list[JSON]:
        self._note("list pods")
        return []

    def job_warnings(self, namespace: str, job_uid: str) -> list[JSON]:
        self._note("list events")
        return []

    def post_event(self, resource: JSON, kind: Any, reason: str, message: str) -> None:
        self._note(f"event {reason}")


def _merged(old: JSON, patch: JSON) -> JSON:
    result = dict(old)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merged(result[key], value)
        else:
            result[key] = value
    return result


def resource(**spec: Any) -> JSON:
    return {
        "apiVersion": "metatide.dev/v1alpha1",
        "kind": "IncrementalExtraction",
        "metadata": {
            "name": "shop",
            "namespace": "ns",
            "uid": "uid-1",
            "generation": 1,
            "resourceVersion": "100",
            "creationTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "spec": {
            "applicationName": "shop",
            "connectionId": "c",
            "source": {"kind": "sqlite", "path": "/x.sqlite"},
            "storage": {"url": "file:///store"},
            **spec,
        },
    }


@pytest.fixture
def api() -> Iterator[Recorder]:
    return Recorder()


def controller(api: Recorder) -> Controller:
    return Controller(api, ControllerSettings(JobDefaults("metatide:test")))


def reconcile(ctl: Controller, api: Recorder) -> float | None:
    """One reconcile of the stored resource, as a worker does it (caches updated)."""
    ctl.caches.put_resource(api.stored)
    key = ("ns", "shop")
    return asyncio.run(ctl._process(key))


def test_a_new_resource_is_recorded_then_its_objects_created_then_it_costs_nothing(
    api: Recorder,
) -> None:
    api.stored = resource()
    ctl = controller(api)
    assert reconcile(ctl, api) == 0.0  # status written: look again at once
    assert api.calls == ["event RunStarted", "patch status"]
    api.calls.clear()
    delay = reconcile(ctl, api)
    assert api.calls == ["create ConfigMap", "create Job"]  # the plan Job, nothing written
    assert delay is not None
    assert delay >= 3
    api.calls.clear()
    for _ in range(3):  # the Job runs: its events change nothing the status shows
        reconcile(ctl, api)
    assert api.calls == []


def test_an_idle_resource_makes_no_request(api: Recorder) -> None:
    api.stored = resource(schedule={"cron": "0 3 * * *"})
    ctl = controller(api)
    reconcile(ctl, api)
    assert api.calls == ["patch status"]  # Pending, next schedule time
    api.calls.clear()
    for _ in range(5):
        delay = reconcile(ctl, api)
    assert api.calls == []
    assert delay is not None
    assert 0 < delay <= 300


def test_a_conflict_is_retried_with_the_fresh_resource(api: Recorder) -> None:
    api.stored = resource()
    api.conflicts = 1
    ctl = controller(api)
    reconcile(ctl, api)
    assert api.calls == [
        "event RunStarted",
        "patch status",
        "get resource",
        "event RunStarted",
        "patch status",
    ]
    status = ExtractionStatus.model_validate(api.stored["status"])
    assert status.current_run is not None


def test_a_refused_create_stalls_the_resource_with_the_apis_message(api: Recorder) -> None:
    api.stored = resource()
    ctl = controller(api)
    reconcile(ctl, api)
    api.refuse["create Job"] = KubeRefusedError(
        "create jobs",
        403,
        "Forbidden",
        'jobs.batch is forbidden: User "system:serviceaccount:m:metatide" cannot create '
        'resource "jobs" in API group "batch" in the namespace "ns"',
    )
    api.calls.clear()
    delay = reconcile(ctl, api)
    assert delay == 30.0
    status = ExtractionStatus.model_validate(api.stored["status"])
    stalled = status.condition("Stalled")
    assert stalled is not None
    assert (stalled.status, stalled.reason) == ("True", "Forbidden")
    assert "cannot create resource" in stalled.message
    assert "event Forbidden" in api.calls
    api.calls.clear()
    reconcile(ctl, api)  # refused again: same status, no write, no second event
    assert api.calls == ["create ConfigMap", "create Job"]


def test_a_job_with_no_ready_pod_is_examined_only_after_a_grace_period(api: Recorder) -> None:
    api.stored = resource()
    ctl = controller(api)
    reconcile(ctl, api)
    reconcile(ctl, api)
    key = ("ns", "shop")
    (record,) = ctl.caches.jobs[key].values()
    young = JobRecord(**{**_record_fields(record), "created_at": datetime.now(UTC)})
    ctl.caches.jobs[key][record.name] = young
    api.calls.clear()
    reconcile(ctl, api)
    assert api.calls == []
    old = JobRecord(
        **{**_record_fields(record), "created_at": datetime.now(UTC) - timedelta(seconds=30)}
    )
    ctl.caches.jobs[key][record.name] = old
    reconcile(ctl, api)
    assert api.calls == ["list pods", "list events"]


def _record_fields(record: JobRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}


def test_an_echo_of_the_controllers_own_write_is_not_reconciled_again(api: Recorder) -> None:
    api.stored = resource()
    ctl = controller(api)
    reconcile(ctl, api)
    echo = json.loads(json.dumps(api.stored))
    ctl.resource_event("MODIFIED", echo)
    assert len(ctl.queue) == 0


def test_the_connection_pool_holds_a_connection_per_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More workers than the client's default pool (5 per CPU) would open and throw away a
    TLS connection per request (bench/README.md: "Connection pool is full")."""
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    (tmp_path / "config").write_text(json.dumps(kubeconfig))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "config"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    pool = Kube(connections=257)._api.rest_client.pool_manager
    assert pool.connection_pool_kw["maxsize"] == 257
