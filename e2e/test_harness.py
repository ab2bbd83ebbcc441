"""Self-tests of the local cluster: the behaviours the operator's e2e tests rely on.

Everything here is real: the API server and controllers, the scheduler, and a node whose kubelet
runs each pod from the metatide image under containerd and runc. The pods use the image's shell
(Debian's dash) and Python for their probes.
"""

from __future__ import annotations

import base64
import os
import subprocess
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from localkube import node
from localkube.testkit import Cluster, wait_for

JSON = dict[str, Any]
IMAGE = "metatide:e2e"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
WRITE_MESSAGE = 'printf "%s" "$1" > /dev/termination-log'
TMP_VOLUME = {"volumes": [{"name": "tmp", "emptyDir": {}}]}
TMP_MOUNT = {"volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}


def _container(name: str, script: str, **fields: Any) -> JSON:
    """A container of the metatide image running ``sh -c script``."""
    return {
        "name": name,
        "image": IMAGE,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", script],
    } | fields


def _pod(namespace: str, name: str, *containers: JSON, **spec: Any) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"restartPolicy": "Never", "containers": list(containers)} | spec,
    }


def _job(namespace: str, name: str, script: str, **spec: Any) -> JSON:
    """An Indexed Job whose pods run ``sh -c script`` in the metatide image."""
    template = {"spec": {"restartPolicy": "Never", "containers": [_container("work", script)]}}
    body = {"completionMode": "Indexed", "template": template} | spec
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def _terminated(pod: JSON) -> JSON:
    terminated: JSON = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    return terminated


def _condition(obj: JSON, kind: str) -> JSON | None:
    return next((c for c in obj["status"].get("conditions", []) if c["type"] == kind), None)


def test_indexed_job_runs_every_index_with_its_own_completion_index(
    cluster: Cluster, namespace: str
) -> None:
    script = f'set -- "$JOB_COMPLETION_INDEX"; {WRITE_MESSAGE}; sleep 1'
    cluster.apply(_job(namespace, "indexed", script, completions=5, parallelism=2))

    job = cluster.wait_for_job(namespace, "indexed", timeout=180)

    assert (_condition(job, "Complete") or {}).get("status") == "True", job["status"]
    assert job["status"]["succeeded"] == 5
    assert job["status"]["completedIndexes"] == "0-4"
    pods = cluster.pods(namespace, "job-name=indexed")
    seen = {
        pod["metadata"]["annotations"][INDEX_ANNOTATION]: _terminated(pod).get("message")
        for pod in pods
    }
    assert seen == {str(i): str(i) for i in range(5)}, (
        "each container must see its own JOB_COMPLETION_INDEX"
    )


def test_fail_index_rule_fails_an_index_at_once_and_others_use_their_retries(
    cluster: Cluster, namespace: str
) -> None:
    script = 'case "$JOB_COMPLETION_INDEX" in 1) exit 42;; 2) exit 3;; esac'
    job = _job(
        namespace,
        "per-index",
        script,
        completions=3,
        parallelism=3,
        backoffLimitPerIndex=1,
        podFailurePolicy={
            "rules": [{"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [42]}}]
        },
    )
    cluster.apply(job)

    finished = cluster.wait_for_job(namespace, "per-index", timeout=240)

    failed = _condition(finished, "Failed") or {}
    assert failed.get("status") == "True", finished["status"]
    assert failed.get("reason") == "FailedIndexes", finished["status"]
    assert finished["status"]["failedIndexes"] == "1,2"
    assert finished["status"]["completedIndexes"] == "0"
    pods = cluster.pods(namespace, "job-name=per-index")
    attempts = Counter(pod["metadata"]["annotations"][INDEX_ANNOTATION] for pod in pods)
    assert attempts == {"0": 1, "1": 1, "2": 2}, (
        "FailIndex must not retry; index 2 gets backoffLimitPerIndex=1 retry"
    )
    codes = {
        (p["metadata"]["annotations"][INDEX_ANNOTATION], _terminated(p)["exitCode"]) for p in pods
    }
    assert codes == {("0", 0), ("1", 42), ("2", 3)}


PROBE = r"""
import http.client, json, os, ssl
account = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(f"{account}/token").read()
namespace = open(f"{account}/namespace").read()
context = ssl.create_default_context(cafile=f"{account}/ca.crt")
host, port = os.environ["KUBERNETES_SERVICE_HOST"], int(os.environ["KUBERNETES_SERVICE_PORT"])
codes = []
for resource in ("pods", "secrets"):
    connection = http.client.HTTPSConnection(host, port, context=context)
    connection.request("GET", f"/api/v1/namespaces/{namespace}/{resource}",
                       headers={"Authorization": "Bearer " + token})
    response = connection.getresponse()
    body = json.loads(response.read())
    codes.append(f"{resource}={response.status}")
print(body.get("message", ""))
open("/dev/termination-log", "w").write(" ".join(codes))
"""


def test_service_account_token_reaches_the_api_server_and_rbac_applies(
    cluster: Cluster, namespace: str
) -> None:
    """The projected token, the CA and the kubernetes Service's address, as in-cluster clients
    (kopf, the Python client) use them."""
    rule = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "reader", "namespace": namespace},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "pod-reader", "namespace": namespace},
            "rules": [rule],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "reader", "namespace": namespace},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pod-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    probe = {
        "name": "probe",
        "image": IMAGE,
        "imagePullPolicy": "Never",
        "command": ["python", "-c", PROBE],
    }
    cluster.apply(_pod(namespace, "probe", probe, serviceAccountName="reader"))

    pod = cluster.wait_for_pod(namespace, "probe", ("Succeeded", "Failed"))

    assert _terminated(pod).get("message") == "pods=200 secrets=403", cluster.kubectl(
        "logs", "-n", namespace, "probe"
    )
    logs = cluster.kubectl("logs", "-n", namespace, "probe")
    assert f'"system:serviceaccount:{namespace}:reader" cannot list resource "secrets"' in logs


