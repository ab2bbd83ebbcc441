"""The `metatide` command: result lines, phases one by one, exit codes, env inputs, demo."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from metatide.extractor.cli.app import app
from metatide.extractor.core import logs
from metatide.extractor.core.errors import EXIT_RETRYABLE, EXIT_TERMINAL
from metatide.extractor.core.spec import load_spec_file
from metatide.extractor.state.lease import LEASE_KEY
from metatide.extractor.state.manifest import MANIFEST_KEY
from metatide.extractor.state.marker import MARKER_KEY
from tests.harness import assert_same_state, committed_state

ROOT = Path(__file__).resolve().parents[2]
METATIDE = ROOT / ".venv" / "bin" / "metatide"
TABLES = ("customers", "orders", "products")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI points the log handler at the runner's stderr; point it back after each test."""
    yield
    logs.configure("INFO")


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "shop.sqlite"
    with sqlite3.connect(path) as connection:
        connection.executescript(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL);"
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER, total REAL);"
            "CREATE TABLE products (id INTEGER PRIMARY KEY, title TEXT -- shown in the shop\n);"
        )
    connection.close()
    return path


def spec_document(tmp_path: Path, database: Path, store: str = "store") -> dict[str, Any]:
    return {
        "applicationName": "shop",
        "connectionId": "cli",
        "source": {"kind": "sqlite", "path": str(database)},
        "storage": {"url": f"file://{tmp_path / store}"},
        "columns": {"batchSize": 1, "parallelism": 2},
        "state": {"tablesPerBucket": 1},
        "duckdb": {"tempDirectory": str(tmp_path / "duck"), "memoryLimit": "512MB"},
    }


