"""Object-store adapters behind the `Store` protocol, and the factory that picks one from a URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from metatide.extractor.core.errors import SpecError
from metatide.extractor.core.spec import ExtractionSpec
from metatide.extractor.storage.base import KeyNotFoundError, ObjectInfo, Store, StoredObject
from metatide.extractor.storage.local import LocalStore

__all__ = ["KeyNotFoundError", "LocalStore", "ObjectInfo", "Store", "StoredObject", "open_store"]


def open_store(spec: ExtractionSpec) -> Store:
    """The store for the spec's storage URL, rooted at the connection's prefix."""
    url = urlparse(spec.storage.url)
    if url.scheme == "file":
        if url.netloc not in ("", "localhost"):
            raise SpecError(
                f"storage url {spec.storage.url!r} names a host; use file:///absolute/path"
            )
        return LocalStore(Path(unquote(url.path)) / spec.connection_prefix)
    if url.scheme == "s3":
        from metatide.extractor.storage.s3 import S3Store

        return S3Store.from_spec(spec)
    raise SpecError(f"storage url {spec.storage.url!r} must start with file:// or s3://")
