"""The full `metatide` command: the engine's commands plus the Kubernetes ones.

The engine's CLI (`metatide.extractor.cli.app`) must not know the operator (layers point down
only), so the console script starts here and adds `operator` and `crd` to the engine's app.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from metatide.extractor.cli.app import app

DEFAULT_METRICS_PORT = 8080
DEFAULT_HEALTH_PORT = 8081


@app.command("operator")
def run_operator(
    namespaces: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Namespace to watch (repeatable); default all."),
    ] = None,
    metrics_port: Annotated[
        int, typer.Option("--metrics-port", help="Port of the Prometheus /metrics endpoint.")
    ] = DEFAULT_METRICS_PORT,
    metrics_address: Annotated[
        str, typer.Option("--metrics-address", help="Address the /metrics endpoint binds.")
    ] = "0.0.0.0",  # noqa: S104 - in a pod; the chart can narrow it
    health_port: Annotated[
        int, typer.Option("--health-port", help="Port of kopf's /healthz liveness endpoint.")
    ] = DEFAULT_HEALTH_PORT,
    health_address: Annotated[
        str, typer.Option("--health-address", help="Address the /healthz endpoint binds.")
    ] = "0.0.0.0",  # noqa: S104
    job_image: Annotated[
        str | None,
        typer.Option(
            "--job-image",
            envvar="METATIDE_JOB_IMAGE",
            help="Image of phase Jobs of resources that name none (the chart passes its own "
            "image). Default: the metatide image of this version.",
        ),
    ] = None,
    job_image_pull_policy: Annotated[
        str,
        typer.Option(
            "--job-image-pull-policy",
            envvar="METATIDE_JOB_IMAGE_PULL_POLICY",
            help="Pull policy that goes with --job-image: Always, IfNotPresent or Never.",
        ),
    ] = "IfNotPresent",
    workers: Annotated[
        int,
        typer.Option("--workers", min=1, max=64, help="Resources reconciled at the same time."),
    ] = 4,
    resync_seconds: Annotated[
        float,
        typer.Option(
            "--resync-seconds",
            min=10,
            help="Each resource is looked at again after this long without an event (from the "
            "operator's caches: no API request unless something changed).",
        ),
    ] = 300.0,
) -> None:
    """Run the operator that reconciles IncrementalExtraction resources into Jobs."""
    from metatide.extractor.core import logs
    from metatide.operator.controller import ControllerSettings
    from metatide.operator.jobs import JobDefaults, default_image
    from metatide.operator.main import Endpoints, run

    if job_image_pull_policy not in ("Always", "IfNotPresent", "Never"):
        raise typer.BadParameter(
            f"{job_image_pull_policy!r}: expected Always, IfNotPresent or Never",
            param_hint="--job-image-pull-policy",
        )
    logs.configure(os.environ.get("METATIDE_LOG_LEVEL", "INFO"))
    defaults = JobDefaults(job_image or default_image(), job_image_pull_policy)  # type: ignore[arg-type]
    run(
        namespaces or [],
        Endpoints(metrics_address, metrics_port, health_address, health_port),
        ControllerSettings(defaults, workers=workers, resync_seconds=resync_seconds),
    )


@app.command("crd")
def print_crd() -> None:
    """Print the IncrementalExtraction CustomResourceDefinition (crds/ holds this output)."""
    from metatide.operator.crd import render_yaml

    typer.echo(render_yaml(), nl=False)


def main() -> None:
    """Console-script entry point."""
    app()
