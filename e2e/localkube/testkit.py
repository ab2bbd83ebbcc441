"""What end-to-end tests hold on to: the cluster's kubeconfig, kubectl, an API client, waits.

Used by e2e/conftest.py (the ``cluster`` and ``namespace`` fixtures) and by the operator's e2e
tests. Waits poll with a deadline and fail with what they last saw, so a hung Job shows its
status instead of a bare timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .api import Api, ApiError
from .node import SHARED_LABEL
from .settings import Layout

JSON = dict[str, Any]
T = TypeVar("T")


class WaitTimeoutError(AssertionError):
    """A wait ran out of time; the message says what was awaited and what was seen last."""


@dataclass(frozen=True)
class Cluster:
    """A running local cluster, seen by a test."""

    kubeconfig: Path
    kubectl_bin: Path
    helm_bin: Path
    api: Api
    host: str
    """The host as pods see it (the node's gateway): the host's relayed loopback ports are
    reachable there, e.g. ``f"{cluster.host}:55432"`` for PostgreSQL."""
    shared: Path
    """The host folder mounted at /shared in pods of namespaces made with ``shared=True``."""
    layout: Layout

    @classmethod
    def connect(cls, layout: Layout) -> Cluster:
        record = json.loads(layout.cluster_file.read_text())
        return cls(
            layout.admin_kubeconfig,
            layout.kubectl,
            layout.helm,
            Api.from_kubeconfig(layout.admin_kubeconfig),
            record["host"],
            Path(record["shared"]),
            layout,
        )

    def for_pods(self, address: str) -> str:
        """``127.0.0.1:PORT`` (or ``localhost:PORT``) as a pod reaches it: ``HOST:PORT``."""
        for loopback in ("127.0.0.1", "localhost"):
            address = address.replace(loopback, self.host)
        return address

    @property
    def env(self) -> dict[str, str]:
        """An environment for subprocesses (kubectl, helm, kopf) that targets this cluster."""
        return os.environ | {"KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
    ) -> str:
        """Runs the built kubectl; returns stdout; raises with stderr if ``check`` and it fails."""
        done = subprocess.run(
            [str(self.kubectl_bin), *args],
            check=False,
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
            )
        return done.stdout

    def apply(self, *documents: JSON) -> None:
        """``kubectl apply`` of the given objects (server-side validation and defaulting apply)."""
        self.kubectl(
            "apply",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(documents)}),
        )

    def get(self, path: str) -> JSON | None:
        """An object by API path, or None when it does not exist."""
        try:
            return self.api.get(path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    def pods(self, namespace: str, selector: str = "") -> list[JSON]:
        query = {"labelSelector": selector} if selector else {}
        items: list[JSON] = self.api.get(f"/api/v1/namespaces/{namespace}/pods", **query)["items"]
        return items

    def create_namespace(self, prefix: str = "e2e", *, shared: bool = False) -> str:
        """A fresh namespace whose default ServiceAccount exists (so pods are admitted).

        With ``shared``, its pods get the host folder ``self.shared`` at /shared.
        """
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        labels = {SHARED_LABEL: "true"} if shared else {}
        self.api.create(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}},
        )
        wait_for(
            f"ServiceAccount default in {name}",
            lambda: self.get(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
            timeout=60,
        )
        return name

    def delete_namespace(self, name: str) -> None:
        try:
            self.api.delete(f"/api/v1/namespaces/{name}")
        except ApiError as error:
            if error.status != 404:
                raise

    def wait_for_job(self, namespace: str, name: str, timeout: float = 180) -> JSON:
        """Waits until the Job has a true Complete or Failed condition and returns it."""

        def finished() -> JSON | None:
            job = self.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
            conditions = ((job or {}).get("status") or {}).get("conditions") or []
            done = any(
                c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions
            )
            return job if done else None

        return wait_for(
            f"Job {namespace}/{name} to finish",
            finished,
            timeout,
            describe=lambda: self.kubectl(
                "get", "job,pods", "-n", namespace, "-o", "wide", check=False
            ),
        )

    def wait_for_pod(
        self, namespace: str, name: str, phases: tuple[str, ...], timeout: float = 60
    ) -> JSON:
        """Waits until the pod is in one of ``phases`` and returns it."""

        def reached() -> JSON | None:
            pod = self.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
            return pod if pod and (pod.get("status") or {}).get("phase") in phases else None

        return wait_for(
            f"pod {namespace}/{name} to be {'/'.join(phases)}",
            reached,
            timeout,
            describe=lambda: json.dumps(
                self.get(f"/api/v1/namespaces/{namespace}/pods/{name}"), indent=1
            ),
        )


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float = 60,
    interval: float = 0.5,
    describe: Callable[[], str] | None = None,
) -> T:
    """Polls ``probe`` until it returns something other than None (or falsy) and returns that."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = describe() if describe else ""
            raise WaitTimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n{seen}")
        time.sleep(interval)
