"""Identifier types shared by every layer: run ids, table keys, entity names.

Run ids appear in object keys and Kubernetes object names, so they are validated here once
instead of being escaped wherever they are used.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Literal, NewType

from metatide.extractor.core.errors import SpecError

RunId = NewType("RunId", str)

Entity = Literal["database", "schema", "table", "column"]
ENTITIES: tuple[Entity, ...] = ("database", "schema", "table", "column")

TableKey = tuple[str, str, str]
"""(database, schema, table): names exactly as the source reports them."""

_RUN_ID_PATTERN = re.compile(r"^[0-9]{8}t[0-9]{6}z-[0-9a-f]{6,32}$")


def new_run_id(now: datetime | None = None) -> RunId:
    """A sortable, DNS-label-safe id: UTC time of the start plus randomness against collisions."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return RunId(f"{moment:%Y%m%dt%H%M%S}z-{secrets.token_hex(4)}")


def parse_run_id(value: str) -> RunId:
    """Validate a run id given on the command line or read from storage."""
    if not _RUN_ID_PATTERN.match(value):
        raise SpecError(
            f"run id {value!r} is not valid: expected the form 20260101t120000z-1a2b3c4d "
            "(as printed by `metatide plan`)"
        )
    return RunId(value)
