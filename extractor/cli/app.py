"""The `metatide` command: each phase as a subcommand (for Jobs), `run` for all (local), `demo`.

The CLI is the only synchronous layer: it reads the spec (``--config FILE`` or the
``METATIDE_SPEC`` environment variable), runs one async phase, prints one JSON result line on
stdout, and exits with a code that says whether retrying can help (see `errors`). On
Kubernetes the same line, or the error, is also written to the termination-message file so
the operator can read batch counts and failure reasons from the pod status.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from metatide.extractor.cli import faults
from metatide.extractor.core.errors import EXIT_TERMINAL, EXIT_UNEXPECTED, MetatideError, SpecError
from metatide.extractor.core.ids import RunId, parse_run_id
from metatide.extractor.core.progress import NoProgress, Progress

if TYPE_CHECKING:
    from metatide.extractor.core.documents import PlanResult, ResultDocument, RunSummary
    from metatide.extractor.core.spec import ExtractionSpec

T = TypeVar("T")


def _logs() -> Any:
    """The logging module, imported on first use: `metatide --help` needs neither it nor the
    spec model, and start-up time is paid by every Job pod (see bench/README.md)."""
    from metatide.extractor.core import logs

    return logs


app = typer.Typer(
    name="metatide",
    help="Incremental SQL metadata extraction: plan, columns, finalize, or all at once with run.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain click help: typer's rich help costs 0.3 s of imports, paid by `--help` and by
    # every usage error.
    rich_markup_mode=None,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Spec file (YAML or JSON). Default: the METATIDE_SPEC environment variable (JSON).",
        exists=False,
    ),
]
RunIdOption = Annotated[
    str | None,
    typer.Option(
        "--run-id", envvar="METATIDE_RUN_ID", help="Run id (printed by plan).", show_envvar=True
    ),
]
ForceFullOption = Annotated[
    bool, typer.Option("--force-full", help="Override forceFullExtraction: true for this run.")
]
AllowMassDeleteOption = Annotated[
    bool,
    typer.Option("--allow-mass-delete", help="Disable the mass-delete guard for this run."),
]
TakeOverFromOption = Annotated[
    str | None,
    typer.Option(
        "--take-over-from",
        help="Run id known to be dead (failed or replaced): take its lease at once.",
    ),
]
# A string, parsed by `_batch_index`: a bad value is a spec error (exit 3), as for every other
# malformed input, not click's usage error (exit 2).
BatchOption = Annotated[
    str | None,
    typer.Option(
        "--batch",
        envvar="JOB_COMPLETION_INDEX",
        help="Batch index (an Indexed Job sets JOB_COMPLETION_INDEX).",
        show_envvar=True,
    ),
]


def _load_spec(
    config: Path | None, force_full: bool = False, allow_mass_delete: bool = False
) -> ExtractionSpec:
    from metatide.extractor.core.spec import load_spec_file, load_spec_json

    if config is not None:
        spec = load_spec_file(config)
    elif os.environ.get("METATIDE_SPEC"):
        spec = load_spec_json(os.environ["METATIDE_SPEC"], "the METATIDE_SPEC environment variable")
    else:
        raise SpecError(
            "no spec given: pass --config FILE or set METATIDE_SPEC to the spec as JSON"
        )
    updates: dict[str, Any] = {}
    if force_full:
        updates["force_full_extraction"] = True
    if allow_mass_delete:
        updates["mass_delete_guard"] = spec.mass_delete_guard.model_copy(
            update={"max_deleted_fraction": 1.0, "allow_empty_source": True}
        )
    return spec.model_copy(update=updates) if updates else spec


def _optional_run_id(value: str | None) -> RunId | None:
    return parse_run_id(value) if value else None


def _required_run_id(value: str | None) -> RunId:
    run_id = _optional_run_id(value)
    if run_id is None:
        raise SpecError(
            "no run id given: pass --run-id or set METATIDE_RUN_ID (as printed by `metatide plan`)"
        )
    return run_id


@contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="metatide-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


KUBERNETES_TERMINATION_LOG = Path("/dev/termination-log")


def _termination_log(text: str) -> None:
    """Hand the result to Kubernetes (pod status), where the operator reads it.

    The file is METATIDE_TERMINATION_MESSAGE_PATH if set, else Kubernetes' default
    /dev/termination-log when it exists (in a container); Kubernetes keeps at most 4 KiB.
    """
    target = os.environ.get("METATIDE_TERMINATION_MESSAGE_PATH")
    if not target and KUBERNETES_TERMINATION_LOG.exists():
        target = str(KUBERNETES_TERMINATION_LOG)
    if target:
        try:
            Path(target).write_text(text[-4000:], encoding="utf-8")
        except OSError:
            _logs().log.warning("termination_log_unwritable", path=target)


def _execute(work: Callable[[], Coroutine[Any, Any, str | ResultDocument]]) -> None:
    """Run one async command: result line on stdout, error on stderr, exit code by error type."""
    _logs().configure(os.environ.get("METATIDE_LOG_LEVEL", "INFO"))
    try:
        result = asyncio.run(work())
    except MetatideError as exc:
        _logs().log.error(
            "failed", error=type(exc).__name__, message=str(exc), exit_code=exc.exit_code
        )
        _termination_log(f"{type(exc).__name__}: {exc}")
        raise typer.Exit(exc.exit_code) from None
    except Exception as exc:  # noqa: BLE001 - the last line of defence names the type, exits 1
        _logs().log.exception("unexpected_failure", error=type(exc).__name__)
        _termination_log(f"{type(exc).__name__}: unexpected failure, see the pod log")
        raise typer.Exit(EXIT_UNEXPECTED) from None
    if isinstance(result, str):
        line = message = result
    else:
        line, message = result.result_line(), result.termination_message()
    print(line, flush=True)
    _termination_log(message)


@contextmanager
def _progress() -> Iterator[Progress]:
    """Progress bars on a terminal, nothing otherwise (Job logs carry the counts)."""
    progress: Progress = NoProgress()
    if sys.stderr.isatty():
        from metatide.extractor.cli.console import RichProgress

        progress = RichProgress()
    try:
        yield progress
    finally:
        progress.close()


@app.command()
def plan(
    config: ConfigOption = None,
    run_id: RunIdOption = None,
    force_full: ForceFullOption = False,
    allow_mass_delete: AllowMassDeleteOption = False,
    take_over_from: TakeOverFromOption = None,
) -> None:
    """Phase 1: list the catalog, classify tables, write the run's batches. Prints the run id."""
    from metatide.extractor.phases.plan import plan as plan_phase
    from metatide.extractor.phases.plan import plan_result
    from metatide.extractor.sources import open_source
    from metatide.extractor.storage import open_store

    async def work() -> PlanResult:
        spec = _load_spec(config, force_full, allow_mass_delete)
        faults.inject("plan")
        with _workdir() as workdir, _progress() as progress:
            document = await plan_phase(
                spec,
                open_store(spec),
                open_source(spec),
                workdir,
                _optional_run_id(run_id),
                progress,
                parse_run_id(take_over_from) if take_over_from else None,
            )
        return plan_result(document)

    _execute(work)


