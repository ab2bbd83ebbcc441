"""The kopf operator: one timer per IncrementalExtraction drives `reconcile`.

Every few seconds (and on create, resume and spec change) the handler takes a snapshot of
the resource and of its current run's Job, asks `reconcile` what to do, applies the creates
and deletes, posts the events, and writes the status in one patch. kopf runs standalone (one
replica, no peering) and posts its own events for handler failures.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from metatide.operator import metrics
from metatide.operator.kube import Kube
from metatide.operator.model import GROUP, PLURAL, VERSION, IncrementalExtractionSpec
from metatide.operator.names import object_name
from metatide.operator.reconcile import JOB_OF, Snapshot, reconcile
from metatide.operator.status import conditions

TICK_SECONDS = 3.0

_kube: Kube | None = None


def _client() -> Kube:
    global _kube  # noqa: PLW0603 - one API client per process, made after kopf logs in
    if _kube is None:
        _kube = Kube()
    return _kube


@kopf.on.startup()
def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.peering.standalone = True
    settings.posting.level = logging.INFO
    settings.persistence.finalizer = "metatide.dev/operator"
    settings.watching.server_timeout = 300


@kopf.timer(GROUP, VERSION, PLURAL, interval=TICK_SECONDS, initial_delay=0.5)
def _tick(body: kopf.Body, meta: kopf.Meta, patch: kopf.Patch, **kwargs: Any) -> None:
    spec, status, logger = kwargs["spec"], kwargs["status"], kwargs["logger"]
    reconcile_once(body, meta, dict(spec), dict(status), patch, logger)


def reconcile_once(
    body: kopf.Body,
    meta: kopf.Meta,
    spec: dict[str, Any],
    status: dict[str, Any],
    patch: kopf.Patch,
    logger: logging.Logger,
) -> None:
    """One reconcile of one resource: snapshot, decide, apply, patch status once."""
    namespace, name = meta["namespace"], meta["name"]
    now = datetime.now(UTC)
    try:
        parsed = IncrementalExtractionSpec.model_validate(spec)
    except ValidationError as exc:
        _stall(
            patch,
            status,
            meta,
            now,
            f"the spec is invalid: {exc.errors()[0]['msg']} at "
            f"{'.'.join(map(str, exc.errors()[0]['loc']))}",
        )
        return
    kube = _client()
    current = status.get("currentRun")
    job = None
    if current:
        job = kube.job(namespace, object_name(name, current["id"], JOB_OF[current["phase"]]))
    snapshot = Snapshot(
        name=name,
        uid=meta["uid"],
        generation=int(meta.get("generation", 1)),
        created_at=datetime.fromisoformat(meta["creationTimestamp"].replace("Z", "+00:00")),
        annotations=dict(meta.get("annotations", {})),
        spec=parsed,
        status=status,
        now=now,
        job=job,
    )
    decision = reconcile(snapshot)
    if decision.stop_run:
        kube.stop_run(namespace, name, decision.stop_run)
    running = (decision.status.get("currentRun") or {}).get("id")
    for stray in kube.stop_strays(namespace, name, running):
        logger.warning("stopped a Job of no current run: %s", stray)
    for manifest in decision.create:
        kube.create(namespace, manifest)
    for event in decision.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    for finished in decision.finished:
        metrics.record(namespace, name, finished)
    patch.status.update(decision.status)


def _stall(
    patch: kopf.Patch, status: dict[str, Any], meta: kopf.Meta, now: datetime, message: str
) -> None:
    generation = int(meta.get("generation", 1))
    patch.status.update(
        {
            "phase": "Failed",
            "observedGeneration": generation,
            "conditions": [
                {**item, "reason": "InvalidSpec"}
                for item in conditions(
                    status.get("conditions", []),
                    running=False,
                    failed=message,
                    ready_reason="InvalidSpec",
                    message=message,
                    generation=generation,
                    now=now,
                )
            ],
        }
    )


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the operator serves /metrics and kopf's /healthz."""

    metrics_address: str
    metrics_port: int
    health_address: str
    health_port: int


def run(namespaces: list[str], endpoints: Endpoints) -> None:
    """Run the operator until it is stopped (SIGTERM/SIGINT)."""
    metrics.serve(endpoints.metrics_port, endpoints.metrics_address)
    asyncio.run(
        kopf.operator(
            standalone=True,
            namespaces=namespaces,
            clusterwide=not namespaces,
            liveness_endpoint=f"http://{endpoints.health_address}:{endpoints.health_port}/healthz",
        )
    )
