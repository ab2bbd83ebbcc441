"""The operator end to end: Helm-installed, under its own ServiceAccount, on the real API server.

The chart is installed exactly as the README says (`helm install` with default values: all
namespaces watched, the chart's image for the operator and for every phase Job, which the
node knows under the chart's default name); the node's kubelet runs the operator pod and every
phase Job pod from the metatide image (built from the Dockerfile by `e2e/cluster up`) under
containerd and runc, as the chart and the operator shape them: user 10001, read-only root, an
emptyDir at /tmp, no capabilities, the projected ServiceAccount token (RBAC applies for real),
env from the Secret and the run's ConfigMap, termination messages and exit codes read by the
Job controller's podFailurePolicy. The sources are the real PostgreSQL and MariaDB and the store
the real MinIO that .ci/run starts on the host's loopback; pods reach them at the node's address
(``cluster.host``), where the harness relays those ports.
"""

from __future__ import annotations

import copy
import io
import json
import shlex
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from localkube.testkit import Cluster, wait_for

from metatide.extractor.cli import faults
from tests.services import (
    create_database,
    create_mysql_database,
    delete_bucket,
    drop_database,
    drop_mysql_database,
    execute_sql,
    fresh_bucket,
    mysql_ca,
    mysql_dsn,
    mysql_execute,
    mysql_ident,
    require_mysql,
    require_postgres,
    require_s3,
    s3_client,
    s3_settings,
)

JSON = dict[str, Any]
REPO = Path(__file__).resolve().parents[1]
RELEASE = "metatide"
RELEASE_NAMESPACE = "metatide"
HELM_INSTALL = "helm install metatide charts/metatide -n metatide --create-namespace"
"""The README's install command, run as written (a test checks the README still says it)."""
CHART_IMAGE = "ghcr.io/metatide/metatide:0.1.0"
PREFIX = "persistent-artifacts/apps/e2e/connection"
GROUP_PATH = "/apis/metatide.dev/v1alpha1"


METRICS_PORT = 8080  # the chart's default: each pod has its own network namespace


