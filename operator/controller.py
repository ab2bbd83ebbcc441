"""The event-driven controller: watch events in, reconciles out, API requests only for changes.

kopf's watch streams feed two caches, kept as the API server last described them: the
IncrementalExtractions, and the phase Jobs the operator created (label-selected on the
server, each mapped to its resource through its owner reference). Every event that brings a
newer object queues its resource in a `WorkQueue`; a few workers reconcile queued resources
from the caches. A reconcile asks the API server only for what the caches cannot tell: the
termination message of a Job that just finished, the pods and events of a Job that has had no
ready pod for a few seconds (why it cannot start), and the writes its decision needs. The
status is written as a merge patch of what changed, conditional on the resourceVersion it was
computed from; an unchanged status is not written. So an idle resource costs no request: it
is looked at again only at its next schedule tick and at a slow safety resync, both from the
caches.

The controller's own writes go into the caches at once (the API's answer), so the watch
event that echoes them is recognised as known and does not trigger another reconcile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

from metatide.extractor.core.documents import ExtractionStatus, JobProblem
from metatide.extractor.core.wire import first_problem
from metatide.operator import metrics
from metatide.operator.diagnose import event_problem, pod_problem, termination_message
from metatide.operator.jobs import JobDefaults
from metatide.operator.kube import (
    JSON,
    JobRecord,
    Kube,
    KubeConflictError,
    KubeRefusedError,
    KubeUnavailableError,
    owner_of,
    parse_time,
)
from metatide.operator.model import IncrementalExtractionSpec
from metatide.operator.reconcile import (
    Decision,
    JobView,
    Snapshot,
    blocked,
    current_job_name,
    invalid_spec,
    reconcile,
)
from metatide.operator.status import merge_patch
from metatide.operator.workqueue import WorkQueue

Key = tuple[str, str]
"""(namespace, name) of an IncrementalExtraction."""

log = logging.getLogger("metatide.operator")

STALL_GRACE: Final = timedelta(seconds=5)
"""A Job with no ready pod this long after its creation is examined for a problem."""
STALL_RECHECK_SECONDS: Final = 10.0
REFUSED_RETRY_SECONDS: Final = 30.0
UNAVAILABLE_RETRY_SECONDS: Final = 10.0
CONFLICT_ATTEMPTS: Final = 3
FOLLOW_UP_STEPS: Final = 4
"""Reconciles of one resource in a row while each asks for the next at once."""

RECONCILES = Counter(
    "metatide_operator_reconciles_total",
    "Reconciles by result: unchanged (nothing written), written, conflict, refused, "
    "unavailable, error.",
    ["result"],
)
RECONCILE_SECONDS = Histogram(
    "metatide_operator_reconcile_seconds",
    "Time of one reconcile, API requests included.",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_DEPTH = Gauge("metatide_operator_queue_depth", "Resources waiting for a worker.")


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    """How the controller works; the CLI's operator options."""

    defaults: JobDefaults
    workers: int = 4
    resync_seconds: float = 300.0


