"""Pydantic's JSON Schema rewritten as a *structural* CRD schema (OpenAPI v3.0 subset).

`metatide.operator.crd` builds the `IncrementalExtraction` CRD's spec and status schemas with
`structural_schema` from the models the operator validates with. A CRD schema must be
structural (no ``$ref``, no ``anyOf``/``oneOf`` of differing shapes, a type on every node), so
the JSON Schema is rewritten:

- ``$ref`` is inlined; ``title`` and ``discriminator`` are dropped; ``anyOf [X, null]`` becomes X
  with ``nullable: true``; ``const`` becomes a one-value ``enum``; a numeric
  ``exclusiveMinimum``/``exclusiveMaximum`` (JSON Schema 2020-12) becomes ``minimum`` plus the
  boolean of OpenAPI v3.0; ``additionalProperties: false`` is dropped (the API server prunes
  unknown fields, and ``kubectl`` rejects them with strict field validation); ``x-kubernetes-*``
  keys a model declares with ``json_schema_extra`` (CEL rules, list types) are kept as they are.
- Defaults made by a ``default_factory`` are rendered too (pydantic leaves them out), so
  ``kubectl get -o yaml`` shows the effective values; ``None`` defaults are left out (absent means
  None to the model) and so are ``None`` values inside object defaults.
- A discriminated union (``source``: postgresql | sqlite) is flattened into one object with the
  union of the variants' properties, the discriminator as a required ``enum``, and CEL rules
  (``x-kubernetes-validations``) that require each variant's required fields and forbid the
  other variants' fields. A field of one variant cannot carry a default (it would be filled in
  for the other variant too), so its default moves into its description; the model still
  applies it when the operator parses the resource.

Any JSON Schema keyword this module does not know raises `CRDSchemaError`, so a model change that
the API server could not represent fails the unit test instead of producing a lax CRD.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

Schema = dict[str, Any]

# Keywords copied as they are (after their values are checked to be plain data).
_PLAIN_KEYWORDS: Final = frozenset(
    {
        "type",
        "format",
        "description",
        "enum",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "required",
        "nullable",
    }
)
# Keywords dropped on purpose: titles are noise in `kubectl explain`; the discriminator is
# replaced by the flattening; additionalProperties: false is not allowed in a structural schema.
_DROPPED_KEYWORDS: Final = frozenset({"title", "discriminator"})

# The order keys appear in the YAML, so the generated file reads like a hand-written CRD.
_KEY_ORDER: Final = (
    "description",
    "type",
    "format",
    "enum",
    "default",
    "nullable",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "items",
    "required",
    "properties",
    "additionalProperties",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",
)
# The order of a CEL rule's keys: the rule, then what the API server says when it fails.
_RULE_KEY_ORDER: Final = ("rule", "message", "messageExpression", "fieldPath", "reason")


class CRDSchemaError(ValueError):
    """The model's JSON Schema uses something a structural CRD schema cannot express."""


class _FactoryDefaults(GenerateJsonSchema):
    """JSON Schema generator that also renders defaults made by a ``default_factory``.

    pydantic leaves them out (a factory may depend on time or state); ours are constant
    objects, and without them the API server would not fill in `job`, `columns` and friends.
    """

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        """The static default, or the factory's value when the factory takes no arguments."""
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            return factory()  # type: ignore[call-arg]
        return schema.get("default", NoDefault)


def _without_none(value: Any) -> Any:
    """A default with every None dropped: absent and None mean the same to the model."""
    if isinstance(value, dict):
        return {key: _without_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_none(item) for item in value]
    return value


def _in_order(mapping: Mapping[str, Any], order: tuple[str, ...]) -> Schema:
    """The mapping's keys in `order` (unknown keys last, in their order)."""
    rank = {key: index for index, key in enumerate(order)}
    return dict(sorted(mapping.items(), key=lambda item: rank.get(item[0], len(rank))))


