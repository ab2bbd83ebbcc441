"""The generated CRD: current on disk, structural, described, and as strict as the model.

The API server rejects a non-structural schema and silently ignores what it cannot express, so
these tests check the rules a real API server applies (e2e/ applies the CRD for real) and, with a
small re-implementation of structural defaulting, that the defaults the API server fills in are
the model's own defaults.
"""

from __future__ import annotations

import copy
import re
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from metatide.operator import crd, model, structural
from metatide.operator.model import IncrementalExtractionSpec, ScheduleSpec

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / crd.CRD_FILE
EXAMPLE_PATH = REPO / "examples" / "incrementalextraction.yaml"

# Object nodes the API server defines itself (only `type: object` is allowed there).
_SERVER_OWNED = {"metadata"}
_FORBIDDEN_KEYWORDS = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "const", "title"}
# Fields of one source kind: their defaults cannot live in the flattened schema.
_POSTGRES_ONLY = {
    "dsnFrom",
    "passwordFrom",
    "databases",
    "connectTimeoutSeconds",
    "readConnections",
}
_MYSQL_ONLY = {"tls"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, Any]:
    return crd.render()


@pytest.fixture(scope="module")
def root(rendered: dict[str, Any]) -> dict[str, Any]:
    (version,) = rendered["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


@pytest.fixture(scope="module")
def spec_schema(root: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = root["properties"]["spec"]
    return schema


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node (properties, items, map values) with its path."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}" if path else name)
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Structural defaulting as the API server does it: top-down, into defaults too."""
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name, child in properties.items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
        for name, item in value.items():
            if name in properties:
                apply_defaults(item, properties[name])
            elif isinstance(schema.get("additionalProperties"), dict):
                apply_defaults(item, schema["additionalProperties"])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(item, schema["items"])
    return value


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def violations(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """What the API server's OpenAPI validation and pruning would object to (no CEL)."""
    expected = _TYPES[schema["type"]]
    if not isinstance(value, expected) or (
        isinstance(value, bool) and schema["type"] in ("integer", "number")
    ):
        return [f"{path}: {value!r} is not of type {schema['type']}"]
    if isinstance(value, dict):
        return _object_violations(value, schema, path)
    if isinstance(value, list):
        found: list[str] = []
        for index, item in enumerate(value):
            found += violations(item, schema["items"], f"{path}[{index}]")
        return found
    return _scalar_violations(value, schema, path)


def _scalar_violations(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    checks = [
        ("enum", lambda: value in schema["enum"]),
        ("minimum", lambda: value >= schema["minimum"]),
        ("exclusiveMinimum", lambda: value > schema["minimum"]),
        ("maximum", lambda: value <= schema["maximum"]),
        ("minLength", lambda: len(value) >= schema["minLength"]),
        ("maxLength", lambda: len(value) <= schema["maxLength"]),
        ("pattern", lambda: re.search(schema["pattern"], value) is not None),
    ]
    return [
        f"{path}: {value!r} violates {keyword}={schema[keyword]!r}"
        for keyword, ok in checks
        if keyword in schema and schema[keyword] is not False and not ok()
    ]


def _object_violations(value: dict[str, Any], schema: dict[str, Any], path: str) -> list[str]:
    properties = schema.get("properties", {})
    found = [f"{path}.{name}: required" for name in schema.get("required", []) if name not in value]
    for name, item in value.items():
        if name in properties:
            found += violations(item, properties[name], f"{path}.{name}")
        elif isinstance(schema.get("additionalProperties"), dict):
            found += violations(item, schema["additionalProperties"], f"{path}.{name}")
        elif not schema.get("x-kubernetes-preserve-unknown-fields"):
            found.append(f"{path}.{name}: unknown field (the API server would prune it)")
    return found


def cel_regex(node: dict[str, Any]) -> str:
    """The regular expression inside the node's one `self.matches(r'...')` CEL rule."""
    (rule,) = node["x-kubernetes-validations"]
    match = re.fullmatch(r"self\.matches\(r'(.*)'\)", rule["rule"])
    assert match, rule
    return match.group(1)


def test_committed_crd_is_current() -> None:
    committed = CRD_PATH.read_text(encoding="utf-8") if CRD_PATH.exists() else ""
    assert committed == crd.render_yaml(), (
        f"{crd.CRD_FILE} is out of date with the model; regenerate it with "
        f"`{crd.REGENERATE_COMMAND}` (and copy it to charts/metatide/files/)"
    )


def test_identity(rendered: dict[str, Any]) -> None:
    assert rendered["apiVersion"] == "apiextensions.k8s.io/v1"
    assert rendered["metadata"]["name"] == f"{model.PLURAL}.{model.GROUP}" == crd.CRD_NAME
    spec = rendered["spec"]
    assert spec["group"] == model.GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == model.KIND
    assert spec["names"]["plural"] == model.PLURAL
    assert spec["names"]["shortNames"] == [model.SHORT_NAME]
    assert spec["names"]["categories"] == ["metatide"]
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == (model.VERSION, True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns(rendered: dict[str, Any], root: dict[str, Any]) -> None:
    (version,) = rendered["spec"]["versions"]
    columns = {c["name"]: (c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ("string", ".status.phase"),
        "Last Run": ("date", ".status.lastSuccessfulRun.finishedAt"),
        "Changed": ("integer", ".status.lastSuccessfulRun.changedTables"),
        "Deleted": ("integer", ".status.lastSuccessfulRun.deletedTables"),
        "Age": ("date", ".metadata.creationTimestamp"),
    }
    for kind, path in columns.values():
        if path.startswith(".status."):
            node = root["properties"]["status"]
            for name in path.removeprefix(".status.").split("."):
                node = node["properties"][name]
            assert {"date": "string"}.get(kind, kind) == node["type"], path


def test_schema_is_structural(root: dict[str, Any]) -> None:
    problems = []
    for path, node in walk(root):
        if forbidden := _FORBIDDEN_KEYWORDS & node.keys():
            problems.append(f"{path}: {sorted(forbidden)}")
        if "type" not in node:
            problems.append(f"{path}: no type")
        if node.get("additionalProperties") is False:
            problems.append(f"{path}: additionalProperties false is not allowed")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: both properties and additionalProperties")
        if node.get("type") == "object" and path not in _SERVER_OWNED:
            shaped = {"properties", "additionalProperties", "x-kubernetes-preserve-unknown-fields"}
            if not shaped & node.keys():
                problems.append(f"{path}: object without properties, map values or preserve")
        if node.get("type") == "array" and "items" not in node:
            problems.append(f"{path}: array without items")
        for name in node.get("required", []):
            if name not in node.get("properties", {}):
                problems.append(f"{path}: required {name!r} is not a property")
    assert not problems, "not a structural schema:\n" + "\n".join(problems)


def test_every_property_is_described(root: dict[str, Any]) -> None:
    missing = [
        path
        for path, node in crd.iter_properties(root)
        if path not in _SERVER_OWNED and not str(node.get("description", "")).strip()
    ]
    assert not missing, "properties without a description (kubectl explain shows nothing):\n" + (
        "\n".join(missing)
    )


def test_every_model_field_is_in_the_schema(spec_schema: dict[str, Any]) -> None:
    properties = spec_schema["properties"]
    assert set(properties) == {
        field.alias or name for name, field in IncrementalExtractionSpec.model_fields.items()
    }
    assert spec_schema["required"] == ["applicationName", "connectionId", "source", "storage"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"columns": {"batchSize": -5}}, "spec.columns.batchSize: -5 violates minimum=1"),
        ({"source": {"kind": "oracle"}}, "spec.source.kind: 'oracle' violates enum"),
        ({"connectionId": "-x"}, "spec.connectionId: '-x' violates pattern"),
        ({"colums": {}}, "spec.colums: unknown field"),
        ({"source": {"kind": "postgresql", "connectTimeoutSeconds": 0}}, "violates exclusive"),
    ],
)
def test_the_schema_checker_catches_mistakes(
    spec_schema: dict[str, Any], change: dict[str, Any], expected: str
) -> None:
    spec = {
        "applicationName": "shop",
        "connectionId": "shop-prod",
        "source": {"kind": "postgresql"},
        "storage": {"url": "s3://metadata"},
        **change,
    }
    found = violations(spec, spec_schema, "spec")
    assert any(expected in problem for problem in found), found


def test_defaults_are_valid_and_pruned(root: dict[str, Any]) -> None:
    problems = []
    for path, node in walk(root):
        if "default" in node:
            problems += violations(node["default"], node, f"{path}(default)")
            if node["default"] is None:
                problems.append(f"{path}: null default")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "source",
    [{"kind": "sqlite", "path": "/data/shop.sqlite"}, {"kind": "postgresql"}],
    ids=["sqlite", "postgresql"],
)
def test_server_defaults_are_the_model_defaults(
    spec_schema: dict[str, Any], source: dict[str, Any]
) -> None:
    minimal = {
        "applicationName": "shop",
        "connectionId": "shop-prod",
        "source": source,
        "storage": {"url": "s3://metadata"},
    }
    defaulted = apply_defaults(copy.deepcopy(minimal), spec_schema)
    assert not violations(defaulted, spec_schema, "spec")
    model = IncrementalExtractionSpec.model_validate(defaulted)
    expected = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    # A field of one source kind has no schema default (it would apply to the other kind too);
    # the model fills it in when the operator parses the resource.
    for name in _POSTGRES_ONLY:
        expected["source"].pop(name, None)
    assert defaulted == expected
    assert IncrementalExtractionSpec.model_validate(minimal) == model


