"""The `IncrementalExtraction` CustomResourceDefinition, generated from the spec model.

`metatide crd` prints it and ``crds/incrementalextractions.metatide.dev.yaml`` holds that output
(a unit test keeps the file current; the Helm chart ships a copy). The spec's schema is not
written by hand: it is derived from `IncrementalExtractionSpec.model_json_schema()`, so the
descriptions `kubectl explain` shows, the defaults the API server fills in and the validation it
applies come from the one model the engine and the operator validate with; the status schema
comes from `ExtractionStatus` the same way. `metatide.operator.structural` does the rewriting a
CRD schema needs.

A few checks the models make in Python (croniter, zoneinfo, the prefix placeholders) have a CEL
approximation declared beside the field (``json_schema_extra``), so the API server rejects the
obvious mistakes with a readable message; the operator's parse remains the full check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import yaml

from metatide.extractor.core.documents import ExtractionStatus
from metatide.operator.model import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAME,
    VERSION,
    IncrementalExtractionSpec,
)
from metatide.operator.structural import Schema, ordered, structural_schema

CRD_NAME: Final = f"{PLURAL}.{GROUP}"
CRD_FILE: Final = f"crds/{CRD_NAME}.yaml"
REGENERATE_COMMAND: Final = f"uv run metatide crd > {CRD_FILE}"
CATEGORY: Final = "metatide"


def spec_schema() -> Schema:
    """The structural schema of `.spec`, generated from `IncrementalExtractionSpec`."""
    return structural_schema(IncrementalExtractionSpec, "spec")


def status_schema() -> Schema:
    """The structural schema of `.status`, generated from `ExtractionStatus` (the model the
    operator writes and tests read back), without defaults: only the operator writes it.

    The status keeps unknown top-level fields (``x-kubernetes-preserve-unknown-fields``): a
    newer operator may add fields before the CRD is upgraded (Helm never upgrades a chart's
    crds/ folder; this chart's template does, but other installs may not).
    """
    return structural_schema(ExtractionStatus, "status", defaults=False)


def _string(description: str) -> Schema:
    return {"description": description, "type": "string"}


def _printer_columns() -> list[Schema]:
    return [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {
            "name": "Last Run",
            "type": "date",
            "jsonPath": ".status.lastSuccessfulRun.finishedAt",
            "description": "When the last successful run committed.",
        },
        {
            "name": "Changed",
            "type": "integer",
            "jsonPath": ".status.lastSuccessfulRun.changedTables",
            "description": "Tables created, updated or backfilled by the last successful run.",
        },
        {
            "name": "Deleted",
            "type": "integer",
            "jsonPath": ".status.lastSuccessfulRun.deletedTables",
            "description": "Tables deleted by the last successful run.",
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def render() -> Schema:
    """The CustomResourceDefinition as a dict (apiextensions.k8s.io/v1)."""
    spec = spec_schema()
    description = spec.pop("description")
    spec["description"] = "What to extract, from where, to where, and when."
    root: Schema = {
        "description": description,
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": _string("Versioned schema of this object."),
            "kind": _string("REST resource this object represents."),
            "metadata": {"type": "object"},
            "spec": ordered(spec),
            "status": status_schema(),
        },
    }
    singular = KIND.lower()
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {
                "app.kubernetes.io/name": "metatide",
                "app.kubernetes.io/part-of": "metatide",
            },
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": singular,
                "shortNames": [SHORT_NAME],
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(),
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


class _PlainDumper(yaml.SafeDumper):
    """A YAML dumper that writes shared objects out in full (no &anchors / *aliases)."""

    def ignore_aliases(self, data: Any) -> bool:
        """Never alias: anchors are legal YAML but unreadable in a CRD."""
        return True


def render_yaml() -> str:
    """The CRD as YAML, with a header saying how it was made (this is the file in crds/)."""
    header = (
        "# Generated from metatide.operator.model.IncrementalExtractionSpec by `metatide crd`.\n"
        f"# Do not edit: regenerate with `{REGENERATE_COMMAND}`.\n"
    )
    body = yaml.dump(render(), Dumper=_PlainDumper, sort_keys=False, width=100, allow_unicode=True)
    return header + body


def iter_properties(schema: Mapping[str, Any], path: str = "") -> Iterable[tuple[str, Schema]]:
    """Every (path, schema) of a property below `schema`, items and maps included."""
    for name, child in schema.get("properties", {}).items():
        child_path = f"{path}.{name}" if path else name
        yield child_path, child
        yield from iter_properties(child, child_path)
    if isinstance(schema.get("items"), dict):
        yield from iter_properties(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from iter_properties(schema["additionalProperties"], f"{path}.*")
