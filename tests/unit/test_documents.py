"""The typed contract between the engine and the operator, checked from both ends.

tests/fixtures/documents/ holds the wire format as it is today: a plan result line, a finalize
result line and its summary.json, from a real run, a status as the operator writes it, and a
lease.json as the phases write it.
The models must read them and write them back byte for byte, so renaming, dropping or adding
a field in a model fails here (a deliberate change of the format regenerates the fixtures and
says so in its commit). A real run on SQLite, phase by phase through the CLI, must produce
lines of the same shape, and the operator's reconcile must read exactly those lines.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from metatide.extractor.cli.app import app
from metatide.extractor.core import logs
from metatide.extractor.core.documents import (
    TERMINATION_MESSAGE_LIMIT,
    ExtractionStatus,
    PlanResult,
    RunSummary,
)
from metatide.extractor.state.lease import LeaseDocument
from metatide.operator import crd
from metatide.operator.jobs import JobDefaults
from metatide.operator.model import IncrementalExtractionSpec
from metatide.operator.reconcile import JobView, Snapshot, reconcile

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "documents"


def fixture_line(name: str) -> str:
    return (FIXTURES / name).read_text().strip()


def shape(value: Any) -> Any:
    """The keys of a JSON document at every level (values left out)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value[:1]]
    return type(value).__name__ if value is not None else "null"


def test_the_plan_result_line_reads_and_writes_back_unchanged() -> None:
    line = fixture_line("plan-result.jsonl")
    assert PlanResult.model_validate_json(line).result_line() == line


def test_the_finalize_result_line_reads_and_writes_back_unchanged() -> None:
    line = fixture_line("finalize-result.jsonl")
    assert RunSummary.model_validate_json(line).result_line() == line


def test_summary_json_reads_and_writes_back_unchanged() -> None:
    data = (FIXTURES / "summary.json").read_bytes()
    assert RunSummary.model_validate_json(data).to_json() == data


def test_the_status_reads_and_writes_back_unchanged() -> None:
    document = json.loads((FIXTURES / "status.json").read_text())
    assert ExtractionStatus.model_validate(document).to_dict() == document


def test_lease_json_reads_and_writes_back_unchanged() -> None:
    """Every phase of a run reads the lease another phase wrote: a renamed field would make
    the holder's lease unreadable, which `parse` treats as free."""
    data = (FIXTURES / "lease.json").read_bytes()
    lease = LeaseDocument.parse(data)
    assert lease is not None
    assert lease.to_bytes() == data


@pytest.mark.parametrize(
    ("model", "fixture"),
    [(PlanResult, "plan-result.jsonl"), (RunSummary, "finalize-result.jsonl")],
)
def test_a_renamed_field_is_an_error_not_a_zero(model: type[Any], fixture: str) -> None:
    document = json.loads(fixture_line(fixture))
    for name in model.model_fields:
        if name == "phase":
            continue
        key = model.model_fields[name].serialization_alias or name
        renamed = {("renamed_" + k if k == key else k): v for k, v in document.items()}
        with pytest.raises(ValueError, match=name):
            model.model_validate(renamed)


