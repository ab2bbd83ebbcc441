"""Certificates, the service-account signing key and kubeconfig files of one local cluster.

Generated with the ``openssl`` command (Debian's package; nothing to build) into the cluster's
state directory at every ``up``, so no secret outlives the cluster. TLS keys are P-256 (instant
to generate); the service-account key is RSA-2048, the algorithm every token consumer accepts.
Kubeconfigs are written as JSON, which kubectl, client-go and the Python client all read as YAML.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DAYS = "30"


@dataclass(frozen=True)
class Pair:
    """A certificate and its private key, as file paths."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Every credential the control plane needs."""

    ca: Pair
    apiserver: Pair
    admin: Pair
    controller_manager: Pair
    scheduler: Pair
    apiserver_kubelet_client: Pair
    kubelet: Pair
    """The kubelet's serving certificate (its HTTPS API: logs, exec), for the node's address."""
    node: Pair
    """The kubelet's client certificate: the Node authorizer knows it as system:node:NAME."""
    front_proxy_ca: Pair
    front_proxy_client: Pair
    service_account_key: Path
    service_account_pub: Path


def _openssl(*args: str, stdin: bytes | None = None) -> bytes:
    done = subprocess.run(["openssl", *args], check=False, input=stdin, capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout


NEW_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _ca(directory: Path, name: str) -> Pair:
    """A self-signed certificate authority ``<name>.crt`` / ``<name>.key``."""
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    _openssl(
        "req", "-x509", *NEW_EC_KEY, "-keyout", str(pair.key), "-out", str(pair.cert),
        "-days", DAYS, "-subj", f"/CN=metatide-e2e-{name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )  # fmt: skip
    return pair


def _leaf(
    directory: Path, ca: Pair, name: str, subject: str, *, usage: str, sans: str = ""
) -> Pair:
    """Issues a certificate signed by ``ca``; ``usage`` is serverAuth or clientAuth."""
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    extensions = ["-addext", f"extendedKeyUsage={usage}"]
    extensions += ["-addext", "keyUsage=critical,digitalSignature"]
    if sans:
        extensions += ["-addext", f"subjectAltName={sans}"]
    request = _openssl(
        "req", "-new", *NEW_EC_KEY, "-keyout", str(pair.key), "-subj", subject, *extensions
    )
    serial = str(int.from_bytes(os.urandom(8), "big"))
    _openssl(
        "x509", "-req", "-CA", str(ca.cert), "-CAkey", str(ca.key), "-set_serial", serial,
        "-days", DAYS, "-copy_extensions", "copyall", "-out", str(pair.cert),
        stdin=request,
    )  # fmt: skip
    return pair


def make_pki(directory: Path, node_name: str, node_ip: str) -> Pki:
    """Creates a fresh CA and every certificate and key below ``directory``.

    ``node_ip`` is the node's address: the kubelet serves there, and pods reach the API server
    there too (it is the ``kubernetes`` Service's cluster IP, see ``node``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca = _ca(directory, "ca")
    front_proxy_ca = _ca(directory, "front-proxy-ca")
    names = (
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    )
    apiserver_sans = f"IP:127.0.0.1,IP:{node_ip},DNS:localhost," + ",".join(
        f"DNS:{name}" for name in names
    )
    sa_key = directory / "sa.key"
    sa_pub = directory / "sa.pub"
    _openssl(
        "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(sa_key)
    )
    _openssl("pkey", "-in", str(sa_key), "-pubout", "-out", str(sa_pub))

    def client(name: str, subject: str) -> Pair:
        return _leaf(directory, ca, name, subject, usage="clientAuth")

    def server(name: str, subject: str, sans: str) -> Pair:
        return _leaf(directory, ca, name, subject, usage="serverAuth", sans=sans)

    return Pki(
        ca=ca,
        apiserver=server("apiserver", "/CN=kube-apiserver", apiserver_sans),
        admin=client("admin", "/O=system:masters/CN=metatide-e2e-admin"),
        controller_manager=client("controller-manager", "/CN=system:kube-controller-manager"),
        scheduler=client("scheduler", "/CN=system:kube-scheduler"),
        apiserver_kubelet_client=client(
            "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client"
        ),
        kubelet=server("kubelet", f"/CN={node_name}", f"IP:{node_ip},DNS:{node_name}"),
        node=client("node", f"/O=system:nodes/CN=system:node:{node_name}"),
        front_proxy_ca=front_proxy_ca,
        front_proxy_client=_leaf(
            directory,
            front_proxy_ca,
            "front-proxy-client",
            "/CN=front-proxy-client",
            usage="clientAuth",
        ),
        service_account_key=sa_key,
        service_account_pub=sa_pub,
    )


def kubeconfig(
    server: str, ca: Path, user: dict[str, str], name: str = "metatide-e2e"
) -> dict[str, Any]:
    """A one-context kubeconfig; ``user`` is e.g. {"client-certificate": ..., "client-key": ...}."""
    ca_data = base64.b64encode(ca.read_bytes()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority-data": ca_data}}
        ],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }


def cert_user(pair: Pair) -> dict[str, str]:
    return {"client-certificate": str(pair.cert), "client-key": str(pair.key)}


def write_private(path: Path, document: dict[str, Any]) -> Path:
    """Writes a JSON document readable only by its owner (it holds credentials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
