"""The full `metatide` command: the engine's commands plus the Kubernetes ones.

The engine's CLI (`metatide.extractor.cli`) must not know the operator (layers point down
only), so the console script starts here and adds `operator` and `crd` to the engine's app.
"""

from __future__ import annotations

from typing import Annotated

import typer

from metatide.extractor.cli import app

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
) -> None:
    """Run the kopf operator that reconciles IncrementalExtraction resources into Jobs."""
    from metatide.operator.main import Endpoints, run

    run(namespaces or [], Endpoints(metrics_address, metrics_port, health_address, health_port))


@app.command("crd")
def print_crd() -> None:
    """Print the IncrementalExtraction CustomResourceDefinition (crds/ holds this output)."""
    from metatide.operator.crd import render_yaml

    typer.echo(render_yaml(), nl=False)


def main() -> None:
    """Console-script entry point."""
    app()