def test_env_from_secret_configmap_and_downward_api_and_exit_status(
    cluster: Cluster, namespace: str
) -> None:
    script = f'set -- "$PASSWORD|$MODE|$RUN|$GREETING|$CM_mode"; {WRITE_MESSAGE}; exit 7'
    env = [
        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
        {
            "name": "RUN",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['metatide.dev/run']"}},
        },
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "GREETING", "value": "hello $(POD)"},
    ]
    container = _container(
        "main",
        script,
        env=env,
        envFrom=[{"prefix": "CM_", "configMapRef": {"name": "settings"}}],
    )
    pod = _pod(namespace, "envpod", container)
    pod["metadata"]["annotations"] = {"metatide.dev/run": "r-1"}
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": namespace},
            "data": {"mode": "fast"},
        },
        pod,
    )

    def waiting_reason() -> str | None:
        statuses = (cluster.get(f"/api/v1/namespaces/{namespace}/pods/envpod") or {}).get(
            "status", {}
        )
        waiting = ((statuses.get("containerStatuses") or [{}])[0].get("state") or {}).get(
            "waiting"
        ) or {}
        return waiting.get("reason")

    wait_for(
        "the missing Secret to hold the container in CreateContainerConfigError",
        lambda: waiting_reason() == "CreateContainerConfigError",
        timeout=90,
    )
    secret = {"password": base64.b64encode(b"s3cret").decode()}
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds", "namespace": namespace},
            "data": secret,
        }
    )

    done = cluster.wait_for_pod(namespace, "envpod", ("Succeeded", "Failed"), timeout=120)

    assert done["status"]["phase"] == "Failed"
    terminated = _terminated(done)
    assert (terminated["exitCode"], terminated["reason"]) == (7, "Error")
    assert terminated["message"] == "s3cret|fast|r-1|hello envpod|fast"


