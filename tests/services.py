"""Settings and guards for the real services metatide's tests run against.

Tests talk to a real PostgreSQL, a real MariaDB and a real S3 server (MinIO) instead of
mocks, because
metadata extraction is only as good as its behaviour against the real wire protocols.
The servers are started by ``.ci/services/postgres.sh start``,
``.ci/services/mariadb.sh start`` and ``.ci/services/minio.sh start``; their ``env``
commands print the variables read here,
and the defaults below match the scripts' defaults, so no setup is needed beyond
starting them.

A test that needs a service must FAIL, never skip, when the service is missing: a
skipped integration test in CI looks green while testing nothing. Hence the
``require_*`` functions raise ``RuntimeError`` with the command that fixes it.
Messages name host and port, never a password or secret key.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncmy  # type: ignore[import-untyped,unused-ignore]
import asyncpg  # type: ignore[import-untyped,unused-ignore]
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

PG_DSN_ENV = "METATIDE_TEST_PG_DSN"
DEFAULT_PG_DSN = "postgresql://metatide:metatide-test@127.0.0.1:55432/postgres"

MYSQL_DSN_ENV = "METATIDE_TEST_MYSQL_DSN"
MYSQL_CA_ENV = "METATIDE_TEST_MYSQL_CA"
DEFAULT_MYSQL_DSN = "mysql://metatide:metatide-test@127.0.0.1:53306/"
DEFAULT_MYSQL_CA = "/tmp/metatide-mariadb/tls/ca.pem"

S3_ENDPOINT_ENV = "METATIDE_TEST_S3_ENDPOINT"
S3_ACCESS_KEY_ENV = "METATIDE_TEST_S3_ACCESS_KEY"
S3_SECRET_KEY_ENV = "METATIDE_TEST_S3_SECRET_KEY"
DEFAULT_S3_ENDPOINT = "127.0.0.1:59000"
DEFAULT_S3_ACCESS_KEY = "metatide-admin"
DEFAULT_S3_SECRET_KEY = "metatide-admin-secret"

# A probe should answer "is it there?" in seconds, not hang a test run on a dead port.
_PROBE_TIMEOUT_S = 5.0

_T = TypeVar("_T")


@dataclass(frozen=True)
class S3TestSettings:
    """Where the test S3 server is and how to log in (frozen: shared by all tests)."""

    endpoint: str
    access_key: str
    secret_key: str

    def __repr__(self) -> str:
        # Keep the secret out of pytest's assertion rewriting and tracebacks.
        return (
            f"S3TestSettings(endpoint={self.endpoint!r}, "
            f"access_key={self.access_key!r}, secret_key='***')"
        )


def postgres_dsn() -> str:
    """Admin DSN of the test PostgreSQL (a superuser, so tests may CREATE DATABASE)."""
    return os.environ.get(PG_DSN_ENV) or DEFAULT_PG_DSN


def postgres_dsn_for(database: str, admin_dsn: str | None = None) -> str:
    """The admin DSN pointed at another database, e.g. one made by create_database()."""
    parts = urlsplit(admin_dsn or postgres_dsn())
    # Percent-encoded: asyncpg and libpq decode the path, so any name survives.
    return urlunsplit(parts._replace(path="/" + quote(database, safe="")))


def describe_dsn(dsn: str) -> str:
    """``host:port/database (user ...)`` for messages: everything but the password."""
    parts = urlsplit(dsn)
    host = parts.hostname or "localhost"
    try:
        port: int | str = parts.port or 5432
    except ValueError:  # a malformed port must not hide the real error
        port = "?"
    database = unquote(parts.path.lstrip("/")) or "postgres"
    user = parts.username or "?"
    return f"{host}:{port}/{database} (user {user!r})"


def s3_settings() -> S3TestSettings:
    """Endpoint and root credentials of the test S3 server (MinIO)."""
    return S3TestSettings(
        endpoint=os.environ.get(S3_ENDPOINT_ENV) or DEFAULT_S3_ENDPOINT,
        access_key=os.environ.get(S3_ACCESS_KEY_ENV) or DEFAULT_S3_ACCESS_KEY,
        secret_key=os.environ.get(S3_SECRET_KEY_ENV) or DEFAULT_S3_SECRET_KEY,
    )


def s3_client(settings: S3TestSettings | None = None) -> Minio:
    """A MinIO SDK client for the test server (plain HTTP: it listens on loopback)."""
    s = settings or s3_settings()
    return Minio(s.endpoint, access_key=s.access_key, secret_key=s.secret_key, secure=False)


def _scrub(text: str, secret: str | None) -> str:
    """Mask a secret should a driver ever echo it (e.g. a DSN) in an error message."""
    return text.replace(secret, "***") if secret else text


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine from sync code, even when called from inside a running loop.

    asyncio.run() refuses to nest, and async tests call these helpers too, so in that
    case the coroutine gets its own loop in a worker thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _pg_execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=_PROBE_TIMEOUT_S)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def execute_sql(dsn: str, script: str) -> None:
    """Run a SQL script (DDL of a test) against the database the DSN names."""
    _run(_pg_execute(dsn, script))


def require_postgres() -> None:
    """Fail loudly (RuntimeError) unless the test PostgreSQL accepts our login."""
    dsn = postgres_dsn()
    try:
        _run(_pg_execute(dsn, "SELECT 1"))
    except Exception as exc:  # any failure means "not usable": say which
        if isinstance(exc, asyncpg.PostgresError):
            # The server answered, so starting it again would not help.
            fix = (
                f"the server is up but refused us; check {PG_DSN_ENV} against "
                "`.ci/services/postgres.sh env`"
            )
        else:
            fix = (
                "start it with `.ci/services/postgres.sh start` "
                f'(`eval "$(.ci/services/postgres.sh env)"` exports {PG_DSN_ENV} '
                "when METATIDE_PG_PORT is not the default)"
            )
        detail = _scrub(f"{type(exc).__name__}: {exc}", urlsplit(dsn).password)
        raise RuntimeError(
            f"PostgreSQL for tests is not usable at {describe_dsn(dsn)}: {detail}. Fix: {fix}."
        ) from exc


def _quote_ident(name: str) -> str:
    # CREATE/DROP DATABASE take no bind parameters, so the name is quoted by hand.
    if not name or len(name.encode()) > 63 or "\0" in name:
        raise ValueError(f"invalid PostgreSQL database name: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def create_database(name: str) -> str:
    """Create database ``name`` (it must not exist) and return a DSN for it.

    Each test (or module) gets its own database so tests cannot see each other's
    schemas and can run in parallel against one server.
    """
    admin = postgres_dsn()
    _run(_pg_execute(admin, f"CREATE DATABASE {_quote_ident(name)}"))
    return postgres_dsn_for(name, admin)


def drop_database(name: str) -> None:
    """Drop database ``name`` if it exists, even with connections a test left open."""
    # WITH (FORCE) (PostgreSQL 13+) ends leftover sessions instead of failing the drop.
    _run(_pg_execute(postgres_dsn(), f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)"))


def mysql_dsn() -> str:
    """DSN of the test MariaDB's all-privileges account (tests create databases and users)."""
    return os.environ.get(MYSQL_DSN_ENV) or DEFAULT_MYSQL_DSN


