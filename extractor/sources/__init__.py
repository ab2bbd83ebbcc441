"""Source adapters behind the `Source` protocol, and the factory that picks one by kind.

Each adapter module is imported only when its kind is used, so a run never loads the drivers
of the other kinds. Adding a source kind adds one entry to `_ADAPTERS` (docs/sources.md).
"""

from __future__ import annotations

import importlib
from typing import Final

from metatide.extractor.core.spec import ExtractionSpec
from metatide.extractor.sources.base import Capabilities, ColumnsResult, Source

__all__ = ["Capabilities", "ColumnsResult", "Source", "open_source"]

# source.kind -> (module, class); the class takes the kind's source spec.
_ADAPTERS: Final[dict[str, tuple[str, str]]] = {
    "postgresql": ("metatide.extractor.sources.postgres", "PostgresSource"),
    "mysql": ("metatide.extractor.sources.mysql", "MysqlSource"),
    "sqlite": ("metatide.extractor.sources.sqlite", "SqliteSource"),
}


def open_source(spec: ExtractionSpec) -> Source:
    """The source adapter for the spec's source kind (not yet connected: use `async with`)."""
    module, name = _ADAPTERS[spec.source.kind]
    adapter: type[Source] = getattr(importlib.import_module(module), name)
    return adapter(spec.source)  # type: ignore[call-arg]