@app.command()
def columns(
    config: ConfigOption = None,
    run_id: RunIdOption = None,
    batch: BatchOption = None,
) -> None:
    """Phase 2: extract the columns of one batch of tables."""
    from metatide.extractor.phases.columns import extract_batch
    from metatide.extractor.sources import open_source
    from metatide.extractor.storage import open_store

    async def work() -> str:
        spec = _load_spec(config)
        index = _batch_index(batch)
        faults.inject("columns", index)
        run = _required_run_id(run_id)
        result = await extract_batch(open_store(spec), open_source(spec), run, index)
        return result.to_json()

    _execute(work)


def _batch_index(value: str | None) -> int:
    if value is None:
        raise SpecError("no batch index: pass --batch N or set JOB_COMPLETION_INDEX")
    try:
        return int(value)
    except ValueError:
        raise SpecError(
            f"the batch index (--batch or JOB_COMPLETION_INDEX) must be an integer, got {value!r}"
        ) from None


@app.command()
def finalize(
    config: ConfigOption = None,
    run_id: RunIdOption = None,
    allow_mass_delete: AllowMassDeleteOption = False,
) -> None:
    """Phase 3: verify batches, build state and diff, commit the manifest, write marker.txt."""
    from metatide.extractor.phases.finalize import finalize as finalize_phase
    from metatide.extractor.storage import open_store

    async def work() -> RunSummary:
        spec = _load_spec(config, allow_mass_delete=allow_mass_delete)
        run = _required_run_id(run_id)
        with _workdir() as workdir, _progress() as progress:
            return await finalize_phase(spec, open_store(spec), workdir, run, progress)

    _execute(work)


