"""Reference documentation of every spec field, generated from `ExtractionSpec` itself.

The spec's descriptions are the single source of truth for the CRD, `kubectl explain` and
this page (docs/spec.md); a test fails when the committed page differs from what this renders.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from metatide.extractor.core.spec import ExtractionSpec, PostgresSourceSpec, SqliteSourceSpec


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        value = [item.model_dump(by_alias=True) for item in value]
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _models(field: FieldInfo) -> list[type[BaseModel]]:
    annotation = field.annotation
    candidates = [*list(getattr(annotation, "__args__", ())), annotation]
    found = []
    for candidate in candidates:
        inner = getattr(candidate, "__args__", ())
        for item in [candidate, *inner]:
            if isinstance(item, type) and issubclass(item, BaseModel) and item not in found:
                found.append(item)
    return found


def _section(model: type[BaseModel], path: str, lines: list[str], seen: set[str]) -> None:
    kind = model.model_fields.get("kind")
    title = f"`{path}` (kind: {kind.default})" if kind is not None else f"`{path}`"
    lines += [f"### {title}", "", (model.__doc__ or "").strip(), ""]
    lines += ["| field | default | description |", "| --- | --- | --- |"]
    nested: list[tuple[type[BaseModel], str]] = []
    for name, field in model.model_fields.items():
        wire = field.alias or name
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{wire}` | {_default(field)} | {description} |")
        for inner in _models(field):
            nested.append((inner, f"{path}.{wire}"))
    lines.append("")
    for inner, inner_path in nested:
        key = f"{inner.__name__}@{inner_path}"
        if key not in seen:
            seen.add(key)
            _section(inner, inner_path, lines, seen)


def render() -> str:
    """The markdown reference of the spec."""
    lines = [
        "# Spec reference",
        "",
        "Generated from `ExtractionSpec` (`metatide spec-docs > docs/spec.md`); do not edit.",
        "Field names are camelCase (snake_case is accepted too). Unknown fields are errors.",
        "The `source` is one of the source kinds below, chosen by `kind`.",
        "",
    ]
    seen: set[str] = set()
    _section(ExtractionSpec, "spec", lines, seen)
    for kind in (PostgresSourceSpec, SqliteSourceSpec):
        if f"{kind.__name__}@spec.source" not in seen:
            _section(kind, "spec.source", lines, seen)
    return "\n".join(lines).rstrip() + "\n"