def ordered(schema: Schema) -> Schema:
    """The schema's keys in `_KEY_ORDER`, so the generated YAML reads like a hand-written CRD."""
    return _in_order(schema, _KEY_ORDER)


class Converter:
    """Rewrites pydantic's JSON Schema into a structural OpenAPI v3.0 schema."""

    def __init__(self, definitions: Mapping[str, Schema]) -> None:
        self._definitions = definitions
        # Keywords that need more than a copy: keyword -> (keyword, value, path) -> schema part.
        self._handlers: dict[str, Callable[[str, Any, str], Schema]] = {
            "const": lambda _key, value, _path: {"enum": [value]},
            "default": self._default,
            "exclusiveMinimum": self._exclusive,
            "exclusiveMaximum": self._exclusive,
            "properties": self._properties,
            "items": lambda _key, value, path: {"items": self.convert(value, f"{path}[]")},
            "additionalProperties": self._additional,
            "x-kubernetes-validations": self._validations,
        }

    def convert(self, node: Mapping[str, Any], path: str) -> Schema:
        """The structural form of `node`; `path` names it in errors (e.g. spec.source.kind)."""
        node = dict(node)
        if "$ref" in node:
            return self._inline(node, path)
        if "anyOf" in node:
            return self._nullable(node, path)
        if "oneOf" in node:
            return self._flatten_union(node, path)

        result: Schema = {}
        for key, value in node.items():
            result.update(self._keyword(key, value, path))
        if "type" not in result:
            raise CRDSchemaError(f"{path}: every node of a structural schema needs a type")
        return ordered(result)

    def _keyword(self, key: str, value: Any, path: str) -> Schema:
        """What one JSON Schema keyword becomes in the structural schema (maybe nothing)."""
        if key in _DROPPED_KEYWORDS:
            return {}
        handler = self._handlers.get(key)
        if handler is not None:
            return handler(key, value, path)
        if key in _PLAIN_KEYWORDS or key.startswith("x-kubernetes-"):
            return {key: value}
        raise CRDSchemaError(
            f"{path}: JSON Schema keyword {key!r} has no structural CRD equivalent; "
            "extend metatide.operator.structural or change the model"
        )

    @staticmethod
    def _default(_key: str, value: Any, _path: str) -> Schema:
        """A default without None (absent means None to the model); no None default at all."""
        return {} if value is None else {"default": _without_none(value)}

    @staticmethod
    def _exclusive(key: str, value: Any, path: str) -> Schema:
        """JSON Schema 2020-12's numeric exclusive bound as OpenAPI v3.0's bound + boolean."""
        if isinstance(value, bool):
            raise CRDSchemaError(f"{path}: boolean {key} is not JSON Schema 2020-12")
        bound = "minimum" if key == "exclusiveMinimum" else "maximum"
        return {bound: value, key: True}

    @staticmethod
    def _validations(key: str, value: Any, _path: str) -> Schema:
        """CEL rules from ``json_schema_extra``, each with its rule first (pydantic sorts keys)."""
        return {key: [_in_order(rule, _RULE_KEY_ORDER) for rule in value]}

    def _properties(self, _key: str, value: Any, path: str) -> Schema:
        return {
            "properties": {
                name: self.convert(child, f"{path}.{name}") for name, child in value.items()
            }
        }

    def _additional(self, _key: str, value: Any, path: str) -> Schema:
        """Map values keep their schema; `false` is dropped (pruning does that job)."""
        if value is False:
            return {}
        if value is True:
            return {"x-kubernetes-preserve-unknown-fields": True}
        return {"additionalProperties": self.convert(value, f"{path}.*")}

    def _inline(self, node: Schema, path: str) -> Schema:
        """A ``$ref`` replaced by its definition; the field's own keys (description) win."""
        name = str(node.pop("$ref")).removeprefix("#/$defs/")
        if name not in self._definitions:
            raise CRDSchemaError(f"{path}: unknown $ref {name!r}")
        merged = {**self._definitions[name], **node}
        return self.convert(merged, path)

    def _nullable(self, node: Schema, path: str) -> Schema:
        """``anyOf [X, null]`` as X with ``nullable: true`` (other unions are not structural)."""
        options = node.pop("anyOf")
        others = [option for option in options if option != {"type": "null"}]
        if len(others) != 1 or len(options) != 2:
            raise CRDSchemaError(
                f"{path}: anyOf of {len(options)} options; only Optional[X] (X or null) is "
                "supported, use a discriminated union for alternatives"
            )
        merged = {**others[0], **node, "nullable": True}
        return self.convert(merged, path)

    def _flatten_union(self, node: Schema, path: str) -> Schema:
        """A discriminated union as one object plus CEL rules per variant."""
        discriminator = node.get("discriminator", {}).get("propertyName")
        if not discriminator:
            raise CRDSchemaError(f"{path}: oneOf without a discriminator cannot be flattened")
        union = _Union(discriminator, path)
        for option in node["oneOf"]:
            union.add(self.convert(option, path))
        return union.flatten(node.get("description", ""))


