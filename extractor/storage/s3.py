"""The S3 store (``s3://bucket/prefix``): MinIO, AWS S3 and other S3-compatible servers.

`open_store` builds it from a spec with `S3Store.from_spec`; phases use it through the `Store`
protocol only. It exists so that Jobs on different nodes share one state: the lease and the
manifest commit rely on the server's conditional writes, sent as HTTP preconditions on a
single-part PutObject:

- ``put_if_absent``: ``If-None-Match: *``; HTTP 412 means someone else created the key.
- ``replace_if_match``: ``If-Match: "<etag>"`` with the ETag `get` returned; 412 (changed)
  or 404 (deleted) means someone else moved the key. An ETag follows the content (MD5 of a
  single-part upload), so rewriting identical bytes keeps the version, as in the local store.

The SDK's public ``put_object`` cannot send those headers, so they go through the one private
call in `s3_client`. Before its first conditional write a store checks once that the server
honours both headers (a probe key written twice, then a stale ETag); plan's preflight makes
that first write, so the check happens before any work. A server that ignores them gets a
logged warning and a racy fallback: a HEAD followed by an unconditional PUT, which two writers
at the same instant can both pass. MinIO and AWS S3 (since 2024) honour both. Conditional
writes use their own connection pool without keep-alive (see `s3_client`).

minio is blocking, so every call runs in a worker thread (`asyncio.to_thread`). Driver errors
are translated in `s3_errors`; a retryable `StorageUnavailableError` is retried a few times
with exponential backoff (tenacity) before it reaches the caller. A conditional write whose
first attempt may have reached the server (the response was lost) and whose retry then loses
reads the key back: if it holds exactly our bytes, the earlier attempt won and the write
reports success.
"""

from __future__ import annotations

import asyncio
import builtins  # `list` is also a method of S3Store (the Store protocol's name)
import functools
import io
import itertools
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import unquote, urlsplit

from minio import Minio
from minio.deleteobjects import DeleteError, DeleteObject
from minio.error import S3Error
from minio.helpers import check_bucket_name
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from metatide.extractor.core.errors import (
    MetatideError,
    SpecError,
    StorageUnavailableError,
    TerminalError,
)
from metatide.extractor.core.spec import ExtractionSpec
from metatide.extractor.storage.base import KeyNotFoundError, ObjectInfo, StoredObject
from metatide.extractor.storage.meter import record_read, record_write
from metatide.extractor.storage.s3_client import CONTENT_TYPE, make_client, put_with_headers
from metatide.extractor.storage.s3_errors import Target, is_absent, is_precondition_failure

AWS_ENDPOINT: Final = "s3.amazonaws.com"
ATTEMPTS: Final = 4
"""Tries of one operation on a retryable failure (backoff 0.25 s, 0.5 s, 1 s in between)."""
DELETE_BATCH: Final = 1000
"""Keys per DeleteObjects request (the S3 maximum)."""
LIST_PAGE: Final = 1000
"""Keys fetched per ListObjectsV2 request."""
_DOWNLOAD_CHUNK: Final = 1 << 20
_PROBE_NAME: Final = ".metatide-probe-"

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _ConditionalSupport:
    """Which HTTP preconditions on PutObject the server honours."""

    if_none_match: bool
    if_match: bool


