"""The node: containerd, runc and the CNI plugins from Debian's packages, and the real kubelet.

Each cluster runs its own containerd (root, state, socket and CNI configuration under the
cluster's state directory) and its own kubelet (root directory, ports, pod log folder and a
cgroup root of its own, ``/metatide-<id>``), so several clusters share one machine without
seeing each other's pods. The kubelet is built from the same Kubernetes release as the control
plane (``build``) and runs pods exactly as on any node: images unpacked by containerd, the pod's
securityContext applied by runc (user, no capabilities, no new privileges, seccomp
RuntimeDefault, read-only root), volumes (emptyDir, projected service-account token), probes,
termination messages, exit codes, logs.

What this machine needs and why the settings are as they are:

- **cgroup v1.** Kubernetes 1.35 made the kubelet refuse cgroup v1 unless
  ``failCgroupV1: false``; this release still runs on it when told so.
- **containerd 1.6** (Debian 12) speaks CRI v1 but not the RuntimeConfig call, so the kubelet
  takes the cgroup driver from its own configuration (cgroupfs: there is no systemd).
- **No CAP_SYS_RESOURCE** for root here, so nothing may lower an OOM score:
  ``restrict_oom_score_adj`` keeps containerd from trying, and the kubelet keeps its own.
- **No registry**: the images come from ``images`` and are imported with ``ctr``; the sandbox
  ("pause") image is built locally and named in containerd's configuration.

``kill_pods`` and ``cleanup`` undo everything ``up`` did: every process in the cluster's cgroup
tree is killed (containers and pause), leftover shims of its containerd are stopped, mounts
under the state directory are detached, and the bridge and cgroups are removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import images, network
from .network import Network
from .settings import NODE_NAME, Layout

CNI_BIN = Path("/usr/lib/cni")
REQUIRED = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    str(CNI_BIN / "bridge"): "containernetworking-plugins",
    "ip": "iproute2",
}
"""Commands the node needs and the Debian package of each."""
K8S_NAMESPACE = "k8s.io"


class NodeError(RuntimeError):
    """The node cannot start here (a package missing, a setting refused); says what to do."""


SHARED_LABEL = "metatide.dev/e2e-shared-folder"
SHARED_MOUNT = "/shared"


def missing_packages() -> list[str]:
    """Debian packages to install before the node can start (empty when all are there)."""
    missing = {
        package
        for command, package in REQUIRED.items()
        if not (Path(command).exists() if command.startswith("/") else shutil.which(command))
    }
    return sorted(missing)


@dataclass(frozen=True)
class NodeLayout:
    """Where the node keeps its state inside the cluster's state directory."""

    root: Path

    @property
    def containerd(self) -> Path:
        return self.root / "containerd"

    @property
    def socket(self) -> Path:
        return self.containerd / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.containerd / "config.toml"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def ipam_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet.json"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def shared(self) -> Path:
        """Mounted at /shared in the pods of namespaces labelled ``SHARED_LABEL=true``."""
        return self.root / "shared"


def node_layout(layout: Layout) -> NodeLayout:
    return NodeLayout(layout.state / "node")


def cgroup_root(layout: Layout) -> str:
    return f"/metatide-{network.cluster_id(layout.state)}"


# -- cgroups --------------------------------------------------------------------------------------
def cgroup_mounts() -> list[tuple[Path, str]]:
    """(mount point, options) of every cgroup hierarchy (v1 controllers and the v2 one)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fstype, _, options = after.split(" ")[:3]
        if fstype in ("cgroup", "cgroup2"):
            found.append((Path(before.split(" ")[4]), options))
    return found


def create_cgroup_root(name: str) -> None:
    """The kubelet's cgroupRoot must exist in every hierarchy before it starts."""
    for mount, options in cgroup_mounts():
        path = mount / name.lstrip("/")
        path.mkdir(exist_ok=True)
        if "cpuset" in options.split(","):  # a new cpuset has no CPUs or memory nodes yet
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (path / knob).write_text((mount / knob).read_text())