class _Union:
    """The variants of one discriminated union, collected for flattening."""

    def __init__(self, discriminator: str, path: str) -> None:
        self.discriminator = discriminator
        self.path = path
        self.tags: list[str] = []
        self.summaries: list[str] = []  # "tag: what the variant is", for the description
        self.owners: dict[str, list[str]] = {}  # property -> tags of the variants that have it
        self.shapes: dict[str, Schema] = {}  # property -> its schema, descriptions merged
        self.worded: dict[str, list[tuple[str, Schema]]] = {}  # property -> (tag, its schema)
        self.required_by: dict[str, list[str]] = {}  # tag -> its required properties

    def add(self, variant: Schema) -> None:
        """Record one converted variant; a property two variants shape differently is an error.

        Variants may describe a shared property in their own words (a DSN's example differs
        per kind): the shapes must match apart from descriptions, which are merged.
        """
        (tag,) = variant["properties"][self.discriminator]["enum"]
        self.tags.append(tag)
        self.summaries.append(f"{tag}: {variant.get('description', '').rstrip('.')}")
        self.required_by[tag] = [
            name for name in variant.get("required", []) if name != self.discriminator
        ]
        for name, prop in variant["properties"].items():
            if name == self.discriminator:
                continue
            if name in self.shapes and _undescribed(self.shapes[name]) != _undescribed(prop):
                raise CRDSchemaError(
                    f"{self.path}.{name}: variants define this property differently (not only "
                    "in its description); give them one shape or different names"
                )
            self.owners.setdefault(name, []).append(tag)
            self.worded.setdefault(name, []).append((tag, prop))
            self.shapes[name] = _merge_descriptions(self.discriminator, self.worded[name])

    def _only_for(self, name: str) -> Schema:
        """A variant's own property: no default (it would apply to every kind); noted instead."""
        prop = dict(self.shapes[name])
        note = f" Only when {self.discriminator} is {' or '.join(self.owners[name])}."
        if "default" in prop:
            note += f" Defaults to {json.dumps(prop.pop('default'), separators=(', ', ': '))}."
        prop["description"] = prop.get("description", "") + note
        return prop

    def _rules(self) -> list[Schema]:
        """CEL rules: a variant's required fields are required, other variants' forbidden."""
        kind = self.discriminator
        rules: list[Schema] = []
        for name, own in self.owners.items():
            for tag in (tag for tag in self.tags if tag not in own):
                rules.append(
                    {
                        "rule": f"self.{kind} == '{tag}' ? !has(self.{name}) : true",
                        "message": f"{name} is not allowed when {kind} is {tag} "
                        f"(it belongs to {kind} {' or '.join(own)})",
                        "fieldPath": f".{name}",
                        "reason": "FieldValueForbidden",
                    }
                )
        for tag, names in self.required_by.items():
            for name in (name for name in names if self.owners[name] != self.tags):
                rules.append(
                    {
                        "rule": f"self.{kind} == '{tag}' ? has(self.{name}) : true",
                        "message": f"{name} is required when {kind} is {tag}",
                        "fieldPath": f".{name}",
                        "reason": "FieldValueRequired",
                    }
                )
        return rules

    def flatten(self, description: str) -> Schema:
        """One object: the union of the properties, the discriminator a required enum."""
        properties: Schema = {
            self.discriminator: {
                "description": f"Which kind of {self.path.rsplit('.', 1)[-1]} this is. "
                f"{'; '.join(self.summaries)}. "
                "Fields of another kind are rejected.",
                "type": "string",
                "enum": self.tags,
            }
        }
        for name, prop in self.shapes.items():
            shared = self.owners[name] == self.tags
            properties[name] = prop if shared else self._only_for(name)
        # Required by every variant (none today): plain `required`, no rule needed.
        required = [self.discriminator] + [
            name
            for name in self.shapes
            if self.owners[name] == self.tags
            and all(name in names for names in self.required_by.values())
        ]
        flat: Schema = {
            "description": description,
            "type": "object",
            "required": required,
            "properties": properties,
            "x-kubernetes-validations": self._rules(),
        }
        return ordered(flat)


