"""Scope: which databases, schemas and tables an extraction covers.

Rules are globs per level (see `ScopeRule`), matched here on names the source listed, never
pasted into SQL: one name at a time with a regex, or a whole listing at once in Arrow. A table
is in scope when it matches an include rule and no exclude rule; a schema is in scope when
some include rule could match a table in it and no exclude rule with table '*' removes it
whole; likewise for databases.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import translate

import pyarrow as pa
import pyarrow.compute as pc

from metatide.extractor.core.spec import ScopeRule, ScopeSpec

_EVERYTHING = "*"


@dataclass(frozen=True, slots=True)
class _Glob:
    """One level's glob, as a regex for single names and vectorized for a listing's column."""

    regex: re.Pattern[str]
    like: str | None
    """The same glob as an Arrow LIKE pattern, when it has no character class."""

    @classmethod
    def compile(cls, glob: str) -> _Glob | None:
        """None for '*', which matches every name and needs no check at all."""
        if glob == _EVERYTHING:
            return None
        return cls(re.compile(translate(glob), re.DOTALL), _as_like(glob))

    def matches(self, name: str) -> bool:
        return self.regex.match(name) is not None

    def mask(self, names: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
        """Which of the names match: in Arrow's C++ (LIKE) where it can, else one regex
        match per distinct name (listings repeat few databases and schemas)."""
        if self.like is not None:
            return pc.match_like(names, self.like)
        encoded = names.combine_chunks().dictionary_encode()
        hits = [self.matches(name) for name in encoded.dictionary.to_pylist()]
        return pa.array(hits, pa.bool_()).take(encoded.indices)


def _as_like(glob: str) -> str | None:
    """'*' and '?' as LIKE's '%' and '_' ('%', '_' and '\\' escaped); None for a '[' class."""
    if "[" in glob:
        return None
    escaped = "".join("\\" + char if char in "%_\\" else char for char in glob)
    return escaped.replace("*", "%").replace("?", "_")


@dataclass(frozen=True, slots=True)
class _Rule:
    database: _Glob | None
    schema: _Glob | None
    table: _Glob | None
    whole_schema: bool
    whole_database: bool

    @classmethod
    def compile(cls, rule: ScopeRule) -> _Rule:
        return cls(
            database=_Glob.compile(rule.database),
            schema=_Glob.compile(rule.schema_),
            table=_Glob.compile(rule.table),
            whole_schema=rule.table == _EVERYTHING,
            whole_database=rule.table == _EVERYTHING and rule.schema_ == _EVERYTHING,
        )

    def hits(self, *names: str) -> bool:
        """Whether (database[, schema[, table]]) matches this rule's globs at those levels."""
        globs = (self.database, self.schema, self.table)
        pairs = zip(globs, names, strict=False)  # as many levels as names given
        return all(glob is None or glob.matches(name) for glob, name in pairs)

    def mask(self, listing: pa.Table, *, tables: bool) -> pa.ChunkedArray | pa.Array:
        """The rows of a schema (or, with `tables`, a table) listing this rule matches."""
        levels = [("database_name", self.database), ("schema_name", self.schema)]
        if tables:
            levels.append(("table_name", self.table))
        mask: pa.ChunkedArray | pa.Array = pa.repeat(True, listing.num_rows)
        for column, glob in levels:
            if glob is not None:
                mask = pc.and_(mask, glob.mask(listing.column(column)))
        return mask


def _any(masks: Iterable[pa.ChunkedArray | pa.Array], rows: int) -> pa.ChunkedArray | pa.Array:
    result: pa.ChunkedArray | pa.Array = pa.repeat(False, rows)
    for mask in masks:
        result = pc.or_(result, mask)
    return result


class Scope:
    """Compiled include/exclude rules with one question per level."""

    def __init__(self, spec: ScopeSpec) -> None:
        self._include = [_Rule.compile(rule) for rule in spec.include]
        self._exclude = [_Rule.compile(rule) for rule in spec.exclude]

    def database(self, database: str) -> bool:
        """Could any table of this database be in scope?"""
        included = any(rule.hits(database) for rule in self._include)
        excluded = any(rule.whole_database and rule.hits(database) for rule in self._exclude)
        return included and not excluded

    def schema(self, database: str, schema: str) -> bool:
        """Could any table of this schema be in scope?"""
        included = any(rule.hits(database, schema) for rule in self._include)
        excluded = any(rule.whole_schema and rule.hits(database, schema) for rule in self._exclude)
        return included and not excluded

    def table(self, database: str, schema: str, table: str) -> bool:
        """Is this table (or view) in scope?"""
        included = any(rule.hits(database, schema, table) for rule in self._include)
        return included and not any(rule.hits(database, schema, table) for rule in self._exclude)

    def filter_schemas(self, schemas: pa.Table) -> pa.Table:
        """Keep the rows of a schema listing that are in scope (as `schema` would)."""
        rows = schemas.num_rows
        included = _any((rule.mask(schemas, tables=False) for rule in self._include), rows)
        excluded = _any(
            (rule.mask(schemas, tables=False) for rule in self._exclude if rule.whole_schema), rows
        )
        return schemas.filter(pc.and_(included, pc.invert(excluded)))

    def filter_tables(self, tables: pa.Table) -> pa.Table:
        """Keep the rows of a table listing that are in scope (as `table` would)."""
        rows = tables.num_rows
        included = _any((rule.mask(tables, tables=True) for rule in self._include), rows)
        excluded = _any((rule.mask(tables, tables=True) for rule in self._exclude), rows)
        return tables.filter(pc.and_(included, pc.invert(excluded)))
