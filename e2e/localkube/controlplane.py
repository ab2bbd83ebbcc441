"""Brings the local cluster up and down: the control plane, then one real node.

``up`` builds what is missing (binaries, images), starts etcd, kube-apiserver,
kube-controller-manager and kube-scheduler on 127.0.0.1 (ports chosen free at start), then the
node (``network``, ``relay``, ``node``: the bridge, the relay to the host's loopback, containerd
with the images imported, the kubelet). It waits until each component is healthy before starting
the next, and raises ComponentError with the tail of the component's log when one exits or does
not become ready, after stopping what it had started. It is idempotent: a cluster that is
already up and healthy is reused, and only gets this checkout's image again if it changed.
``down`` stops, in reverse order, exactly the processes recorded in the state directory's pid
files, kills what runs in the node's cgroup tree, undoes the node's mounts, bridge and cgroups,
and removes everything but the logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from . import build, images, network, node, pki, procs
from .api import Api, ApiError
from .network import Network
from .settings import E2E_DIR, KUBERNETES_VERSION, NODE_NAME, REPO_ROOT, Layout, host_ports

COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "relay",
    "containerd",
    "kubelet",
)
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
    scheduler: int
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


def apiserver_argv(layout: Layout, ports: Ports, certs: pki.Pki, net: Network) -> list[str]:
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
        # Its first address, the kubernetes Service's, is the node's gateway (see network).
        f"--service-cluster-ip-range={net.service_cidr}",
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
    layout: Layout, ports: Ports, certs: pki.Pki, kubeconfig: Path, net: Network
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
        f"--service-cluster-ip-range={net.service_cidr}",
        "--profiling=false",
        "--v=1",
    ]


def scheduler_argv(layout: Layout, ports: Ports, kubeconfig: Path) -> list[str]:
    return [
        str(layout.node_bin / "kube-scheduler"),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports.scheduler}",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]


def relay_argv(ports: Ports, net: Network) -> list[str]:
    """The relay: the kubernetes Service's address to the API server, and the host's ports."""
    routes = [f"{net.gateway}:{network.SERVICE_PORT}=127.0.0.1:{ports.apiserver}"]
    routes += [f"{net.gateway}:{port}=127.0.0.1:{port}" for port in host_ports()]
    return [sys.executable, "-m", "localkube", "relay", *routes]


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(E2E_DIR)
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


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
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
        load(layout)
        return layout.admin_kubeconfig
    _down(layout, keep_logs=False)
    if os.geteuid() != 0:
        raise node.NodeError("the node needs root (containerd, runc, its bridge and cgroups)")
    missing = node.missing_packages()
    if missing:
        raise node.NodeError(
            f"the node needs {', '.join(missing)}: apt-get install {' '.join(missing)}"
        )
    build.build_all(layout)
    tool = images.builder()
    source = build.kubernetes_source(layout, layout.cache / "build.log")
    built = _Images(
        tool, images.build_pause(tool, layout, source), images.build_project_image(layout)
    )
    started = time.monotonic()
    try:
        _start_all(layout, extra_args, built)
    except BaseException:
        _down(layout, keep_logs=True)
        raise
    _say(f"cluster up in {time.monotonic() - started:.1f}s (state {layout.state})")
    return layout.admin_kubeconfig


@dataclass(frozen=True)
class _Images:
    """The builder and the images it made for the node."""

    tool: images.Builder
    pause: str
    metatide: str


def load(layout: Layout) -> None:
    """Rebuilds this checkout's image and imports it into the running node if it changed."""
    record = json.loads(layout.cluster_file.read_text())
    tool = images.builder()
    image = images.build_project_image(layout)
    image_id = tool.image_id(image)
    if record.get("image_id") == image_id:
        return
    started = time.monotonic()
    node.import_image(node.node_layout(layout), tool, image, images.E2E_IMAGE)
    node.tag_image(node.node_layout(layout), images.E2E_IMAGE, images.chart_image())
    _say(
        f"imported {image} as {images.E2E_IMAGE} and {images.chart_image()} in "
        f"{time.monotonic() - started:.1f}s"
    )
    record["image_id"] = image_id
    layout.cluster_file.write_text(json.dumps(record, indent=2) + "\n")


