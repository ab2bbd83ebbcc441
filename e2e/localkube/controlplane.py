"""Brings the local cluster up and down: etcd, kube-apiserver, kube-controller-manager, kubelet.

``up`` starts each component on 127.0.0.1 (ports chosen free at start), waits until it is
healthy before starting the next, and raises ComponentError with the tail of the component's
log when one exits or does not become ready, after stopping what it had started. It is
idempotent: a cluster that is already up and healthy is reused. ``down`` stops, in reverse order,
exactly the processes recorded in the state directory's pid files (pod processes included) and
removes everything but the logs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import ssl
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import build, pki, procs
from .api import Api, ApiError
from .settings import E2E_DIR, KUBERNETES_VERSION, NODE_NAME, REPO_ROOT, Layout

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kubelet")
SERVICE_CIDR = "10.96.0.0/16"  # allocation only: nothing routes to it here
ISSUER = "https://kubernetes.default.svc.cluster.local"


class ComponentError(RuntimeError):
    """A component exited or did not become ready; the message ends with its log tail."""

    def __init__(self, component: str, problem: str, log: Path) -> None:
        self.component = component
        self.log = log
        super().__init__(f"{component} {problem}; last lines of {log}:\n{procs.tail(log)}")


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    kubelet: int


def _free_ports(count: int) -> list[int]:
    """Distinct ports that are free on 127.0.0.1 right now (held open until all are chosen)."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _say(message: str) -> None:
    print(f"localkube: {message}", file=sys.stderr, flush=True)


def _extra(extra_args: dict[str, list[str]], component: str) -> list[str]:
    return list(extra_args.get(component, []))


def etcd_argv(layout: Layout, ports: Ports) -> list[str]:
    client, peer = f"http://127.0.0.1:{ports.etcd_client}", f"http://127.0.0.1:{ports.etcd_peer}"
    return [
        str(layout.kube_bin / "etcd"),
        "--name=localkube",
        f"--data-dir={layout.etcd_data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=localkube={peer}",
        "--initial-cluster-state=new",
        "--log-level=warn",
        "--quota-backend-bytes=2147483648",
        "--unsafe-no-fsync",
    ]


def apiserver_argv(layout: Layout, ports: Ports, certs: pki.Pki) -> list[str]:
    return [
        str(layout.kube_bin / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={ports.apiserver}",
        f"--tls-cert-file={certs.apiserver.cert}",
        f"--tls-private-key-file={certs.apiserver.key}",
        f"--client-ca-file={certs.ca.cert}",
        # The front-proxy (request-header) CA, as kubeadm sets it up: components that delegate
        # authentication to the API server (kube-controller-manager) expect it to be present.
        f"--requestheader-client-ca-file={certs.front_proxy_ca.cert}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={certs.front_proxy_client.cert}",
        f"--proxy-client-key-file={certs.front_proxy_client.key}",
        f"--service-account-issuer={ISSUER}",
        f"--service-account-key-file={certs.service_account_pub}",
        f"--service-account-signing-key-file={certs.service_account_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        f"--kubelet-client-certificate={certs.apiserver_kubelet_client.cert}",
        f"--kubelet-client-key={certs.apiserver_kubelet_client.key}",
        f"--kubelet-certificate-authority={certs.ca.cert}",
        "--kubelet-preferred-address-types=InternalIP",
        # A loopback address may not be published as the kubernetes Service's endpoint.
        "--endpoint-reconciler-type=none",
        "--allow-privileged=true",
        "--profiling=false",
        "--v=1",
    ]


def controller_manager_argv(
    layout: Layout, ports: Ports, certs: pki.Pki, kubeconfig: Path
) -> list[str]:
    return [
        str(layout.kube_bin / "kube-controller-manager"),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports.controller_manager}",
        f"--service-account-private-key-file={certs.service_account_key}",
        f"--root-ca-file={certs.ca.cert}",
        f"--cluster-signing-cert-file={certs.ca.cert}",
        f"--cluster-signing-key-file={certs.ca.key}",
        "--use-service-account-credentials=true",
        "--controllers=*",
        "--leader-elect=false",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--profiling=false",
        "--v=1",
    ]


