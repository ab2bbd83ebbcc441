"""One kit per source kind: a throwaway place on the real server, its DDL dialect, its spec.

The source contract suite (tests/integration/test_source_contract.py) and the MySQL pipeline
tests run the same scenarios against every kind through these kits: a kit creates and drops
tables and views in its own schema, quotes names the way its server does, and builds the
spec that reads them. Adding a source kind adds a kit here (docs/sources.md).
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metatide.extractor.core.spec import ExtractionSpec
from metatide.extractor.sources import Capabilities
from tests.harness import make_spec
from tests.services import (
    create_database,
    create_mysql_database,
    drop_database,
    drop_mysql_database,
    execute_sql,
    mysql_dsn,
    mysql_execute,
    mysql_ident,
    mysql_literal,
    require_mysql,
    require_postgres,
)

DSN_ENV = "METATIDE_KIT_SOURCE_DSN"


def pg_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def pg_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass
class Kit:
    """A source kind's test place and dialect; subclasses fill in the DDL."""

    kind: str
    database: str  # the metatide database the kit's objects are in
    schema: str  # the metatide schema the kit's objects are in
    capabilities: Capabilities
    max_name_length: int
    case_sensitive_names: bool
    integer: str
    text: str
    dsn: str | None = None  # the value of DSN_ENV while the kit's spec is read
    env: dict[str, str] = field(default_factory=dict)

    def spec(self, store: str, **source: Any) -> ExtractionSpec:
        raise NotImplementedError

    def ident(self, name: str) -> str:
        raise NotImplementedError

    def run(self, *statements: str) -> None:
        raise NotImplementedError

    def qualified(self, name: str) -> str:
        return f"{self.ident(self.schema)}.{self.ident(name)}"

    def create_table(self, name: str, columns: dict[str, str]) -> None:
        body = ", ".join(f"{self.ident(column)} {kind}" for column, kind in columns.items())
        self.run(f"CREATE TABLE {self.qualified(name)} ({body})")

    def create_view(self, name: str, table: str) -> None:
        self.run(f"CREATE VIEW {self.qualified(name)} AS SELECT * FROM {self.qualified(table)}")

    def drop_table(self, name: str) -> None:
        self.run(f"DROP TABLE {self.qualified(name)}")

    def zero_column_relation(self, name: str) -> bool:
        """Create a relation the server lists with no columns; False if it has none."""
        return False

    def changes(self, table: str, column: str) -> dict[str, str]:
        """DDL statements (by label) that each change a field the source extracts."""
        raise NotImplementedError

    def change_view(self, view: str, table: str, column: str) -> list[str]:
        """Statements that change the columns of `view` (a view over `table`)."""
        raise NotImplementedError

    def reset(self) -> None:
        """Empty the kit's schema."""
        raise NotImplementedError

    def close(self) -> None:
        """Drop what the kit made on the server."""


class PostgresKit(Kit):
    def __init__(self) -> None:
        require_postgres()
        name = f"metatide_kit_{uuid.uuid4().hex[:8]}"
        dsn = create_database(name)
        super().__init__(
            kind="postgresql",
            database=name,
            schema="kit",
            capabilities=Capabilities(ddl_time=False, creation_time=False, fingerprint=True),
            max_name_length=63,
            case_sensitive_names=True,
            integer="integer",
            text="text",
            dsn=dsn,
        )
        self.reset()

    def spec(self, store: str, **source: Any) -> ExtractionSpec:
        fields = {"kind": "postgresql", "dsnFrom": {"env": DSN_ENV}, "databases": [self.database]}
        return make_spec({**fields, **source}, store)

    def ident(self, name: str) -> str:
        return pg_ident(name)

    def run(self, *statements: str) -> None:
        assert self.dsn is not None
        execute_sql(self.dsn, ";\n".join(statements))

    def zero_column_relation(self, name: str) -> bool:
        self.run(f"CREATE TABLE {self.qualified(name)} ()")
        return True

    def changes(self, table: str, column: str) -> dict[str, str]:
        t, c = self.qualified(table), self.ident(column)
        return {
            "add column": f"ALTER TABLE {t} ADD COLUMN extra integer",
            "drop column": f"ALTER TABLE {t} DROP COLUMN {c}",
            "rename column": f"ALTER TABLE {t} RENAME COLUMN {c} TO renamed",
            "type": f"ALTER TABLE {t} ALTER COLUMN {c} TYPE bigint",
            "not null": f"ALTER TABLE {t} ALTER COLUMN {c} SET NOT NULL",
            "default": f"ALTER TABLE {t} ALTER COLUMN {c} SET DEFAULT 7",
            "column comment": f"COMMENT ON COLUMN {t}.{c} IS 'counted'",
            "table comment": f"COMMENT ON TABLE {t} IS 'a table'",
            "primary key": f"ALTER TABLE {t} ADD PRIMARY KEY ({c})",
        }

    def change_view(self, view: str, table: str, column: str) -> list[str]:
        # PostgreSQL refuses to retype a column a view reads: the view gains a column.
        return [
            f"CREATE OR REPLACE VIEW {self.qualified(view)} AS SELECT "
            f"{self.ident(column)}, 1 AS one FROM {self.qualified(table)}"
        ]

    def reset(self) -> None:
        self.run(f"DROP SCHEMA IF EXISTS {self.ident(self.schema)} CASCADE")
        self.run(f"CREATE SCHEMA {self.ident(self.schema)}")

    def close(self) -> None:
        drop_database(self.database)


