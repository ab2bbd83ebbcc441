"""Self-tests of the local control plane: the behaviours the operator's e2e tests rely on.

Each runs against the real API server and controllers; only the kubelet is the harness's own.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from localkube.testkit import Cluster, wait_for

JSON = dict[str, Any]
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
WRITE_MESSAGE = 'printf "%s" "$1" > "$METATIDE_TERMINATION_MESSAGE_PATH"'


def _job(namespace: str, name: str, script: str, **spec: Any) -> JSON:
    """An Indexed Job whose pods run ``sh -c script`` (no image: the test kubelet runs sh)."""
    container = {"name": "work", "image": "busybox", "command": ["sh", "-c", script]}
    template = {"spec": {"restartPolicy": "Never", "containers": [container]}}
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
        "each process must see its own JOB_COMPLETION_INDEX"
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
import base64, http.client, json, os, ssl
config = json.load(open(os.environ["KUBECONFIG"]))
cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
context = ssl.create_default_context(cadata=ca)
host, port = cluster["server"].removeprefix("https://").split(":")
namespace = os.environ["NAMESPACE"]
codes = []
for resource in ("pods", "secrets"):
    connection = http.client.HTTPSConnection(host, int(port), context=context)
    connection.request("GET", f"/api/v1/namespaces/{namespace}/{resource}",
                       headers={"Authorization": "Bearer " + user["token"]})
    response = connection.getresponse()
    body = json.loads(response.read())
    codes.append(f"{resource}={response.status}")
print(body.get("message", ""))
open(os.environ["METATIDE_TERMINATION_MESSAGE_PATH"], "w").write(" ".join(codes))
"""


def test_service_account_without_permission_gets_403(cluster: Cluster, namespace: str) -> None:
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
    container = {
        "name": "probe",
        "image": "python",
        "command": [sys.executable, "-c", PROBE],
        "env": [
            {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
        ],
    }
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "probe", "namespace": namespace},
            "spec": {
                "serviceAccountName": "reader",
                "restartPolicy": "Never",
                "containers": [container],
            },
        }
    )

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
    container = {
        "name": "main",
        "image": "busybox",
        "command": ["sh", "-c", script],
        "env": env,
        "envFrom": [{"prefix": "CM_", "configMapRef": {"name": "settings"}}],
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "envpod",
            "namespace": namespace,
            "annotations": {"metatide.dev/run": "r-1"},
        },
        "spec": {"restartPolicy": "Never", "containers": [container]},
    }
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

    assert (
        wait_for("the missing Secret to hold the container", waiting_reason)
        == "CreateContainerConfigError"
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

    done = cluster.wait_for_pod(namespace, "envpod", ("Succeeded", "Failed"))

    assert done["status"]["phase"] == "Failed"
    terminated = _terminated(done)
    assert (terminated["exitCode"], terminated["reason"]) == (7, "Error")
    assert terminated["message"] == "s3cret|fast|r-1|hello envpod|fast"


def test_logs_and_fallback_termination_message(cluster: Cluster, namespace: str) -> None:
    container = {
        "name": "noisy",
        "image": "busybox",
        "command": ["sh", "-c", "echo line-one; echo boom >&2; exit 3"],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "noisy", "namespace": namespace},
            "spec": {"restartPolicy": "Never", "containers": [container]},
        }
    )

    pod = cluster.wait_for_pod(namespace, "noisy", ("Failed",))

    assert _terminated(pod)["message"].strip() == "line-one\nboom"
    assert cluster.kubectl("logs", "-n", namespace, "noisy") == "line-one\nboom\n"
    assert cluster.kubectl("logs", "-n", namespace, "noisy", "--tail=1") == "boom\n"


def test_metatide_image_runs_the_virtualenv_console_script(
    cluster: Cluster, namespace: str
) -> None:
    container = {"name": "cli", "image": "ghcr.io/example/metatide:dev", "args": ["--help"]}
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "cli", "namespace": namespace},
            "spec": {"restartPolicy": "Never", "containers": [container]},
        }
    )

    pod = cluster.wait_for_pod(namespace, "cli", ("Succeeded", "Failed"), timeout=120)

    assert pod["status"]["phase"] == "Succeeded", cluster.kubectl("logs", "-n", namespace, "cli")


def test_deleting_a_pod_kills_its_process(cluster: Cluster, namespace: str) -> None:
    container = {"name": "sleeper", "image": "busybox", "command": ["sh", "-c", "sleep 600"]}
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "sleeper", "namespace": namespace},
            "spec": {"containers": [container]},
        }
    )
    pod = cluster.wait_for_pod(namespace, "sleeper", ("Running",))
    pid = int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("localkube://"))
    assert Path(f"/proc/{pid}").exists()

    cluster.kubectl("delete", "pod", "-n", namespace, "sleeper", "--wait=true", "--timeout=60s")

    wait_for(
        f"process {pid} to exit",
        lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid),
        timeout=10,
    )


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


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
        timeout=300,
    )

    assert done.returncode == 1
    assert "kube-apiserver exited during start-up" in done.stderr
    assert "unknown flag: --no-such-flag" in done.stderr
    leftovers = [p for p in Path("/proc").glob("[0-9]*/cmdline") if _mentions(p, str(tmp_path))]
    assert not leftovers, "up must stop what it started when a later component fails"


def _mentions(cmdline: Path, text: str) -> bool:
    try:
        return text.encode() in cmdline.read_bytes()
    except OSError:
        return False


def test_missing_command_is_a_start_error_and_on_failure_restarts(
    cluster: Cluster, namespace: str
) -> None:
    retry = 'test -f "$HOME/ran" && exit 0; touch "$HOME/ran"; exit 1'
    pods = {
        "missing": ("Never", {"command": ["no-such-command-here"]}),
        "retry": ("OnFailure", {"command": ["sh", "-c", retry]}),
    }
    for name, (policy, command) in pods.items():
        container = {"name": "main", "image": "busybox"} | command
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"restartPolicy": policy, "containers": [container]},
            }
        )

    missing = cluster.wait_for_pod(namespace, "missing", ("Failed", "Succeeded"))
    retried = cluster.wait_for_pod(namespace, "retry", ("Failed", "Succeeded"))

    terminated = _terminated(missing)
    assert (terminated["exitCode"], terminated["reason"]) == (128, "StartError")
    assert "no-such-command-here" in terminated["message"]
    assert retried["status"]["phase"] == "Succeeded"
    assert retried["status"]["containerStatuses"][0]["restartCount"] == 1