def kubelet_argv(layout: Layout, ports: Ports) -> list[str]:
    return [
        sys.executable,
        "-m",
        "localkube",
        "kubelet",
        f"--kubeconfig={layout.admin_kubeconfig}",
        f"--port={ports.kubelet}",
        f"--pki={layout.certs}",
        f"--bin={layout.kube_bin}",
    ]


def _kubelet_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(E2E_DIR)
    env["PYTHONSAFEPATH"] = "1"
    return env


# -- health checks: each returns True when ready and may raise nothing -------------------------
def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def _insecure() -> ssl.SSLContext:
    """For kube-controller-manager's self-signed /healthz: liveness, not identity."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _api_ready(api: Api) -> bool:
    try:
        return api.text("/readyz", timeout=3).strip() == "ok"
    except (ApiError, OSError):
        return False


def _node_ready(api: Api) -> bool:
    try:
        node = api.get(f"/api/v1/nodes/{NODE_NAME}")
    except (ApiError, OSError):
        return False
    conditions = node.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _default_service_account(api: Api) -> bool:
    """The serviceaccount controller works, so pods can be admitted in new namespaces."""
    try:
        api.get("/api/v1/namespaces/default/serviceaccounts/default")
        return True
    except (ApiError, OSError):
        return False


def _wait(
    name: str, owned: procs.Owned, log: Path, ready: Callable[[], bool], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if not owned.alive():
            raise ComponentError(name, "exited during start-up", log)
        time.sleep(0.25)
    raise ComponentError(name, f"was not ready after {timeout:.0f}s", log)


class _Starter:
    """Starts components one after another, recording each in a pid file."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> tuple[procs.Owned, Path]:
        log = self.layout.logs / f"{name}.log"
        _, owned = procs.spawn(name, argv, log, env=env, cwd=self.layout.state)
        owned.save(self.layout.pids / f"{name}.json")
        return owned, log


def running(layout: Layout) -> dict[str, Any] | None:
    """The cluster record if a cluster started from this state directory is up and healthy."""
    try:
        record: dict[str, Any] = json.loads(layout.cluster_file.read_text())
    except (OSError, ValueError):
        return None
    if record.get("repo") != str(REPO_ROOT):
        return None  # its kubelet runs another checkout's `metatide`: not ours to reuse
    for name in COMPONENTS:
        owned = procs.Owned.load(layout.pids / f"{name}.json")
        if owned is None or not owned.alive():
            return None
    try:
        api = Api.from_kubeconfig(layout.admin_kubeconfig)
    except (OSError, ValueError, KeyError, ssl.SSLError):
        return None
    return record if _api_ready(api) else None


