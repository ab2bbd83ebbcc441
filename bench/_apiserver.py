"""A private etcd + kube-apiserver for benchmarks, and a pooled JSON client for it.

Not a benchmark itself. The binaries are the e2e harness's (``e2e/cluster build``, cached in
``~/.cache/metatide/bin``), started with the harness's own arguments, but without a controller
manager, a scheduler or a node: a benchmark of the operator's API traffic needs a server whose
every other client it knows (see bench/README.md). Ports are chosen free; the state lives in a
temporary folder that `stop` removes.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
import tempfile
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from _common import REPO_DIR

sys.path.insert(0, str(REPO_DIR / "e2e"))
from localkube import build, controlplane, pki, procs
from localkube.network import Network
from localkube.settings import NODE_NAME, Layout, layout

JSON = dict[str, Any]
_METRIC = re.compile(r"^(\w+)\{(.*)\} ([0-9.e+-]+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class Client:
    """JSON requests over one pooled TLS connection set; counts its requests by verb."""

    def __init__(self, server: str, kubeconfig: Path) -> None:
        config = json.loads(kubeconfig.read_text())
        user = config["users"][0]["user"]
        ca = Path(tempfile.mkstemp(suffix=".crt")[1])
        ca.write_text(pki_ca(config))
        self._base = server
        self._pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=16,
            cert_reqs="CERT_REQUIRED",
            ca_certs=str(ca),
            cert_file=user["client-certificate"],
            key_file=user["client-key"],
        )
        self.counts: Counter[str] = Counter()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
        verb: str | None = None,
        ok: tuple[int, ...] = (200, 201),
    ) -> JSON:
        url = self._base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json", "Content-Type": content_type}
        response = self._pool.request(method, url, body=data, headers=headers, retries=False)
        self.counts[verb or method] += 1
        if response.status not in ok:
            raise RuntimeError(f"{method} {path} -> {response.status}: {response.data[:600]!r}")
        parsed: JSON = json.loads(response.data) if response.data else {}
        return parsed

    def text(self, path: str) -> str:
        response = self._pool.request("GET", self._base + path, retries=False)
        return str(response.data.decode())

    def stream(self, path: str, query: dict[str, str]) -> Iterator[JSON]:
        """A watch: one decoded event per line until the server ends it."""
        url = self._base + path + "?" + urllib.parse.urlencode(query)
        response = self._pool.request(
            "GET", url, preload_content=False, retries=False, timeout=urllib3.Timeout(read=None)
        )
        # Not counted: the API server counts a watch when it ends, after the measurements.
        buffer = b""
        for chunk in response.stream(65536):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    yield json.loads(line)


def pki_ca(config: JSON) -> str:
    import base64

    return base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]).decode()


def metrics(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of one Prometheus metric: (labels, value)."""
    found = []
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match and match.group(1) == name:
            labels = dict(_LABEL.findall(match.group(2)))
            found.append((labels, float(match.group(3))))
    return found


def plain_metric(text: str, name: str) -> float:
    """A metric without labels (etcd's counters), 0 if absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


@dataclass
class ControlPlane:
    """etcd and kube-apiserver, started by `start`, stopped (and their state removed) by `stop`."""

    state: Path
    server: str = ""
    etcd_metrics: str = ""
    admin_kubeconfig: Path = field(default_factory=Path)
    _owned: list[procs.Owned] = field(default_factory=list)

    @classmethod
    def start(cls) -> ControlPlane:
        harness = layout()
        if not (harness.kube_bin / "kube-apiserver").exists():
            print("building the control plane (e2e/cluster build) ...", flush=True)
            build.build_all(harness)
        state = Path(tempfile.mkdtemp(prefix="metatide-bench-apiserver-"))
        where = Layout(cache=harness.cache, state=state)
        for folder in (where.logs, where.pids):
            folder.mkdir(parents=True, exist_ok=True)
        ports = controlplane.Ports(*controlplane._free_ports(6))
        net = Network(bridge="none", subnet="10.250.0.0/24")  # only for the Service range
        certs = pki.make_pki(where.certs, NODE_NAME, net.gateway)
        plane = cls(state=state)
        plane.server = f"https://127.0.0.1:{ports.apiserver}"
        plane.etcd_metrics = f"http://127.0.0.1:{ports.etcd_client}/metrics"
        plane.admin_kubeconfig = pki.write_private(
            state / "admin.kubeconfig",
            pki.kubeconfig(plane.server, certs.ca.cert, pki.cert_user(certs.admin)),
        )
        try:
            plane._spawn("etcd", controlplane.etcd_argv(where, ports), where)
            controlplane._wait(
                "etcd",
                plane._owned[-1],
                where.logs / "etcd.log",
                lambda: controlplane._http_ok(f"http://127.0.0.1:{ports.etcd_client}/health"),
                30,
            )
            argv = controlplane.apiserver_argv(where, ports, certs, net)
            plane._spawn("kube-apiserver", argv, where)
            client = plane.client()
            controlplane._wait(
                "kube-apiserver",
                plane._owned[-1],
                where.logs / "kube-apiserver.log",
                lambda: _ready(client),
                120,
            )
        except BaseException:
            plane.stop()
            raise
        return plane

    def _spawn(self, name: str, argv: list[str], where: Layout) -> None:
        _, owned = procs.spawn(name, argv, where.logs / f"{name}.log", cwd=where.state)
        self._owned.append(owned)

    def client(self) -> Client:
        return Client(self.server, self.admin_kubeconfig)

    def stop(self) -> None:
        for owned in reversed(self._owned):
            procs.stop(owned, grace=10.0)
        shutil.rmtree(self.state, ignore_errors=True)


def _ready(client: Client) -> bool:
    with contextlib.suppress(Exception):
        return client.text("/readyz").strip() == "ok"
    return False
