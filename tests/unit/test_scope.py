"""Scope: include/exclude globs per level, literal special characters, Arrow filtering."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metatide.extractor.core.records import rows_to_table
from metatide.extractor.core.scope import Scope
from metatide.extractor.core.spec import ScopeRule, ScopeSpec


def scope(
    include: list[dict[str, str]] | None = None, exclude: list[dict[str, str]] | None = None
) -> Scope:
    document: dict[str, Any] = {}
    if include is not None:
        document["include"] = include
    if exclude is not None:
        document["exclude"] = exclude
    return Scope(ScopeSpec.model_validate(document))


def test_default_scope_includes_everything() -> None:
    everything = scope()
    assert everything.database("any")
    assert everything.schema("any", "public")
    assert everything.table("any", "public", "t")
    assert everything.table("", "", "")


def test_globs_per_level() -> None:
    rules = scope(include=[{"database": "prod_*", "schema": "sales", "table": "order?"}])
    assert rules.table("prod_eu", "sales", "orders")
    assert rules.table("prod_", "sales", "order1")
    assert not rules.table("prod_eu", "sales", "order")
    assert not rules.table("prod_eu", "sales", "orders_old")
    assert not rules.table("dev", "sales", "orders")
    assert not rules.table("prod_eu", "Sales", "orders")  # case-sensitive
    assert not rules.table("prod_eu", "sales_archive", "orders")


def test_character_classes_are_globs() -> None:
    rules = scope(include=[{"table": "t[0-9]"}, {"table": "x[!a]"}])
    assert rules.table("d", "s", "t5")
    assert not rules.table("d", "s", "tx")
    assert rules.table("d", "s", "xb")
    assert not rules.table("d", "s", "xa")


def test_a_table_matches_when_any_include_rule_matches() -> None:
    rules = scope(include=[{"schema": "a", "table": "x"}, {"schema": "b"}])
    assert rules.table("d", "a", "x")
    assert not rules.table("d", "a", "y")
    assert rules.table("d", "b", "y")


def test_exclude_wins_over_include() -> None:
    rules = scope(exclude=[{"table": "tmp_*"}, {"schema": "audit", "table": "log"}])
    assert not rules.table("d", "public", "tmp_1")
    assert rules.table("d", "public", "tmp")
    assert not rules.table("d", "audit", "log")
    assert rules.table("d", "public", "log")
    assert rules.schema("d", "public")  # a table-level exclusion keeps the schema
    assert rules.schema("d", "audit")
    assert rules.database("d")


def test_whole_schema_exclusion() -> None:
    rules = scope(exclude=[{"schema": "pg_temp*"}])
    assert not rules.schema("d", "pg_temp_3")
    assert not rules.table("d", "pg_temp_3", "anything")
    assert rules.schema("d", "public")
    assert rules.database("d")  # the schema level only, not the database


def test_whole_database_exclusion() -> None:
    rules = scope(exclude=[{"database": "template*"}])
    assert not rules.database("template1")
    assert not rules.schema("template1", "public")
    assert not rules.table("template1", "public", "t")
    assert rules.database("postgres")


def test_schema_is_in_scope_only_if_some_include_could_match() -> None:
    rules = scope(include=[{"database": "d", "schema": "keep", "table": "t*"}])
    assert rules.schema("d", "keep")
    assert not rules.schema("d", "other")
    assert not rules.schema("e", "keep")
    assert rules.database("d")
    assert not rules.database("e")


@pytest.mark.parametrize(
    "name",
    [
        "a.b",
        "a+b",
        "a(b)",
        "a|b",
        "a^b$",
        "a\\b",
        "a{1}",
        "a{b}",
        'a"b',
        "a'b",
        "a b",
        "ü.ß",
        "a\nb",
    ],
)
def test_special_characters_in_names_and_patterns_are_literal(name: str) -> None:
    rules = scope(include=[{"schema": name, "table": name}])
    assert rules.table("d", name, name)
    assert rules.schema("d", name)


@pytest.mark.parametrize(
    ("pattern", "other"),
    [
        ("a.b", "axb"),
        ("a+b", "aab"),
        ("a+b", "aaab"),
        ("a(b)", "ab"),
        ("a|b", "a"),
        ("a|b", "b"),
        ("a^b$", "ab"),
        ("a{2}", "aa"),
        ("x.*", "xyz"),
        ("a\\d", "a1"),
        ("a$", "a"),
    ],
)
def test_regex_syntax_in_a_pattern_is_not_regex(pattern: str, other: str) -> None:
    rules = scope(include=[{"table": pattern}])
    assert not rules.table("d", "s", other)


def test_names_are_never_patterns() -> None:
    """A name containing glob characters only matches patterns that match it literally."""
    rules = scope(include=[{"table": "a[1]"}])
    assert rules.table("d", "s", "a1")
    assert not rules.table("d", "s", "a[1]")
    literal = scope(include=[{"table": "a[[]1]"}])
    assert literal.table("d", "s", "a[1]")
    assert not literal.table("d", "s", "a1")
    star = scope(include=[{"table": "x[*]"}])
    assert star.table("d", "s", "x*")
    assert not star.table("d", "s", "xy")


def test_star_matches_newlines_and_the_whole_name_only() -> None:
    rules = scope(include=[{"table": "a*z"}])
    assert rules.table("d", "s", "a\nz")
    assert not rules.table("d", "s", "a\nzz\n")
    assert not rules.table("d", "s", "ba z")


def test_filter_tables_on_arrow() -> None:
    rows = [
        {"database_name": "d", "schema_name": "s", "table_name": name, "table_type": "TABLE"}
        for name in ["keep", "tmp_1", "a.b", "axb", "tmp"]
    ]
    rows.append(
        {"database_name": "d", "schema_name": "hidden", "table_name": "keep", "table_type": "VIEW"}
    )
    tables = rows_to_table("table", rows)
    rules = scope(
        include=[{"table": "keep"}, {"table": "tmp*"}, {"table": "a.b"}],
        exclude=[{"table": "tmp_*"}, {"schema": "hidden"}],
    )
    kept = rules.filter_tables(tables)
    assert kept.schema == tables.schema
    assert [(row["schema_name"], row["table_name"]) for row in kept.to_pylist()] == [
        ("s", "keep"),
        ("s", "a.b"),
        ("s", "tmp"),
    ]


def test_filter_schemas_on_arrow() -> None:
    schemas = rows_to_table(
        "schema",
        [
            {"database_name": "d", "schema_name": "public"},
            {"database_name": "d", "schema_name": "pg_temp_1"},
            {"database_name": "e", "schema_name": "public"},
        ],
    )
    rules = scope(include=[{"database": "d"}], exclude=[{"schema": "pg_temp*"}])
    kept = rules.filter_schemas(schemas)
    assert kept.to_pylist() == [{"database_name": "d", "schema_name": "public", "comment": None}]


def test_filters_on_empty_tables() -> None:
    rules = scope(exclude=[{"table": "x"}])
    assert rules.filter_tables(rows_to_table("table", [])).num_rows == 0
    assert rules.filter_schemas(rows_to_table("schema", [])).num_rows == 0


def test_empty_include_list_excludes_everything() -> None:
    rules = scope(include=[])
    assert not rules.database("d")
    assert not rules.schema("d", "s")
    assert not rules.table("d", "s", "t")


def test_scope_rule_accepts_schema_alias_and_python_name() -> None:
    assert ScopeRule.model_validate({"schema": "x"}).schema_ == "x"
    assert ScopeRule.model_validate({"schema_": "x"}).schema_ == "x"


_NAMES = st.sampled_from(
    ["a", "ab", "b", "a.b", "tmp_1", "tmpx1", "x[1]", "", "a%b", "a\\b", "a\nb"]
)
_GLOBS = st.sampled_from(
    ["*", "a*", "?b", "a.b", "tmp_*", "[ab]", "x[[]1]", "b", "a%b", "a\\*", "a?b", "a*b"]
)
_RULES = st.lists(
    st.fixed_dictionaries({"database": _GLOBS, "schema": _GLOBS, "table": _GLOBS}), max_size=3
)


@settings(max_examples=150, deadline=None)
@given(
    names=st.lists(st.tuples(_NAMES, _NAMES, _NAMES), max_size=12),
    include=_RULES,
    exclude=_RULES,
)
def test_arrow_filters_agree_with_the_row_questions(
    names: list[tuple[str, str, str]],
    include: list[dict[str, str]],
    exclude: list[dict[str, str]],
) -> None:
    """The vectorized filters keep exactly the rows `table` and `schema` say are in scope."""
    rules = scope(include=include, exclude=exclude)
    rows = [
        {"database_name": d, "schema_name": s, "table_name": t, "table_type": "TABLE"}
        for d, s, t in names
    ]
    kept = rules.filter_tables(rows_to_table("table", rows)).to_pylist()
    assert list(map(row_names, kept)) == [n for n in map(row_names, rows) if rules.table(*n)]
    schema_rows = [{"database_name": d, "schema_name": s, "comment": None} for d, s, _ in names]
    kept_schemas = rules.filter_schemas(rows_to_table("schema", schema_rows)).to_pylist()
    assert kept_schemas == [
        row for row in schema_rows if rules.schema(row["database_name"], row["schema_name"])
    ]


def row_names(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["database_name"], row["schema_name"], row["table_name"]
