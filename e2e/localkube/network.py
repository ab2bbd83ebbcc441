"""The node's network: one Linux bridge per cluster, and relays from it to the host's loopback.

Pods get their own network namespace, attached by the CNI ``bridge`` plugin (Debian's
containernetworking-plugins) to a bridge that ``up`` creates with the address ``gateway``, the
first host of a free 10.201.N.0/24. That one address plays three parts:

- the node's InternalIP: the kubelet serves its API there (the API server reads logs from it)
  and probes reach pods from it;
- the ``kubernetes`` Service's cluster IP: the Service range is the /27 at the start of the
  subnet, and Kubernetes gives its first address to that Service, so in-cluster clients (kopf,
  the Python client) that connect to ``https://$KUBERNETES_SERVICE_HOST:443`` reach the relay,
  which forwards to the API server on 127.0.0.1; no kube-proxy is needed;
- the host as pods see it: the relay also forwards chosen ports (PostgreSQL's and MinIO's by
  default) from ``gateway:PORT`` to ``127.0.0.1:PORT``, so services that listen on the host's
  loopback only are reachable from pods without being exposed anywhere else.

Pods get addresses from .32 up (host-local IPAM, state in the cluster directory) and a default
route through the gateway; nothing is masqueraded, so pods reach the host and each other only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SUBNETS = ipaddress.ip_network("10.201.0.0/16")
POD_RANGE_START = 32  # .1-.31: the Service range (/27); pods from .32
SERVICE_PORT = 443  # the kubernetes Service's port


class NetworkError(RuntimeError):
    """The bridge could not be made or removed; the message carries the ``ip`` error."""


@dataclass(frozen=True)
class Network:
    """One cluster's bridge and addresses (saved as network.json for ``down``)."""

    bridge: str
    subnet: str

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)

    @property
    def service_cidr(self) -> str:
        return str(ipaddress.IPv4Network((self.network.network_address, 27)))

    @property
    def first_pod_address(self) -> str:
        return str(self.network.network_address + POD_RANGE_START)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)) + "\n")

    @classmethod
    def load(cls, path: Path) -> Network | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def cluster_id(state: Path) -> str:
    """A short name for the cluster of this state directory (bridge and cgroup names)."""
    return hashlib.sha256(str(state).encode()).hexdigest()[:8]


def _ip_json(*args: str) -> list[dict[str, Any]]:
    done = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True)
    found: list[dict[str, Any]] = json.loads(done.stdout or "[]")
    return found


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host has an address in or a route to."""
    used = []
    for link in _ip_json("-4", "addr"):
        for info in link.get("addr_info", []):
            used.append(ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}").network)
    for route in _ip_json("-4", "route"):
        if route.get("dst") not in (None, "default"):
            used.append(ipaddress.ip_network(route["dst"], strict=False))
    return used


def choose_subnet(state: Path, in_use: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first free /24 of 10.201.0.0/16, starting at one derived from the state directory."""
    candidates = list(SUBNETS.subnets(new_prefix=24))
    start = int(cluster_id(state), 16) % len(candidates)
    for candidate in candidates[start:] + candidates[:start]:
        if not any(candidate.overlaps(used) for used in in_use):
            return candidate
    raise NetworkError(f"no free /24 left in {SUBNETS} for the node's bridge")


@contextlib.contextmanager
def _host_lock(cache: Path) -> Iterator[None]:
    """Two clusters starting at once must not pick the same subnet."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".network.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


def create(state: Path, cache: Path) -> Network:
    """Creates this cluster's bridge on a free subnet, with the gateway address, up."""
    with _host_lock(cache):
        subnet = choose_subnet(state, _networks_in_use())
        network = Network(bridge=f"mtk-{cluster_id(state)}", subnet=str(subnet))
        _ip("link", "add", "name", network.bridge, "type", "bridge")
        network.save(state / "network.json")
        _ip("addr", "add", f"{network.gateway}/{subnet.prefixlen}", "dev", network.bridge)
        _ip("link", "set", network.bridge, "up")
    return network


def delete(network: Network) -> None:
    """Removes the bridge (the pods' veth ends went with their network namespaces)."""
    if Path(f"/sys/class/net/{network.bridge}").exists():
        _ip("link", "del", network.bridge)


def cni_config(network: Network, name: str, ipam_dir: Path) -> dict[str, Any]:
    """The CNI network list containerd hands every pod sandbox to."""
    subnet = network.network
    ipam = {
        "type": "host-local",
        "dataDir": str(ipam_dir),
        "ranges": [
            [
                {
                    "subnet": str(subnet),
                    "rangeStart": network.first_pod_address,
                    "rangeEnd": str(subnet.broadcast_address - 1),
                    "gateway": network.gateway,
                }
            ]
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
    }
    bridge = {
        "type": "bridge",
        "bridge": network.bridge,
        "isGateway": True,
        "ipMasq": False,
        "hairpinMode": True,
        "ipam": ipam,
    }
    return {"cniVersion": "1.0.0", "name": name, "plugins": [bridge]}