def test_source_union_is_flattened(spec_schema: dict[str, Any]) -> None:
    source = spec_schema["properties"]["source"]
    assert source["type"] == "object"
    assert source["required"] == ["kind"]
    assert source["properties"]["kind"]["enum"] == ["postgresql", "mysql", "sqlite"]
    assert set(source["properties"]) == {"kind", "scope", "path"} | _POSTGRES_ONLY | _MYSQL_ONLY
    rules = {rule["rule"]: rule for rule in source["x-kubernetes-validations"]}
    assert "self.kind == 'sqlite' ? has(self.path) : true" in rules
    assert "self.kind == 'postgresql' ? !has(self.path) : true" in rules
    assert "self.kind == 'mysql' ? !has(self.path) : true" in rules
    assert "self.kind == 'mysql' ? !has(self.databases) : true" in rules
    assert "self.kind == 'postgresql' ? !has(self.tls) : true" in rules
    for name in _POSTGRES_ONLY | _MYSQL_ONLY:
        rule = rules[f"self.kind == 'sqlite' ? !has(self.{name}) : true"]
        assert name in rule["message"]
        assert rule["fieldPath"] == f".{name}"
        assert "default" not in source["properties"][name]
    for rule in rules.values():
        assert rule["message"]


def test_variants_may_describe_a_shared_field_in_their_own_words(
    spec_schema: dict[str, Any],
) -> None:
    dsn = spec_schema["properties"]["source"]["properties"]["dsnFrom"]["description"]
    assert "For kind postgresql: Where the libpq-style DSN" in dsn
    assert "For kind mysql: Where the DSN (mysql://" in dsn
    scope = spec_schema["properties"]["source"]["properties"]["scope"]["description"]
    assert scope.startswith("For kind postgresql or sqlite: Include/exclude filters.")