def cgroup_processes(name: str) -> set[int]:
    """Every process in the cgroup tree ``name`` (containers and pause processes)."""
    pids: set[int] = set()
    for mount, _ in cgroup_mounts():
        top = mount / name.lstrip("/")
        if not top.is_dir():
            continue
        for procs_file in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(pid) for pid in procs_file.read_text().split())
    return pids


def remove_cgroup_root(name: str) -> list[str]:
    """Removes the cgroup tree (deepest first); returns the paths that would not go."""
    stuck = []
    for mount, _ in cgroup_mounts():
        top = mount / name.lstrip("/")
        if not top.is_dir():
            continue
        below = sorted((p for p in top.rglob("*") if p.is_dir()), reverse=True)  # children first
        for path in [*below, top]:
            try:
                path.rmdir()
            except OSError:
                stuck.append(str(path))
    return stuck


# -- containerd -----------------------------------------------------------------------------------
def containerd_config(node: NodeLayout, pause: str) -> str:
    """containerd 1.6's configuration (version 2) for this node."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    runc = f"{cri}.containerd.runtimes.runc"
    return f"""\
version = 2
root = "{node.containerd / "root"}"
state = "{node.containerd / "state"}"
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{node.socket}"

[ttrpc]
  address = "{node.socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{node.containerd / "opt"}"

[{cri}]
  sandbox_image = "{pause}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{runc}]
  runtime_type = "io.containerd.runc.v2"

[{runc}.options]
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{node.cni_conf_dir}"
  max_conf_num = 1
"""


def containerd_argv(node: NodeLayout) -> list[str]:
    return [shutil.which("containerd") or "containerd", "--config", str(node.containerd_config)]


def ctr(node: NodeLayout, *args: str, stdin: Any = None, timeout: float = 600) -> str:
    """Runs ``ctr`` against this node's containerd in the CRI namespace; raises on failure."""
    done = subprocess.run(
        ["ctr", "--address", str(node.socket), "--namespace", K8S_NAMESPACE, *args],
        stdin=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise NodeError(f"ctr {' '.join(args[:2])} failed: {done.stderr.strip()}")
    return done.stdout


def containerd_ready(node: NodeLayout) -> bool:
    try:
        ctr(node, "version", timeout=5)
    except (NodeError, subprocess.TimeoutExpired):
        return False
    return True


def import_image(node: NodeLayout, tool: images.Builder, ref: str, name: str) -> None:
    """Streams ``ref`` out of the builder into containerd, known there as ``name``."""
    with tempfile.TemporaryFile() as errors:
        saving = images.save(tool, ref, errors)
        try:
            ctr(node, "images", "import", "-", stdin=saving.stdout)
        finally:
            if saving.stdout is not None:
                saving.stdout.close()  # a failed import must not leave the saver blocked
            saving.wait()
        errors.seek(0)
        problem = errors.read().decode(errors="replace")[-2000:]
    if saving.returncode != 0:
        raise NodeError(f"{tool.tool} save {ref} failed: {problem}")
    if name != ref:
        ctr(node, "images", "tag", "--force", ref, name)


def tag_image(node: NodeLayout, name: str, alias: str) -> None:
    """Makes an imported image known under a second name too."""
    ctr(node, "images", "tag", "--force", name, alias)


# -- kubelet --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KubeletSettings:
    """What the kubelet's configuration needs to know about the cluster it joins."""

    port: int
    ca: Path
    serving: tuple[Path, Path]
    cgroup_root: str


def kubelet_config(node: NodeLayout, net: Network, settings: KubeletSettings) -> dict[str, Any]:
    """The KubeletConfiguration (v1beta1) of this node."""
    cert, key = settings.serving
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": net.gateway,
        "port": settings.port,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "tlsCertFile": str(cert),
        "tlsPrivateKeyFile": str(key),
        # Only the API server (and admins) hold certificates from the cluster CA.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(settings.ca)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{node.socket}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": settings.cgroup_root,
        "failCgroupV1": False,
        "failSwapOn": False,
        "oomScoreAdj": 0,
        "podLogsDir": str(node.pod_logs),
        "volumePluginDir": str(node.root / "volume-plugins"),
        # No cluster DNS, and the host's resolver is unreachable from a pod's network: no
        # resolv.conf at all makes a lookup fail at once instead of after two 5 s timeouts.
        "resolvConf": "",
        "clusterDomain": "cluster.local",
        # A shared machine's disk and memory are other people's business: evict only when
        # nearly nothing is left, and never garbage-collect the imported images.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "protectKernelDefaults": False,
    }


