"""The spec model: minimal valid specs, errors that name the field, secrets, file loading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from metatide.extractor.core.errors import CredentialsError, SpecError
from metatide.extractor.core.spec import (
    SEED_COLUMN_BATCH_SIZE,
    SEED_PREFIX_TEMPLATE,
    ExtractionSpec,
    MysqlSourceSpec,
    PostgresSourceSpec,
    SecretRef,
    SqliteSourceSpec,
    load_spec_file,
    load_spec_json,
    parse_spec,
)

CAMEL: dict[str, Any] = {
    "applicationName": "shop",
    "connectionId": "orders-db",
    "source": {"kind": "sqlite", "path": "/data/shop.sqlite"},
    "storage": {"url": "file:///var/lib/metatide"},
}

SNAKE: dict[str, Any] = {
    "application_name": "shop",
    "connection_id": "orders-db",
    "source": {"kind": "sqlite", "path": "/data/shop.sqlite"},
    "storage": {"url": "file:///var/lib/metatide"},
}


def spec_with(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(json.dumps(CAMEL))
    document.update(changes)
    return document


def spec_error(document: Any) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(document, origin="test.yaml")
    return str(caught.value)


def test_minimal_camel_case_spec_has_seed_defaults() -> None:
    spec = parse_spec(CAMEL)
    assert isinstance(spec.source, SqliteSourceSpec)
    assert spec.application_name == "shop"
    assert spec.columns.batch_size == SEED_COLUMN_BATCH_SIZE
    assert spec.storage.prefix_template == SEED_PREFIX_TEMPLATE
    assert spec.connection_prefix == "persistent-artifacts/apps/shop/connection/orders-db"
    assert spec.force_full_extraction is False
    assert spec.mass_delete_guard.max_deleted_fraction == 0.5


def test_snake_case_is_accepted_too() -> None:
    assert parse_spec(SNAKE) == parse_spec(CAMEL)
    nested = parse_spec({**SNAKE, "columns": {"batch_size": 7}, "force_full_extraction": True})
    assert nested.columns.batch_size == 7
    assert nested.force_full_extraction is True


def test_to_json_is_camel_case_and_round_trips() -> None:
    spec = parse_spec(spec_with(columns={"batchSize": 3}, marker={"preponeHours": 1.5}))
    document = json.loads(spec.to_json())
    assert document["applicationName"] == "shop"
    assert document["columns"]["batchSize"] == 3
    assert "application_name" not in document
    assert load_spec_json(spec.to_json(), "round trip") == spec


def test_postgres_source_defaults() -> None:
    spec = parse_spec(spec_with(source={"kind": "postgresql"}))
    assert isinstance(spec.source, PostgresSourceSpec)
    assert spec.source.dsn_from.env == "METATIDE_SOURCE_DSN"


def test_unknown_top_level_field_is_named() -> None:
    message = spec_error(spec_with(batchSize=10))
    assert "test.yaml is invalid" in message
    assert "batchSize" in message


def test_unknown_nested_field_is_named_by_its_path() -> None:
    message = spec_error(spec_with(columns={"batchSize": 10, "paralelism": 2}))
    assert "columns.paralelism" in message


def test_unknown_field_in_a_scope_rule_is_named_by_its_path() -> None:
    source = {"kind": "sqlite", "path": "x", "scope": {"include": [{"tabel": "a*"}]}}
    message = spec_error(spec_with(source=source))
    assert "source.sqlite.scope.include.0.tabel" in message


@pytest.mark.parametrize("size", [0, -1])
def test_batch_size_must_be_positive(size: int) -> None:
    message = spec_error(spec_with(columns={"batchSize": size}))
    assert "columns.batchSize" in message
    assert "greater than or equal to 1" in message


def test_every_bad_field_is_listed() -> None:
    message = spec_error(spec_with(columns={"batchSize": -1, "parallelism": 0}, connectionId=""))
    assert "columns.batchSize" in message
    assert "columns.parallelism" in message
    assert "connectionId" in message


@pytest.mark.parametrize("url", ["http://bucket", "/var/lib/metatide", "s3:/bucket", "FILE:///x"])
def test_bad_storage_url(url: str) -> None:
    message = spec_error(spec_with(storage={"url": url}))
    assert "storage.url" in message


@pytest.mark.parametrize("url", ["s3://bucket", "s3://bucket/prefix", "file:///tmp/store"])
def test_good_storage_urls(url: str) -> None:
    assert parse_spec(spec_with(storage={"url": url})).storage.url == url


@pytest.mark.parametrize(
    ("template", "unknown"),
    [("apps/{application}/x", "application"), ("{connection_id}/{}", ""), ("{env}/{x}", "env")],
)
def test_unknown_prefix_template_placeholder(template: str, unknown: str) -> None:
    message = spec_error(spec_with(storage={"url": "s3://b", "prefixTemplate": template}))
    assert "storage.prefixTemplate" in message
    assert repr(unknown) in message


def test_custom_prefix_template() -> None:
    storage = {"url": "s3://b", "prefixTemplate": "meta/{connection_id}/{application_name}"}
    spec = parse_spec(spec_with(storage=storage))
    assert spec.connection_prefix == "meta/orders-db/shop"


@pytest.mark.parametrize("limit", ["2 gigabytes", "GB", "-1GB", "2", "1.5PB", ""])
def test_bad_duckdb_memory_limit(limit: str) -> None:
    message = spec_error(spec_with(duckdb={"memoryLimit": limit}))
    assert "duckdb.memoryLimit" in message


@pytest.mark.parametrize("limit", ["512MB", "1.5GB", "4 GiB", "100B"])
def test_good_duckdb_memory_limit(limit: str) -> None:
    assert parse_spec(spec_with(duckdb={"memoryLimit": limit})).duckdb.memory_limit == limit


def test_unknown_source_kind_names_the_discriminator() -> None:
    message = spec_error(spec_with(source={"kind": "oracle", "path": "x"}))
    assert "source" in message
    assert "'oracle'" in message
    assert "'postgresql'" in message
    assert "'sqlite'" in message


def test_missing_source_kind_is_an_error() -> None:
    message = spec_error(spec_with(source={"path": "x"}))
    assert "source" in message
    assert "kind" in message


@pytest.mark.parametrize("name", ["", "-starts-with-dash", "has space", "a" * 64, "slash/no"])
def test_bad_connection_id(name: str) -> None:
    assert "connectionId" in spec_error(spec_with(connectionId=name))


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_mass_delete_fraction_is_bounded(fraction: float) -> None:
    message = spec_error(spec_with(massDeleteGuard={"maxDeletedFraction": fraction}))
    assert "massDeleteGuard.maxDeletedFraction" in message


@pytest.mark.parametrize("document", [None, [], "spec", 3])
def test_a_spec_must_be_a_mapping(document: Any) -> None:
    assert "must be a mapping" in spec_error(document)


def test_secret_ref_resolves_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MT_TEST_DSN", "postgresql://u:hunter2@h/db")
    assert SecretRef(env="MT_TEST_DSN").resolve("the source DSN") == "postgresql://u:hunter2@h/db"


@pytest.mark.parametrize("value", [None, ""])
def test_missing_secret_names_the_variable_never_a_value(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("MT_TEST_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("MT_TEST_PASSWORD", value)
    monkeypatch.setenv("MT_TEST_OTHER_SECRET", "hunter2")
    with pytest.raises(CredentialsError) as caught:
        SecretRef(env="MT_TEST_PASSWORD").resolve("the source password")
    message = str(caught.value)
    assert "MT_TEST_PASSWORD" in message
    assert "the source password" in message
    assert "hunter2" not in message
    assert caught.value.exit_code == 3


@pytest.mark.parametrize("env", ["1ABC", "WITH-DASH", "", "A B"])
def test_secret_ref_env_must_be_a_variable_name(env: str) -> None:
    source = {"kind": "postgresql", "dsnFrom": {"env": env}}
    assert "source.postgresql.dsnFrom.env" in spec_error(spec_with(source=source))


def test_secret_values_are_never_in_the_spec() -> None:
    source = {"kind": "postgresql", "dsnFrom": {"env": "DSN", "value": "postgresql://x"}}
    assert "source.postgresql.dsnFrom.value" in spec_error(spec_with(source=source))


def test_load_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "applicationName: shop\n"
        "connectionId: orders-db\n"
        "source:\n  kind: sqlite\n  path: /data/shop.sqlite\n"
        "storage:\n  url: file:///var/lib/metatide\n"
        "columns:\n  batchSize: 10\n",
        encoding="utf-8",
    )
    spec = load_spec_file(path)
    assert spec.columns.batch_size == 10
    assert spec == parse_spec(spec_with(columns={"batchSize": 10}))


def test_load_json_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(CAMEL), encoding="utf-8")
    assert load_spec_file(path) == parse_spec(CAMEL)


def test_load_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_with(columns={"batchSize": 0})), encoding="utf-8")
    with pytest.raises(SpecError) as caught:
        load_spec_file(path)
    assert str(path) in str(caught.value)
    assert "columns.batchSize" in str(caught.value)


def test_missing_spec_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as caught:
        load_spec_file(path)
    assert "cannot read the spec file" in str(caught.value)
    assert str(path) in str(caught.value)


def test_invalid_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("applicationName: [unclosed\n", encoding="utf-8")
    with pytest.raises(SpecError, match="not valid YAML/JSON"):
        load_spec_file(path)


def test_empty_spec_file_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec_file(path)


def test_load_spec_json_bad_json() -> None:
    with pytest.raises(SpecError) as caught:
        load_spec_json('{"applicationName": ', "the METATIDE_SPEC environment variable")
    message = str(caught.value)
    assert "the METATIDE_SPEC environment variable is not valid JSON" in message
    assert "position" in message


def test_load_spec_json_invalid_spec_names_the_origin_and_field() -> None:
    with pytest.raises(SpecError) as caught:
        load_spec_json(json.dumps(spec_with(columns={"batchSize": 0})), "METATIDE_SPEC")
    assert "METATIDE_SPEC is invalid" in str(caught.value)
    assert "columns.batchSize" in str(caught.value)


def test_spec_is_frozen() -> None:
    spec = parse_spec(CAMEL)
    with pytest.raises(ValueError, match="frozen"):
        spec.application_name = "other"
    assert isinstance(spec, ExtractionSpec)


@pytest.mark.parametrize(
    ("fmt", "default"),
    [
        ("%Y-%m-%dT%H:%M:%SZ", "1970-01-01T00:00:00Z"),
        ("%Y%m%d%H%M%S", "19700101000000"),
        ("%Y-%m-%d %H:%M:%S.%f", "1970-01-01 00:00:00.000000"),
        ("%d/%m/%Y %H:%M:%S", "01/01/1970 00:00:00"),
        ("%Y-%j_%H.%M.%S", "1970-001_00.00.00"),
    ],
)
def test_marker_formats_that_round_trip_are_accepted(fmt: str, default: str) -> None:
    spec = parse_spec(spec_with(marker={"format": fmt, "default": default}))
    assert spec.marker.format == fmt


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("%Y-%m-%dT%H:%M:%SZ'; drop table x; --", "may contain only"),
        ("%Y-%m-%d", "lacks %H, %M, %S"),
        ("%y-%m-%dT%H:%M:%SZ", "may contain only"),  # two-digit years do not round-trip
        ("%Y-%m-%dT%H:%M", "lacks %S"),
        ("%Y-%mT%H:%M:%S", "%m and %d (or %j)"),
        ("%Y-%m-%d %I:%M:%S", "may contain only"),  # 12-hour clock without %p
        ("%Y%m%d%H%M%S%%", "may contain only"),
        ('%Y-%m-%d"%H:%M:%S', "may contain only"),
    ],
)
def test_marker_formats_that_could_not_round_trip_or_inject_are_refused(
    fmt: str, expected: str
) -> None:
    message = spec_error(spec_with(marker={"format": fmt, "default": "x"}))
    assert "marker.format" in message
    assert expected in message


def test_lease_and_verification_defaults() -> None:
    spec = parse_spec(CAMEL)
    assert spec.state.lease_seconds == 300
    assert spec.state.verify_every_runs == 24
    assert parse_spec(spec_with(state={"verifyEveryRuns": 0})).state.verify_every_runs == 0
    assert "leaseSeconds" in spec_error(spec_with(state={"leaseSeconds": 5}))


def test_mysql_source_defaults_and_secrets() -> None:
    spec = parse_spec(
        spec_with(source={"kind": "mysql", "scope": {"include": [{"schema": "shop"}]}})
    )
    source = spec.source
    assert isinstance(source, MysqlSourceSpec)
    assert source.dsn_from.env == "METATIDE_SOURCE_DSN"
    assert source.tls.mode == "required"
    assert source.tls.ca_from is None
    assert [rule.schema_ for rule in source.scope.include] == ["shop"]
    assert [ref.env for ref in spec.secret_refs()] == [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "METATIDE_SOURCE_DSN",
    ]


def test_mysql_tls_mode_is_checked_and_the_ca_is_a_secret_reference() -> None:
    message = spec_error(spec_with(source={"kind": "mysql", "tls": {"mode": "prefer"}}))
    assert "source.mysql.tls.mode" in message
    source = {
        "kind": "mysql",
        "passwordFrom": {"env": "DB_PASSWORD"},
        "tls": {"mode": "verify-identity", "caFrom": {"env": "DB_CA"}},
    }
    spec = parse_spec(spec_with(source=source))
    assert [ref.env for ref in spec.source.secret_refs()] == [
        "METATIDE_SOURCE_DSN",
        "DB_PASSWORD",
        "DB_CA",
    ]


def test_mysql_has_no_databases_field() -> None:
    # MySQL databases are schemas: they are chosen with scope, not source.databases.
    message = spec_error(spec_with(source={"kind": "mysql", "databases": ["shop"]}))
    assert "source.mysql.databases" in message


def test_sqlite_needs_no_secret() -> None:
    assert parse_spec(CAMEL).source.secret_refs() == []
