"""The operator process: kopf's watch streams feed the event-driven `Controller`.

kopf runs standalone (one replica, no peering) and provides what it is good at: the watch
streams (list, then watch, resumed after disconnects), the liveness endpoint and signal
handling. It watches two kinds: IncrementalExtractions, and Jobs labelled as the operator's
(the label selector is applied by the API server, so other Jobs never reach the operator).
Both handlers only hand the object to the controller's caches; the controller's workers do
the reconciling. kopf itself writes nothing (no handler needs its progress annotations or
finalizer; a finalizer left by an older operator is removed by kopf once) and posts only
warnings as events.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import kopf

from metatide.operator import metrics
from metatide.operator.controller import Controller, ControllerSettings
from metatide.operator.kube import Kube
from metatide.operator.model import GROUP, PLURAL, VERSION
from metatide.operator.names import LABEL_MANAGED_BY, MANAGER

LEGACY_FINALIZER = "metatide.dev/operator"
"""The finalizer of the timer-driven operator; kopf removes it from resources it sees."""


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the operator serves /metrics and kopf's /healthz."""

    metrics_address: str
    metrics_port: int
    health_address: str
    health_port: int


def registry_for(controller: Controller, stop: threading.Event) -> kopf.OperatorRegistry:
    """kopf's handlers: every watch event goes to the controller; startup starts its workers
    (if they ever stop, `stop` ends the operator, so the pod restarts instead of idling)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """In a pod its ServiceAccount, else the kubeconfig (as the official client finds it)."""
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.standalone = True
        settings.posting.level = logging.WARNING
        settings.persistence.finalizer = LEGACY_FINALIZER
        settings.watching.server_timeout = 600
        settings.watching.client_timeout = 660
        settings.watching.label_selectors["batch", "jobs"] = f"{LABEL_MANAGED_BY}={MANAGER}"
        loop = asyncio.get_running_loop()
        loop.set_default_executor(
            ThreadPoolExecutor(controller.settings.workers + 1, thread_name_prefix="reconcile")
        )
        task = asyncio.create_task(controller.run(), name="metatide-controller")
        task.add_done_callback(lambda done: _report_exit(done, stop))

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def _resource(event: kopf.RawEvent, **_: Any) -> None:
        controller.resource_event(event["type"], event["object"])

    @kopf.on.event("batch", "v1", "jobs", registry=registry)
    async def _job(event: kopf.RawEvent, **_: Any) -> None:
        controller.job_event(event["type"], event["object"])

    return registry


def _report_exit(task: asyncio.Task[None], stop: threading.Event) -> None:
    """The controller runs until the operator stops; anything else is a bug: log it and stop
    the operator (exit 1), so Kubernetes restarts it."""
    if task.cancelled():
        return
    logging.getLogger("metatide.operator").critical(
        "the controller stopped; stopping the operator", exc_info=task.exception()
    )
    stop.set()


def run(namespaces: list[str], endpoints: Endpoints, settings: ControllerSettings) -> None:
    """Run the operator until it is stopped (SIGTERM/SIGINT)."""
    metrics.serve(endpoints.metrics_port, endpoints.metrics_address)
    controller = Controller(Kube(connections=settings.workers + 1), settings)
    stop = threading.Event()
    asyncio.run(
        kopf.operator(
            registry=registry_for(controller, stop),
            standalone=True,
            namespaces=namespaces,
            clusterwide=not namespaces,
            liveness_endpoint=f"http://{endpoints.health_address}:{endpoints.health_port}/healthz",
            stop_flag=stop,
        )
    )
    if stop.is_set():
        raise SystemExit(1)
