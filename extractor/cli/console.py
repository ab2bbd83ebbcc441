"""The terminal views of the CLI: rich progress bars (`Progress`) and tables of change records
and state rows (`show`, `diff`, `history`, the demo)."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table


class RichProgress:
    """Draws one bar per step on stderr; steps without a total show a pulsing bar."""

    def __init__(self) -> None:
        self._bars = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._started = False

    def start(self, task: str, total: int | None = None) -> None:
        if not self._started:
            self._bars.start()
            self._started = True
        self._tasks[task] = self._bars.add_task(task, total=total)

    def advance(self, task: str, amount: int = 1) -> None:
        if task in self._tasks:
            self._bars.advance(self._tasks[task], amount)

    def finish(self, task: str) -> None:
        if task in self._tasks:
            task_id = self._tasks.pop(task)
            total = self._bars.tasks[task_id].total
            self._bars.update(task_id, completed=total or 1, total=total or 1)

    def close(self) -> None:
        """Stop redrawing (the bars stay on the terminal)."""
        if self._started:
            self._bars.stop()
            self._started = False


def _name(row: dict[str, Any], prefix: str = "") -> str:
    parts = [row.get(f"{prefix}{key}") for key in ("schema_name", "table_name", "column_name")]
    return ".".join(str(part) for part in parts if part is not None)


def _value(value: Any) -> str:
    return "∅" if value is None else repr(value) if isinstance(value, str) else str(value)


def describe_change(row: dict[str, Any]) -> str:
    """One change record in words: the rename and each changed field's before → after."""
    before = json.loads(row["before"]) if row["before"] else {}
    after = json.loads(row["after"]) if row["after"] else {}
    parts = []
    if row["change"] == "renamed" or row.get("previous_table_name"):
        parts.append(f"was {_name(row, 'previous_')}")
    for field in row["changed_fields"]:
        parts.append(f"{field}: {_value(before.get(field))} → {_value(after.get(field))}")
    if row["change"] == "created":
        parts.append(str(after.get("data_type") or after.get("table_type") or ""))
    if row["change"] == "deleted":
        parts.append(row.get("reason") or "")
    return "; ".join(part for part in parts if part)


def changes_table(records: pa.Table, title: str) -> Table:
    """Change records as a table: change, entity, name, what changed."""
    table = Table(title=title)
    for name in ("change", "entity", "name", "what changed"):
        table.add_column(name)
    for row in records.to_pylist():
        table.add_row(row["change"], row["entity"], _name(row), describe_change(row))
    return table


_SHOWN: dict[str, tuple[str, ...]] = {
    "database": ("database_name", "comment"),
    "schema": ("database_name", "schema_name", "comment"),
    "table": ("schema_name", "table_name", "table_type", "object_id", "comment"),
    "column": (
        "schema_name",
        "table_name",
        "ordinal_position",
        "column_name",
        "data_type",
        "is_nullable",
        "column_default",
        "comment",
    ),
}


def rows_table(rows: pa.Table, entity: str, title: str) -> Table:
    """State rows as a table of the fields a reader scans for (`--json` has every field)."""
    shown = [name for name in _SHOWN[entity] if name in rows.column_names]
    table = Table(title=title)
    for name in shown:
        table.add_column(name.removesuffix("_name"))
    for row in rows.select(shown).to_pylist():
        table.add_row(*("" if value is None else str(value) for value in row.values()))
    return table


def print_table(table: Table) -> None:
    Console(soft_wrap=False).print(table)


def history_view(key: tuple[str, str, str], versions: list[Any]) -> None:
    """A table's versions, oldest first: each kept run that changed it, and how."""
    console = Console(soft_wrap=False)
    console.print(f"[bold]history of {'.'.join(key)}[/] over {len(versions)} kept state(s)")
    for version in versions:
        records = version.changes
        if records.num_rows == 0:
            continue
        when = version.manifest.committed_at.strftime("%Y-%m-%d %H:%M:%S")
        console.print(changes_table(records, f"run {version.manifest.run_id} ({when} UTC)"))
    if versions and versions[-1].table.num_rows == 0:
        console.print("(the table is not in the newest state)")