def _newer(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """True when `new` is a later version of the object than `old` (resourceVersions are
    etcd revisions; a non-numeric one is treated as newer)."""
    if old is None:
        return True
    before, after = (
        old["metadata"].get("resourceVersion", ""),
        new["metadata"].get("resourceVersion", ""),
    )
    if before.isdigit() and after.isdigit():
        return int(after) > int(before)
    return bool(after != before)


def _slim(body: Mapping[str, Any]) -> JSON:
    """The object without its managedFields (a large part of it that nobody here reads)."""
    meta = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    return {**body, "metadata": meta}


@dataclass
class Caches:
    """The latest known IncrementalExtractions and their Jobs (touched only in the loop)."""

    resources: dict[Key, JSON] = field(default_factory=dict)
    jobs: dict[Key, dict[str, JobRecord]] = field(default_factory=dict)

    def put_resource(self, body: Mapping[str, Any]) -> bool:
        """Remember a resource; True if it is newer than what was known."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if not _newer(self.resources.get(key), body):
            return False
        self.resources[key] = _slim(body)
        return True

    def put_job(self, namespace: str, owner: str, record: JobRecord) -> bool:
        """Remember a Job of a resource; True if it is newer than what was known."""
        jobs = self.jobs.setdefault((namespace, owner), {})
        known = jobs.get(record.name)
        if known is not None and known.uid == record.uid:
            old, new = known.resource_version, record.resource_version
            if old.isdigit() and new.isdigit() and int(new) <= int(old):
                return False
        jobs[record.name] = record
        return True

    def forget_job(self, namespace: str, owner: str, name: str) -> None:
        jobs = self.jobs.get((namespace, owner), {})
        jobs.pop(name, None)
        if not jobs:
            self.jobs.pop((namespace, owner), None)


@dataclass
class Outcome:
    """What a reconcile (run in a worker thread) hands back to the loop."""

    resource: JSON | None = None
    jobs: list[JobRecord] = field(default_factory=list)
    delay: float | None = None
    found_existing: bool = False
    """A create found the object already there (a resumed step): look again at once."""


class Controller:
    """Watch events -> work queue -> reconciles, with the caches in between."""

    def __init__(self, kube: Kube, settings: ControllerSettings) -> None:
        self.kube = kube
        self.settings = settings
        self.caches = Caches()
        self.queue: WorkQueue[Key] = WorkQueue()

    # -- events (called by kopf's handlers, in the event loop) ---------------------------

    def resource_event(self, kind: str | None, body: Mapping[str, Any]) -> None:
        """An IncrementalExtraction was listed, added, changed or deleted."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if kind == "DELETED":
            self.caches.resources.pop(key, None)
            self.caches.jobs.pop(key, None)
            return
        if self.caches.put_resource(body):
            self.queue.add(key)

    def job_event(self, kind: str | None, body: Mapping[str, Any]) -> None:
        """A phase Job was listed, added, changed or deleted: its resource may move on."""
        owner = owner_of(dict(body))
        if owner is None:
            return
        namespace = body["metadata"]["namespace"]
        if kind == "DELETED":
            self.caches.forget_job(namespace, owner, body["metadata"]["name"])
            return
        if self.caches.put_job(namespace, owner, JobRecord.of(dict(body))):
            self.queue.add((namespace, owner))

    # -- workers -----------------------------------------------------------------------

    async def run(self) -> None:
        """Run the workers and the queue's timers until cancelled."""
        tasks = [asyncio.create_task(self.queue.run_timers(), name="metatide-queue-timers")]
        tasks += [
            asyncio.create_task(self._worker(), name=f"metatide-worker-{index}")
            for index in range(self.settings.workers)
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            QUEUE_DEPTH.set(len(self.queue))
            delay: float | None = 0.0
            try:
                # A step that asks to go on at once (a run recorded, now create its Job) goes
                # on in this worker: behind a burst of queued resources it would wait for all.
                for _ in range(FOLLOW_UP_STEPS):
                    delay = await self._process(key)
                    if delay != 0.0:
                        break
            except Exception:
                log.exception("reconcile of %s/%s failed unexpectedly", *key)
                RECONCILES.labels("error").inc()
                delay = REFUSED_RETRY_SECONDS
            finally:
                self.queue.done(key)
            if delay is not None:
                self.queue.add(key, delay)

    async def _process(self, key: Key) -> float | None:
        body = self.caches.resources.get(key)
        if body is None:
            return None  # deleted meanwhile
        jobs = dict(self.caches.jobs.get(key, {}))
        started = time.monotonic()
        outcome = await asyncio.to_thread(self.reconcile, key, body, jobs)
        RECONCILE_SECONDS.observe(time.monotonic() - started)
        if outcome.resource is not None:
            self.caches.put_resource(outcome.resource)
        for record in outcome.jobs:
            self.caches.put_job(key[0], key[1], record)
        return outcome.delay

    # -- one reconcile (in a worker thread: no cache access, only its arguments) ---------

    def reconcile(self, key: Key, body: JSON, jobs: dict[str, JobRecord]) -> Outcome:
        """Reconcile one resource; never raises for API errors (they become its status)."""
        outcome = Outcome()
        for _ in range(CONFLICT_ATTEMPTS):
            try:
                return self._reconcile(key, body, jobs, outcome)
            except KubeConflictError:
                RECONCILES.labels("conflict").inc()
                fresh = self.kube.read_resource(*key)
                if fresh is None:
                    return outcome
                outcome.resource = body = fresh
            except KubeUnavailableError as exc:
                RECONCILES.labels("unavailable").inc()
                log.warning("the API server is unavailable for %s/%s: %s", *key, exc)
                outcome.delay = UNAVAILABLE_RETRY_SECONDS
                return outcome
        outcome.delay = 0.5
        return outcome

    def _reconcile(
        self, key: Key, body: JSON, jobs: dict[str, JobRecord], outcome: Outcome
    ) -> Outcome:
        namespace, name = key
        now = datetime.now(UTC).replace(microsecond=0)
        meta = body["metadata"]
        generation = int(meta.get("generation", 1))
        status = _parse_status(body)
        try:
            spec = IncrementalExtractionSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            message = f"the spec is invalid: {first_problem(exc)}"
            written = self._write(body, invalid_spec(status, generation, now, message), outcome)
            RECONCILES.labels(written).inc()
            refused = written == "refused"
            outcome.delay = REFUSED_RETRY_SECONDS if refused else self.settings.resync_seconds
            return outcome
        current = status.current_run
        record = jobs.get(current_job_name(name, current)) if current else None
        job = self._job_view(namespace, record, status, now) if current else None
        snapshot = Snapshot(
            name=name,
            uid=meta["uid"],
            generation=generation,
            created_at=parse_time(meta.get("creationTimestamp")),
            annotations=dict(meta.get("annotations") or {}),
            spec=spec,
            status=status,
            now=now,
            defaults=self.settings.defaults,
            job=job,
        )
        decision = reconcile(snapshot)
        delay = self._delay(decision, record, now)
        refused = False
        try:
            self._apply(namespace, name, decision, jobs, outcome)
        except KubeRefusedError as exc:
            RECONCILES.labels("refused").inc()
            log.warning("the API refused a request for %s/%s: %s", namespace, name, exc)
            problem = JobProblem(
                job=current_job_name(name, current) if current else name,
                reason=exc.reason,
                message=exc.message,
            )
            blocked(snapshot, decision, problem)
            refused = True
        self._post(body, decision)
        written = self._write(body, decision.status, outcome)
        RECONCILES.labels(written).inc()
        for finished in decision.finished:
            metrics.record(namespace, name, finished)
        if refused or written == "refused":
            delay = REFUSED_RETRY_SECONDS
        elif written == "written" or outcome.found_existing:
            delay = 0.0  # the next step (e.g. the new phase's Job) follows from the new status
        outcome.delay = delay
        return outcome

    def _delay(self, decision: Decision, record: JobRecord | None, now: datetime) -> float:
        """When to look again without an event: the next schedule tick, a Job that may be
        stuck, or the safety resync, whichever comes first."""
        delay = self.settings.resync_seconds
        if decision.wake_at is not None:
            delay = min(delay, max((decision.wake_at - now).total_seconds(), 0.0) + 0.05)
        if record is not None and _may_stall(record):
            age = now - record.created_at
            delay = min(delay, max((STALL_GRACE - age).total_seconds(), STALL_RECHECK_SECONDS))
        return delay

    def _job_view(
        self, namespace: str, record: JobRecord | None, status: ExtractionStatus, now: datetime
    ) -> JobView:
        """The current phase's Job, with what the caches cannot tell read from the API."""
        if record is None:
            return JobView()
        view = JobView(
            exists=True,
            complete=record.complete,
            failed=record.failed,
            active=record.active,
            succeeded=record.succeeded,
            failed_indexes=record.failed_indexes,
        )
        if record.complete:
            if record.phase == "columns":
                return view  # batches leave files, not a result line
            result = termination_message(self.kube.job_pods(namespace, record.name), "Succeeded")
            return replace(view, result=result)
        if record.failed:
            pod = termination_message(self.kube.job_pods(namespace, record.name), "Failed")
            failure = f"{pod} ({record.failure})" if pod else record.failure
            return replace(view, failure=failure)
        if _may_stall(record) and now - record.created_at >= STALL_GRACE:
            return replace(view, problem=self._problem(namespace, record, status))
        return view

    def _problem(
        self, namespace: str, record: JobRecord, status: ExtractionStatus
    ) -> JobProblem | None:
        """Why a Job has no ready pod, if Kubernetes says; the known problem if it cannot be
        asked now."""
        try:
            problem = pod_problem(record.name, self.kube.job_pods(namespace, record.name))
            if problem is None and record.active == 0:
                problem = event_problem(record.name, self.kube.job_warnings(namespace, record.uid))
        except KubeRefusedError as exc:
            log.warning("cannot examine Job %s/%s: %s", namespace, record.name, exc)
            current = status.current_run
            return current.blocked if current else None
        return problem

    def _apply(
        self,
        namespace: str,
        name: str,
        decision: Decision,
        jobs: dict[str, JobRecord],
        outcome: Outcome,
    ) -> None:
        """Stop runs and strays, create the run's objects (the caches learn them at once)."""
        current = decision.status.current_run
        for record in jobs.values():
            stopping = decision.stop_run is not None and record.run == decision.stop_run
            stray = record.run != (current.id if current else None) and record.active > 0
            if stopping or stray:
                log.warning(
                    "deleting Job %s/%s (its run %s is not current)",
                    namespace,
                    record.name,
                    record.run,
                )
                self.kube.delete_job(namespace, record.name)
        for manifest in decision.create:
            created, new = self.kube.create(namespace, manifest)
            outcome.found_existing |= not new
            if manifest["kind"] == "Job":
                outcome.jobs.append(JobRecord.of(created))

    def _post(self, body: JSON, decision: Decision) -> None:
        """The decision's events; one that cannot be posted is logged, not fatal."""
        meta = body["metadata"]
        for event in decision.events:
            log.info("%s %s/%s: %s", event.reason, meta["namespace"], meta["name"], event.message)
            if not event.post:
                continue
            try:
                self.kube.post_event(body, event.type, event.reason, event.message)
            except (KubeRefusedError, KubeUnavailableError) as exc:
                log.warning("event %s not posted: %s", event.reason, exc)

    def _write(self, body: JSON, status: ExtractionStatus, outcome: Outcome) -> str:
        """Patch what changed in the status: "written", "unchanged" or "refused"."""
        patch = merge_patch(body.get("status") or {}, status.to_dict())
        if not patch:
            return "unchanged"
        meta = body["metadata"]
        try:
            outcome.resource = self.kube.patch_status(
                meta["namespace"], meta["name"], patch, meta["resourceVersion"]
            )
        except KubeRefusedError as exc:
            RECONCILES.labels("refused").inc()
            log.error("cannot write the status of %s/%s: %s", meta["namespace"], meta["name"], exc)
            with contextlib.suppress(KubeRefusedError, KubeUnavailableError):
                self.kube.post_event(body, "Warning", "StatusNotWritten", str(exc))
            return "refused"
        return "written"


def _may_stall(record: JobRecord) -> bool:
    """A Job that runs but has no ready pod: starting, between pods, or stuck."""
    return not record.complete and not record.failed and record.ready == 0


def _parse_status(body: JSON) -> ExtractionStatus:
    """The stored status; one this operator cannot read is treated as empty (and rewritten)."""
    try:
        return ExtractionStatus.model_validate(body.get("status") or {})
    except ValidationError as exc:
        log.warning(
            "the status of %s/%s is unreadable, starting from an empty one: %s",
            body["metadata"]["namespace"],
            body["metadata"]["name"],
            exc.errors()[0]["msg"],
        )
        return ExtractionStatus()
