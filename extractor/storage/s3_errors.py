"""Translating minio and urllib3 failures into metatide's errors: the one place S3 errors are read.

A missing bucket is a `SpecError`, refused credentials a `CredentialsError`, and connection
failures, 5xx and throttling a retryable `StorageUnavailableError`; anything else is terminal.
Messages name the bucket, the endpoint and the environment variables holding the credentials,
never their values.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

from minio.error import InvalidResponseError, S3Error, ServerError
from urllib3.exceptions import HTTPError, MaxRetryError, SSLError

from metatide.extractor.core.errors import (
    CredentialsError,
    MetatideError,
    SpecError,
    StorageUnavailableError,
    TerminalError,
)
from metatide.extractor.storage.base import KeyNotFoundError

_MISSING_BUCKET: Final = frozenset({"NoSuchBucket"})
_REFUSED_CREDENTIALS: Final = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
    }
)
_TRANSIENT: Final = frozenset(
    {
        "ConditionalRequestConflict",  # AWS: a concurrent conditional write; retry
        "InternalError",
        "OperationAborted",
        "RequestTimeout",
        "ServiceUnavailable",
        "SlowDown",
        "XMinioServerNotInitialized",
    }
)
_PRECONDITION_FAILED: Final = 412
_NOT_IMPLEMENTED: Final = 501  # e.g. a precondition header the server does not support
_NO_ANSWER: Final = 599  # pseudo status: the request got no HTTP answer (connect/read failed)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a store points, and the names (never values) of its credentials, for messages."""

    endpoint: str
    bucket: str
    prefix: str
    access_key_env: str
    secret_key_env: str

    @property
    def location(self) -> str:
        path = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        return f"s3://{path} ({self.endpoint})"

    def failure(self, code: str, status: int, detail: str, action: str) -> MetatideError:
        """The metatide error for a driver failure with this S3 error code and HTTP status."""
        if code in _MISSING_BUCKET:
            return SpecError(
                f"bucket {self.bucket!r} does not exist at {self.endpoint}; create it "
                f"(e.g. `mc mb ALIAS/{self.bucket}` or `aws s3 mb s3://{self.bucket}`) or "
                "fix spec.storage.url"
            )
        if code in _REFUSED_CREDENTIALS:
            return CredentialsError(
                f"{self.endpoint} refused the S3 credentials from the environment variables "
                f"{self.access_key_env} and {self.secret_key_env} ({code}) when trying to "
                f"{action}; check that they are current and allow get, put, delete and list "
                f"on {self.location}"
            )
        if code in _TRANSIENT or (status >= 500 and status != _NOT_IMPLEMENTED):
            return StorageUnavailableError(
                f"{self.location} could not {action}: {detail}; check that the server is up "
                "and reachable (spec.storage.endpoint, spec.storage.secure)"
            )
        return TerminalError(f"{self.location} refused to {action}: {detail}")

    @contextmanager
    def translated(self, action: str, key: str) -> Iterator[None]:
        """Raise metatide errors instead of minio/urllib3 ones inside the block."""
        try:
            yield
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                raise KeyNotFoundError(self.location, key) from exc
            status = exc.response.status
            detail = f"{exc.code} (HTTP {status}): {exc.message}"
            raise self.failure(exc.code or "", status, detail, action) from exc
        except ServerError as exc:
            raise self.failure("", exc.status_code, str(exc), action) from exc
        except InvalidResponseError as exc:
            # A non-S3 answer (a proxy's HTML page, a wrong port): retry only server errors.
            status = getattr(exc, "_code", 0)
            status = status if isinstance(status, int) else 0
            detail = f"the endpoint did not answer like an S3 server (HTTP {status})"
            raise self.failure("", status, detail, action) from exc
        except HTTPError as exc:
            reason = exc.reason if isinstance(exc, MaxRetryError) else exc
            if isinstance(reason, SSLError):
                raise SpecError(
                    f"TLS to {self.endpoint} failed ({reason}); if the server speaks plain "
                    "HTTP set spec.storage.secure to false, else point SSL_CERT_FILE at its CA"
                ) from exc
            detail = f"{type(reason).__name__}: {reason}"
            raise self.failure("", _NO_ANSWER, detail, action) from exc


def is_precondition_failure(exc: S3Error) -> bool:
    """Whether a conditional write lost (HTTP 412)."""
    return exc.response.status == _PRECONDITION_FAILED or exc.code == "PreconditionFailed"


def is_absent(exc: S3Error) -> bool:
    """Whether the error says the key does not exist (GET says NoSuchKey, HEAD NoSuchObject)."""
    return exc.code in ("NoSuchKey", "NoSuchObject")
