"""Scope: which databases, schemas and tables an extraction covers.

Rules are globs per level (see `ScopeRule`), matched here in Python on names the source
listed, never pasted into SQL. A table is in scope when it matches an include rule and no
exclude rule; a schema is in scope when some include rule could match a table in it and no
exclude rule with table '*' removes it whole; likewise for databases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import translate

import pyarrow as pa

from metatide.extractor.core.spec import ScopeRule, ScopeSpec


@dataclass(frozen=True, slots=True)
class _Rule:
    database: re.Pattern[str]
    schema: re.Pattern[str]
    table: re.Pattern[str]
    whole_schema: bool
    whole_database: bool

    @classmethod
    def compile(cls, rule: ScopeRule) -> _Rule:
        return cls(
            database=re.compile(translate(rule.database), re.DOTALL),
            schema=re.compile(translate(rule.schema_), re.DOTALL),
            table=re.compile(translate(rule.table), re.DOTALL),
            whole_schema=rule.table == "*",
            whole_database=rule.table == "*" and rule.schema_ == "*",
        )


class Scope:
    """Compiled include/exclude rules with one question per level."""

    def __init__(self, spec: ScopeSpec) -> None:
        self._include = [_Rule.compile(rule) for rule in spec.include]
        self._exclude = [_Rule.compile(rule) for rule in spec.exclude]

    def database(self, database: str) -> bool:
        """Could any table of this database be in scope?"""
        included = any(rule.database.match(database) for rule in self._include)
        excluded = any(
            rule.whole_database and rule.database.match(database) for rule in self._exclude
        )
        return included and not excluded

    def schema(self, database: str, schema: str) -> bool:
        """Could any table of this schema be in scope?"""
        included = any(
            rule.database.match(database) and rule.schema.match(schema) for rule in self._include
        )
        excluded = any(
            rule.whole_schema and rule.database.match(database) and rule.schema.match(schema)
            for rule in self._exclude
        )
        return included and not excluded

    def table(self, database: str, schema: str, table: str) -> bool:
        """Is this table (or view) in scope?"""

        def hits(rule: _Rule) -> bool:
            return bool(
                rule.database.match(database)
                and rule.schema.match(schema)
                and rule.table.match(table)
            )

        return any(map(hits, self._include)) and not any(map(hits, self._exclude))

    def filter_schemas(self, schemas: pa.Table) -> pa.Table:
        """Keep the rows of a schema listing that are in scope."""
        mask = [
            self.schema(database, schema)
            for database, schema in zip(
                schemas.column("database_name").to_pylist(),
                schemas.column("schema_name").to_pylist(),
                strict=True,
            )
        ]
        return schemas.filter(pa.array(mask, type=pa.bool_()))

    def filter_tables(self, tables: pa.Table) -> pa.Table:
        """Keep the rows of a table listing that are in scope."""
        mask = [
            self.table(database, schema, table)
            for database, schema, table in zip(
                tables.column("database_name").to_pylist(),
                tables.column("schema_name").to_pylist(),
                tables.column("table_name").to_pylist(),
                strict=True,
            )
        ]
        return tables.filter(pa.array(mask, type=pa.bool_()))
