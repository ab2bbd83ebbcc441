"""Prometheus metrics of the operator: runs by outcome, durations, tables by state."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from metatide.operator.reconcile import FinishedRun

RUNS = Counter("metatide_runs_total", "Finished runs by outcome.", ["namespace", "name", "outcome"])
RUN_SECONDS = Histogram(
    "metatide_run_duration_seconds",
    "Wall time of runs, start to end.",
    ["namespace", "name", "outcome"],
    buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600),
)
PHASE_SECONDS = Gauge(
    "metatide_phase_duration_seconds",
    "Duration of each phase in the last successful run (from its summary).",
    ["namespace", "name", "phase"],
)
TABLES = Gauge(
    "metatide_tables", "Tables by state in the last successful run.", ["namespace", "name", "state"]
)


def serve(port: int, address: str) -> None:
    """Expose /metrics (port and address from the chart)."""
    start_http_server(port, addr=address)


def record(namespace: str, name: str, finished: FinishedRun) -> None:
    """Count a finished run and, for a success, publish its summary's figures."""
    RUNS.labels(namespace, name, finished.outcome).inc()
    RUN_SECONDS.labels(namespace, name, finished.outcome).observe(finished.seconds)
    summary = finished.summary
    if summary is None:
        return
    for phase, seconds in summary.durations_seconds.items():
        PHASE_SECONDS.labels(namespace, name, phase).set(seconds)
    for state, count in summary.tables.to_dict().items():
        TABLES.labels(namespace, name, state).set(count)
