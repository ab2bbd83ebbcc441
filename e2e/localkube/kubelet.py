"""The test kubelet: one Node whose pods run as local processes.

Started by ``controlplane.up`` as ``python -m localkube kubelet``. It

- registers the Node ``metatide-e2e`` (Ready, InternalIP 127.0.0.1) and renews its Lease, so the
  node lifecycle controller never taints it;
- binds every unscheduled pod of the default scheduler to that node (there is no kube-scheduler:
  no resource fitting, affinity, taints or topology);
- runs each bound pod's init containers in order, then its containers, as processes in their own
  process group: ``containers`` maps the image to a local command and resolves the environment
  (``valueFrom`` Secret and ConfigMap keys, ``fieldRef`` -- which is how the Job controller's
  JOB_COMPLETION_INDEX arrives);
- gives each pod API access as its service account: a bound token from the TokenRequest API in a
  per-pod kubeconfig named by ``KUBECONFIG`` (kubectl, the Python client and kopf all read it;
  the in-cluster path /var/run/secrets/... cannot exist per pod), with KUBERNETES_SERVICE_HOST
  and KUBERNETES_SERVICE_PORT set too; so RBAC applies to pods for real;
- reports pod phase, conditions and container states (exit codes, reasons, termination
  messages) to the status subresource, restarts containers per ``restartPolicy`` (backoff 1 s,
  doubling to 30 s), and kills a pod's processes when it is deleted (SIGTERM, SIGKILL after the
  grace period) before removing the pod object with grace period 0, as the real kubelet does;
- serves ``kubectl logs`` (see ``logserver``).

The termination message is read from the file named by ``$METATIDE_TERMINATION_MESSAGE_PATH``,
one per container (the spec's ``terminationMessagePath`` cannot be honoured without a mount
namespace); ``terminationMessagePolicy: FallbackToLogsOnError`` works as documented.

Not done, by design: images (nothing is pulled; see ``containers``), networking (pods share the
host's loopback; Services and DNS do not route anywhere; podIP is 127.0.0.1), cgroups and
resource limits, securityContext (processes run as the kubelet's user), volumes (volumeMounts are
ignored; each pod gets its own HOME and TMPDIR), probes (a running container is ready), token
rotation (tokens last 24 h), exec/attach/port-forward, ephemeral and sidecar containers.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import logserver, pki, procs
from .api import Api, ApiError
from .containers import (
    TERMINATION_ENV,
    ContainerConfigError,
    ImageRule,
    container_env,
    exit_code,
    load_rules,
    resolve_argv,
    venv_bin,
)
from .settings import KUBERNETES_VERSION, NODE_NAME, layout

JSON = dict[str, Any]
log = logging.getLogger("kubelet")
TERMINAL = ("Succeeded", "Failed")
MESSAGE_LIMIT = 4096
LEASE_SECONDS = 40
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ContainerRun:
    """One container of a pod: its current process, restarts and reported state."""

    def __init__(self, spec: JSON, directory: Path) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.directory = directory
        self.restarts = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.owned: procs.Owned | None = None
        self.state: JSON = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: JSON = {}
        self.started_at = ""
        self.restart_at: float | None = None
        self.exited = False  # the current process's exit is recorded in ``state``
        self.start_failed = False  # a failed start that poll() has yet to report
        self.done = False  # exited and will not be restarted

    @property
    def termination_file(self) -> Path:
        return self.directory / "termination" / self.name

    def log_file(self, restarts: int | None = None) -> Path:
        return (
            self.directory
            / "logs"
            / f"{self.name}-{self.restarts if restarts is None else restarts}.log"
        )

    @property
    def running(self) -> bool:
        return self.process is not None and not self.exited and self.process.poll() is None

    def start(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        """Starts (or restarts) the process; its pid file lets ``down`` kill it if we cannot."""
        self.termination_file.parent.mkdir(parents=True, exist_ok=True)
        self.termination_file.write_bytes(b"")
        self.process, self.owned = procs.spawn(self.name, argv, self.log_file(), env=env, cwd=cwd)
        self.exited = False
        self.owned.save(self.directory / "pids" / f"{self.name}.json")
        self.started_at = now()
        self.state = {"running": {"startedAt": self.started_at}}
        self.restart_at = None
        log.info("started %s pid %d: %s", self.name, self.process.pid, argv)

    def fail_start(self, message: str) -> None:
        """Records a process that could not be started as exit code 128, as the kubelet does."""
        self.started_at = self.started_at or now()
        finished = {"exitCode": 128, "reason": "StartError", "message": message[:MESSAGE_LIMIT]}
        self.state = {"terminated": finished | {"startedAt": self.started_at, "finishedAt": now()}}
        self.start_failed = True
        self.restart_at = None
        log.warning("container %s could not start: %s", self.name, message)

    def poll(self) -> bool:
        """Records the exit of the process; True when it just exited (or failed to start)."""
        if self.start_failed:
            self.start_failed = False
            return True
        if self.process is None or self.exited:
            return False
        returncode = self.process.poll()
        if returncode is None:
            return False
        self.exited = True
        code = exit_code(returncode)
        terminated: JSON = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": self.started_at,
            "finishedAt": now(),
            "containerID": f"localkube://{self.process.pid}",
        }
        message = self._termination_message(code)
        if message:
            terminated["message"] = message
        self.state = {"terminated": terminated}
        log.info("container %s pid %d exited %d", self.name, self.process.pid, code)
        return True

    def _termination_message(self, code: int) -> str:
        try:
            text = self.termination_file.read_bytes()[:MESSAGE_LIMIT].decode(errors="replace")
        except OSError:
            text = ""
        if (
            not text
            and code != 0
            and self.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        ):
            lines = procs.tail(self.log_file(), 80)
            text = lines.encode()[-2048:].decode(errors="replace")
        return text

    def kill(self, grace: float) -> None:
        if self.owned is not None and self.running:
            procs.stop(self.owned, grace, self.process)
        self.poll()

    def exit_code(self) -> int | None:
        terminated = self.state.get("terminated")
        return None if terminated is None else int(terminated["exitCode"])

    def schedule_restart(self) -> None:
        """Backs off 1 s, doubling to 30 s, like the kubelet's CrashLoopBackOff but shorter."""
        self.last_state = self.state
        self.restarts += 1
        delay = min(30.0, 2.0 ** (self.restarts - 1))
        self.restart_at = time.monotonic() + delay
        self.state = {
            "waiting": {"reason": "CrashLoopBackOff", "message": f"back-off {delay:.0f}s"}
        }

    def status(self) -> JSON:
        ready = self.running
        container_status: JSON = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": ready,
            "started": ready,
            "restartCount": self.restarts,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.process is not None:
            container_status["containerID"] = f"localkube://{self.process.pid}"
        return container_status