def mysql_ca() -> str:
    """Path of the CA certificate that signed the test MariaDB's server certificate."""
    return os.environ.get(MYSQL_CA_ENV) or DEFAULT_MYSQL_CA


def mysql_dsn_for(user: str, password: str, admin_dsn: str | None = None) -> str:
    """The test MariaDB's DSN with another login."""
    parts = urlsplit(admin_dsn or mysql_dsn())
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def mysql_connect(dsn: str | None = None) -> Any:
    """An asyncmy connection for test DDL (plain TCP: the server listens on loopback)."""
    parts = urlsplit(dsn or mysql_dsn())
    return await asyncmy.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        charset="utf8mb4",
        autocommit=True,
        connect_timeout=_PROBE_TIMEOUT_S,
    )


async def mysql_run(connection: Any, *statements: str) -> list[Any]:
    """Run DDL statements one by one; the rows of the last."""
    rows: list[Any] = []
    async with connection.cursor() as cursor:
        for statement in statements:
            await cursor.execute(statement)
            rows = list(await cursor.fetchall())
    return rows


async def _mysql_execute(statements: tuple[str, ...]) -> list[Any]:
    connection = await mysql_connect()
    try:
        return await mysql_run(connection, *statements)
    finally:
        await connection.ensure_closed()


def mysql_execute(*statements: str) -> list[Any]:
    """Run statements on the test MariaDB (test DDL); the rows of the last one."""
    return _run(_mysql_execute(statements))


def mysql_ident(name: str) -> str:
    """A quoted MySQL identifier (DDL takes no bind parameters)."""
    return "`" + name.replace("`", "``") + "`"


