"""The central property, on real PostgreSQL: incremental state == full extraction state.

A hypothesis state machine applies random DDL (create/drop/rename tables, add/drop/rename/
retype columns, nullability, defaults, comments, schemas, views and materialized views) to a
real database, interleaved with runs that use small batch sizes (many batches) or large ones.
After every run it checks that the committed state equals a fresh full extraction of the same
database, and that the published diff equals the difference between consecutive states.

Examples: 100 by default (CI); set METATIDE_HYPOTHESIS_PROFILE=thorough for 2,000, or
=smoke for 10 while developing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped,unused-ignore]
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from metatide.extractor.ids import RunId
from metatide.extractor.storage import open_store
from tests.harness import (
    State,
    assert_same_state,
    committed_state,
    empty_state,
    expected_diff,
    full_state,
    make_spec,
    published_diff,
    run_pipeline,
)
from tests.services import create_database, drop_database, require_postgres

settings.register_profile(
    "ci",
    max_examples=100,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=2000)
settings.register_profile("smoke", parent=settings.get_profile("ci"), max_examples=10)
PROFILE = os.environ.get("METATIDE_HYPOTHESIS_PROFILE", "ci")

NAMES = st.sampled_from(["a", "b", "Cap", 'we"ird', "dot.ted", "br{ace}", "sp ace", "ü1", "x"])
TYPES = st.sampled_from(
    [
        "integer",
        "bigint",
        "text",
        "varchar(20)",
        "numeric(10,2)",
        "boolean",
        "timestamptz",
        "jsonb",
        "integer[]",
    ]
)
COMMENTS = st.one_of(st.none(), st.sampled_from(["", "a comment", "it's {x}", "ü"]))


def ident(name: str) -> str:
    """Quote an identifier for test DDL (DDL cannot take bind parameters)."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str | None) -> str:
    return "NULL" if text is None else "'" + text.replace("'", "''") + "'"


_CATALOG = """
SELECT n.nspname, c.relname, c.relkind::text,
       coalesce(array_agg(a.attname ORDER BY a.attnum) FILTER (WHERE a.attnum > 0), '{}')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'v', 'm') AND n.nspname = ANY($1::text[])
GROUP BY 1, 2, 3 ORDER BY 1, 2
"""


STATS = {"examples": 0, "runs": 0}


