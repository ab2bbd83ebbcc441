"""Benchmark the operator at fleet scale: 300 IncrementalExtractions on a real API server.

A private etcd + kube-apiserver (bench/_apiserver.py: no controller manager, no scheduler, no
node) holds the CRD and the resources; `metatide operator` runs as a process of this machine
against it. What a cluster would add is simulated here, through the API, by this script:

- **The Job controller and the kubelet.** A watch on the operator's Jobs sees each Job
  created; `--phase-seconds` later the script creates a pod for it with the phase's
  termination message (plan: a `PlanResult` with one batch; finalize: a `RunSummary`, both
  built with the engine's own models) and patches the Job's status to Complete. Running 900
  real pods a minute on a 2-core machine shared with other work would measure the node, not
  the operator; the operator's requests are the same either way (it reads Job status from its
  watch and the termination message from the Job's pods).
- **Triggers.** Runs start by the run-now annotation, 300 spread evenly over `--wave-seconds`
  (the load a fleet with staggered schedules puts on the operator; cron cannot stagger within
  a minute), then by schedule, all 300 due at the same minute (the worst case).

Measured: the operator's peak RSS and CPU; API requests per second by verb, from the API
server's ``apiserver_request_total`` (minus this script's own requests, which it counts, and
minus a baseline taken before the operator starts: the API server's own loopback clients),
cross-checked with the operator's ``metatide_operator_api_requests_total``; etcd writes per
minute (``etcd_server_proposals_committed_total``, ``etcd_mvcc_put_total``); p50/p95 latency
from trigger to plan Job created and from a Job's completion to the next phase's Job.

    .venv/bin/python bench/operator_fleet.py [--resources 300] [--idle-seconds 360]

Targets: idle fleet 0 status writes per minute and < 1 request per second in total; operator
RSS <= 200 MiB at 300 resources; p95 trigger -> Job <= 5 s.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _apiserver import Client, ControlPlane, metrics, plain_metric
from _common import REPO_DIR, child_env, cli, machine, table, update_results
from localkube.testkit import wait_for  # on sys.path through _apiserver

from metatide.extractor.core.documents import PlanResult, RunSummary

JSON = dict[str, Any]
GROUP_PATH = "/apis/metatide.dev/v1alpha1"
MANAGED = "app.kubernetes.io/managed-by=metatide-operator"
FIXTURE = REPO_DIR / "tests" / "fixtures" / "documents" / "finalize-result.jsonl"
TARGETS = {"idle_status_writes_per_minute": 0, "idle_requests_per_second": 1.0, "rss_mib": 200}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- what this script does to the API (counted, so it can be subtracted) ------------------


def setup(client: Client, resources: int, namespaces: int) -> list[tuple[str, str]]:
    """The CRD, namespaces (with the default ServiceAccount pods need) and the resources."""
    crd = yaml.safe_load((REPO_DIR / "crds/incrementalextractions.metatide.dev.yaml").read_text())
    client.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    wait_for(
        "the CRD to be served",
        lambda: _served(client),
        60,
    )
    names = [f"bench-{index:02d}" for index in range(namespaces)]
    for namespace in names:
        client.request("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
        client.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts",
            {"metadata": {"name": "default"}},
        )
    far = datetime.now(UTC) + timedelta(hours=12)
    keys = []
    for index in range(resources):
        namespace, name = names[index % namespaces], f"db-{index:04d}"
        body = {
            "apiVersion": "metatide.dev/v1alpha1",
            "kind": "IncrementalExtraction",
            "metadata": {"name": name, "namespace": namespace},
            "spec": _spec(name, f"{index % 60} {far.hour} * * *"),
        }
        client.request("POST", f"{GROUP_PATH}/namespaces/{namespace}/incrementalextractions", body)
        keys.append((namespace, name))
    return keys


def _served(client: Client) -> bool:
    try:
        client.request("GET", f"{GROUP_PATH}/incrementalextractions", verb="LIST")
    except RuntimeError:
        return False
    return True


def _spec(name: str, cron: str) -> JSON:
    secret = {"name": "db", "key": "dsn"}
    return {
        "applicationName": "fleet",
        "connectionId": name,
        "source": {
            "kind": "postgresql",
            "dsnFrom": {"env": "METATIDE_SOURCE_DSN", "secretKeyRef": secret},
        },
        "storage": {"url": "s3://fleet/extractions", "endpoint": "minio:9000"},
        "schedule": {"cron": cron, "timeZone": "UTC"},
    }


def fleet(client: Client) -> list[JSON]:
    items: list[JSON] = client.request("GET", f"{GROUP_PATH}/incrementalextractions", verb="LIST")[
        "items"
    ]
    return items


# -- the simulated Job controller and kubelet ---------------------------------------------


@dataclass
class Simulator:
    """Completes the operator's Jobs `phase_seconds` after it sees them, and times it."""

    client: Client
    phase_seconds: float
    seen: dict[str, float] = field(default_factory=dict)  # job name -> first seen
    completed: dict[tuple[str, str, str], float] = field(default_factory=dict)  # ns, run, phase
    next_job: list[float] = field(default_factory=list)  # completion -> next phase's Job
    plan_seen: dict[tuple[str, str], float] = field(default_factory=dict)  # ns, resource
    errors: list[str] = field(default_factory=list)
    _due: list[tuple[float, int, JSON]] = field(default_factory=list)
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _stop: threading.Event = field(default_factory=threading.Event)
    _order: int = 0

    def start(self, workers: int = 4) -> None:
        threading.Thread(target=self._watch, daemon=True, name="sim-watch").start()
        for index in range(workers):
            threading.Thread(target=self._complete, daemon=True, name=f"sim-{index}").start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()

    def _watch(self) -> None:
        while not self._stop.is_set():
            query = {"watch": "true", "labelSelector": MANAGED, "timeoutSeconds": "3600"}
            try:
                for event in self.client.stream("/apis/batch/v1/jobs", query):
                    if event["type"] == "ADDED":
                        self._added(event["object"], time.monotonic())
            except Exception as exc:  # noqa: BLE001 - the server went away (end of the run)
                if not self._stop.is_set():
                    self.errors.append(f"watch: {exc}")
                    time.sleep(1)

    def _added(self, job: JSON, now: float) -> None:
        meta = job["metadata"]
        labels = meta["labels"]
        self.seen.setdefault(meta["name"], now)
        phase, run = labels["metatide.dev/phase"], labels["metatide.dev/run-id"]
        previous = {"columns": "plan", "finalize": "columns"}.get(phase)
        done = self.completed.get((meta["namespace"], run, previous or ""))
        if done is not None:
            self.next_job.append(now - done)
        if phase == "plan":
            self.plan_seen.setdefault((meta["namespace"], labels["metatide.dev/extraction"]), now)
        with self._lock:
            self._order += 1
            heapq.heappush(self._due, (now + self.phase_seconds, self._order, job))
            self._lock.notify()

    def _complete(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                while not self._stop.is_set() and (
                    not self._due or self._due[0][0] > time.monotonic()
                ):
                    timeout = self._due[0][0] - time.monotonic() if self._due else None
                    self._lock.wait(timeout)
                if self._stop.is_set():
                    return
                _, _, job = heapq.heappop(self._due)
            try:
                self._finish(job)
            except Exception as exc:  # noqa: BLE001 - reported with the figures
                self.errors.append(f"{job['metadata']['name']}: {exc}")

    def _finish(self, job: JSON) -> None:
        meta = job["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        labels = meta["labels"]
        phase, run = labels["metatide.dev/phase"], labels["metatide.dev/run-id"]
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if phase in ("plan", "finalize"):
            self._pod(namespace, name, phase, _message(phase, run), stamp)
        completions = int(job["spec"].get("completions") or 1)
        status: JSON = {
            "startTime": stamp,
            "completionTime": stamp,
            "active": 0,
            "ready": 0,
            "terminating": 0,
            "succeeded": completions,
            "uncountedTerminatedPods": {},
            "conditions": [
                _condition("SuccessCriteriaMet", stamp),
                _condition("Complete", stamp),
            ],
        }
        if job["spec"].get("completionMode") == "Indexed":
            status["completedIndexes"] = "0" if completions == 1 else f"0-{completions - 1}"
        self.client.request(
            "PATCH",
            f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )
        self.completed[(namespace, run, phase)] = time.monotonic()

    def _pod(self, namespace: str, job: str, phase: str, message: str, stamp: str) -> None:
        pod = {
            "metadata": {"name": f"{job}-sim", "labels": {"batch.kubernetes.io/job-name": job}},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "containers": [{"name": phase, "image": "simulated"}],
            },
        }
        self.client.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
        terminated = {
            "exitCode": 0,
            "reason": "Completed",
            "message": message,
            "startedAt": stamp,
            "finishedAt": stamp,
        }
        status = {
            "phase": "Succeeded",
            "containerStatuses": [
                {
                    "name": phase,
                    "image": "simulated",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"terminated": terminated},
                }
            ],
        }
        self.client.request(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{job}-sim/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )


def _condition(kind: str, stamp: str) -> JSON:
    return {
        "type": kind,
        "status": "True",
        "reason": "CompletionsReached",
        "message": "Reached expected number of succeeded pods",
        "lastProbeTime": stamp,
        "lastTransitionTime": stamp,
    }


_SUMMARY = RunSummary.model_validate_json(FIXTURE.read_text())


def _message(phase: str, run: str) -> str:
    """The termination message the phase leaves, built with the engine's models."""
    if phase == "plan":
        return PlanResult(
            run_id=run,
            batch_count=1,
            full_extraction=False,
            tables_total=3,
            tables_by_state={"CREATED": 1, "UPDATED": 0, "NO CHANGE": 2, "BACKFILL": 0},
            tables_by_reason={"new_after_marker": 1, "unchanged": 2},
            tables_deleted={"dropped": 0, "out_of_scope": 0},
            tables_to_extract=1,
            marker_used=datetime(2026, 1, 1, tzinfo=UTC),
            next_marker=datetime.now(UTC).replace(microsecond=0),
            duration_seconds=0.1,
        ).termination_message()
    return _SUMMARY.model_copy(update={"run_id": run}).termination_message()


# -- the operator process ---------------------------------------------------------------


@dataclass
class Operator:
    """`metatide operator` as a process of this machine, sampled for RSS and CPU."""

    process: subprocess.Popen[bytes]
    metrics_url: str
    peak_rss: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def start(cls, kubeconfig: Path, log: Path, resync: float, workers: int) -> Operator:
        port, health = free_port(), free_port()
        argv = [
            cli(),
            "operator",
            f"--metrics-port={port}",
            "--metrics-address=127.0.0.1",
            f"--health-port={health}",
            "--health-address=127.0.0.1",
            f"--resync-seconds={resync}",
            f"--workers={workers}",
            "--job-image=ghcr.io/metatide/metatide:0.1.0",
        ]
        env = child_env({"KUBECONFIG": str(kubeconfig), "METATIDE_LOG_FORMAT": "json"})
        with log.open("wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        operator = cls(process, f"http://127.0.0.1:{port}/metrics")
        threading.Thread(target=operator._sample, daemon=True).start()
        return operator

    def _sample(self) -> None:
        process = psutil.Process(self.process.pid)
        while not self._stop.is_set() and self.process.poll() is None:
            self.peak_rss = max(self.peak_rss, process.memory_info().rss)
            self._stop.wait(0.25)

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        return int(psutil.Process(self.process.pid).memory_info().rss)

    def requests(self, pool: Any) -> Counter[str]:
        """The operator's own count of its API requests, by verb."""
        text = pool.request("GET", self.metrics_url).data.decode()
        counted: Counter[str] = Counter()
        for labels, value in metrics(text, "metatide_operator_api_requests_total"):
            counted[labels["verb"]] += int(value)
        return counted

    def stop(self) -> None:
        self._stop.set()
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


# -- measuring windows --------------------------------------------------------------------


@dataclass
class Reading:
    """Counters at one moment: the API server's requests by verb and resource, etcd's writes."""

    at: float
    requests: Counter[tuple[str, str]]
    proposals: float
    puts: float


def read(client: Client, plane: ControlPlane, pool: Any) -> Reading:
    text = client.text("/metrics")
    requests: Counter[tuple[str, str]] = Counter()
    for labels, value in metrics(text, "apiserver_request_total"):
        if not labels.get("resource"):
            continue  # non-resource URLs: /metrics, /readyz, discovery
        resource = labels["resource"] + (
            "/" + labels["subresource"] if labels.get("subresource") else ""
        )
        requests[(labels["verb"], resource)] += int(value)
    etcd = pool.request("GET", plane.etcd_metrics).data.decode()
    return Reading(
        time.monotonic(),
        requests,
        plain_metric(etcd, "etcd_server_proposals_committed_total"),
        plain_metric(etcd, "etcd_mvcc_put_total"),
    )


def delta(before: Reading, after: Reading, ours: Counter[str]) -> JSON:
    """Requests by verb (and resource) between two readings, minus this script's own."""
    seconds = after.at - before.at
    by_key = after.requests - before.requests
    by_verb: Counter[str] = Counter()
    for (verb, _), count in by_key.items():
        by_verb[verb] += count
    by_verb.subtract(ours)
    minutes = seconds / 60
    return {
        "seconds": round(seconds, 1),
        "requests_by_verb": {verb: count for verb, count in sorted(by_verb.items()) if count},
        "requests_by_resource": {
            f"{verb} {resource}": count for (verb, resource), count in sorted(by_key.items())
        },
        "requests_per_second": round(sum(by_verb.values()) / seconds, 3),
        "status_writes_per_minute": round(
            by_key[("PATCH", "incrementalextractions/status")] / minutes, 2
        ),
        "etcd_proposals_per_minute": round((after.proposals - before.proposals) / minutes, 1),
        "etcd_puts_per_minute": round((after.puts - before.puts) / minutes, 1),
    }


def quantiles(values: list[float]) -> JSON:
    if len(values) < 2:
        return {"n": len(values)}
    cuts = statistics.quantiles(values, n=100)
    return {
        "n": len(values),
        "p50_s": round(statistics.median(values), 3),
        "p95_s": round(cuts[94], 3),
        "max_s": round(max(values), 3),
    }


def settled(operator: Operator, pool: Any, quiet_seconds: float = 10.0) -> bool:
    """True once the operator has made no request for `quiet_seconds`."""
    first = sum(operator.requests(pool).values())
    time.sleep(quiet_seconds)
    return sum(operator.requests(pool).values()) == first


def all_succeeded(client: Client, since: dict[str, str]) -> bool:
    items = fleet(client)
    return all(
        (item.get("status") or {}).get("lastSuccessfulRun", {}).get("id")
        not in (None, since.get(item["metadata"]["name"]))
        and not (item.get("status") or {}).get("currentRun")
        for item in items
    )


def last_runs(client: Client) -> dict[str, str]:
    return {
        item["metadata"]["name"]: ((item.get("status") or {}).get("lastSuccessfulRun") or {}).get(
            "id", ""
        )
        for item in fleet(client)
    }


# -- the benchmark ------------------------------------------------------------------------


def run_waves(
    args: argparse.Namespace,
    client: Client,
    plane: ControlPlane,
    operator: Operator,
    keys: list[tuple[str, str]],
    pool: Any,
) -> JSON:
    driver = plane.client()
    simulator = Simulator(plane.client(), args.phase_seconds)
    simulator.start()
    results: JSON = {}
    # Wave 1: the run-now annotation, spread evenly over the wave.
    before_runs = last_runs(client)
    start_cpu, before = operator.cpu_seconds(), read(client, plane, pool)
    triggered: dict[tuple[str, str], float] = {}
    spacing = args.wave_seconds / len(keys)
    began = time.monotonic()
    for index, (namespace, name) in enumerate(keys):
        time.sleep(max(began + index * spacing - time.monotonic(), 0))
        triggered[(namespace, name)] = time.monotonic()
        driver.request(
            "PATCH",
            f"{GROUP_PATH}/namespaces/{namespace}/incrementalextractions/{name}",
            {"metadata": {"annotations": {"metatide.dev/run-requested-at": f"wave-{index}"}}},
            content_type="application/merge-patch+json",
        )
    wait_for("every triggered run to succeed", lambda: all_succeeded(driver, before_runs), 900, 2)
    after = read(client, plane, pool)
    ours = driver.counts + simulator.client.counts
    results["annotation_wave"] = {
        **delta(before, after, ours),
        "operator_cpu_seconds": round(operator.cpu_seconds() - start_cpu, 1),
        "trigger_to_plan_job": quantiles(
            [
                simulator.plan_seen[key] - at
                for key, at in triggered.items()
                if key in simulator.plan_seen
            ]
        ),
        "job_done_to_next_job": quantiles(simulator.next_job),
        "simulator_errors": simulator.errors[:5],
    }
    print(json.dumps(results["annotation_wave"], indent=1), flush=True)
    if args.skip_schedule_wave:
        simulator.stop()
        return results
    # Wave 2: every resource's schedule due at the same minute.
    settled(operator, pool)
    simulator.next_job.clear()
    simulator.plan_seen.clear()
    due = (datetime.now(UTC) + timedelta(seconds=75)).replace(second=0, microsecond=0)
    for namespace, name in keys:
        driver.request(
            "PATCH",
            f"{GROUP_PATH}/namespaces/{namespace}/incrementalextractions/{name}",
            {"spec": {"schedule": {"cron": f"{due.minute} {due.hour} * * *"}}},
            content_type="application/merge-patch+json",
        )
    before_runs = last_runs(driver)
    seconds_to_due = (due - datetime.now(UTC)).total_seconds()
    time.sleep(max(seconds_to_due - 5, 0))
    start_cpu, before = operator.cpu_seconds(), read(client, plane, pool)
    counts_before = driver.counts + simulator.client.counts
    due_monotonic = time.monotonic() + (due - datetime.now(UTC)).total_seconds()
    wait_for("every scheduled run to succeed", lambda: all_succeeded(driver, before_runs), 900, 2)
    after = read(client, plane, pool)
    ours = (driver.counts + simulator.client.counts) - counts_before
    results["schedule_burst"] = {
        **delta(before, after, ours),
        "operator_cpu_seconds": round(operator.cpu_seconds() - start_cpu, 1),
        "scheduled_time_to_plan_job": quantiles(
            [seen - due_monotonic for seen in simulator.plan_seen.values()]
        ),
        "job_done_to_next_job": quantiles(simulator.next_job),
        "simulator_errors": simulator.errors[:5],
    }
    print(json.dumps(results["schedule_burst"], indent=1), flush=True)
    simulator.stop()
    return results


def benchmark(args: argparse.Namespace, plane: ControlPlane) -> JSON:
    import urllib3

    pool = urllib3.PoolManager()
    client = plane.client()
    keys = setup(client, args.resources, args.namespaces)
    print(f"{len(keys)} resources in {args.namespaces} namespaces; baseline ...", flush=True)
    time.sleep(5)
    before = read(client, plane, pool)
    time.sleep(args.baseline_seconds)
    baseline = delta(before, read(client, plane, pool), Counter())
    log = Path(plane.state).parent / f"metatide-bench-operator-{os.getpid()}.log"
    started = time.monotonic()
    operator = Operator.start(plane.admin_kubeconfig, log, args.resync_seconds, args.workers)
    results: JSON = {"baseline_without_operator": baseline, "operator_log": str(log)}
    try:
        wait_for(
            "every resource to get a status",
            lambda: all((item.get("status") or {}).get("phase") for item in fleet(client)),
            300,
            1,
        )
        results["startup_seconds_to_all_statuses"] = round(time.monotonic() - started, 1)
        wait_for("the operator to settle", lambda: settled(operator, pool), 300, 0)
        print(f"operator up and settled; idle window of {args.idle_seconds} s ...", flush=True)
        start_cpu, start_requests = operator.cpu_seconds(), operator.requests(pool)
        before = read(client, plane, pool)
        loads = [os.getloadavg()[0]]
        end = time.monotonic() + args.idle_seconds
        while time.monotonic() < end:
            time.sleep(min(30, max(end - time.monotonic(), 0)))
            loads.append(os.getloadavg()[0])
        idle = delta(before, read(client, plane, pool), Counter())
        idle["operator_requests_by_verb"] = dict(operator.requests(pool) - start_requests)
        idle["operator_cpu_seconds"] = round(operator.cpu_seconds() - start_cpu, 2)
        idle["operator_rss_mib"] = round(operator.rss() / 2**20, 1)
        idle["loadavg_1m_min_max"] = [round(min(loads), 2), round(max(loads), 2)]
        idle["requests_per_second_minus_baseline"] = round(
            idle["requests_per_second"] - baseline["requests_per_second"], 3
        )
        results["idle"] = idle
        print(json.dumps(idle, indent=1), flush=True)
        results.update(run_waves(args, client, plane, operator, keys, pool))
        results["operator_requests_total_by_verb"] = dict(operator.requests(pool))
        results["operator_peak_rss_mib"] = round(operator.peak_rss / 2**20, 1)
        results["operator_rss_end_mib"] = round(operator.rss() / 2**20, 1)
    finally:
        operator.stop()
    return results


def report(results: JSON, args: argparse.Namespace) -> None:
    idle = results["idle"]
    rows = [
        ("idle: status writes / min", idle["status_writes_per_minute"], "0"),
        (
            "idle: requests / s (minus baseline)",
            idle["requests_per_second_minus_baseline"],
            "< 1",
        ),
        (
            "idle: etcd proposals / min (baseline)",
            f"{idle['etcd_proposals_per_minute']} "
            f"({results['baseline_without_operator']['etcd_proposals_per_minute']})",
            "",
        ),
        ("operator peak RSS MiB", results["operator_peak_rss_mib"], "<= 200"),
    ]
    for wave, latency in (
        ("annotation_wave", "trigger_to_plan_job"),
        ("schedule_burst", "scheduled_time_to_plan_job"),
    ):
        if wave not in results:
            continue
        figures = results[wave]
        rows.append((f"{wave}: trigger -> plan Job p50/p95 s", _pq(figures[latency]), "p95 <= 5"))
        rows.append(
            (f"{wave}: Job done -> next Job p50/p95 s", _pq(figures["job_done_to_next_job"]), "")
        )
        rows.append((f"{wave}: requests / s", figures["requests_per_second"], ""))
        rows.append((f"{wave}: operator CPU s", figures["operator_cpu_seconds"], ""))
    print(table(["figure", "measured", "target"], rows))


def _pq(figures: JSON) -> str:
    return f"{figures.get('p50_s')} / {figures.get('p95_s')} (n={figures.get('n')})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resources", type=int, default=300)
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--baseline-seconds", type=float, default=120)
    parser.add_argument("--idle-seconds", type=float, default=360)
    parser.add_argument("--wave-seconds", type=float, default=60)
    parser.add_argument("--phase-seconds", type=float, default=1.0)
    parser.add_argument("--resync-seconds", type=float, default=300)
    parser.add_argument("--workers", type=int, default=4, help="the operator's --workers")
    parser.add_argument("--skip-schedule-wave", action="store_true")
    args = parser.parse_args()
    host = machine()
    print(f"machine: {host}", flush=True)
    plane = ControlPlane.start()
    try:
        results = benchmark(args, plane)
    finally:
        plane.stop()
    results["machine_at_end"] = machine()
    results["parameters"] = vars(args)
    report(results, args)
    print(f"results in {update_results('operator_fleet', results)}")


if __name__ == "__main__":
    main()