def _start_all(layout: Layout, extra: dict[str, list[str]], built: _Images) -> None:
    for directory in (layout.state, layout.logs, layout.pids):
        directory.mkdir(parents=True, exist_ok=True)
    layout.state.chmod(0o700)
    ports = Ports(*_free_ports(len(dataclasses.fields(Ports))))
    net = network.create(layout.state, layout.cache)
    certs = pki.make_pki(layout.certs, NODE_NAME, net.gateway)
    server = f"https://127.0.0.1:{ports.apiserver}"

    def kubeconfig(name: str, pair: pki.Pair) -> Path:
        return pki.write_private(
            layout.state / name, pki.kubeconfig(server, certs.ca.cert, pki.cert_user(pair))
        )

    kubeconfig(layout.admin_kubeconfig.name, certs.admin)
    api = Api.from_kubeconfig(layout.admin_kubeconfig)
    starter = _Starter(layout)

    _say("starting etcd")
    owned, log = starter.start("etcd", etcd_argv(layout, ports) + _extra(extra, "etcd"))
    _wait("etcd", owned, log, lambda: _http_ok(f"http://127.0.0.1:{ports.etcd_client}/health"), 30)

    _say("starting kube-apiserver")
    argv = apiserver_argv(layout, ports, certs, net) + _extra(extra, "kube-apiserver")
    owned, log = starter.start("kube-apiserver", argv)
    _wait("kube-apiserver", owned, log, lambda: _api_ready(api), 120)

    _say("starting kube-controller-manager")
    kcm_config = kubeconfig("controller-manager.kubeconfig", certs.controller_manager)
    argv = controller_manager_argv(layout, ports, certs, kcm_config, net) + _extra(
        extra, "kube-controller-manager"
    )
    kcm, kcm_log = starter.start("kube-controller-manager", argv)
    healthz = f"https://127.0.0.1:{ports.controller_manager}/healthz"
    _wait("kube-controller-manager", kcm, kcm_log, lambda: _http_ok(healthz, _insecure()), 60)

    _say("starting kube-scheduler")
    argv = scheduler_argv(layout, ports, kubeconfig("scheduler.kubeconfig", certs.scheduler))
    owned, log = starter.start("kube-scheduler", argv + _extra(extra, "kube-scheduler"))
    healthz = f"https://127.0.0.1:{ports.scheduler}/healthz"
    _wait("kube-scheduler", owned, log, lambda: _http_ok(healthz, _insecure()), 60)

    _start_node(layout, extra, starter, built, _NodeInputs(ports, net, certs, api))
    _wait("kube-controller-manager", kcm, kcm_log, lambda: _default_service_account(api), 60)

    record = {
        "kubeconfig": str(layout.admin_kubeconfig),
        "repo": str(REPO_ROOT),
        "server": server,
        "ports": ports.__dict__,
        "node": NODE_NAME,
        "host": net.gateway,
        "network": {"bridge": net.bridge, "subnet": net.subnet, "services": net.service_cidr},
        "shared": str(node.node_layout(layout).shared),
        "kubernetes": KUBERNETES_VERSION,
        "bin": str(layout.kube_bin),
        "helm": str(layout.helm),
        "image_id": built.tool.image_id(built.metatide),
    }
    layout.cluster_file.write_text(json.dumps(record, indent=2) + "\n")


@dataclass(frozen=True)
class _NodeInputs:
    ports: Ports
    net: Network
    certs: pki.Pki
    api: Api


def _start_node(
    layout: Layout,
    extra: dict[str, list[str]],
    starter: _Starter,
    built: _Images,
    given: _NodeInputs,
) -> None:
    """The relay, containerd with the images, the shared folder policy, then the kubelet."""
    ports, net, certs, api = given.ports, given.net, given.certs, given.api
    where = node.node_layout(layout)
    _say("starting the relay to the host's loopback")
    owned, log = starter.start("relay", relay_argv(ports, net), _python_env())
    _wait("relay", owned, log, lambda: _reachable(net.gateway, network.SERVICE_PORT), 30)

    _say("starting containerd")
    where.containerd.mkdir(parents=True, exist_ok=True)
    where.cni_conf_dir.mkdir(parents=True, exist_ok=True)
    where.containerd_config.write_text(node.containerd_config(where, built.pause))
    name = f"metatide-{network.cluster_id(layout.state)}"
    conflist = network.cni_config(net, name, where.ipam_dir)
    (where.cni_conf_dir / "10-metatide.conflist").write_text(json.dumps(conflist, indent=2))
    argv = node.containerd_argv(where) + _extra(extra, "containerd")
    owned, log = starter.start("containerd", argv)
    _wait("containerd", owned, log, lambda: node.containerd_ready(where), 30)
    for ref, name in ((built.pause, built.pause), (built.metatide, images.E2E_IMAGE)):
        started = time.monotonic()
        node.import_image(where, built.tool, ref, name)
        _say(f"imported {ref} as {name} in {time.monotonic() - started:.1f}s")
    node.tag_image(where, images.E2E_IMAGE, images.chart_image())  # the chart's default image

    where.shared.mkdir(parents=True, exist_ok=True)
    where.shared.chmod(0o1777)  # pods run as any user
    policy, binding = node.shared_folder_policy(where.shared)
    group = "/apis/admissionregistration.k8s.io/v1"
    api.create(f"{group}/mutatingadmissionpolicies", policy)
    api.create(f"{group}/mutatingadmissionpolicybindings", binding)

    _say("starting the kubelet")
    cgroup_root = node.cgroup_root(layout)
    node.create_cgroup_root(cgroup_root)
    settings = node.KubeletSettings(
        port=ports.kubelet,
        ca=certs.ca.cert,
        serving=(certs.kubelet.cert, certs.kubelet.key),
        cgroup_root=cgroup_root,
    )
    config = node.kubelet_config(where, net, settings)
    where.kubelet_config.write_text(json.dumps(config, indent=2))
    server = f"https://127.0.0.1:{ports.apiserver}"
    kubelet_kubeconfig = pki.write_private(
        layout.state / "kubelet.kubeconfig",
        pki.kubeconfig(server, certs.ca.cert, pki.cert_user(certs.node)),
    )
    argv = node.kubelet_argv(layout.node_bin / "kubelet", where, net, kubelet_kubeconfig)
    owned, log = starter.start("kubelet", argv + _extra(extra, "kubelet"))
    _wait("kubelet", owned, log, lambda: _node_ready(api), 60)


def down(layout: Layout, keep_logs: bool = True) -> None:
    """Stops what this state directory records, kills the node's pods, removes the state."""
    with _locked(layout):
        _down(layout, keep_logs)


def _stop(layout: Layout, name: str) -> None:
    owned = procs.Owned.load(layout.pids / f"{name}.json")
    if owned is not None and owned.alive():
        _say(f"stopping {name} (pid {owned.pid})")
        procs.stop(owned, grace=10.0)


def _down(layout: Layout, keep_logs: bool) -> None:
    if not layout.state.exists():
        return
    for name in reversed(COMPONENTS):
        _stop(layout, name)
        if name == "kubelet":
            node.kill_pods(layout)
    for problem in node.cleanup(layout):
        _say(f"could not remove {problem}")
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