def test_every_status_field_is_in_the_crd_schema() -> None:
    schema = crd.status_schema()
    document = json.loads((FIXTURES / "status.json").read_text())

    def check(value: Any, node: dict[str, Any], path: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                assert key in node.get("properties", {}), f"{path}.{key} is not in the CRD"
                check(item, node["properties"][key], f"{path}.{key}")
        elif isinstance(value, list) and value:
            check(value[0], node["items"], f"{path}[]")

    check(document, schema, "status")


def test_the_termination_message_fits_kubernetes_limit() -> None:
    summary = RunSummary.model_validate_json(fixture_line("finalize-result.jsonl"))
    many = [
        f"current-state/column/bucket-{i:05d}/part-0000{i}.parquet: missing" for i in range(400)
    ]
    damaged = summary.model_copy(
        update={
            "baseline": summary.baseline.model_copy(update={"complete": False, "problems": many})
        }
    )
    message = damaged.termination_message()
    assert len(damaged.result_line()) > TERMINATION_MESSAGE_LIMIT
    assert len(message.encode()) <= TERMINATION_MESSAGE_LIMIT
    parsed = RunSummary.model_validate_json(message)
    assert parsed.tables == summary.tables
    assert parsed.baseline.problems[-1].endswith(f"more in runs/{summary.run_id}/summary.json")
    assert summary.termination_message() == summary.result_line()


# -- a real run, phase by phase, read by the operator ------------------------------------


@pytest.fixture
def real_lines(tmp_path: Path) -> tuple[str, str]:
    """The plan and finalize result lines of a real second run on SQLite (via the CLI)."""
    database = tmp_path / "shop.sqlite"
    with sqlite3.connect(database) as connection:
        connection.executescript(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);"
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL);"
        )
    connection.close()
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "applicationName": "shop",
                "connectionId": "contract",
                "source": {"kind": "sqlite", "path": str(database)},
                "storage": {"url": f"file://{tmp_path / 'store'}"},
                "columns": {"batchSize": 1},
                "duckdb": {"tempDirectory": str(tmp_path / "duck"), "memoryLimit": "256MB"},
            }
        )
    )
    runner = CliRunner()
    env = {"METATIDE_SPEC": None, "METATIDE_RUN_ID": None, "JOB_COMPLETION_INDEX": None}

    def invoke(*args: str) -> str:
        result = runner.invoke(app, [*args, "--config", str(spec)], env=env)
        assert result.exit_code == 0, result.output
        return result.stdout.strip().splitlines()[-1]

    try:
        invoke("run")
        with sqlite3.connect(database) as connection:
            connection.executescript("CREATE TABLE invoices (id INTEGER); DROP TABLE orders;")
        connection.close()
        plan = invoke("plan")
        document = json.loads(plan)
        for index in range(document["batch_count"]):
            invoke("columns", "--run-id", document["run_id"], "--batch", str(index))
        finalize = invoke("finalize", "--run-id", document["run_id"])
    finally:
        logs.configure("INFO")
    return plan, finalize


def test_a_real_run_prints_lines_of_the_frozen_shape(real_lines: tuple[str, str]) -> None:
    plan, finalize = real_lines
    assert shape(json.loads(plan)) == shape(json.loads(fixture_line("plan-result.jsonl")))
    assert shape(json.loads(finalize)) == shape(json.loads(fixture_line("finalize-result.jsonl")))


def test_the_operator_reads_the_lines_a_real_run_prints(real_lines: tuple[str, str]) -> None:
    plan_line, finalize_line = real_lines
    plan = PlanResult.model_validate_json(plan_line)
    summary = RunSummary.model_validate_json(finalize_line)
    spec = IncrementalExtractionSpec.model_validate(
        {
            "applicationName": "shop",
            "connectionId": "contract",
            "source": {"kind": "sqlite", "path": "/data/shop.sqlite"},
            "storage": {"url": "file:///data/store"},
        }
    )
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def step(status: ExtractionStatus, job: JobView | None = None) -> ExtractionStatus:
        snapshot = Snapshot(
            name="shop",
            uid="uid",
            generation=1,
            created_at=now,
            annotations={},
            spec=spec,
            status=status,
            now=now,
            defaults=JobDefaults("metatide:test"),
            job=job,
        )
        written = reconcile(snapshot).status.to_dict()
        return ExtractionStatus.model_validate(written)

    status = step(ExtractionStatus())
    assert status.current_run is not None
    # The run id in the real lines is the CLI's; the operator's run is renamed to match.
    status = status.model_copy(
        update={"current_run": status.current_run.model_copy(update={"id": plan.run_id})}
    )
    status = step(status, JobView(exists=True, complete=True, result=plan_line))
    assert status.current_run is not None
    assert status.current_run.batches.total == plan.batch_count
    if plan.batch_count:
        status = step(status, JobView(exists=True, complete=True, succeeded=plan.batch_count))
    status = step(status, JobView(exists=True, complete=True, result=finalize_line))
    last = status.last_successful_run
    assert last is not None
    assert status.current_run is None
    assert (
        (last.created_tables, last.deleted_tables, last.unchanged_tables)
        == (
            summary.tables.created,
            summary.tables.deleted,
            summary.tables.unchanged,
        )
        == (1, 1, 1)
    )
    assert last.columns_extracted == summary.columns.extracted
    assert status.marker == summary.next_marker.isoformat()