def kubelet_argv(binary: Path, node: NodeLayout, net: Network, kubeconfig: Path) -> list[str]:
    return [
        str(binary),
        f"--config={node.kubelet_config}",
        f"--kubeconfig={kubeconfig}",
        f"--root-dir={node.kubelet_root}",
        f"--hostname-override={NODE_NAME}",
        f"--node-ip={net.gateway}",
        "--v=1",
    ]


def shared_folder_policy(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A MutatingAdmissionPolicy (and its binding) that mounts ``folder`` at /shared.

    Only in pods of namespaces labelled ``metatide.dev/e2e-shared-folder=true``: a test that
    needs pods to leave something for the next pod (a fault injected once, then retried) or
    for itself to read labels its namespace; every other pod runs exactly as it was created.
    """
    name = "metatide-e2e-shared-folder"
    expression = (
        "Object{spec: Object.spec{"
        'volumes: [Object.spec.volumes{name: "e2e-shared", '
        f'hostPath: Object.spec.volumes.hostPath{{path: "{folder}", type: "Directory"}}}}], '
        "containers: object.spec.containers.map(c, Object.spec.containers{name: c.name, "
        'volumeMounts: [Object.spec.containers.volumeMounts{name: "e2e-shared", '
        f'mountPath: "{SHARED_MOUNT}"}}]}})'
        "}}"
    )
    rules = [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}
    ]
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "matchConstraints": {
                "resourceRules": rules,
                "namespaceSelector": {"matchLabels": {SHARED_LABEL: "true"}},
            },
            "mutations": [
                {
                    "patchType": "ApplyConfiguration",
                    "applyConfiguration": {"expression": expression},
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name},
    }
    return policy, binding


# -- teardown -------------------------------------------------------------------------------------
def kill_pods(layout: Layout, timeout: float = 10.0) -> None:
    """SIGKILLs every process in the node's cgroup tree and waits until they are gone."""
    name = cgroup_root(layout)
    deadline = time.monotonic() + timeout
    while (pids := cgroup_processes(name)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def _shims(node: NodeLayout) -> list[int]:
    """containerd shims started by this node's containerd (they name its socket)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = cmdline.read_bytes().split(b"\0")
            if (
                argv
                and argv[0].endswith(b"containerd-shim-runc-v2")
                and (str(node.socket).encode() in argv)
            ):
                found.append(int(cmdline.parent.name))
    return found


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split(" ")[4].replace("\\040", " ")
        if point.startswith(prefix) or point == prefix.rstrip("/"):
            found.append(point)
    return found


def unmount_all(path: Path) -> None:
    """Detaches every mount below ``path`` (volumes, netns files, rootfs), deepest first."""
    for point in sorted(set(_mounts_under(path)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


def _container_log_links(node: NodeLayout) -> list[Path]:
    """The kubelet links each container log into /var/log/containers; ours point at pod_logs."""
    folder = Path("/var/log/containers")
    if not folder.is_dir():
        return []
    prefix = str(node.pod_logs)
    return [
        link
        for link in folder.iterdir()
        if link.is_symlink() and os.readlink(link).startswith(prefix)
    ]


def cleanup(layout: Layout) -> list[str]:
    """Removes what the node leaves outside its processes; returns what could not go."""
    node = node_layout(layout)
    kill_pods(layout)
    for pid in _shims(node):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for link in _container_log_links(node):
        link.unlink(missing_ok=True)
    unmount_all(layout.state)
    problems = remove_cgroup_root(cgroup_root(layout))
    net = Network.load(layout.state / "network.json")
    if net is not None:
        try:
            network.delete(net)
        except network.NetworkError as error:
            problems.append(str(error))
    return problems