class MysqlKit(Kit):
    def __init__(self) -> None:
        require_mysql()
        super().__init__(
            kind="mysql",
            database="default",
            schema=f"mt_kit_{uuid.uuid4().hex[:8]}",
            capabilities=Capabilities(ddl_time=True, creation_time=False, fingerprint=True),
            max_name_length=64,
            case_sensitive_names=True,
            integer="int",
            text="text",
            dsn=mysql_dsn(),
        )
        self.reset()

    def spec(self, store: str, **source: Any) -> ExtractionSpec:
        fields = {
            "kind": "mysql",
            "dsnFrom": {"env": DSN_ENV},
            "scope": {"include": [{"schema": self.schema}]},
        }
        return make_spec({**fields, **source}, store)

    def ident(self, name: str) -> str:
        return mysql_ident(name)

    def run(self, *statements: str) -> None:
        mysql_execute(*statements)

    def zero_column_relation(self, name: str) -> bool:
        # MySQL tables need a column; a view whose table is gone has none.
        base = f"{name}_base"
        self.create_table(base, {"x": "int"})
        self.create_view(name, base)
        self.drop_table(base)
        return True

    def changes(self, table: str, column: str) -> dict[str, str]:
        t, c = self.qualified(table), self.ident(column)
        return {
            "add column": f"ALTER TABLE {t} ADD COLUMN extra int",
            "add column instantly": f"ALTER TABLE {t} ADD COLUMN extra2 int, ALGORITHM=INSTANT",
            "drop column": f"ALTER TABLE {t} DROP COLUMN {c}",
            "rename column": f"ALTER TABLE {t} RENAME COLUMN {c} TO renamed",
            "type": f"ALTER TABLE {t} MODIFY {c} bigint",
            "not null": f"ALTER TABLE {t} MODIFY {c} int NOT NULL",
            "default": f"ALTER TABLE {t} ALTER COLUMN {c} SET DEFAULT 7",
            "column comment": f"ALTER TABLE {t} MODIFY {c} int COMMENT {mysql_literal('counted')}",
            "table comment": f"ALTER TABLE {t} COMMENT = {mysql_literal('a table')}",
            "primary key": f"ALTER TABLE {t} ADD PRIMARY KEY ({c})",
        }

    def change_view(self, view: str, table: str, column: str) -> list[str]:
        # The view's definition stays; its column's type follows the table's.
        return [f"ALTER TABLE {self.qualified(table)} MODIFY {self.ident(column)} bigint"]

    def reset(self) -> None:
        create_mysql_database(self.schema)

    def close(self) -> None:
        drop_mysql_database(self.schema)


class SqliteKit(Kit):
    def __init__(self, folder: Path) -> None:
        super().__init__(
            kind="sqlite",
            database="main",
            schema="main",
            capabilities=Capabilities(ddl_time=False, creation_time=False, fingerprint=True),
            max_name_length=64,
            case_sensitive_names=False,
            integer="INTEGER",
            text="TEXT",
        )
        self.path = folder / "kit.sqlite"
        self.reset()

    def spec(self, store: str, **source: Any) -> ExtractionSpec:
        return make_spec({"kind": "sqlite", "path": str(self.path), **source}, store)

    def ident(self, name: str) -> str:
        return pg_ident(name)

    def qualified(self, name: str) -> str:
        return self.ident(name)

    def run(self, *statements: str) -> None:
        with sqlite3.connect(self.path) as connection:
            connection.executescript(";\n".join(statements) + ";")

    def changes(self, table: str, column: str) -> dict[str, str]:
        t, c = self.qualified(table), self.ident(column)
        return {
            "add column": f"ALTER TABLE {t} ADD COLUMN extra INTEGER",
            "drop column": f"ALTER TABLE {t} DROP COLUMN {c}",
            "rename column": f"ALTER TABLE {t} RENAME COLUMN {c} TO renamed",
        }

    def change_view(self, view: str, table: str, column: str) -> list[str]:
        # The view's definition stays; its column's type follows the recreated table's.
        t = self.qualified(table)
        return [f"DROP TABLE {t}", f"CREATE TABLE {t} ({self.ident(column)} TEXT)"]

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)
        sqlite3.connect(self.path).close()


KINDS = ("sqlite", "postgresql", "mysql")


def open_kit(kind: str, folder: Path) -> Kit:
    if kind == "postgresql":
        return PostgresKit()
    if kind == "mysql":
        return MysqlKit()
    return SqliteKit(folder)