def _union(*variants: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "description": "A source.",
        "discriminator": {"propertyName": "kind"},
        "oneOf": [
            {
                "description": f"Kind {tag}.",
                "type": "object",
                "properties": {"kind": {"const": tag, "type": "string"}, **props},
            }
            for tag, props in variants
        ],
    }


def test_union_merges_descriptions_at_every_level_but_not_shapes() -> None:
    converter = structural.Converter({})
    first = {"type": "object", "description": "A.", "properties": {"x": {"type": "string"}}}
    second = {
        "type": "object",
        "description": "B.",
        "properties": {"x": {"type": "string", "description": "inner"}},
    }
    third = {"type": "object", "description": "A.", "properties": {"x": {"type": "string"}}}
    flat = converter.convert(
        _union(("a", {"f": first}), ("b", {"f": second}), ("c", {"f": third})), "s"
    )
    field = flat["properties"]["f"]
    assert field["description"] == "For kind a or c: A. For kind b: B."
    assert field["properties"]["x"]["description"] == "For kind b: inner"
    named = {"type": "object", "properties": {"description": {"type": "string"}}}
    flat = converter.convert(_union(("a", {"g": named}), ("b", {"g": named})), "s")
    assert flat["properties"]["g"]["properties"] == {"description": {"type": "string"}}
    reshaped = {"type": "object", "properties": {"x": {"type": "integer"}}}
    with pytest.raises(structural.CRDSchemaError, match="not only in its description"):
        converter.convert(_union(("a", {"f": first}), ("b", {"f": reshaped})), "s")


