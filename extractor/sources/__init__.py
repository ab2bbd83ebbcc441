"""Source adapters behind the `Source` protocol, and the factory that picks one by kind."""

from __future__ import annotations

from metatide.extractor.sources.base import ColumnsResult, Source
from metatide.extractor.spec import ExtractionSpec

__all__ = ["ColumnsResult", "Source", "open_source"]


def open_source(spec: ExtractionSpec) -> Source:
    """The source adapter for the spec's source kind (not yet connected: use `async with`)."""
    if spec.source.kind == "sqlite":
        from metatide.extractor.sources.sqlite import SqliteSource

        return SqliteSource(spec.source)
    from metatide.extractor.sources.postgres import PostgresSource

    return PostgresSource(spec.source)
