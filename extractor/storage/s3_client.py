"""The minio SDK's clients as the S3 store configures them, and the one private SDK call it makes.

Kept apart from `s3` so that everything depending on the SDK's shape beyond its public API is
in one short file: pyproject pins minio below 7.3 and tests/unit/test_s3_sdk.py fails if the
private call changes. The HTTP pool has a short connect timeout and no retries of its own
(tenacity retries whole operations in `s3`), so an unreachable endpoint fails in seconds.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

import certifi
import urllib3
from minio import Minio
from minio.helpers import DictType

from metatide.extractor.core.errors import SpecError

if TYPE_CHECKING:
    from urllib3._base_connection import BaseHTTPConnection

CONNECT_TIMEOUT_SECONDS: Final = 3.0
"""Time to open a TCP (and TLS) connection before the attempt counts as failed."""
READ_TIMEOUT_SECONDS: Final = 60.0
"""Time to wait for the server between two reads of a response."""
POOL_CONNECTIONS: Final = 16
CONTENT_TYPE: Final = "application/octet-stream"


class _OneShotHTTPConnectionPool(urllib3.HTTPConnectionPool):
    """Closes each connection after its request instead of keeping it for the next one."""

    def _put_conn(self, conn: BaseHTTPConnection | None) -> None:
        if conn is not None:
            conn.close()


class _OneShotHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    """`_OneShotHTTPConnectionPool` for https."""

    def _put_conn(self, conn: BaseHTTPConnection | None) -> None:
        if conn is not None:
            conn.close()


def _http_pool(*, reuse_connections: bool) -> urllib3.PoolManager:
    """Short connect timeout and no retries here: tenacity retries whole operations.

    Conditional writes use a pool without keep-alive: MinIO closes the connection after a 412
    without a ``Connection: close`` header, so the next request on a pooled connection could
    race the server's FIN and die with "connection reset by peer".
    """
    pool = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_SECONDS, read=READ_TIMEOUT_SECONDS),
        retries=urllib3.Retry(total=0, redirect=False),
        maxsize=POOL_CONNECTIONS,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
    )
    if not reuse_connections:
        pool.pool_classes_by_scheme = {
            "http": _OneShotHTTPConnectionPool,
            "https": _OneShotHTTPSConnectionPool,
        }
    return pool


def make_client(
    endpoint: str,
    *,
    access_key: str,
    secret_key: str,
    secure: bool,
    region: str | None,
    reuse_connections: bool,
) -> Minio:
    """A client for `endpoint`; `reuse_connections=False` for conditional writes (see above)."""
    try:
        return Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=_http_pool(reuse_connections=reuse_connections),
        )
    except ValueError as exc:
        raise SpecError(f"spec.storage.endpoint {endpoint!r} is invalid: {exc}") from None


def put_with_headers(
    client: Minio, bucket: str, name: str, data: bytes, headers: dict[str, str]
) -> None:
    """One single-part PutObject sending `headers` as they are (e.g. If-None-Match).

    Private on purpose: the public ``put_object`` would send a precondition as
    ``x-amz-meta-*`` user metadata, which every server ignores.
    """
    raw: DictType = {"Content-Type": CONTENT_TYPE, **headers}
    client._put_object(bucket, name, data, raw)