def helm(cluster: Cluster, command: str) -> str:
    """A `helm ...` command line run from the repository root with the built helm."""
    args = shlex.split(command)
    assert args[0] == "helm"
    done = subprocess.run(
        [str(cluster.helm_bin), *args[1:]],
        cwd=REPO,
        env=cluster.env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[str]:
    """The chart, installed with the README's command; yields the operator's namespace."""
    if RELEASE in helm(cluster, f"helm list -q -n {RELEASE_NAMESPACE}").split():
        helm(cluster, f"helm uninstall {RELEASE} -n {RELEASE_NAMESPACE}")  # an aborted run's
    helm(cluster, HELM_INSTALL)
    wait_for("the operator pod to run", lambda: running_operator(cluster), timeout=120)
    yield RELEASE_NAMESPACE
    subprocess.run(
        [str(cluster.helm_bin), "uninstall", RELEASE, "-n", RELEASE_NAMESPACE],
        env=cluster.env,
        capture_output=True,
        check=False,
    )


def running_operator(cluster: Cluster) -> JSON | None:
    pods = cluster.pods(RELEASE_NAMESPACE, "app.kubernetes.io/name=metatide")
    running = [
        p
        for p in pods
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]
    return running[0] if running else None


class Source:
    """The test database, changed with plain SQL."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def sql(self, script: str) -> None:
        execute_sql(self.dsn, script)


@pytest.fixture(scope="module")
def world(cluster: Cluster, operator: str) -> Iterator[JSON]:
    """A namespace with the Secret, a database and a bucket (Job pods run as the namespace's
    default ServiceAccount).

    Its pods get the harness's shared folder at /shared (for faults injected once).
    """
    require_postgres()
    require_s3()
    namespace = cluster.create_namespace("ie", shared=True)
    database = f"metatide_e2e_{uuid.uuid4().hex[:8]}"
    dsn = create_database(database)
    source = Source(dsn)
    source.sql(
        "CREATE TABLE t1 (id int PRIMARY KEY, v text); CREATE TABLE t2 (x int);"
        "CREATE TABLE t3 (y text); CREATE VIEW v1 AS SELECT id FROM t1;"
    )
    bucket = fresh_bucket("e2e")
    s3 = s3_settings()
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds", "namespace": namespace},
            "stringData": {
                "dsn": cluster.for_pods(dsn),
                "access": s3.access_key,
                "secret": s3.secret_key,
            },
        },
    )
    yield {
        "namespace": namespace,
        "source": source,
        "bucket": bucket,
        "database": database,
        "s3_endpoint": cluster.for_pods(s3.endpoint),
    }
    cluster.delete_namespace(namespace)
    drop_database(database)
    delete_bucket(bucket)


def resource(name: str, world: JSON, **spec: Any) -> JSON:
    body: JSON = {
        "applicationName": "e2e",
        "connectionId": name,
        "source": {
            "kind": "postgresql",
            "databases": [world["database"]],
            "dsnFrom": {
                "env": "METATIDE_SOURCE_DSN",
                "secretKeyRef": {"name": "creds", "key": "dsn"},
            },
        },
        "storage": {
            "url": f"s3://{world['bucket']}",
            "endpoint": world["s3_endpoint"],
            "secure": False,
            "accessKeyFrom": {
                "env": "AWS_ACCESS_KEY_ID",
                "secretKeyRef": {"name": "creds", "key": "access"},
            },
            "secretKeyFrom": {
                "env": "AWS_SECRET_ACCESS_KEY",
                "secretKeyRef": {"name": "creds", "key": "secret"},
            },
        },
        "columns": {"batchSize": 1, "parallelism": 2},
        "job": {"backoffLimitPerIndex": 2},  # the chart's image, the default ServiceAccount
    }
    for key, value in spec.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    return {
        "apiVersion": "metatide.dev/v1alpha1",
        "kind": "IncrementalExtraction",
        "metadata": {"name": name, "namespace": world["namespace"]},
        "spec": body,
    }


def fault_env(fault: str) -> dict[str, str]:
    """spec.job.env that injects `fault` (see extractor/cli/faults.py): the fault variable and the
    harness variable without which the image ignores it."""
    return {faults.VARIABLE: fault, faults.HARNESS_VARIABLE: "1"}


def status_of(cluster: Cluster, namespace: str, name: str) -> JSON:
    found = cluster.get(f"{GROUP_PATH}/namespaces/{namespace}/incrementalextractions/{name}")
    return (found or {}).get("status") or {}


def condition(status: JSON, kind: str) -> str | None:
    return next((c["status"] for c in status.get("conditions", []) if c["type"] == kind), None)


def wait_status(
    cluster: Cluster,
    namespace: str,
    name: str,
    what: str,
    test: Callable[[JSON], bool],
    timeout: float = 240,
    seen: list[JSON] | None = None,
) -> JSON:
    def probe() -> JSON | None:
        status = status_of(cluster, namespace, name)
        if seen is not None:
            seen.append(status)
        return status if test(status) else None

    return wait_for(
        what,
        probe,
        timeout,
        interval=1.0,
        describe=lambda: (
            json.dumps(status_of(cluster, namespace, name), indent=1)
            + cluster.kubectl("get", "jobs,pods", "-n", namespace, check=False)
            + cluster.kubectl(
                "logs",
                "-n",
                RELEASE_NAMESPACE,
                "-l",
                "app.kubernetes.io/name=metatide",
                "--tail",
                "30",
                check=False,
            )
        ),
    )


def succeeded_after(previous: str | None) -> Callable[[JSON], bool]:
    def test(status: JSON) -> bool:
        last = status.get("lastSuccessfulRun") or {}
        return bool(last.get("id")) and last.get("id") != previous and not status.get("currentRun")

    return test


def read_object(bucket: str, key: str) -> bytes:
    response = s3_client().get_object(bucket, key)
    try:
        return bytes(response.read())
    finally:
        response.close()
        response.release_conn()


def diff_keys(
    bucket: str, connection: str, run_id: str, entity: str, deleted: bool = False
) -> set[str]:
    folder = f"incremental-diff/delete/{entity}" if deleted else f"incremental-diff/{entity}"
    key = f"{PREFIX}/{connection}/runs/{run_id}/{folder}/part-00000.parquet"
    rows = pq.read_table(io.BytesIO(read_object(bucket, key))).to_pylist()
    return {row["table_name"] for row in rows}


def annotate_run(cluster: Cluster, namespace: str, name: str) -> None:
    cluster.kubectl(
        "annotate",
        "--overwrite",
        "-n",
        namespace,
        f"ie/{name}",
        f"metatide.dev/run-requested-at={time.time()}",
    )


def jobs_of_run(cluster: Cluster, namespace: str, run_id: str) -> list[JSON]:
    listed = cluster.api.get(
        f"/apis/batch/v1/namespaces/{namespace}/jobs", labelSelector=f"metatide.dev/run-id={run_id}"
    )
    items: list[JSON] = listed["items"]
    return items


@pytest.fixture(scope="module")
def first_run(cluster: Cluster, world: JSON) -> JSON:
    namespace = world["namespace"]
    cluster.apply(resource("shop", world))
    seen: list[JSON] = []
    status = wait_status(
        cluster, namespace, "shop", "the first run to succeed", succeeded_after(None), seen=seen
    )
    return {"status": status, "seen": seen}


def test_first_run_goes_reconciling_then_ready_and_commits_state(
    cluster: Cluster, world: JSON, first_run: JSON
) -> None:
    states = [condition(s, "Reconciling") for s in first_run["seen"]]
    assert "True" in states
    status = first_run["status"]
    assert condition(status, "Ready") == "True"
    assert condition(status, "Reconciling") == "False"
    assert status["lastSuccessfulRun"]["createdTables"] == 4
    assert status["observedGeneration"] == 1
    manifest = json.loads(
        read_object(world["bucket"], f"{PREFIX}/shop/current-state/_manifest.json")
    )
    marker = read_object(world["bucket"], f"{PREFIX}/shop/marker.txt").decode()
    assert manifest["run_id"] == status["lastSuccessfulRun"]["id"]
    assert marker.endswith("Z")
    for job in jobs_of_run(cluster, world["namespace"], manifest["run_id"]):
        pod = job["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"] == CHART_IMAGE  # the chart's image by default
        assert "serviceAccountName" not in pod or pod["serviceAccountName"] == "default"
    table = cluster.kubectl("get", "ie", "-n", world["namespace"])
    assert "Succeeded" in table.splitlines()[1]
    header = table.splitlines()[0].split()
    assert {"PHASE", "CHANGED", "DELETED"} <= set(header)


def test_a_triggered_run_extracts_exactly_the_changes(
    cluster: Cluster, world: JSON, first_run: JSON
) -> None:
    namespace = world["namespace"]
    before = first_run["status"]["lastSuccessfulRun"]["id"]
    world["source"].sql(
        "ALTER TABLE t1 ADD COLUMN added int; CREATE TABLE t4 (z int); DROP TABLE t3;"
    )
    annotate_run(cluster, namespace, "shop")
    status = wait_status(cluster, namespace, "shop", "the triggered run", succeeded_after(before))
    last = status["lastSuccessfulRun"]
    assert (last["createdTables"], last["updatedTables"], last["deletedTables"]) == (1, 1, 1)
    run_id = last["id"]
    columns = [
        job
        for job in jobs_of_run(cluster, namespace, run_id)
        if job["metadata"]["labels"]["metatide.dev/phase"] == "columns"
    ]
    assert len(columns) == 1
    assert columns[0]["spec"]["completions"] == 2  # batch size 1: t1 and t4
    assert columns[0]["status"]["succeeded"] == 2
    assert diff_keys(world["bucket"], "shop", run_id, "table") == {"t1", "t4"}
    assert diff_keys(world["bucket"], "shop", run_id, "table", deleted=True) == {"t3"}


def test_a_retryable_batch_failure_is_retried_and_the_run_succeeds(
    cluster: Cluster, world: JSON, first_run: JSON
) -> None:
    namespace = world["namespace"]
    before = status_of(cluster, namespace, "shop")["lastSuccessfulRun"]["id"]
    world["source"].sql("ALTER TABLE t2 ADD COLUMN r1 int; ALTER TABLE t4 ADD COLUMN r1 int;")
    # Each attempt is a new pod: the marker lives in the folder every pod of the namespace shares.
    name = f"failed-once-{uuid.uuid4().hex[:8]}"
    marker = cluster.shared / name
    fault = f"columns:1:75:/shared/{name}"
    patch = {"spec": {"job": {"env": fault_env(fault)}}}
    cluster.kubectl("patch", "-n", namespace, "ie/shop", "--type=merge", "-p", json.dumps(patch))
    status = wait_status(
        cluster, namespace, "shop", "the run with a retried batch", succeeded_after(before)
    )
    assert marker.exists()  # the first attempt of batch 1 did fail
    run_id = status["lastSuccessfulRun"]["id"]
    (columns,) = [
        job
        for job in jobs_of_run(cluster, namespace, run_id)
        if job["metadata"]["labels"]["metatide.dev/phase"] == "columns"
    ]
    assert columns["status"]["failed"] >= 1
    assert columns["status"]["succeeded"] == 2


def test_a_terminal_batch_failure_fails_the_run_readably_and_keeps_the_state(
    cluster: Cluster, world: JSON, first_run: JSON
) -> None:
    namespace = world["namespace"]
    manifest_key = f"{PREFIX}/shop/current-state/_manifest.json"
    manifest, marker = (
        read_object(world["bucket"], manifest_key),
        read_object(world["bucket"], f"{PREFIX}/shop/marker.txt"),
    )
    world["source"].sql("ALTER TABLE t2 ADD COLUMN f1 int; ALTER TABLE t4 ADD COLUMN f1 int;")
    patch = {"spec": {"job": {"env": fault_env("columns:0:3")}}}
    cluster.kubectl("patch", "-n", namespace, "ie/shop", "--type=merge", "-p", json.dumps(patch))
    status = wait_status(
        cluster, namespace, "shop", "the run to fail", lambda s: condition(s, "Stalled") == "True"
    )
    assert status["phase"] == "Failed"
    message = next(c["message"] for c in status["conditions"] if c["type"] == "Stalled")
    assert "failed in columns" in message
    assert read_object(world["bucket"], manifest_key) == manifest
    assert read_object(world["bucket"], f"{PREFIX}/shop/marker.txt") == marker
    before = status["lastSuccessfulRun"]["id"]
    cluster.kubectl(
        "patch",
        "-n",
        namespace,
        "ie/shop",
        "--type=json",
        "-p",
        json.dumps([{"op": "remove", "path": "/spec/job/env"}]),
    )
    recovered = wait_status(
        cluster, namespace, "shop", "the next run to succeed", succeeded_after(before)
    )
    assert condition(recovered, "Ready") == "True"
    assert recovered["lastSuccessfulRun"]["updatedTables"] == 2


def test_a_killed_operator_resumes_the_run_once(
    cluster: Cluster, world: JSON, first_run: JSON
) -> None:
    namespace = world["namespace"]
    before = status_of(cluster, namespace, "shop")["lastSuccessfulRun"]["id"]
    world["source"].sql("ALTER TABLE t2 ADD COLUMN k1 int; ALTER TABLE t4 ADD COLUMN k1 int;")
    patch = {"spec": {"job": {"env": fault_env("columns:*:sleep:8")}}}
    cluster.kubectl("patch", "-n", namespace, "ie/shop", "--type=merge", "-p", json.dumps(patch))
    extracting = wait_status(
        cluster,
        namespace,
        "shop",
        "the run to extract columns",
        lambda s: (s.get("currentRun") or {}).get("phase") == "Extracting",
    )
    run_id = extracting["currentRun"]["id"]
    pod = running_operator(cluster)
    assert pod is not None
    cluster.kubectl(
        "delete", "pod", "-n", RELEASE_NAMESPACE, pod["metadata"]["name"], "--wait=false"
    )
    wait_for(
        "a new operator pod",
        lambda: (
            (p := running_operator(cluster)) and p["metadata"]["name"] != pod["metadata"]["name"]
        ),
        timeout=120,
    )
    status = wait_status(cluster, namespace, "shop", "the resumed run", succeeded_after(before))
    assert status["lastSuccessfulRun"]["id"] == run_id
    phases = sorted(
        job["metadata"]["labels"]["metatide.dev/phase"]
        for job in jobs_of_run(cluster, namespace, run_id)
    )
    assert phases == ["columns", "finalize", "plan"]
    assert [entry["id"] for entry in status["history"]].count(run_id) == 1


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"schedule": {"cron": "every minute"}}, "cron"),
        ({"source": {"kind": "mysql"}}, "mysql"),
        ({"columns": {"batchSize": -1}}, "batchSize"),
        (
            {
                "marker": {
                    "format": "%Y-%m-%dT%H:%M:%SZ'; drop table x; --",
                    "default": "1970-01-01T00:00:00Z'; drop table x; --",
                }
            },
            "marker.format",
        ),
        ({"marker": {"format": "%Y-%m-%d", "default": "1970-01-01"}}, "%H"),
    ],
    ids=[
        "bad-cron",
        "unknown-source-kind",
        "negative-batch-size",
        "marker-format-with-sql",
        "marker-format-without-time",
    ],
)
def test_invalid_resources_are_rejected_by_the_api_server(
    cluster: Cluster, world: JSON, change: JSON, expected: str
) -> None:
    body = resource("invalid", world, **change)
    result = subprocess.run(
        [str(cluster.kubectl_bin), "apply", "-f", "-"],
        input=json.dumps(body),
        capture_output=True,
        text=True,
        env=cluster.env,
        check=False,
    )
    assert result.returncode != 0
    assert expected in result.stderr


def test_a_schedule_runs_respects_forbid_and_stops_when_suspended(
    cluster: Cluster, world: JSON, operator: str
) -> None:
    namespace = world["namespace"]
    long_plan = {"env": fault_env("plan:*:sleep:62")}
    cluster.apply(resource("sched", world, schedule={"cron": "* * * * *"}, job=long_plan))
    started = wait_status(
        cluster,
        namespace,
        "sched",
        "a scheduled run to start",
        lambda s: bool(s.get("currentRun")),
        timeout=90,
    )
    assert started["currentRun"]["trigger"] == "schedule"
    first = started["currentRun"]["id"]

    def skipped() -> bool:
        events = cluster.kubectl(
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            "involvedObject.name=sched",
            "-o",
            "json",
        )
        return any(e.get("reason") == "ScheduleSkipped" for e in json.loads(events)["items"])

    wait_for("a tick skipped by Forbid", skipped, timeout=90)
    assert status_of(cluster, namespace, "sched")["currentRun"]["id"] == first
    cluster.kubectl(
        "patch",
        "-n",
        namespace,
        "ie/sched",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"schedule": {"suspend": True}}}),
    )
    done = wait_status(
        cluster,
        namespace,
        "sched",
        "the scheduled run to finish",
        lambda s: not s.get("currentRun"),
        timeout=120,
    )
    count = len(done.get("history", []))
    time.sleep(65)
    after = status_of(cluster, namespace, "sched")
    assert not after.get("currentRun")
    assert len(after.get("history", [])) == count
    assert after.get("nextScheduleTime") is None  # null is removed by the merge patch


def test_metrics_count_the_runs(cluster: Cluster, first_run: JSON, world: JSON) -> None:
    pod = running_operator(cluster)
    assert pod is not None
    url = f"http://{pod['status']['podIP']}:{METRICS_PORT}/metrics"
    with urllib.request.urlopen(url, timeout=10) as page:
        text = page.read().decode()
    counted = [
        line
        for line in text.splitlines()
        if line.startswith("metatide_runs_total{")
        and f'namespace="{world["namespace"]}"' in line
        and 'outcome="Succeeded"' in line
    ]
    assert counted, text[:2000]
    assert all(float(line.rsplit(" ", 1)[1]) >= 1 for line in counted)
    assert "metatide_run_duration_seconds_bucket" in text


@pytest.fixture(scope="module")
def mariadb(cluster: Cluster, world: JSON) -> Iterator[str]:
    """A MariaDB database with two tables and a view; its DSN and CA in a Secret."""
    require_mysql()
    schema = f"mt_e2e_{uuid.uuid4().hex[:8]}"
    create_mysql_database(schema)
    db = mysql_ident(schema)
    mysql_execute(
        f"CREATE TABLE {db}.orders (id int PRIMARY KEY, total decimal(10,2))",
        f"CREATE TABLE {db}.customers (id int, name varchar(80) COMMENT 'who')",
        f"CREATE VIEW {db}.big_orders AS SELECT id FROM {db}.orders WHERE total > 100",
    )
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "mariadb", "namespace": world["namespace"]},
            "stringData": {
                "dsn": cluster.for_pods(mysql_dsn()),
                "ca.crt": Path(mysql_ca()).read_text(),
            },
        }
    )
    yield schema
    drop_mysql_database(schema)


def test_a_resource_reads_mariadb_over_verified_tls(
    cluster: Cluster, world: JSON, mariadb: str
) -> None:
    # The operator knows no source: the spec's secret references (DSN and TLS CA of the
    # mysql kind) reach the pods all the same.
    namespace = world["namespace"]
    body = resource("shop-mariadb", world, marker={"preponeHours": 0})
    body["spec"]["source"] = {
        "kind": "mysql",
        "dsnFrom": {
            "env": "METATIDE_SOURCE_DSN",
            "secretKeyRef": {"name": "mariadb", "key": "dsn"},
        },
        # verify-ca: the pods reach MariaDB at the node's relay address, which the test
        # certificate (made for 127.0.0.1) does not name.
        "tls": {
            "mode": "verify-ca",
            "caFrom": {
                "env": "METATIDE_MYSQL_CA",
                "secretKeyRef": {"name": "mariadb", "key": "ca.crt"},
            },
        },
        "scope": {"include": [{"schema": mariadb}]},
    }
    # DDL times have one-second resolution and a table changed in the marker's own second is
    # read again next run (on purpose): let that second pass before the first run.
    time.sleep(1.1)
    cluster.apply(body)
    first = wait_status(
        cluster, namespace, "shop-mariadb", "the first MariaDB run", succeeded_after(None)
    )
    assert first["lastSuccessfulRun"]["createdTables"] == 3
    mysql_execute(f"ALTER TABLE {mysql_ident(mariadb)}.orders ADD COLUMN shipped datetime")
    before = first["lastSuccessfulRun"]["id"]
    annotate_run(cluster, namespace, "shop-mariadb")
    second = wait_status(
        cluster, namespace, "shop-mariadb", "the second MariaDB run", succeeded_after(before)
    )
    last = second["lastSuccessfulRun"]
    assert (last["updatedTables"], last["unchangedTables"], last["createdTables"]) == (1, 2, 0)
    key = f"{PREFIX}/shop-mariadb/runs/{last['id']}/incremental-diff/table/part-00000.parquet"
    rows = pq.read_table(io.BytesIO(read_object(world["bucket"], key))).to_pylist()
    assert [(r["schema_name"], r["table_name"], r["reason"]) for r in rows] == [
        (mariadb, "orders", "ddl_time_after_marker")
    ]


def test_deleting_a_resource_removes_its_jobs_and_config_maps(
    cluster: Cluster, world: JSON, first_run: JSON
) -> None:
    namespace = world["namespace"]
    selector = "metatide.dev/extraction=shop"

    def leftovers() -> int:
        jobs = cluster.api.get(
            f"/apis/batch/v1/namespaces/{namespace}/jobs", labelSelector=selector
        )
        maps = cluster.api.get(f"/api/v1/namespaces/{namespace}/configmaps", labelSelector=selector)
        return len(jobs["items"]) + len(maps["items"])

    assert leftovers() > 0
    cluster.kubectl("delete", "ie", "shop", "-n", namespace, "--wait=true", timeout=120)
    wait_for("the run objects to be collected", lambda: leftovers() == 0 or None, timeout=120)


# -- the README's steps, as a new user follows them --------------------------------------


def readme_kubernetes_commands() -> list[str]:
    """The command lines of the README's first Kubernetes code block."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## On Kubernetes") :]
    block = section[
        section.index("```sh") + len("```sh") : section.index("```", section.index("```sh") + 5)
    ]
    return [line.split("  #")[0].strip() for line in block.strip().splitlines()]


class JobClock:
    """Polls a namespace's Jobs (every 0.1 s, in a thread) and notes when each was first seen
    and first seen finished: trigger -> Job and Job done -> next Job, to within ~0.1 s."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.created: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> JobClock:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _poll(self) -> None:
        while not self._stop.is_set():
            listed = self.cluster.api.get(f"/apis/batch/v1/namespaces/{self.namespace}/jobs")
            now = time.monotonic()
            for job in listed["items"]:
                phase = job["metadata"]["labels"].get("metatide.dev/phase", "?")
                self.created.setdefault(phase, now)
                conditions = (job.get("status") or {}).get("conditions") or []
                if any(c["type"] == "Complete" and c["status"] == "True" for c in conditions):
                    self.finished.setdefault(phase, now)
            self._stop.wait(0.1)


def test_the_readme_steps_work_as_written(
    cluster: Cluster, operator: str, request: pytest.FixtureRequest
) -> None:
    commands = readme_kubernetes_commands()
    assert commands[:6] == [
        HELM_INSTALL,  # run as written by the `operator` fixture
        "kubectl create namespace shop",
        "kubectl -n shop create secret generic shop-db "
        "--from-literal=dsn='postgresql://reader:...@db:5432/shop'",
        "kubectl -n shop create secret generic shop-metadata-s3 "
        "--from-literal=accessKey=... --from-literal=secretKey=...",
        "kubectl -n shop apply -f examples/incrementalextraction.yaml",
        "kubectl -n shop annotate --overwrite ie/shop "
        'metatide.dev/run-requested-at="$(date -u +%FT%TZ)"',
    ]
    require_postgres()
    require_s3()
    if cluster.get("/api/v1/namespaces/shop") is not None:  # left by an aborted run
        cluster.delete_namespace("shop")
        wait_for(
            "namespace shop to go", lambda: cluster.get("/api/v1/namespaces/shop") is None, 180
        )
    database = f"metatide_readme_{uuid.uuid4().hex[:8]}"
    dsn = create_database(database)
    execute_sql(
        dsn,
        "CREATE TABLE orders (id int PRIMARY KEY, total numeric);"
        "CREATE VIEW big AS SELECT id FROM orders;",
    )
    bucket = fresh_bucket("readme")
    s3 = s3_settings()
    try:
        # The values a user puts in: their database's DSN and their bucket's keys ...
        secrets = {
            "postgresql://reader:...@db:5432/shop": cluster.for_pods(dsn),
            "accessKey=...": f"accessKey={s3.access_key}",
            "secretKey=...": f"secretKey={s3.secret_key}",
        }
        cluster.kubectl(*shlex.split(commands[1])[1:])
        for command in commands[2:4]:
            filled = command
            for placeholder, value in secrets.items():
                filled = filled.replace(placeholder, value)
            cluster.kubectl(*shlex.split(filled)[1:])
        # ... and the example with their endpoint, bucket and database (nothing else changed).
        example = yaml.safe_load((REPO / "examples/incrementalextraction.yaml").read_text())
        edited = copy.deepcopy(example)
        edited["spec"]["storage"]["endpoint"] = cluster.for_pods(s3.endpoint)
        edited["spec"]["storage"]["url"] = f"s3://{bucket}/extractions"
        edited["spec"]["source"]["databases"] = [database]
        cluster.kubectl("-n", "shop", "apply", "-f", "-", stdin=json.dumps(edited))
        pending = wait_status(
            cluster,
            "shop",
            "shop",
            "the operator to see the resource",
            lambda s: bool(s.get("phase")),
            30,
        )
        assert pending["phase"] == "Pending"  # hourly: no run until then, or until asked
        assert pending["nextScheduleTime"]
        with JobClock(cluster, "shop") as clock:
            requested = time.monotonic()
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            annotate = commands[5].replace('"$(date -u +%FT%TZ)"', stamp)
            cluster.kubectl(*shlex.split(annotate)[1:])
            status = wait_status(
                cluster, "shop", "shop", "the requested run", succeeded_after(None)
            )
        assert condition(status, "Ready") == "True"
        assert status["lastSuccessfulRun"]["createdTables"] == 2
        assert status["history"][-1]["trigger"] == "manual"
        described = cluster.kubectl("-n", "shop", "describe", "ie", "shop")
        assert "RunSucceeded" in described
        latency = {"annotation -> plan Job": clock.created["plan"] - requested}
        after_plan = "columns" if "columns" in clock.created else "finalize"
        latency[f"plan done -> {after_plan} Job"] = (
            clock.created[after_plan] - clock.finished["plan"]
        )
        if "columns" in clock.created:
            latency["columns done -> finalize Job"] = (
                clock.created["finalize"] - clock.finished["columns"]
            )
        for what, seconds in latency.items():
            request.node.user_properties.append(("latency", f"{what}: {seconds:.2f} s"))
        assert all(seconds <= 2.5 for seconds in latency.values()), latency
    finally:
        cluster.delete_namespace("shop")
        drop_database(database)
        delete_bucket(bucket)


def warning_events(cluster: Cluster, namespace: str, name: str) -> list[JSON]:
    listed = cluster.api.get(
        f"/api/v1/namespaces/{namespace}/events",
        fieldSelector=f"involvedObject.name={name},type=Warning",
    )
    items: list[JSON] = listed["items"]
    return items


def stalled_with(text: str) -> Callable[[JSON], bool]:
    def test(status: JSON) -> bool:
        stalled = next((c for c in status.get("conditions", []) if c["type"] == "Stalled"), {})
        return stalled.get("status") == "True" and text in stalled.get("message", "")

    return test


def test_a_missing_service_account_is_reported_within_seconds(
    cluster: Cluster, world: JSON
) -> None:
    namespace = world["namespace"]
    body = resource("no-sa", world, job={"serviceAccountName": "bucket-reader"})
    applied = time.monotonic()
    cluster.apply(body)
    status = wait_status(
        cluster,
        namespace,
        "no-sa",
        "Stalled naming the missing ServiceAccount",
        stalled_with('serviceaccount "bucket-reader" not found'),
        timeout=45,
    )
    seconds = time.monotonic() - applied
    assert seconds < 20, f"took {seconds:.1f} s"
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "FailedCreate"
    assert condition(status, "Reconciling") == "True"
    assert status["currentRun"]["blocked"]["reason"] == "FailedCreate"
    events = warning_events(cluster, namespace, "no-sa")
    assert any("bucket-reader" in e["message"] for e in events), events
    # Creating it lets the run go on; the resource says so.
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "bucket-reader", "namespace": namespace},
            "automountServiceAccountToken": False,
        }
    )
    done = wait_status(
        cluster, namespace, "no-sa", "the run after the fix", succeeded_after(None), 240
    )
    assert condition(done, "Stalled") == "False"
    cluster.kubectl("delete", "ie", "no-sa", "-n", namespace, "--wait=false")


def test_api_errors_stall_the_resource_with_the_apis_message_and_never_crash(
    cluster: Cluster, world: JSON, operator: str
) -> None:
    namespace = world["namespace"]
    # An RBAC that lacks one verb: the operator may not create Jobs.
    role_path = f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{RELEASE}"
    original = cluster.api.get(role_path)["rules"]
    lacking = copy.deepcopy(original)
    for rule in lacking:
        if "jobs" in rule["resources"]:
            rule["verbs"] = [verb for verb in rule["verbs"] if verb != "create"]
    cluster.api.patch(role_path, {"rules": lacking})
    try:
        cluster.apply(resource("no-rbac", world))
        status = wait_status(
            cluster,
            namespace,
            "no-rbac",
            "Stalled with the API's words",
            stalled_with('cannot create resource "jobs"'),
            timeout=45,
        )
        stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
        assert stalled["reason"] == "Forbidden"
        assert any(
            "forbidden" in e["message"] for e in warning_events(cluster, namespace, "no-rbac")
        )
    finally:
        cluster.api.patch(role_path, {"rules": original})
    wait_status(
        cluster, namespace, "no-rbac", "the run once the verb is back", succeeded_after(None), 240
    )
    # An object the API rejects as invalid says so too.
    limits = {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}  # requests > limits
    cluster.apply(resource("invalid-job", world, job={"resources": limits}))
    invalid = wait_status(
        cluster,
        namespace,
        "invalid-job",
        "Stalled as Invalid",
        stalled_with("must be less than or equal to memory limit"),
        45,
    )
    assert next(c for c in invalid["conditions"] if c["type"] == "Stalled")["reason"] == "Invalid"
    pod = running_operator(cluster)
    assert pod is not None
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0  # never a crash loop
    for name in ("no-rbac", "invalid-job"):
        cluster.kubectl("delete", "ie", name, "-n", namespace, "--wait=false")