def _still_running(run: ContainerRun, previous: bool) -> Callable[[], bool]:
    """For ``kubectl logs -f``: the log of a finished or earlier instance does not grow."""
    return lambda: run.running and not previous


class PodWorker(threading.Thread):
    """Runs one pod from bind to deletion and publishes its status."""

    def __init__(self, kubelet: Kubelet, pod: JSON) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod {meta['namespace']}/{meta['name']}", daemon=True)
        self.kubelet = kubelet
        self.pod = pod
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.directory = kubelet.pods_dir / f"{self.namespace}_{self.pod_name}_{self.uid[:8]}"
        self.wake = threading.Event()
        self.gone = False
        self.init_runs = [
            ContainerRun(c, self.directory) for c in pod["spec"].get("initContainers") or []
        ]
        self.runs = [ContainerRun(c, self.directory) for c in pod["spec"]["containers"]]
        self.phase = "Pending"
        self.start_time = now()
        self.conditions: dict[str, JSON] = {}
        self.published: JSON | None = None
        self.environments: dict[str, dict[str, str]] = {}

    # -- events from the reflector -------------------------------------------------------------
    def update(self, pod: JSON) -> None:
        self.pod = pod
        self.wake.set()

    def forget(self) -> None:
        """The pod object is gone (deleted for good, maybe forcibly): stop without API calls."""
        self.gone = True
        self.wake.set()

    def deleting(self) -> bool:
        return self.gone or bool(self.pod["metadata"].get("deletionTimestamp"))

    def _sleep(self, seconds: float) -> None:
        self.wake.wait(seconds)
        self.wake.clear()

    # -- lifecycle -----------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._lifecycle()
        except Exception:
            log.exception("pod %s/%s: worker failed", self.namespace, self.pod_name)
        finally:
            self.kill_all(grace=1.0)
            if self.gone:
                shutil.rmtree(self.directory, ignore_errors=True)

    def _lifecycle(self) -> None:
        previous_phase = (self.pod.get("status") or {}).get("phase")
        if previous_phase in TERMINAL:
            self.phase = previous_phase
        elif (self.pod.get("status") or {}).get("containerStatuses"):
            self._lost()  # it ran under an earlier kubelet whose processes are gone
        elif self._prepare() and self._run_init():
            self._run_main()
        self._await_deletion()

    def _lost(self) -> None:
        for run in self.runs:
            run.state = {
                "terminated": {
                    "exitCode": 137,
                    "reason": "ContainerStatusUnknown",
                    "message": "the test kubelet restarted",
                    "finishedAt": now(),
                }
            }
            run.done = True
        self.phase = "Failed"
        self.publish()

    def _prepare(self) -> bool:
        """Resolves API access and every container's environment, retrying config errors.

        A command that cannot be mapped or found is not a config error: it fails at start with
        exit code 128 (StartError), as a missing executable does in a real container.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        while not self.deleting():
            try:
                base = self._base_env()
                for run in self.init_runs + self.runs:
                    env = container_env(
                        run.spec, self.pod, base | self._per_container(run), self._lookup
                    )
                    self.environments[run.name] = env
                self._condition("PodReadyToStartContainers", True)
                return True
            except ContainerConfigError as error:
                for run in self.init_runs + self.runs:
                    run.state = {
                        "waiting": {"reason": "CreateContainerConfigError", "message": str(error)}
                    }
                self.publish()
                self._sleep(2.0)
        return False

    def _run_init(self) -> bool:
        """Runs init containers one at a time; False if the pod failed or is being deleted."""
        for run in self.init_runs:
            while not self.deleting():
                self._start(run)
                while not self.deleting() and not run.poll():
                    self._sleep(0.2)
                if self.deleting():
                    return False
                if run.exit_code() == 0:
                    run.done = True
                    break
                if self._restart_policy() == "Never":
                    self.phase = "Failed"
                    self.publish()
                    return False
                run.schedule_restart()
                self.publish()
                while not self.deleting() and time.monotonic() < (run.restart_at or 0):
                    self._sleep((run.restart_at or 0) - time.monotonic())
        self._condition("Initialized", True)
        return not self.deleting()

    def _run_main(self) -> None:
        for run in self.runs:
            self._start(run)
        self.phase = "Running"
        self.publish()
        while not self.deleting():
            self._tick()
            if all(run.done for run in self.runs):
                failed = any(run.exit_code() != 0 for run in self.runs)
                self.phase = "Failed" if failed else "Succeeded"
                self.publish()
                return
            self.publish()
            self._sleep(0.2)

    def _tick(self) -> None:
        """Notices exits and starts due restarts, per the pod's restartPolicy."""
        policy = self._restart_policy()
        for run in self.runs:
            if run.restart_at is not None and time.monotonic() >= run.restart_at:
                self._start(run)
            if not run.poll():
                continue
            code = run.exit_code()
            if policy == "Always" or (policy == "OnFailure" and code != 0):
                run.schedule_restart()
            else:
                run.done = True

    def _await_deletion(self) -> None:
        """Waits for the pod's deletion, stops its processes and removes the object."""
        while not self.deleting():
            self._sleep(5.0)
        grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        self.kill_all(grace=float(30 if grace is None else grace))
        if self.gone:
            return
        if self.phase not in TERMINAL:
            codes = [run.exit_code() for run in self.runs]
            self.phase = "Succeeded" if codes and all(code == 0 for code in codes) else "Failed"
        self.publish()
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        try:
            self.kubelet.api.delete(self._path(), options)
        except ApiError as error:
            if error.status not in (404, 409):
                raise

    def kill_all(self, grace: float) -> None:
        for run in self.init_runs + self.runs:
            run.kill(grace)
            if run.restart_at is not None:
                run.restart_at = None
                run.done = True

    # -- helpers -------------------------------------------------------------------------------
    def _start(self, run: ContainerRun) -> None:
        env = self.environments[run.name]
        working = Path(run.spec.get("workingDir") or self.directory / "home")
        try:
            argv = resolve_argv(run.spec, env, self.kubelet.rules)
            run.start(argv, env, working if working.is_dir() else self.directory / "home")
        except (ContainerConfigError, OSError) as error:
            run.fail_start(str(error))

    def _restart_policy(self) -> str:
        return str(self.pod["spec"].get("restartPolicy", "Always"))

    def _path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}"

    def _lookup(self, kind: str, name: str) -> JSON | None:
        plural = "secrets" if kind == "Secret" else "configmaps"
        try:
            return self.kubelet.api.get(f"/api/v1/namespaces/{self.namespace}/{plural}/{name}")
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def _per_container(self, run: ContainerRun) -> dict[str, str]:
        return {TERMINATION_ENV: str(run.termination_file)}

    def _base_env(self) -> dict[str, str]:
        """What every container sees before its own env: PATH, HOME, TMPDIR, API access."""
        home, tmp = self.directory / "home", self.directory / "tmp"
        home.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)
        kube = self.kubelet
        env = {
            "PATH": f"{venv_bin()}:{kube.bin_dir}:{SYSTEM_PATH}",
            "HOME": str(home),
            "TMPDIR": str(tmp),
            "HOSTNAME": self.pod["spec"].get("hostname") or self.pod_name,
            "LANG": "C.UTF-8",
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(kube.api.port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(kube.api.port),
        }
        kubeconfig = self._service_account_kubeconfig()
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        return env

    def _service_account_kubeconfig(self) -> Path | None:
        """A kubeconfig holding a token bound to this pod, unless automounting is turned off."""
        spec = self.pod["spec"]
        account = spec.get("serviceAccountName") or "default"
        automount = spec.get("automountServiceAccountToken")
        if automount is None:
            sa = self.kubelet.api.get(
                f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}"
            )
            automount = sa.get("automountServiceAccountToken", True)
        if not automount:
            return None
        kubeconfig = self.directory / "kubeconfig"
        if kubeconfig.exists():  # a retry after a config error: the token is still good
            return kubeconfig
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": 86400,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.pod_name,
                    "uid": self.uid,
                },
            },
        }
        path = f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}/token"
        token = self.kubelet.api.create(path, request)["status"]["token"]
        config = pki.kubeconfig(self.kubelet.server, self.kubelet.ca, {"token": token})
        return pki.write_private(kubeconfig, config)

    def _condition(self, kind: str, value: bool, reason: str = "") -> None:
        status = "True" if value else "False"
        current = self.conditions.get(kind)
        if current is not None and current["status"] == status:
            return
        condition: JSON = {
            "type": kind,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": now(),
        }
        if reason:
            condition["reason"] = reason
        self.conditions[kind] = condition

    def publish(self) -> None:
        """Patches the pod's status subresource when anything changed since the last patch."""
        if self.gone:
            return
        all_running = all(run.running for run in self.runs)
        reason = (
            "PodCompleted"
            if self.phase in TERMINAL
            else ("" if all_running else "ContainersNotReady")
        )
        self._condition("ContainersReady", all_running, reason)
        self._condition("Ready", all_running, reason)
        if self.phase in TERMINAL:
            self._condition("PodReadyToStartContainers", False)
        status: JSON = {
            "phase": self.phase,
            "startTime": self.start_time,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "conditions": list(self.conditions.values()),
            "containerStatuses": [run.status() for run in self.runs],
        }
        if self.init_runs:
            status["initContainerStatuses"] = [run.status() for run in self.init_runs]
        if status == self.published:
            return
        try:
            self.kubelet.api.patch(
                f"{self._path()}/status",
                {"metadata": {"uid": self.uid}, "status": status},
                strategic=True,
            )
            self.published = status
        except ApiError as error:
            if error.status not in (404, 409):
                log.warning(
                    "pod %s/%s: status patch failed: %s", self.namespace, self.pod_name, error
                )

    def log_target(self, container: str, previous: bool) -> tuple[Path, Any] | None:
        for run in self.init_runs + self.runs:
            if run.name == container:
                restarts = run.restarts - 1 if previous else run.restarts
                if restarts < 0:
                    return None
                return run.log_file(restarts), _still_running(run, previous)
        return None