def write_spec(tmp_path: Path, document: dict[str, Any], name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


@pytest.fixture
def spec_file(tmp_path: Path, database: Path) -> Path:
    return write_spec(tmp_path, spec_document(tmp_path, database))


def invoke(args: list[str], env: dict[str, str | None] | None = None) -> Result:
    base: dict[str, str | None] = {
        "METATIDE_SPEC": None,
        "METATIDE_RUN_ID": None,
        "JOB_COMPLETION_INDEX": None,
        "METATIDE_TERMINATION_MESSAGE_PATH": None,
        "METATIDE_LOG_FORMAT": "json",
    }
    return CliRunner().invoke(app, args, env={**base, **(env or {})}, catch_exceptions=False)


def result_line(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    document: dict[str, Any] = json.loads(lines[0])
    return document


def store_root(tmp_path: Path, store: str = "store") -> Path:
    return tmp_path / store / "persistent-artifacts/apps/shop/connection/cli"


def test_run_prints_one_finalize_line(spec_file: Path, tmp_path: Path) -> None:
    line = result_line(invoke(["run", "--config", str(spec_file)]))
    assert line["phase"] == "finalize"
    assert line["full_extraction"] is True
    assert line["tables"]["CREATED"] == 3
    assert line["state_rows"] == {"database": 1, "schema": 1, "table": 3, "column": 7}
    assert line["diff"]["column"]["created"] == 7
    assert line["batches"] == 3
    root = store_root(tmp_path)
    assert (root / MANIFEST_KEY).is_file()
    assert (root / MARKER_KEY).is_file()
    assert not (root / LEASE_KEY).exists()
    again = result_line(invoke(["run", "-c", str(spec_file)]))
    assert again["tables"]["NO CHANGE"] == 3
    assert again["parent_run_id"] == line["run_id"]


def test_run_as_a_subprocess(spec_file: Path, tmp_path: Path) -> None:
    env = {**os.environ, "METATIDE_LOG_FORMAT": "json"}
    for name in ("METATIDE_SPEC", "METATIDE_RUN_ID", "METATIDE_TERMINATION_MESSAGE_PATH"):
        env.pop(name, None)
    completed = subprocess.run(
        [str(METATIDE), "run", "--config", str(spec_file)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert len(lines) == 1, completed.stdout
    line = json.loads(lines[0])
    assert line["phase"] == "finalize"
    assert line["tables"] == {
        "CREATED": 3,
        "UPDATED": 0,
        "NO CHANGE": 0,
        "BACKFILL": 0,
        "deleted": 0,
    }


def test_phases_one_by_one_equal_run(spec_file: Path, tmp_path: Path, database: Path) -> None:
    planned = result_line(invoke(["plan", "--config", str(spec_file)]))
    assert planned["phase"] == "plan"
    assert planned["batch_count"] == 3
    assert planned["tables_to_extract"] == 3
    run_id = planned["run_id"]
    batch0 = result_line(
        invoke(
            ["columns", "--config", str(spec_file)],
            env={"JOB_COMPLETION_INDEX": "0", "METATIDE_RUN_ID": run_id},
        )
    )
    assert (batch0["batch"], batch0["run_id"], batch0["tables_present"]) == (0, run_id, 1)
    extracted = batch0["columns"]
    for index in (1, 2):
        batch = result_line(
            invoke(["columns", "-c", str(spec_file), "--run-id", run_id, "--batch", str(index)])
        )
        assert batch["phase"] == "columns"
        assert batch["batch"] == index
        assert batch["tables_requested"] == 1
        assert batch["tables_dropped_since_plan"] == 0
        extracted += batch["columns"]
    assert extracted == 7
    final = result_line(invoke(["finalize", "-c", str(spec_file), "--run-id", run_id]))
    assert final["phase"] == "finalize"
    assert final["run_id"] == run_id
    assert final["state_rows"]["column"] == 7

    reference_file = write_spec(
        tmp_path, spec_document(tmp_path, database, "reference"), "ref.yaml"
    )
    reference = result_line(invoke(["run", "--config", str(reference_file)]))
    assert reference["state_rows"] == final["state_rows"]
    assert reference["diff"] == final["diff"]
    phased = asyncio.run(committed_state(load_spec_file(spec_file), tmp_path / "read-a"))
    whole = asyncio.run(committed_state(load_spec_file(reference_file), tmp_path / "read-b"))
    assert_same_state(phased, whole)
    assert not (store_root(tmp_path) / LEASE_KEY).exists()


def test_finalize_before_all_batches_is_terminal(spec_file: Path) -> None:
    run_id = result_line(invoke(["plan", "-c", str(spec_file)]))["run_id"]
    result = invoke(["finalize", "-c", str(spec_file), "--run-id", run_id])
    assert result.exit_code == EXIT_TERMINAL
    assert "IncompleteRunError" in result.stderr
    assert result.stdout == ""


def test_a_batch_that_does_not_exist_is_terminal(spec_file: Path) -> None:
    run_id = result_line(invoke(["plan", "-c", str(spec_file)]))["run_id"]
    result = invoke(["columns", "-c", str(spec_file), "--run-id", run_id, "--batch", "3"])
    assert result.exit_code == EXIT_TERMINAL
    assert "batch 3 does not exist" in result.stderr


def test_invalid_spec_exits_3_naming_the_field(tmp_path: Path, database: Path) -> None:
    document = spec_document(tmp_path, database)
    document["columns"]["batchSize"] = -4
    result = invoke(["run", "--config", str(write_spec(tmp_path, document))])
    assert result.exit_code == EXIT_TERMINAL
    assert "columns.batchSize" in result.stderr
    assert result.stdout == ""


def test_missing_spec_file_exits_3(tmp_path: Path) -> None:
    result = invoke(["plan", "--config", str(tmp_path / "absent.yaml")])
    assert result.exit_code == EXIT_TERMINAL
    assert "absent.yaml" in result.stderr


def test_no_spec_at_all_exits_3() -> None:
    result = invoke(["run"])
    assert result.exit_code == EXIT_TERMINAL
    assert "METATIDE_SPEC" in result.stderr


def test_finalize_without_a_run_id_exits_3(spec_file: Path) -> None:
    result = invoke(["finalize", "--config", str(spec_file)])
    assert result.exit_code == EXIT_TERMINAL
    assert "--run-id" in result.stderr
    assert "METATIDE_RUN_ID" in result.stderr


def test_columns_without_a_batch_index_exits_3(spec_file: Path) -> None:
    result = invoke(["columns", "-c", str(spec_file), "--run-id", "20250101t000000z-abcdef12"])
    assert result.exit_code == EXIT_TERMINAL
    assert "JOB_COMPLETION_INDEX" in result.stderr


def test_malformed_run_id_exits_3(spec_file: Path) -> None:
    result = invoke(["finalize", "-c", str(spec_file), "--run-id", "../../etc"])
    assert result.exit_code == EXIT_TERMINAL
    assert "run id" in result.stderr


def test_unreachable_source_is_retryable(tmp_path: Path) -> None:
    document = spec_document(tmp_path, tmp_path / "missing.sqlite")
    result = invoke(["run", "--config", str(write_spec(tmp_path, document))])
    assert result.exit_code == EXIT_RETRYABLE
    assert "SourceUnavailableError" in result.stderr
    assert "missing.sqlite" in result.stderr
    assert not (store_root(tmp_path) / LEASE_KEY).exists()  # the next run is not blocked
    assert not (store_root(tmp_path) / MANIFEST_KEY).exists()


def test_unreachable_source_as_a_subprocess_exits_75(tmp_path: Path) -> None:
    document = spec_document(tmp_path, tmp_path / "missing.sqlite")
    env = {key: value for key, value in os.environ.items() if not key.startswith("METATIDE_")}
    completed = subprocess.run(
        [str(METATIDE), "plan", "--config", str(write_spec(tmp_path, document))],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert completed.returncode == EXIT_RETRYABLE, completed.stderr
    assert completed.stdout == ""


def test_spec_from_the_environment(tmp_path: Path, database: Path) -> None:
    spec_json = json.dumps(spec_document(tmp_path, database))
    line = result_line(invoke(["run"], env={"METATIDE_SPEC": spec_json}))
    assert line["phase"] == "finalize"
    assert line["state_rows"]["table"] == 3


def test_bad_json_in_the_environment_exits_3() -> None:
    result = invoke(["run"], env={"METATIDE_SPEC": "{nope"})
    assert result.exit_code == EXIT_TERMINAL
    assert "METATIDE_SPEC environment variable is not valid JSON" in result.stderr


def test_termination_log_gets_the_result_line(spec_file: Path, tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    result = invoke(
        ["run", "-c", str(spec_file)], env={"METATIDE_TERMINATION_MESSAGE_PATH": str(log)}
    )
    line = result_line(result)
    assert json.loads(log.read_text(encoding="utf-8")) == line


def test_termination_log_gets_the_error(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    document = spec_document(tmp_path, tmp_path / "missing.sqlite")
    result = invoke(
        ["plan", "-c", str(write_spec(tmp_path, document))],
        env={"METATIDE_TERMINATION_MESSAGE_PATH": str(log)},
    )
    assert result.exit_code == EXIT_RETRYABLE
    assert log.read_text(encoding="utf-8").startswith("SourceUnavailableError: ")


def test_demo_prints_a_rename_and_a_before_and_after(tmp_path: Path) -> None:
    result = invoke(["demo", "--keep", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.stderr
    output = " ".join(result.stdout.split())
    for change in ("created", "updated", "deleted", "renamed"):
        assert change in output
    assert "main.catalog_items" in output
    assert "was main.products" in output
    assert "comment: ∅ → 'where" in output  # before and after of the changed attribute


def test_force_full_flag(spec_file: Path) -> None:
    result_line(invoke(["run", "-c", str(spec_file)]))
    again = result_line(invoke(["run", "-c", str(spec_file), "--force-full"]))
    assert again["full_extraction"] is True
    assert again["columns"]["extracted"] == 7
    assert again["diff"]["column"] == {"created": 0, "updated": 0, "deleted": 0}


def test_allow_mass_delete_flag(spec_file: Path, database: Path, tmp_path: Path) -> None:
    result_line(invoke(["run", "-c", str(spec_file)]))
    with sqlite3.connect(database) as connection:
        connection.executescript("DROP TABLE orders; DROP TABLE products;")
    connection.close()
    refused = invoke(["run", "-c", str(spec_file)])
    assert refused.exit_code == EXIT_TERMINAL
    assert "MassDeleteRefusedError" in refused.stderr
    assert "maxDeletedFraction" in refused.stderr
    assert not (store_root(tmp_path) / LEASE_KEY).exists()
    allowed = result_line(invoke(["run", "-c", str(spec_file), "--allow-mass-delete"]))
    assert allowed["tables"]["deleted"] == 2
    assert allowed["tables_deleted_by_reason"] == {"dropped": 2, "out_of_scope": 0}


def log_events(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]


def test_each_phase_logs_its_start_milestones_and_end(spec_file: Path) -> None:
    """`kubectl logs` of a phase pod shows what it is doing, as JSON with run id and phase."""
    planned = invoke(["plan", "--config", str(spec_file)])
    run_id = result_line(planned)["run_id"]
    batch = invoke(["columns", "-c", str(spec_file), "--run-id", run_id, "--batch", "1"])
    for index in (0, 2):
        invoke(["columns", "-c", str(spec_file), "--run-id", run_id, "--batch", str(index)])
    final = invoke(["finalize", "-c", str(spec_file), "--run-id", run_id])
    expected = {
        "plan": (planned, ["phase_started", "catalog_listed", "phase_finished"]),
        "columns": (batch, ["phase_started", "phase_finished"]),
        "finalize": (
            final,
            [
                "phase_started",
                "state_built",
                "manifest_committed",
                "garbage_collected",
                "phase_finished",
            ],
        ),
    }
    for phase, (result, events) in expected.items():
        logged = log_events(result)
        assert [event["event"] for event in logged] == events, phase
        assert {event["phase"] for event in logged} == {phase}
        assert {event["run_id"] for event in logged} == {run_id}
        assert all(event["level"] == "info" and "timestamp" in event for event in logged)
    assert {event.get("batch") for event in log_events(batch)} == {1}
    plan_end = log_events(planned)[-1]
    assert (plan_end["tables"], plan_end["batches"]) == (3, 3)
    assert log_events(batch)[-1]["columns"] == 3  # orders: id, customer_id, total
    finalize_end = log_events(final)[-1]
    assert finalize_end["state_rows"]["table"] == 3
    assert finalize_end["duration_seconds"] >= 0
    previous = log_events(invoke(["plan", "--config", str(spec_file)]))
    loaded = next(event for event in previous if event["event"] == "previous_state_loaded")
    assert loaded["tables"] == 3


def test_stdlib_loggers_render_like_the_rest() -> None:
    """The S3 adapter logs through the standard library: the same JSON stream on stderr."""
    script = (
        "import logging\n"
        "from metatide.extractor.core import logs\n"
        "logs.configure('INFO', json_logs=True)\n"
        "logging.getLogger('metatide.extractor.storage.s3').warning('retrying %s', 'get x')\n"
        "logs.log.info('structured', n=1)\n"
    )
    completed = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ},
        check=True,
    )
    assert completed.stdout == ""
    lines = [json.loads(line) for line in completed.stderr.splitlines()]
    assert lines[0]["event"] == "retrying get x"
    assert lines[0]["level"] == "warning"
    assert lines[0]["logger"] == "metatide.extractor.storage.s3"
    assert lines[1]["event"] == "structured"


def test_verify_reports_a_sound_state_then_names_a_damaged_file(
    spec_file: Path, tmp_path: Path
) -> None:
    result_line(invoke(["run", "--config", str(spec_file)]))
    sound = result_line(invoke(["verify", "--config", str(spec_file)]))
    assert sound["command"] == "verify"
    assert sound["ok"] is True
    assert sound["files"] == 2 + 2 * 3  # database, schema; a table and a column file per bucket
    assert sound["bytes_read"] >= sound["bytes_listed"] > 0
    damaged = sorted((store_root(tmp_path) / "current-state" / "column").iterdir())[0]
    damaged.write_bytes(damaged.read_bytes() + b"!")
    result = invoke(["verify", "--config", str(spec_file)])
    assert result.exit_code == EXIT_TERMINAL
    line = json.loads(result.stdout)
    assert line["ok"] is False
    key = f"current-state/column/{damaged.name}"
    assert line["bad"] == [
        {
            "key": key,
            "problem": f"{damaged.stat().st_size} bytes where the manifest records "
            f"{damaged.stat().st_size - 1}",
        }
    ]
    assert "forceFullExtraction" in line["advice"]
    assert any(e.get("key") == key for e in log_events(result))
    result_line(invoke(["run", "--config", str(spec_file), "--force-full"]))
    assert result_line(invoke(["verify", "--config", str(spec_file)]))["ok"] is True


def test_verify_of_an_empty_store_is_fine(spec_file: Path) -> None:
    line = result_line(invoke(["verify", "--config", str(spec_file)]))
    assert (line["ok"], line["files"], line["run_id"]) == (True, 0, None)


def history_store(spec_file: Path, database: Path) -> list[str]:
    """Three kept states: first run, then orders renamed and a column added, then an ALTER."""
    runs = [result_line(invoke(["run", "-c", str(spec_file)]))["run_id"]]
    with sqlite3.connect(database) as connection:
        connection.executescript(
            "ALTER TABLE orders RENAME TO purchases; ALTER TABLE customers ADD COLUMN email TEXT;"
        )
    connection.close()
    runs.append(result_line(invoke(["run", "-c", str(spec_file)]))["run_id"])
    with sqlite3.connect(database) as connection:
        connection.executescript("ALTER TABLE purchases ADD COLUMN note TEXT;")
    connection.close()
    runs.append(result_line(invoke(["run", "-c", str(spec_file)]))["run_id"])
    return runs


def canonical(line: str) -> str:
    """A JSON line with its keys sorted: equal records compare equal whatever the key order."""
    return json.dumps(json.loads(line), sort_keys=True)


def test_show_diff_and_history_look_back_over_kept_states(spec_file: Path, database: Path) -> None:
    first, second, third = history_store(spec_file, database)
    shown = invoke(["show", "-c", str(spec_file), "--as-of", first, "--json"])
    assert shown.exit_code == 0, shown.stderr
    names = [json.loads(line)["table_name"] for line in shown.stdout.splitlines()]
    assert names == ["customers", "orders", "products"]
    columns = invoke(
        ["show", "-c", str(spec_file), "--entity", "column", "--match", "main.purch*", "--json"]
    )
    listed = [json.loads(line)["column_name"] for line in columns.stdout.splitlines()]
    assert listed == ["customer_id", "id", "note", "total"]  # in key order

    diffed = invoke(["diff", "-c", str(spec_file), "--from", first, "--to", third, "--json"])
    assert diffed.exit_code == 0, diffed.stderr
    records = [json.loads(line) for line in diffed.stdout.splitlines()]
    summary = sorted((r["entity"], r["change"], r["table_name"], r["column_name"]) for r in records)
    assert summary == [
        ("column", "created", "customers", "email"),
        ("column", "created", "purchases", "note"),
        ("table", "renamed", "purchases", None),
    ]
    renamed = next(r for r in records if r["change"] == "renamed")
    assert (renamed["previous_table_name"], renamed["run_id"]) == ("orders", third)

    # Consecutive states: the diff equals what the later run recorded itself. The run writes
    # its changes.jsonl streaming, in no set order (bench/README.md), so compare as sets.
    for older, newer in ((first, second), (second, third)):
        computed = invoke(["diff", "-c", str(spec_file), "--from", older, "--to", newer, "--json"])
        stored = (
            (store_root(spec_file.parent) / "runs" / newer / "changes.jsonl")
            .read_text()
            .splitlines()
        )
        assert sorted(map(canonical, computed.stdout.splitlines())) == sorted(
            map(canonical, stored)
        )

    history = invoke(["history", "purchases", "-c", str(spec_file), "--json"])
    assert history.exit_code == 0, history.stderr
    document = json.loads(history.stdout)
    assert document["table"] == ["main", "main", "purchases"]
    versions = [
        (v["run_id"], v["name"][2], [c["change"] for c in v["changes"] if c["entity"] == "table"])
        for v in document["versions"]
    ]
    assert versions == [
        (first, "orders", ["created"]),
        (second, "purchases", ["renamed"]),
        (third, "purchases", []),
    ]
    assert any(c["column_name"] == "note" for c in document["versions"][2]["changes"])
    table_view = invoke(["history", "main.purchases", "-c", str(spec_file)])
    assert "was main.orders" in " ".join(table_view.stdout.split())


def test_look_back_errors_name_the_kept_runs(spec_file: Path) -> None:
    missing = invoke(["show", "-c", str(spec_file)])
    assert missing.exit_code == EXIT_TERMINAL
    assert "no committed state" in missing.stderr
    run_id = result_line(invoke(["run", "-c", str(spec_file)]))["run_id"]
    unknown = invoke(["diff", "-c", str(spec_file), "--from", "20200101t000000z-00000000"])
    assert unknown.exit_code == EXIT_TERMINAL
    assert run_id in unknown.stderr
    ambiguous = invoke(["history", "nosuch", "-c", str(spec_file)])
    assert ambiguous.exit_code == EXIT_TERMINAL
    assert "no table 'nosuch'" in ambiguous.stderr