class IncrementalMachine(RuleBasedStateMachine):
    """Random DDL and runs on one database; the invariant is checked at every run."""

    database: str
    dsn: str

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.folder = Path(tempfile.mkdtemp(prefix="metatide-property-"))
        self.connection: Any = self.loop.run_until_complete(asyncpg.connect(self.dsn))
        self.loop.run_until_complete(self._reset())
        self.schemas: list[str] = ["public"]
        self.relations: list[tuple[str, str, str, list[str]]] = []
        self.previous: State = empty_state()
        self.tables_per_bucket = 1
        self.compaction_ratio = 0.2
        self.runs = 0
        STATS["examples"] += 1

    async def _reset(self) -> None:
        rows = await self.connection.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
            "AND nspname <> 'information_schema'"
        )
        for row in rows:
            await self.connection.execute(f"DROP SCHEMA {ident(row[0])} CASCADE")
        await self.connection.execute("CREATE SCHEMA public")

    def teardown(self) -> None:
        self.loop.run_until_complete(self.connection.close())
        self.loop.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def ddl(self, statement: str) -> None:
        """Apply DDL; statements PostgreSQL refuses (dependencies, casts) are no-ops."""
        with contextlib.suppress(asyncpg.PostgresError):
            self.loop.run_until_complete(self.connection.execute(statement))
        self._refresh()

    def _refresh(self) -> None:
        self.schemas = [
            row[0]
            for row in self.loop.run_until_complete(
                self.connection.fetch(
                    "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
                    "AND nspname <> 'information_schema' ORDER BY 1"
                )
            )
        ]
        rows = self.loop.run_until_complete(self.connection.fetch(_CATALOG, self.schemas))
        self.relations = [(r[0], r[1], r[2], list(r[3])) for r in rows]

    def tables(self) -> list[tuple[str, str, str, list[str]]]:
        return [rel for rel in self.relations if rel[2] == "r"]

    def spec(self, batch_size: int) -> Any:
        return make_spec(
            {
                "kind": "postgresql",
                "dsnFrom": {"env": "METATIDE_PROPERTY_DSN"},
                "databases": [self.database],
            },
            f"file://{self.folder}/store",
            columns={"batchSize": batch_size, "parallelism": 2},
            state={
                "tablesPerBucket": self.tables_per_bucket,
                "compactionRatio": self.compaction_ratio,
            },
            massDeleteGuard={"maxDeletedFraction": 1.0, "allowEmptySource": True},
        )

    @initialize(
        count=st.integers(min_value=0, max_value=3),
        data=st.data(),
        tables_per_bucket=st.sampled_from([1, 3, 1000]),
        compaction_ratio=st.sampled_from([0.2, 1.0]),
    )
    def seed_tables(
        self, count: int, data: st.DataObject, tables_per_bucket: int, compaction_ratio: float
    ) -> None:
        # Few tables per bucket exercise many buckets; many exercise deltas and compaction.
        self.tables_per_bucket = tables_per_bucket
        self.compaction_ratio = compaction_ratio
        for index in range(count):
            columns = data.draw(
                st.lists(st.tuples(NAMES, TYPES), min_size=0, max_size=3, unique_by=lambda c: c[0])
            )
            body = ", ".join(f"{ident(n)} {t}" for n, t in columns)
            self.ddl(f"CREATE TABLE public.{ident(f't{index}')} ({body})")

    @rule(schema=NAMES)
    def create_schema(self, schema: str) -> None:
        self.ddl(f"CREATE SCHEMA {ident(schema)}")

    @precondition(lambda self: len(self.schemas) > 1)
    @rule(data=st.data())
    def drop_schema(self, data: st.DataObject) -> None:
        schema = data.draw(st.sampled_from([s for s in self.schemas if s != "public"]))
        self.ddl(f"DROP SCHEMA {ident(schema)} CASCADE")

    @rule(
        data=st.data(),
        name=NAMES,
        columns=st.lists(st.tuples(NAMES, TYPES), max_size=4, unique_by=lambda c: c[0]),
        primary=st.booleans(),
    )
    def create_table(
        self, data: st.DataObject, name: str, columns: list[tuple[str, str]], primary: bool
    ) -> None:
        schema = data.draw(st.sampled_from(self.schemas))
        parts = [f"{ident(n)} {t}" for n, t in columns]
        if primary and columns and columns[0][1] in ("integer", "bigint", "text"):
            parts.append(f"PRIMARY KEY ({ident(columns[0][0])})")
        self.ddl(f"CREATE TABLE {ident(schema)}.{ident(name)} ({', '.join(parts)})")

    @precondition(lambda self: self.relations)
    @rule(data=st.data())
    def drop_relation(self, data: st.DataObject) -> None:
        schema, name, kind, _ = data.draw(st.sampled_from(self.relations))
        word = {"r": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW"}[kind]
        self.ddl(f"DROP {word} {ident(schema)}.{ident(name)} CASCADE")

    @precondition(lambda self: self.tables())
    @rule(data=st.data(), new_name=NAMES)
    def rename_table(self, data: st.DataObject, new_name: str) -> None:
        schema, name, _, _ = data.draw(st.sampled_from(self.tables()))
        self.ddl(f"ALTER TABLE {ident(schema)}.{ident(name)} RENAME TO {ident(new_name)}")

    @precondition(lambda self: self.tables())
    @rule(data=st.data(), column=NAMES, kind=TYPES, not_null=st.booleans())
    def add_column(self, data: st.DataObject, column: str, kind: str, not_null: bool) -> None:
        schema, name, _, _ = data.draw(st.sampled_from(self.tables()))
        extra = " NOT NULL DEFAULT 0" if not_null and kind in ("integer", "bigint") else ""
        self.ddl(
            f"ALTER TABLE {ident(schema)}.{ident(name)} ADD COLUMN {ident(column)} {kind}{extra}"
        )

    @precondition(lambda self: any(t[3] for t in self.tables()))
    @rule(data=st.data())
    def drop_column(self, data: st.DataObject) -> None:
        schema, name, _, columns = data.draw(st.sampled_from([t for t in self.tables() if t[3]]))
        column = data.draw(st.sampled_from(columns))
        self.ddl(f"ALTER TABLE {ident(schema)}.{ident(name)} DROP COLUMN {ident(column)} CASCADE")

    @precondition(lambda self: any(t[3] for t in self.tables()))
    @rule(data=st.data(), new_name=NAMES)
    def rename_column(self, data: st.DataObject, new_name: str) -> None:
        schema, name, _, columns = data.draw(st.sampled_from([t for t in self.tables() if t[3]]))
        column = data.draw(st.sampled_from(columns))
        self.ddl(
            f"ALTER TABLE {ident(schema)}.{ident(name)} RENAME COLUMN {ident(column)} "
            f"TO {ident(new_name)}"
        )

    @precondition(lambda self: any(t[3] for t in self.tables()))
    @rule(
        data=st.data(),
        kind=TYPES,
        change=st.sampled_from(
            ["type", "set not null", "drop not null", "default", "drop default"]
        ),
    )
    def alter_column(self, data: st.DataObject, kind: str, change: str) -> None:
        schema, name, _, columns = data.draw(st.sampled_from([t for t in self.tables() if t[3]]))
        column = ident(data.draw(st.sampled_from(columns)))
        action = {
            "type": f"TYPE {kind} USING NULL",
            "set not null": "SET NOT NULL",
            "drop not null": "DROP NOT NULL",
            "default": "SET DEFAULT NULL",
            "drop default": "DROP DEFAULT",
        }[change]
        self.ddl(f"ALTER TABLE {ident(schema)}.{ident(name)} ALTER COLUMN {column} {action}")

    @precondition(lambda self: self.relations)
    @rule(data=st.data(), comment=COMMENTS)
    def comment(self, data: st.DataObject, comment: str | None) -> None:
        schema, name, kind, columns = data.draw(st.sampled_from(self.relations))
        if columns and data.draw(st.booleans()):
            target = (
                f"COLUMN {ident(schema)}.{ident(name)}.{ident(data.draw(st.sampled_from(columns)))}"
            )
        else:
            target = {"r": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW"}[kind]
            target += f" {ident(schema)}.{ident(name)}"
        self.ddl(f"COMMENT ON {target} IS {literal(comment)}")

    @precondition(lambda self: self.tables())
    @rule(data=st.data(), name=NAMES, materialized=st.booleans())
    def create_view(self, data: st.DataObject, name: str, materialized: bool) -> None:
        schema, table, _, columns = data.draw(st.sampled_from(self.tables()))
        picked = data.draw(st.lists(st.sampled_from(columns), unique=True)) if columns else []
        select = ", ".join(ident(c) for c in picked) or "1 AS one"
        word = "MATERIALIZED VIEW" if materialized else "OR REPLACE VIEW"
        self.ddl(
            f"CREATE {word} {ident(schema)}.{ident(name)} AS "
            f"SELECT {select} FROM {ident(schema)}.{ident(table)}"
        )

    # Runs are three rules so that about one step in five is a run.
    @rule(batch_size=st.sampled_from([1, 2, 3]))
    def run_small_batches(self, batch_size: int) -> None:
        self.run_and_check(batch_size)

    @rule()
    def run_one_batch(self) -> None:
        self.run_and_check(25_000)

    @rule()
    def run_two_tables_per_batch(self) -> None:
        self.run_and_check(2)

    def run_and_check(self, batch_size: int) -> None:
        spec = self.spec(batch_size)
        STATS["runs"] += 1
        self.runs += 1
        tag = f"run{self.runs}"
        summary = asyncio.run(run_pipeline(spec, self.folder / tag))
        state = asyncio.run(committed_state(spec, self.folder / f"{tag}-read"))
        reference = asyncio.run(
            full_state(spec, f"file://{self.folder}/full-{tag}", self.folder / f"{tag}-full")
        )
        assert_same_state(state, reference)
        diff = asyncio.run(published_diff(open_store(spec), RunId(summary["run_id"])))
        assert diff == expected_diff(self.previous, state)
        self.previous = state

    @invariant()
    def connection_alive(self) -> None:
        assert not self.connection.is_closed()


@pytest.fixture(scope="module")
def property_database() -> Any:
    require_postgres()
    name = f"metatide_property_{uuid.uuid4().hex[:8]}"
    dsn = create_database(name)
    yield name, dsn
    drop_database(name)


@pytest.mark.integration
@pytest.mark.property
def test_incremental_state_equals_full_extraction(
    property_database: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name, dsn = property_database
    monkeypatch.setenv("METATIDE_PROPERTY_DSN", dsn)
    IncrementalMachine.database = name
    IncrementalMachine.dsn = dsn
    profile = settings.get_profile(PROFILE)
    IncrementalMachine.TestCase.settings = profile
    IncrementalMachine.TestCase().runTest()
    with capsys.disabled():  # the example count belongs in the CI log
        print(
            f"\nproperty test: {STATS['examples']} examples, {STATS['runs']} checked runs "
            f"(profile {PROFILE})"
        )
    assert STATS["examples"] >= profile.max_examples
    assert STATS["runs"] >= profile.max_examples