class Kubelet:
    """Registers the node, binds pods to it and runs a PodWorker per bound pod."""

    def __init__(
        self, kubeconfig: Path, port: int, pki_dir: Path, bin_dir: Path, rules: list[ImageRule]
    ) -> None:
        self.api = Api.from_kubeconfig(kubeconfig)
        config = json.loads(kubeconfig.read_text())
        self.server: str = config["clusters"][0]["cluster"]["server"]
        self.ca = pki_dir / "ca.crt"
        self.pki_dir = pki_dir
        self.port = port
        self.bin_dir = bin_dir
        self.rules = rules
        self.node = NODE_NAME
        self.pods_dir = layout().pods
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()

    def run(self) -> None:
        self.register()
        logserver.serve(
            self.port,
            self.pki_dir / "kubelet.crt",
            self.pki_dir / "kubelet.key",
            self.ca,
            self._log_target,
        )
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()
        try:
            self._reflect()
        finally:
            with self.lock:
                workers = list(self.workers.values())
            for worker in workers:
                worker.kill_all(grace=2.0)

    # -- node ----------------------------------------------------------------------------------
    def register(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.node,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        }
        try:
            self.api.create(
                "/api/v1/nodes",
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": self.node, "labels": labels},
                },
            )
        except ApiError as error:
            if error.status != 409:
                raise
        self._node_status()
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.node},
            "spec": {
                "holderIdentity": self.node,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": now_micro(),
            },
        }
        try:
            self.api.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", lease)
        except ApiError as error:
            if error.status != 409:
                raise
        log.info("registered node %s", self.node)

    def _node_status(self) -> None:
        memory_kib = next(
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        capacity = {
            "cpu": str(os.cpu_count() or 1),
            "memory": f"{memory_kib}Ki",
            "pods": "110",
            "ephemeral-storage": "100Gi",
        }
        stamp = now()
        conditions = [
            {
                "type": kind,
                "status": "False",
                "reason": f"KubeletHas{reason}",
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
            }
            for kind, reason in (
                ("MemoryPressure", "SufficientMemory"),
                ("DiskPressure", "NoDiskPressure"),
                ("PIDPressure", "SufficientPID"),
            )
        ]
        conditions.append(
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "metatide test kubelet is posting ready status",
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
            }
        )
        status = {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.node},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": os.uname().release,
                "osImage": "metatide localkube",
                "containerRuntimeVersion": "localkube://1",
                "kubeletVersion": KUBERNETES_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        self.api.patch(f"/api/v1/nodes/{self.node}/status", {"status": status}, strategic=True)

    def _heartbeat(self) -> None:
        """Renews the node Lease every 10 s and the Ready condition every 30 s."""
        beats = 0
        while True:
            time.sleep(10)
            beats += 1
            try:
                self.api.patch(
                    f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}",
                    {"spec": {"renewTime": now_micro()}},
                )
                if beats % 3 == 0:
                    self._node_status()
            except (ApiError, OSError, http.client.HTTPException) as error:
                log.warning("heartbeat failed: %s", error)

    # -- pods ----------------------------------------------------------------------------------
    def _reflect(self) -> None:
        """List-then-watch all pods forever; relists after a gone or broken watch."""
        while True:
            try:
                listing = self.api.get("/api/v1/pods")
                present = {pod["metadata"]["uid"] for pod in listing["items"]}
                for uid in [uid for uid in self.workers if uid not in present]:
                    self._forget(uid)
                for pod in listing["items"]:
                    self._handle("ADDED", pod)
                for kind, pod in self.api.watch(
                    "/api/v1/pods", listing["metadata"]["resourceVersion"]
                ):
                    if kind != "BOOKMARK":
                        self._handle(kind, pod)
            except ApiError as error:
                if error.status != 410:
                    log.warning("pod watch: %s", error)
                    time.sleep(1)
            except (OSError, http.client.HTTPException, ValueError) as error:
                log.warning("pod watch broke: %s", error)
                time.sleep(1)

    def _handle(self, kind: str, pod: JSON) -> None:
        uid = pod["metadata"]["uid"]
        if kind == "DELETED":
            self._forget(uid)
            return
        node = pod["spec"].get("nodeName")
        if not node:
            if not pod["metadata"].get("deletionTimestamp"):
                self._bind(pod)
            return
        if node != self.node:
            return
        with self.lock:
            worker = self.workers.get(uid)
            if worker is None:
                worker = self.workers[uid] = PodWorker(self, pod)
                worker.start()
                return
        worker.update(pod)

    def _forget(self, uid: str) -> None:
        with self.lock:
            worker = self.workers.pop(uid, None)
        if worker is not None:
            worker.forget()

    def _bind(self, pod: JSON) -> None:
        """Plays the scheduler: every pod of the default scheduler goes to our node."""
        if pod["spec"].get("schedulerName", "default-scheduler") != "default-scheduler":
            return
        meta = pod["metadata"]
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
        }
        try:
            self.api.create(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding", binding
            )
        except ApiError as error:
            if error.status not in (404, 409):
                log.warning("binding %s/%s failed: %s", meta["namespace"], meta["name"], error)

    def _log_target(
        self, namespace: str, name: str, container: str, previous: bool
    ) -> tuple[Path, Any] | None:
        with self.lock:
            worker = next(
                (
                    w
                    for w in self.workers.values()
                    if (w.namespace, w.pod_name) == (namespace, name)
                ),
                None,
            )
        return None if worker is None else worker.log_target(container, previous)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m localkube kubelet``."""
    parser = argparse.ArgumentParser(prog="localkube kubelet")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pki", type=Path, required=True)
    parser.add_argument(
        "--bin", type=Path, required=True, help="kubectl and helm, put on every pod's PATH"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s [%(threadName)s] %(message)s"
    )
    # SIGTERM (from `down`) interrupts the main thread like Ctrl-C, so the reflector unwinds
    # at once and run() kills every pod's processes on its way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        Kubelet(args.kubeconfig, args.port, args.pki, args.bin, load_rules()).run()
    except KeyboardInterrupt:
        log.info("stopping")