@contextlib.contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    """Serialises up and down on one state directory (two test runs may race for it)."""
    layout.state.parent.mkdir(parents=True, exist_ok=True)
    with open(layout.state.parent / f".{layout.state.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def up(layout: Layout, extra_args: dict[str, list[str]] | None = None) -> Path:
    """Builds what is missing, starts the cluster (or reuses a healthy one): the kubeconfig."""
    with _locked(layout):
        return _up(layout, extra_args or {})


def _up(layout: Layout, extra_args: dict[str, list[str]]) -> Path:
    if running(layout) is not None:
        _say(f"cluster already up (state {layout.state})")
        return layout.admin_kubeconfig
    _down(layout, keep_logs=False)
    build.build_all(layout)
    started = time.monotonic()
    try:
        _start_all(layout, extra_args)
    except BaseException:
        _down(layout, keep_logs=True)
        raise
    _say(f"cluster up in {time.monotonic() - started:.1f}s (state {layout.state})")
    return layout.admin_kubeconfig


def _start_all(layout: Layout, extra: dict[str, list[str]]) -> None:
    for directory in (layout.state, layout.logs, layout.pids, layout.pods):
        directory.mkdir(parents=True, exist_ok=True)
    layout.state.chmod(0o700)
    ports = Ports(*_free_ports(5))
    certs = pki.make_pki(layout.certs)
    server = f"https://127.0.0.1:{ports.apiserver}"
    pki.write_private(
        layout.admin_kubeconfig, pki.kubeconfig(server, certs.ca.cert, pki.cert_user(certs.admin))
    )
    kcm_config = pki.write_private(
        layout.state / "controller-manager.kubeconfig",
        pki.kubeconfig(server, certs.ca.cert, pki.cert_user(certs.controller_manager)),
    )
    api = Api.from_kubeconfig(layout.admin_kubeconfig)
    starter = _Starter(layout)

    _say("starting etcd")
    owned, log = starter.start("etcd", etcd_argv(layout, ports) + _extra(extra, "etcd"))
    _wait("etcd", owned, log, lambda: _http_ok(f"http://127.0.0.1:{ports.etcd_client}/health"), 30)

    _say("starting kube-apiserver")
    owned, log = starter.start(
        "kube-apiserver", apiserver_argv(layout, ports, certs) + _extra(extra, "kube-apiserver")
    )
    _wait("kube-apiserver", owned, log, lambda: _api_ready(api), 120)

    _say("starting kube-controller-manager")
    argv = controller_manager_argv(layout, ports, certs, kcm_config) + _extra(
        extra, "kube-controller-manager"
    )
    kcm, kcm_log = starter.start("kube-controller-manager", argv)
    healthz = f"https://127.0.0.1:{ports.controller_manager}/healthz"
    _wait("kube-controller-manager", kcm, kcm_log, lambda: _http_ok(healthz, _insecure()), 60)

    _say("starting the test kubelet")
    owned, log = starter.start(
        "kubelet", kubelet_argv(layout, ports) + _extra(extra, "kubelet"), _kubelet_env()
    )
    _wait("kubelet", owned, log, lambda: _node_ready(api), 30)
    _wait("kube-controller-manager", kcm, kcm_log, lambda: _default_service_account(api), 60)

    record = {
        "kubeconfig": str(layout.admin_kubeconfig),
        "repo": str(REPO_ROOT),
        "server": server,
        "ports": ports.__dict__,
        "node": NODE_NAME,
        "kubernetes": KUBERNETES_VERSION,
        "bin": str(layout.kube_bin),
        "helm": str(layout.helm),
    }
    layout.cluster_file.write_text(json.dumps(record, indent=2) + "\n")


def _pod_processes(layout: Layout) -> list[procs.Owned]:
    found = []
    for path in layout.pods.glob("*/pids/*.json"):
        owned = procs.Owned.load(path)
        if owned is not None:
            found.append(owned)
    return found


def down(layout: Layout, keep_logs: bool = True) -> None:
    """Stops the processes this state directory records (pods too) and removes the state."""
    with _locked(layout):
        _down(layout, keep_logs)


def _down(layout: Layout, keep_logs: bool) -> None:
    if not layout.state.exists():
        return
    for name in reversed(COMPONENTS):
        owned = procs.Owned.load(layout.pids / f"{name}.json")
        if owned is not None and owned.alive():
            _say(f"stopping {name} (pid {owned.pid})")
            procs.stop(owned, grace=10.0)
        if name == "kubelet":
            for pod_process in _pod_processes(layout):
                if pod_process.alive():
                    _say(f"stopping pod process {pod_process.name} (pid {pod_process.pid})")
                    procs.stop(pod_process, grace=2.0)
    for child in layout.state.iterdir():
        if keep_logs and child == layout.logs:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def status(layout: Layout) -> dict[str, Any]:
    """Which recorded components are alive, for ``e2e/cluster status``."""
    alive = {}
    for name in COMPONENTS:
        owned = procs.Owned.load(layout.pids / f"{name}.json")
        alive[name] = bool(owned and owned.alive())
    return {"state": str(layout.state), "running": running(layout) is not None, "components": alive}
