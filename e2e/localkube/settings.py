"""Pinned versions and on-disk locations of the local control plane.

Everything that is built lives under one cache root (``~/.cache/metatide`` or
``$METATIDE_CACHE_DIR``), keyed by version, so a fresh machine builds once and later runs reuse
it. One running cluster keeps its state (certificates, pid files, logs, etcd data, pod
directories) in ``$METATIDE_E2E_DIR`` (default ``<cache>/cluster``); ``down`` reads only that
directory, which is how it stops exactly the processes that ``up`` started.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
"""k8s.io/kubernetes release; e2e/kubebuild/go.mod pins the same (``cluster gomod`` rewrites it)."""

HELM_VERSION = "v3.22.0"
"""helm.sh/helm/v3 release, built with ``go install`` (its go.mod has no replace directives)."""

NODE_NAME = "metatide-e2e"
"""The one Node of the cluster (the kubelet's --hostname-override)."""

HOST_PORTS_ENV = "METATIDE_E2E_HOST_PORTS"
SERVICE_PORTS = (
    ("METATIDE_PG_PORT", 55432),
    ("METATIDE_S3_PORT", 59000),
    ("METATIDE_MYSQL_PORT", 53306),
)
"""The host's loopback ports that pods reach at the node's gateway address when
$METATIDE_E2E_HOST_PORTS is unset: PostgreSQL, MinIO and MariaDB where .ci/services starts them
(each port's variable, else its default), so moving a service moves its relay too."""

E2E_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = E2E_DIR.parent
KUBEBUILD_DIR = E2E_DIR / "kubebuild"
NODE_KUBEBUILD_DIR = KUBEBUILD_DIR / "node"
_IMAGE_GO = "/usr/local/go/bin/go"
GO = os.environ.get("GO") or (
    _IMAGE_GO if os.path.exists(_IMAGE_GO) else shutil.which("go") or "go"
)
"""The go command (1.26 or newer): $GO, else the machine image's, else the one on PATH."""


@dataclass(frozen=True)
class Layout:
    """Where the harness keeps built binaries and the state of one cluster."""

    cache: Path
    state: Path

    @property
    def go_mod_cache(self) -> Path:
        return self.cache / "go" / "mod"

    @property
    def go_build_cache(self) -> Path:
        return self.cache / "go" / "build"

    @property
    def kube_bin(self) -> Path:
        """etcd, kube-apiserver, kube-controller-manager and kubectl of the pinned release."""
        return self.cache / "bin" / f"kubernetes-{KUBERNETES_VERSION}"

    @property
    def node_bin(self) -> Path:
        """kubelet, kube-scheduler and the pause binary of the same release."""
        return self.cache / "bin" / f"kubernetes-node-{KUBERNETES_VERSION}"

    @property
    def helm_bin(self) -> Path:
        return self.cache / "bin" / f"helm-{HELM_VERSION}"

    @property
    def kubectl(self) -> Path:
        return self.kube_bin / "kubectl"

    @property
    def helm(self) -> Path:
        return self.helm_bin / "helm"

    @property
    def certs(self) -> Path:
        return self.state / "pki"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def pids(self) -> Path:
        return self.state / "pids"

    @property
    def etcd_data(self) -> Path:
        return self.state / "etcd"

    @property
    def pods(self) -> Path:
        return self.state / "pods"

    @property
    def cluster_file(self) -> Path:
        """JSON written by ``up`` once everything is ready: ports, kubeconfig, versions."""
        return self.state / "cluster.json"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.state / "admin.kubeconfig"


def host_ports() -> list[int]:
    """Ports relayed from the gateway to 127.0.0.1: ``$METATIDE_E2E_HOST_PORTS`` (a, b, ...),
    else the services' ports (`SERVICE_PORTS`)."""
    text = os.environ.get(HOST_PORTS_ENV)
    if text:
        return [int(port) for port in text.replace(" ", "").split(",") if port]
    return [int(os.environ.get(name) or default) for name, default in SERVICE_PORTS]


def layout() -> Layout:
    """The layout for this environment (``METATIDE_CACHE_DIR``, ``METATIDE_E2E_DIR``)."""
    cache = Path(os.environ.get("METATIDE_CACHE_DIR") or Path.home() / ".cache" / "metatide")
    state = Path(os.environ.get("METATIDE_E2E_DIR") or cache / "cluster")
    return Layout(cache=cache.absolute(), state=state.absolute())