@app.command()
def run(
    config: ConfigOption = None,
    run_id: RunIdOption = None,
    force_full: ForceFullOption = False,
    allow_mass_delete: AllowMassDeleteOption = False,
) -> None:
    """All three phases in this process, column batches in parallel."""
    from metatide.extractor.phases.run import run as run_all
    from metatide.extractor.storage import open_store

    async def work() -> RunSummary:
        spec = _load_spec(config, force_full, allow_mass_delete)
        with _workdir() as workdir, _progress() as progress:
            return await run_all(
                spec, open_store(spec), workdir, _optional_run_id(run_id), progress
            )

    _execute(work)


@app.command()
def verify(config: ConfigOption = None) -> None:
    """Check every file of the committed state against its manifest; exit 3 if one is damaged."""
    from metatide.extractor.state.verify import verify_state
    from metatide.extractor.storage import open_store

    _logs().configure(os.environ.get("METATIDE_LOG_LEVEL", "INFO"))
    try:
        spec = _load_spec(config)
        report = asyncio.run(verify_state(open_store(spec)))
    except MetatideError as exc:
        _logs().log.error("failed", error=type(exc).__name__, message=str(exc))
        raise typer.Exit(exc.exit_code) from None
    for bad in report.bad:
        _logs().log.error("damaged_state_file", key=bad.key, problem=bad.problem)
    print(report.to_json(), flush=True)
    if not report.ok:
        raise typer.Exit(EXIT_TERMINAL)


JsonOption = Annotated[
    bool, typer.Option("--json", help="JSON (one object per line) instead of a table.")
]


def _look_back(config: Path | None, work: Callable[..., Coroutine[Any, Any, None]]) -> None:
    """Run a read-only command over kept states; errors exit as the phases' do."""
    from metatide.extractor.storage import open_store

    _logs().configure(os.environ.get("METATIDE_LOG_LEVEL", "WARNING"))
    try:
        spec = _load_spec(config)
        with _workdir() as workdir:
            asyncio.run(work(spec, open_store(spec), workdir))
    except MetatideError as exc:
        _logs().log.error("failed", error=type(exc).__name__, message=str(exc))
        raise typer.Exit(exc.exit_code) from None


def _print_rows(rows: Any, as_json: bool, title: str, entity: str = "table") -> None:
    from metatide.extractor.cli.console import changes_table, print_table, rows_table
    from metatide.extractor.engine.changes import change_lines

    if "change" in rows.column_names and "changed_fields" in rows.column_names:
        if as_json:
            sys.stdout.write(change_lines(rows).decode())
        else:
            print_table(changes_table(rows, title))
        return
    if as_json:
        for row in rows.to_pylist():
            print(json.dumps(row, default=str, ensure_ascii=False))
    else:
        print_table(rows_table(rows, entity, title))