def _parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket[/prefix]`` -> (bucket, prefix without surrounding slashes)."""
    parts = urlsplit(url)
    bucket = parts.netloc
    if parts.scheme != "s3" or not bucket or parts.query or parts.fragment:
        raise SpecError(f"storage url {url!r} must look like s3://bucket or s3://bucket/prefix")
    try:
        check_bucket_name(bucket, strict=True)
    except ValueError:
        raise SpecError(
            f"storage url {url!r} names the bucket {bucket!r}, which is not a valid S3 bucket "
            "name (3-63 characters of a-z, 0-9, '.', '-')"
        ) from None
    return bucket, unquote(parts.path).strip("/")


def _join(*parts: str) -> str:
    return "/".join(part.strip("/") for part in parts if part.strip("/"))


def _check_key(key: str) -> None:
    segments = key.split("/")
    if not key or key.startswith("/") or any(s in ("", ".", "..") for s in segments):
        raise ValueError(f"store key {key!r} must be relative, without empty, '.' or '..' segments")


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    _log.warning(
        "%s; retrying in %.2fs (attempt %d of %d)", error, wait, state.attempt_number, ATTEMPTS
    )


def _retrying() -> AsyncRetrying:
    return AsyncRetrying(
        retry=retry_if_exception_type(StorageUnavailableError),
        stop=stop_after_attempt(ATTEMPTS),
        wait=wait_exponential(multiplier=0.25, max=2.0),
        before_sleep=_log_retry,
        reraise=True,
    )


class S3Store:
    """A `Store` over a bucket and key prefix of an S3-compatible server."""

    def __init__(self, client: Minio, conditional_client: Minio, target: Target) -> None:
        """Use `from_spec`; `conditional_client` must not reuse connections (see _http_pool)."""
        self._client = client
        self._conditional_client = conditional_client
        self._target = target
        self._support: _ConditionalSupport | None = None
        self._probe_lock = threading.Lock()

    @classmethod
    def from_spec(cls, spec: ExtractionSpec) -> S3Store:
        """The store for ``spec.storage`` (an s3:// URL), rooted at the connection's prefix."""
        storage = spec.storage
        bucket, url_prefix = _parse_url(storage.url)
        endpoint = storage.endpoint or AWS_ENDPOINT
        if "://" in endpoint or "/" in endpoint:
            raise SpecError(
                f"spec.storage.endpoint {endpoint!r} must be host[:port] without a scheme or "
                "path; use spec.storage.secure to choose between https and http"
            )
        access_key = storage.access_key_from.resolve("the S3 access key")
        secret_key = storage.secret_key_from.resolve("the S3 secret key")
        clients = [
            make_client(
                endpoint,
                access_key=access_key,
                secret_key=secret_key,
                secure=storage.secure,
                region=storage.region,
                reuse_connections=reuse,
            )
            for reuse in (True, False)
        ]
        target = Target(
            endpoint=endpoint,
            bucket=bucket,
            prefix=_join(url_prefix, spec.connection_prefix),
            access_key_env=storage.access_key_from.env,
            secret_key_env=storage.secret_key_from.env,
        )
        return cls(clients[0], clients[1], target)

    @property
    def location(self) -> str:
        return self._target.location

    def __repr__(self) -> str:
        return f"S3Store({self.location!r})"

    def _name(self, key: str) -> str:
        _check_key(key)
        return _join(self._target.prefix, key)

    async def _call(self, function: Callable[[], _T]) -> _T:
        """Run a blocking SDK call in a thread, retrying retryable failures."""
        async for attempt in _retrying():
            with attempt:
                return await asyncio.to_thread(function)
        raise AssertionError("tenacity stops by raising the last error")  # pragma: no cover

    # -- reads -------------------------------------------------------------------------------

    async def get(self, key: str) -> StoredObject:
        name = self._name(key)
        stored = await self._call(lambda: self._get(key, name))
        record_read(len(stored.data))
        return stored

    def _get(self, key: str, name: str) -> StoredObject:
        with self._target.translated(f"read {key}", key):
            response = self._client.get_object(self._target.bucket, name)
            try:
                data = response.read()
                etag = (response.headers.get("ETag") or "").strip('"')
            finally:
                response.close()
                response.release_conn()
        return StoredObject(data=data, version=etag)

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        below = prefix.strip("/")
        if below:
            _check_key(below)
        root = self._target.prefix + "/" if self._target.prefix else ""
        after: str | None = None
        while True:
            page = await self._call(functools.partial(self._list_page, root + below, after))
            for name, size in page:
                key = name[len(root) :]
                if _listed(key, below):
                    yield ObjectInfo(key=key, size=size)
            if len(page) < LIST_PAGE:
                return
            after = page[-1][0]  # a retried or next page resumes after the last key seen

    def _list_page(self, name_prefix: str, after: str | None) -> builtins.list[tuple[str, int]]:
        """Up to LIST_PAGE (name, size) pairs after `after`: one request, resumable on retry."""
        with self._target.translated(f"list {name_prefix or '/'}", name_prefix):
            objects = self._client.list_objects(
                self._target.bucket, prefix=name_prefix, recursive=True, start_after=after
            )
            return [
                (obj.object_name, obj.size or 0)
                for obj in itertools.islice(objects, LIST_PAGE)
                if obj.object_name is not None
            ]

    async def local_file(self, key: str, destination: Path) -> Path:
        name = self._name(key)
        size = await self._call(lambda: self._download(key, name, destination))
        record_read(size)
        return destination

    def _download(self, key: str, name: str, destination: Path) -> int:
        """Stream the object into `destination` (a retry starts the file over); its size."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        with self._target.translated(f"read {key}", key):
            response = self._client.get_object(self._target.bucket, name)
            try:
                with destination.open("wb") as file:
                    for chunk in response.stream(_DOWNLOAD_CHUNK):
                        file.write(chunk)
            finally:
                response.close()
                response.release_conn()
        return destination.stat().st_size

    # -- plain writes ------------------------------------------------------------------------

    async def put(self, key: str, data: bytes) -> None:
        name = self._name(key)
        await self._call(lambda: self._put(key, name, data))
        record_write(len(data))

    def _put(self, key: str, name: str, data: bytes) -> None:
        with self._target.translated(f"write {key}", key):
            self._client.put_object(
                self._target.bucket, name, io.BytesIO(data), len(data), content_type=CONTENT_TYPE
            )

    async def put_file(self, key: str, path: Path) -> None:
        name = self._name(key)
        await self._call(lambda: self._put_file(key, name, path))
        record_write(path.stat().st_size)

    def _put_file(self, key: str, name: str, path: Path) -> None:
        with self._target.translated(f"upload {path} as {key}", key):
            self._client.fput_object(self._target.bucket, name, str(path), CONTENT_TYPE)

    async def delete(self, keys: Sequence[str]) -> None:
        names = [self._name(key) for key in keys]
        for start in range(0, len(names), DELETE_BATCH):
            batch = names[start : start + DELETE_BATCH]
            await self._call(functools.partial(self._delete, batch))

    def _delete(self, names: builtins.list[str]) -> None:
        action = f"delete {len(names)} key(s)"
        with self._target.translated(action, names[0]):
            errors = list(
                self._client.remove_objects(
                    self._target.bucket, (DeleteObject(name) for name in names)
                )
            )
        failed = [error for error in errors if error.code != "NoSuchKey"]
        if failed:
            raise self._delete_failure(failed, action)

    def _delete_failure(self, failed: builtins.list[DeleteError], action: str) -> MetatideError:
        first = failed[0]
        detail = f"{len(failed)} failed, first {first.name}: {first.code}: {first.message}"
        return self._target.failure(first.code, 0, detail, action)

    # -- conditional writes ------------------------------------------------------------------

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        name = self._name(key)
        if not (await self._conditional_support()).if_none_match:
            return await self._call(lambda: self._create_racily(key, name, data))
        return await self._put_conditionally(key, name, data, {"If-None-Match": "*"})

    async def replace_if_match(self, key: str, data: bytes, version: str) -> bool:
        name = self._name(key)
        if not (await self._conditional_support()).if_match:
            return await self._call(lambda: self._swap_racily(key, name, data, version))
        return await self._put_conditionally(key, name, data, {"If-Match": f'"{version}"'})

    async def _put_conditionally(
        self, key: str, name: str, data: bytes, condition: dict[str, str]
    ) -> bool:
        record_write(len(data))
        attempts = 0

        def attempt() -> bool:
            nonlocal attempts
            attempts += 1
            return self._try_put(key, name, data, condition)

        if await self._call(attempt):
            return True
        # An earlier attempt may have succeeded with its response lost; then we lost to
        # ourselves. The key holding exactly our bytes means that attempt won.
        return attempts > 1 and await self._holds(key, data)

    async def _holds(self, key: str, data: bytes) -> bool:
        try:
            return (await self.get(key)).data == data
        except KeyNotFoundError:
            return False

    def _try_put(self, key: str, name: str, data: bytes, condition: dict[str, str]) -> bool:
        """One conditional single-part PutObject; False when the precondition failed."""
        with self._target.translated(f"write {key} conditionally", key):
            try:
                put_with_headers(
                    self._conditional_client, self._target.bucket, name, data, condition
                )
            except S3Error as exc:
                if is_precondition_failure(exc) or is_absent(exc):
                    return False
                raise
        return True

    async def _conditional_support(self) -> _ConditionalSupport:
        if self._support is not None:
            return self._support
        return await self._call(self._probe_once)

    def _probe_once(self) -> _ConditionalSupport:
        with self._probe_lock:
            if self._support is None:
                self._support = self._probe()
                if not (self._support.if_none_match and self._support.if_match):
                    _log.warning(
                        "%s ignores conditional writes (%s); the lease and the manifest commit "
                        "fall back to read-then-write, which is racy: run one extraction of "
                        "a connection at a time",
                        self.location,
                        self._support,
                    )
            return self._support

    def _probe(self) -> _ConditionalSupport:
        """Write a throwaway key twice with If-None-Match, then with a stale If-Match."""
        key = f"{_PROBE_NAME}{uuid.uuid4().hex}"
        name = self._name(key)
        self._try_put(key, name, b"probe", {"If-None-Match": "*"})
        try:
            return _ConditionalSupport(
                if_none_match=not self._try_put_tolerant(key, name, {"If-None-Match": "*"}),
                if_match=not self._try_put_tolerant(key, name, {"If-Match": f'"{"0" * 32}"'}),
            )
        finally:
            with self._target.translated(f"delete {key}", key):
                self._client.remove_object(self._target.bucket, name)

    def _try_put_tolerant(self, key: str, name: str, condition: dict[str, str]) -> bool:
        """`_try_put`, where a server that rejects the header counts as ignoring it."""
        try:
            return self._try_put(key, name, b"probe", condition)
        except TerminalError as exc:
            if isinstance(exc.__cause__, S3Error) and exc.__cause__.code == "NotImplemented":
                return True
            raise

    def _create_racily(self, key: str, name: str, data: bytes) -> bool:
        """Fallback for servers without If-None-Match: HEAD, then PUT (two writers may pass)."""
        with self._target.translated(f"check {key}", key):
            try:
                self._client.stat_object(self._target.bucket, name)
                return False
            except S3Error as exc:
                if not is_absent(exc):
                    raise
        self._put(key, name, data)
        return True

    def _swap_racily(self, key: str, name: str, data: bytes, version: str) -> bool:
        """Fallback for servers without If-Match: HEAD, compare the ETag, then PUT."""
        with self._target.translated(f"check {key}", key):
            try:
                current = self._client.stat_object(self._target.bucket, name).etag
            except S3Error as exc:
                if is_absent(exc):
                    return False
                raise
        if (current or "").strip('"') != version:
            return False
        self._put(key, name, data)
        return True


def _listed(key: str, below: str) -> bool:
    """Whether a listed key is under `below` (as a folder, like the local store) and a real key."""
    if below and key != below and not key.startswith(below + "/"):
        return False  # a sibling sharing the string prefix: runs/a-2 is not under runs/a
    name = key.rsplit("/", 1)[-1]
    return bool(name) and not name.startswith(".")  # folder markers and probe/temporary keys
