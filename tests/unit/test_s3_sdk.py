"""The minio SDK still offers what `storage/s3_client.py` relies on beyond its public API.

Conditional writes call the private ``Minio._put_object`` because the public ``put_object``
turns If-None-Match and If-Match into ``x-amz-meta-*`` user metadata. pyproject pins minio
below 7.3; these checks fail at once if a release inside that bound (or a raised bound)
renames the call, changes its parameters or starts rewriting its headers, instead of the
lease and the commit silently losing their preconditions. The real round trip against MinIO
is in tests/integration/test_s3_store.py.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version
from typing import Any, ClassVar

from minio import Minio
from minio.helpers import ObjectWriteResult


def test_the_installed_minio_is_inside_the_pinned_bound() -> None:
    major, minor = (int(part) for part in version("minio").split(".")[:2])
    assert (major, minor) == (7, 2), (
        f"minio {version('minio')} is installed; storage/s3_client.py was checked against 7.2 only"
    )


def test_private_put_object_keeps_its_parameters() -> None:
    parameters = list(inspect.signature(Minio._put_object).parameters)
    assert parameters[:5] == ["self", "bucket_name", "object_name", "data", "headers"]


def test_private_put_object_sends_preconditions_as_raw_headers() -> None:
    client = Minio("127.0.0.1:1", access_key="a", secret_key="b", secure=False)
    sent: dict[str, Any] = {}

    class Response:
        headers: ClassVar[dict[str, str]] = {"etag": '"abc"'}

    def execute(method: str, bucket: str, name: str, **kwargs: Any) -> Response:
        sent.update(method=method, bucket=bucket, name=name, **kwargs)
        return Response()

    client._execute = execute  # type: ignore[method-assign]
    headers = {"Content-Type": "application/octet-stream", "If-None-Match": "*"}
    result = client._put_object("bucket", "key", b"data", headers)

    assert isinstance(result, ObjectWriteResult)
    assert result.etag == "abc"
    assert (sent["method"], sent["bucket"], sent["name"], sent["body"]) == (
        "PUT",
        "bucket",
        "key",
        b"data",
    )
    assert sent["headers"] == headers


def test_public_put_object_still_cannot_send_preconditions() -> None:
    """When this fails, minio grew a public way to pass raw headers: switch s3_client.py to it."""
    parameters = inspect.signature(Minio.put_object).parameters
    assert not {"headers", "extra_headers"} & set(parameters)