def _undescribed(node: Any) -> Any:
    """A schema without its descriptions, at every level (to compare shapes)."""
    if isinstance(node, dict):  # a property *named* description is a schema, not text
        return {
            key: _undescribed(value)
            for key, value in node.items()
            if not (key == "description" and isinstance(value, str))
        }
    if isinstance(node, list):
        return [_undescribed(item) for item in node]
    return node


def _merge_descriptions(discriminator: str, variants: list[tuple[str, Any]]) -> Any:
    """One schema from variants of one shape: where their descriptions differ, each is kept,
    introduced by the kinds it belongs to ("For kind postgresql: ... For kind mysql: ...")."""
    first = variants[0][1]
    if isinstance(first, list):
        return [
            _merge_descriptions(discriminator, [(t, node[i]) for t, node in variants])
            for i in range(len(first))
        ]
    if not isinstance(first, dict):
        return first
    merged: Schema = {}
    texts: dict[str, list[str]] = {}  # description -> the kinds that say it
    for t, node in variants:
        if isinstance(node.get("description"), str) and node["description"]:
            texts.setdefault(node["description"], []).append(t)
    for key in {**first, **({"description": ""} if texts else {})}:
        if key == "description" and not isinstance(first.get(key), dict):
            described = sum(len(tags) for tags in texts.values())
            if len(texts) == 1 and described == len(variants):
                merged[key] = next(iter(texts))
            else:
                merged[key] = " ".join(
                    f"For {discriminator} {' or '.join(tags)}: {text}"
                    for text, tags in texts.items()
                )
        else:
            merged[key] = _merge_descriptions(discriminator, [(t, n[key]) for t, n in variants])
    return merged


def _without_defaults(node: Any) -> Any:
    """A schema with every ``default`` removed, at every level."""
    if isinstance(node, dict):
        return {k: _without_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_without_defaults(item) for item in node]
    return node


def structural_schema(model: type[BaseModel], path: str, *, defaults: bool = True) -> Schema:
    """The structural schema of `model` (by alias); `path` names its nodes in errors.

    Without `defaults` the API server fills in nothing (for the status, which only the
    operator writes); they are removed before the conversion, so a variant's default does not
    reappear as a "Defaults to" note either.
    """
    raw = model.model_json_schema(by_alias=True, schema_generator=_FactoryDefaults)
    if not defaults:
        raw = _without_defaults(raw)
    definitions = raw.pop("$defs", {})
    return Converter(definitions).convert(raw, path)