def test_logs_and_fallback_termination_message(cluster: Cluster, namespace: str) -> None:
    container = _container(
        "noisy",
        "echo line-one; sleep 0.5; echo boom >&2; exit 3",  # two streams: order by time
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    cluster.apply(_pod(namespace, "noisy", container))

    pod = cluster.wait_for_pod(namespace, "noisy", ("Failed",))

    assert _terminated(pod)["message"].strip() == "line-one\nboom"
    assert cluster.kubectl("logs", "-n", namespace, "noisy") == "line-one\nboom\n"
    assert cluster.kubectl("logs", "-n", namespace, "noisy", "--tail=1") == "boom\n"


def test_pods_run_from_the_image_as_its_user_on_a_read_only_root(
    cluster: Cluster, namespace: str
) -> None:
    """The image's USER, the securityContext the operator's Jobs use, and an emptyDir /tmp."""
    script = (
        "id -u; id -g; touch /probe 2>/dev/null && echo root-writable; "
        "touch /tmp/probe && echo tmp-writable; "
        "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\\t' ' '; "
        "metatide --help > /dev/null && echo help-ok"
    )
    container = _container(
        "main",
        script,
        securityContext={
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        **TMP_MOUNT,
    )
    security = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    cluster.apply(_pod(namespace, "shape", container, securityContext=security, **TMP_VOLUME))

    pod = cluster.wait_for_pod(namespace, "shape", ("Succeeded", "Failed"), timeout=120)

    logs = cluster.kubectl("logs", "-n", namespace, "shape").splitlines()
    assert pod["status"]["phase"] == "Succeeded", logs
    assert logs == [
        "10001",
        "10001",
        "tmp-writable",
        "CapEff: 0000000000000000",
        "NoNewPrivs: 1",
        "Seccomp: 2",
        "help-ok",
    ]


def test_deleting_a_pod_stops_its_container(cluster: Cluster, namespace: str) -> None:
    sleeper = _container("sleeper", "exec sleep 600")  # PID 1 ignores SIGTERM: SIGKILL after 1 s
    cluster.apply(_pod(namespace, "sleeper", sleeper, terminationGracePeriodSeconds=1))
    pod = cluster.wait_for_pod(namespace, "sleeper", ("Running",))
    container = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    where = node.node_layout(cluster.layout)
    assert container in node.ctr(where, "tasks", "ls", "--quiet").split()

    cluster.kubectl("delete", "pod", "-n", namespace, "sleeper", "--wait=true", "--timeout=60s")

    wait_for(
        f"container {container[:12]} to stop",
        lambda: container not in node.ctr(where, "tasks", "ls", "--quiet").split(),
        timeout=30,
    )


def test_shared_folder_reaches_the_host(cluster: Cluster) -> None:
    namespace = cluster.create_namespace("shared", shared=True)
    try:
        name = f"from-pod-{uuid.uuid4().hex[:8]}"
        cluster.apply(_pod(namespace, "writer", _container("writer", f"echo hi > /shared/{name}")))
        pod = cluster.wait_for_pod(namespace, "writer", ("Succeeded", "Failed"))
        assert pod["status"]["phase"] == "Succeeded", cluster.kubectl(
            "logs", "-n", namespace, "writer"
        )
        assert (cluster.shared / name).read_text() == "hi\n"
    finally:
        cluster.delete_namespace(namespace)


def test_component_that_cannot_start_fails_loudly_with_its_log(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A second cluster in its own state dir, with a broken API server flag: no skip, a log tail."""
    env = os.environ | {"METATIDE_E2E_DIR": str(tmp_path / "state")}
    cluster_cmd = Path(__file__).resolve().parent / "cluster"
    done = subprocess.run(
        [str(cluster_cmd), "up", "--component-arg", "kube-apiserver=--no-such-flag"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )

    assert done.returncode == 1
    assert "kube-apiserver exited during start-up" in done.stderr
    assert "unknown flag: --no-such-flag" in done.stderr
    leftovers = [p for p in Path("/proc").glob("[0-9]*/cmdline") if _mentions(p, str(tmp_path))]
    assert not leftovers, "up must stop what it started when a later component fails"
    assert not (tmp_path / "state" / "network.json").exists(), "and remove the node's bridge"


def _mentions(cmdline: Path, text: str) -> bool:
    try:
        return text.encode() in cmdline.read_bytes()
    except OSError:
        return False


def test_missing_command_is_a_start_error_and_on_failure_restarts(
    cluster: Cluster, namespace: str
) -> None:
    missing = {"name": "main", "image": IMAGE, "imagePullPolicy": "Never"}
    missing["command"] = ["no-such-command-here"]
    retry = _container("main", "test -f /tmp/ran && exit 0; touch /tmp/ran; exit 1", **TMP_MOUNT)
    cluster.apply(
        _pod(namespace, "missing", missing),
        _pod(namespace, "retry", retry, restartPolicy="OnFailure", **TMP_VOLUME),
    )

    failed = cluster.wait_for_pod(namespace, "missing", ("Failed", "Succeeded"))
    retried = cluster.wait_for_pod(namespace, "retry", ("Failed", "Succeeded"), timeout=120)

    terminated = _terminated(failed)
    assert (terminated["exitCode"], terminated["reason"]) == (128, "StartError")
    assert "no-such-command-here" in terminated["message"]
    assert retried["status"]["phase"] == "Succeeded"
    assert retried["status"]["containerStatuses"][0]["restartCount"] == 1