def mysql_literal(text: str | None) -> str:
    """A quoted MySQL string literal (the test server's sql_mode keeps backslash escapes)."""
    if text is None:
        return "NULL"
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def require_mysql() -> None:
    """Fail loudly (RuntimeError) unless the test MariaDB accepts our login."""
    dsn = mysql_dsn()
    try:
        mysql_execute("SELECT 1")
    except Exception as exc:  # any failure means "not usable": say which
        if isinstance(exc, asyncmy.errors.MySQLError) and exc.args and exc.args[0] < 2000:
            fix = (
                f"the server is up but refused us; check {MYSQL_DSN_ENV} against "
                "`.ci/services/mariadb.sh env`"
            )
        else:
            fix = (
                "start it with `.ci/services/mariadb.sh start` "
                f'(`eval "$(.ci/services/mariadb.sh env)"` exports {MYSQL_DSN_ENV} '
                "when METATIDE_MYSQL_PORT is not the default)"
            )
        parts = urlsplit(dsn)
        detail = _scrub(f"{type(exc).__name__}: {exc}", parts.password)
        raise RuntimeError(
            f"MariaDB for tests is not usable at {parts.hostname}:{parts.port} "
            f"(user {parts.username!r}): {detail}. Fix: {fix}."
        ) from exc


def create_mysql_database(name: str) -> None:
    """Create (anew) a MariaDB database, i.e. a metatide schema, for one test."""
    mysql_execute(
        f"DROP DATABASE IF EXISTS {mysql_ident(name)}", f"CREATE DATABASE {mysql_ident(name)}"
    )


def drop_mysql_database(name: str) -> None:
    mysql_execute(f"DROP DATABASE IF EXISTS {mysql_ident(name)}")


def require_s3() -> None:
    """Fail loudly (RuntimeError) unless the test S3 server accepts our credentials."""
    s = s3_settings()
    # The SDK's default client retries for a long time; a probe should give up quickly.
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=_PROBE_TIMEOUT_S, read=_PROBE_TIMEOUT_S),
        retries=urllib3.Retry(total=1, backoff_factor=0.2),
    )
    client = Minio(
        s.endpoint,
        access_key=s.access_key,
        secret_key=s.secret_key,
        secure=False,
        http_client=http,
    )
    try:
        client.list_buckets()
    except Exception as exc:  # any failure means "not usable": say which
        if isinstance(exc, S3Error):
            # The server answered, so starting it again would not help.
            what = f"it rejected access key {s.access_key!r} ({exc.code})"
            fix = f"check the {S3_ENDPOINT_ENV} family against `.ci/services/minio.sh env`"
        else:
            what = _scrub(f"{type(exc).__name__}: {exc}", s.secret_key)
            fix = (
                "start it with `.ci/services/minio.sh start` "
                f'(`eval "$(.ci/services/minio.sh env)"` exports the {S3_ENDPOINT_ENV} '
                "family when METATIDE_S3_PORT is not the default)"
            )
        raise RuntimeError(
            f"S3 (MinIO) for tests is not usable at {s.endpoint}: {what}. Fix: {fix}."
        ) from exc
    finally:
        http.clear()


_BUCKET_INVALID = re.compile(r"[^a-z0-9-]+")


def fresh_bucket(prefix: str = "test") -> str:
    """Create a bucket with a unique name starting with ``prefix``; return its name.

    Unique names let tests share one server, run in parallel and never see a bucket
    left behind by an earlier, crashed run.
    """
    # S3 names: 3-63 chars of [a-z0-9-.], starting and ending alphanumeric; dots are
    # avoided because they break virtual-host addressing.
    suffix = uuid.uuid4().hex[:16]
    clean = _BUCKET_INVALID.sub("-", prefix.lower()).strip("-")[: 63 - len(suffix) - 1]
    name = f"{clean.rstrip('-')}-{suffix}" if clean.rstrip("-") else f"b-{suffix}"
    s3_client().make_bucket(name)
    return name


def delete_bucket(name: str) -> None:
    """Empty and remove a bucket made by fresh_bucket() (for test teardown)."""
    client = s3_client()
    if not client.bucket_exists(name):
        return
    to_delete = (
        DeleteObject(obj.object_name, obj.version_id)
        for obj in client.list_objects(name, recursive=True, include_version=True)
        if obj.object_name is not None
    )
    errors = list(client.remove_objects(name, to_delete))
    if errors:
        raise RuntimeError(f"could not empty bucket {name!r}: {errors[0]}")
    client.remove_bucket(name)