@app.command()
def show(
    config: ConfigOption = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="A kept run's id. Default: the newest state.")
    ] = None,
    entity: Annotated[
        str, typer.Option("--entity", help="database, schema, table or column.")
    ] = "table",
    match: Annotated[
        str | None,
        typer.Option("--match", help="Glob on SCHEMA.TABLE (or SCHEMA.TABLE.COLUMN)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """The state as of a kept run: its databases, schemas, tables or columns."""
    from metatide.extractor.engine.history import kept, pick, read_rows, select_rows

    async def work(spec: ExtractionSpec, store: Any, workdir: Path) -> None:
        manifest = pick(await kept(store, spec.state.keep_runs), as_of, "show")
        rows = await read_rows(store, spec, manifest, workdir, columns=entity == "column")
        chosen = select_rows(rows, entity, match)
        _print_rows(chosen, as_json, f"{entity} rows as of run {manifest.run_id}", entity)

    _look_back(config, work)


@app.command()
def diff(
    config: ConfigOption = None,
    from_run: Annotated[str, typer.Option("--from", help="The older kept run's id.")] = "",
    to_run: Annotated[
        str | None, typer.Option("--to", help="The newer kept run's id. Default: the newest.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Change records between two kept states, computed from the states themselves."""
    from metatide.extractor.engine.history import diff_between, kept, pick

    async def work(spec: ExtractionSpec, store: Any, workdir: Path) -> None:
        if not from_run:
            raise SpecError("pass --from RUN (a kept run's id; `metatide show --help`)")
        states = await kept(store, spec.state.keep_runs)
        older, newer = pick(states, from_run, "diff"), pick(states, to_run, "diff")
        records, _ = await diff_between(store, spec, older, newer, workdir)
        _print_rows(records, as_json, f"changes from run {older.run_id} to run {newer.run_id}")

    _look_back(config, work)


@app.command()
def history(
    table: Annotated[str, typer.Argument(help="TABLE, SCHEMA.TABLE or DATABASE.SCHEMA.TABLE.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """A table's versions across the kept states, and what changed each time."""
    from metatide.extractor.engine.history import resolve_table, table_history

    async def work(spec: ExtractionSpec, store: Any, workdir: Path) -> None:
        key = await resolve_table(store, spec, table, workdir)
        versions, meter = await table_history(store, spec, key, workdir)
        if as_json:
            print(json.dumps(_history_document(key, versions, meter.bytes_read), default=str))
            return
        from metatide.extractor.cli.console import history_view

        history_view(key, versions)

    _look_back(config, work)


def _history_document(key: Any, versions: Any, bytes_read: int) -> dict[str, Any]:
    return {
        "table": list(key),
        "bytes_read": bytes_read,
        "versions": [
            {
                "run_id": version.manifest.run_id,
                "committed_at": version.manifest.committed_at.isoformat(),
                "name": list(version.key),
                "exists": version.table.num_rows > 0,
                "changes": [json.loads(line) for line in _lines(version.changes)],
            }
            for version in versions
        ],
    }


def _lines(records: Any) -> list[str]:
    from metatide.extractor.engine.changes import change_lines

    return change_lines(records).decode().splitlines()


@app.command()
def demo(
    keep: Annotated[
        Path | None, typer.Option("--keep", help="Keep the demo's files in this folder.")
    ] = None,
) -> None:
    """Run twice on a generated SQLite database with DDL changes between, and print the diff."""
    from metatide.extractor.cli.demo import run_demo

    _logs().configure(os.environ.get("METATIDE_LOG_LEVEL", "WARNING"))
    try:
        run_demo(keep)
    except MetatideError as exc:
        typer.echo(f"demo failed: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


@app.command("spec-docs")
def spec_docs() -> None:
    """Print the reference of every spec field as markdown (docs/spec.md)."""
    from metatide.extractor.cli.specdoc import render

    typer.echo(render(), nl=False)


def main() -> None:
    """Console-script entry point."""
    app()
