"""How metatide's pydantic models meet the wire: shared by the engine and the operator.

- `camel_case_config`: the configuration of the models the CRD shows, the resource's spec and
  its status. Both are Kubernetes wire formats, so they follow one convention (camelCase on
  the wire, snake_case accepted in Python, frozen, attribute docstrings as field descriptions)
  and change together when it does. They differ only in what an unknown field means, which
  each caller says: a typo in a spec is an error, while a status may carry fields a newer
  operator added.
- `first_problem`: a validation error in one line, for the messages that name a damaged
  document (a manifest, a plan, a run summary, a Job's result line, a resource's spec).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, ValidationError
from pydantic.alias_generators import to_camel


def camel_case_config(*, extra: Literal["forbid", "ignore"]) -> ConfigDict:
    """The `model_config` of a camelCase wire model; `extra` says what an unknown field is."""
    return ConfigDict(
        extra=extra,
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        use_attribute_docstrings=True,
    )


def first_problem(error: ValidationError) -> str:
    """The first thing wrong and where, e.g. ``Field required at tables.changed``: one line
    fits a log line, a termination message or a status condition, and the first problem is
    usually the one to fix (the others often follow from it)."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(root)"
    return f"{first['msg']} at {where}"
