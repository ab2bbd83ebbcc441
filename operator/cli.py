"""The full `metatide` command: the engine's commands plus the Kubernetes ones.

The engine's CLI (`metatide.extractor.cli`) must not know the operator (layers point down
only), so the console script starts here and adds `operator` and `crd` to the engine's app.
"""

from __future__ import annotations

from typing import Annotated

import typer

from metatide.extractor.cli import app


@app.command("operator")
def run_operator(
    namespaces: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Namespace to watch (repeatable); default all."),
    ] = None,
    metrics_port: Annotated[
        int, typer.Option("--metrics-port", help="Port of the Prometheus /metrics endpoint.")
    ] = 8080,
) -> None:
    """Run the kopf operator that reconciles IncrementalExtraction resources into Jobs."""
    from metatide.operator.main import run

    run(namespaces or [], metrics_port)


@app.command("crd")
def print_crd() -> None:
    """Print the IncrementalExtraction CustomResourceDefinition (crds/ holds this output)."""
    from metatide.operator.crd import render_yaml

    typer.echo(render_yaml(), nl=False)


def main() -> None:
    """Console-script entry point."""
    app()