def test_exclusive_minimum_is_openapi_v3_0(spec_schema: dict[str, Any]) -> None:
    timeout = spec_schema["properties"]["source"]["properties"]["connectTimeoutSeconds"]
    assert (timeout["minimum"], timeout["exclusiveMinimum"]) == (0, True)


def test_nullable_and_maps(spec_schema: dict[str, Any]) -> None:
    storage = spec_schema["properties"]["storage"]["properties"]
    assert storage["endpoint"] == {
        "description": storage["endpoint"]["description"],
        "type": "string",
        "nullable": True,
    }
    requests = spec_schema["properties"]["job"]["properties"]["resources"]["properties"]["requests"]
    assert requests["additionalProperties"] == {"type": "string"}


@pytest.mark.parametrize(
    "cron",
    ["* * * * *", "0 * * * *", "*/5 9-17 * * MON-FRI", "0 0 1,15 * ?", "0 3 * JAN,JUL 0"],
)
def test_cron_rule_accepts_what_the_model_accepts(spec_schema: dict[str, Any], cron: str) -> None:
    ScheduleSpec(cron=cron)
    regex = cel_regex(spec_schema["properties"]["schedule"]["properties"]["cron"])
    assert re.search(regex, cron)


@pytest.mark.parametrize("cron", ["every hour please", "0 0 * * * *", "* * * *", "@hourly"])
def test_cron_rule_rejects_what_the_model_rejects(spec_schema: dict[str, Any], cron: str) -> None:
    with pytest.raises(ValidationError):
        ScheduleSpec(cron=cron)
    regex = cel_regex(spec_schema["properties"]["schedule"]["properties"]["cron"])
    assert not re.search(regex, cron)


def test_time_zone_rule_accepts_every_iana_zone(spec_schema: dict[str, Any]) -> None:
    node = spec_schema["properties"]["schedule"]["properties"]["timeZone"]
    regex = cel_regex(node)
    rejected = [
        zone
        for zone in zoneinfo.available_timezones()
        if not re.search(regex, zone) or len(zone) > node["maxLength"]
    ]
    assert not rejected
    for bad in ("Mars Base/1", "/UTC", "Europe//Berlin", ""):
        assert not re.search(regex, bad)


def test_prefix_template_rule_matches_the_model(spec_schema: dict[str, Any]) -> None:
    (rule,) = spec_schema["properties"]["storage"]["properties"]["prefixTemplate"][
        "x-kubernetes-validations"
    ]
    match = re.search(r"findAll\(r'(.*?)'\)", rule["rule"])
    assert match
    allowed = {"{application_name}", "{connection_id}"}
    for template, ok in (
        ("persistent-artifacts/apps/{application_name}/connection/{connection_id}", True),
        ("flat", True),
        ("a/{tenant}/{connection_id}", False),
        ("a/{}/b", False),
    ):
        assert (set(re.findall(match.group(1), template)) <= allowed) is ok, template


def test_converter_refuses_unions_it_cannot_express() -> None:
    converter = structural.Converter({})
    with pytest.raises(structural.CRDSchemaError, match="only Optional"):
        converter.convert({"anyOf": [{"type": "string"}, {"type": "integer"}]}, "spec.x")
    with pytest.raises(structural.CRDSchemaError, match="no structural CRD equivalent"):
        converter.convert({"type": "string", "patternProperties": {}}, "spec.y")


def test_example_is_a_valid_resource() -> None:
    document = yaml.safe_load(EXAMPLE_PATH.read_text(encoding="utf-8"))
    assert document["apiVersion"] == f"{model.GROUP}/{model.VERSION}"
    assert document["kind"] == model.KIND
    spec = IncrementalExtractionSpec.model_validate(document["spec"])
    assert spec.source.kind == "postgresql"
    assert spec.source.dsn_from.secret_key_ref is not None
    assert spec.storage.endpoint
    assert spec.storage.access_key_from.secret_key_ref is not None
    assert spec.storage.secret_key_from.secret_key_ref is not None
    assert spec.schedule is not None


def test_example_passes_the_schema(spec_schema: dict[str, Any]) -> None:
    document = yaml.safe_load(EXAMPLE_PATH.read_text(encoding="utf-8"))
    defaulted = apply_defaults(copy.deepcopy(document["spec"]), spec_schema)
    assert not violations(defaulted, spec_schema, "spec")
    IncrementalExtractionSpec.model_validate(defaulted)
