"""MySQL 8 and MariaDB 10.6+ through asyncmy: schemas, tables and columns from information_schema.

The engine calls this adapter through the `Source` protocol (plan lists tables, the column
batches read columns). MySQL has two levels, so (as in OpenMetadata) every MySQL database is a
metatide schema and all of them sit in one metatide database named 'default'. The system
databases mysql, information_schema, performance_schema and sys are never read.

DDL times, the contract this source relies on (tests/integration/test_mysql_ddl_times.py checks
each fact on the real server):
- For InnoDB tables `information_schema.TABLES.CREATE_TIME` moves on every ALTER TABLE
  (instant ADD COLUMN, MODIFY, RENAME COLUMN, column and table comments, defaults, ADD INDEX)
  and on RENAME TABLE: MariaDB reports the change time of the table's .frm file, which every
  DDL rewrites; MySQL 8 the data dictionary's `created`, set when a statement stores a new
  definition. So it is this source's `ddl_time`, not a creation time (`created_at` stays
  empty; the engine uses the DDL time as an upper bound of the creation time, which still
  tells BACKFILL from CREATED). `UPDATE_TIME` moves on DML and is reset by ALTER: never used.
- Views have no times: each gets a fingerprint, the first 128 bits of a sha256 over its
  type, definition and, computed inside the server, its columns' fields (exactly those
  `columns()` returns, from the same expressions, mysql_sql.py's `COLUMN_EXPRESSIONS`), so
  a change to a table a view reads shows through the view's column types. A base table
  without CREATE_TIME (some storage engines) is fingerprinted the same way.
- Times are whole seconds in the session time zone, pinned to UTC here. MariaDB's file
  times come from the kernel's coarse clock, which lags the clock `UTC_TIMESTAMP(6)` reads
  by up to a few milliseconds, and MySQL 8 stamps the *start* of the DDL statement: `clock()`
  therefore answers one second early (`_CLOCK_ALLOWANCE`), and the engine counts a DDL time
  in the marker's own second as a change. A DDL statement that runs longer than that
  (MySQL 8) is covered by `marker.preponeHours`, which must exceed the longest DDL.

Choices worth knowing:
- Every statement is a server-side prepared statement: schema and table names are bound
  parameters, never pasted into SQL.
- information_schema may compare names case-insensitively, so rows are matched to the
  requested names in Python, where `Foo` and `foo` stay apart.
- MariaDB's information_schema opens every table of a scanned schema, but looks a single
  `TABLE_SCHEMA = ? AND TABLE_NAME = ?` up directly: a column batch that asks for few
  tables of a schema looks each one up (a UNION ALL of lookups, `_LOOKUP_LIMIT`), a larger
  one reads the whole schema and keeps what it asked for. View fingerprints are lookups.
- The session is pinned on connect: time zone UTC, an empty sql_mode (ANSI_QUOTES,
  NO_BACKSLASH_ESCAPES or ORACLE would change how statements parse), utf8mb4, a
  lock_wait_timeout of 30 s (should a read ever wait for a metadata lock behind a DDL, it
  gives up with a retryable error instead of hanging) and a group_concat_max_len that holds
  any fingerprint input.
- One connection per source object, opened on first use; concurrent calls take turns.
- Driver errors are translated in one place (`_translate`, applied by `_driver_errors`):
  unreachable, restarting or overloaded servers and lock waits are `SourceUnavailableError`
  (retryable; connection attempts are retried a few times with a short backoff), refused
  logins and missing privileges `CredentialsError`, a bad DSN, an unknown database or a
  server certificate that fails verification `SpecError`. Messages name host:port and user
  and never contain the password or the DSN.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import ssl
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Self
from urllib.parse import quote, unquote, urlsplit

import asyncmy  # type: ignore[import-untyped,unused-ignore]
import pyarrow as pa
from asyncmy import errors as driver  # type: ignore[import-untyped,unused-ignore]
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from metatide.extractor.core.errors import (
    CredentialsError,
    MetatideError,
    SourceUnavailableError,
    SpecError,
)
from metatide.extractor.core.ids import TableKey
from metatide.extractor.core.logs import log
from metatide.extractor.core.records import COLUMN_SCHEMA, TABLE_SCHEMA, rows_to_table
from metatide.extractor.core.scope import Scope
from metatide.extractor.core.spec import MysqlSourceSpec, TlsSpec
from metatide.extractor.sources import mysql_sql as sql
from metatide.extractor.sources.base import (
    FINGERPRINT_HEX_DIGITS,
    Capabilities,
    ClosingSource,
    ColumnsResult,
    reveals_secret,
    scrub,
)

DATABASE: Final = "default"
"""The one metatide database of a MySQL server; MySQL databases are its schemas."""
SYSTEM_SCHEMAS: Final = ("mysql", "information_schema", "performance_schema", "sys")

_DEFAULT_PORT: Final = 3306
_CONNECT_ATTEMPTS: Final = 3
_CLOSE_TIMEOUT_S: Final = 5.0
_CLOCK_ALLOWANCE: Final = timedelta(seconds=1)
_LOOKUP_LIMIT: Final = 100  # tables of one schema looked up one by one; more: scan the schema
_LOOKUPS_PER_STATEMENT: Final = 100
_PROGRAM_NAME: Final = "metatide"

_PLAIN_NAME: Final = re.compile(r"^[A-Za-z0-9_]+$")
_NO_PRIVILEGE: Final = frozenset({1227, 1044, 1142})  # PROCESS missing / access denied

_TABLE_TYPES: Final = {
    "BASE TABLE": "TABLE",
    "VIEW": "VIEW",
    "SYSTEM VERSIONED": "SYSTEM VERSIONED TABLE",
}

# asyncmy reports these codes as OperationalError; CR_* (2xxx) are the client's own.
_TRANSIENT_CODES: Final = frozenset(
    {
        1040,  # ER_CON_COUNT_ERROR: too many connections
        1053,  # ER_SERVER_SHUTDOWN
        1077,  # ER_NORMAL_SHUTDOWN
        1152,  # ER_ABORTING_CONNECTION
        1158,  # ER_NET_READ_ERROR
        1159,  # ER_NET_READ_INTERRUPTED
        1160,  # ER_NET_ERROR_ON_WRITE
        1161,  # ER_NET_WRITE_INTERRUPTED
        1205,  # ER_LOCK_WAIT_TIMEOUT: behind a long DDL
        1213,  # ER_LOCK_DEADLOCK
        1317,  # ER_QUERY_INTERRUPTED
        1927,  # ER_CONNECTION_KILLED (MariaDB)
        2002,  # CR_CONNECTION_ERROR
        2003,  # CR_CONN_HOST_ERROR: refused, unreachable, timed out
        2006,  # CR_SERVER_GONE_ERROR
        2013,  # CR_SERVER_LOST
    }
)
_CREDENTIAL_CODES: Final = frozenset(
    {
        1044,  # ER_DBACCESS_DENIED_ERROR
        1045,  # ER_ACCESS_DENIED_ERROR
        1142,  # ER_TABLEACCESS_DENIED_ERROR
        1143,  # ER_COLUMNACCESS_DENIED_ERROR
        1227,  # ER_SPECIFIC_ACCESS_DENIED_ERROR
        1251,  # ER_NOT_SUPPORTED_AUTH_MODE
        1698,  # ER_ACCESS_DENIED_NO_PASSWORD_ERROR
        1862,  # ER_MUST_CHANGE_PASSWORD_LOGIN
        3118,  # ER_ACCOUNT_HAS_BEEN_LOCKED (MySQL)
        4151,  # ER_ACCOUNT_HAS_BEEN_LOCKED (MariaDB)
    }
)
_UNKNOWN_DATABASE: Final = 1049
_DRIVER_ERRORS = (driver.MySQLError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class _Target:
    """Where the DSN points; `describe` is for messages and never shows the password."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str | None = None

    @classmethod
    def parse(cls, dsn: str, env: str) -> _Target:
        """Parse mysql://user:password@host:port/database; errors never echo the DSN."""
        parts = urlsplit(dsn)
        shape = "mysql://user:password@host:3306/database"
        if parts.scheme not in ("mysql", "mariadb"):
            raise SpecError(
                f"the source DSN in ${env} must be a URI like {shape}, not a "
                f"{parts.scheme or 'scheme-less'} string; fix the value of that variable"
            )
        try:
            port = parts.port or _DEFAULT_PORT
        except ValueError:
            raise SpecError(
                f"the source DSN in ${env} has an invalid port; it must look like {shape}"
            ) from None
        if not parts.hostname or not parts.username:
            raise SpecError(
                f"the source DSN in ${env} lacks a host or a user; it must look like {shape}"
            )
        if parts.query or parts.fragment:
            raise SpecError(
                f"the source DSN in ${env} has query parameters; the mysql source takes none "
                "(TLS is set by source.tls); remove everything after the database name"
            )
        database = unquote(parts.path.lstrip("/")) or None
        return cls(
            host=parts.hostname,
            port=port,
            user=unquote(parts.username),
            password=unquote(parts.password or ""),
            database=database,
        )

    def describe(self) -> str:
        return f"MySQL at {self.host}:{self.port} (user {self.user!r})"


class MysqlSource(ClosingSource):
    """A `Source` over one MySQL or MariaDB server (its databases are schemas of 'default')."""

    capabilities = Capabilities(ddl_time=True, creation_time=False, fingerprint=True)

    def __init__(self, spec: MysqlSourceSpec) -> None:
        self._spec = spec
        self._target: _Target | None = None
        self._ssl: ssl.SSLContext | None = None
        self._connection: Any = None
        self._mariadb = False
        self._table_ids_refused = False
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        dsn = self._spec.dsn_from.resolve("the source DSN")
        target = _Target.parse(dsn, self._spec.dsn_from.env)
        if self._spec.password_from is not None:
            password = self._spec.password_from.resolve("the source password")
            target = _Target(target.host, target.port, target.user, password, target.database)
        self._target = target
        self._ssl = _tls_context(self._spec.tls)
        return self

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await _close(connection)

    # -- the Source protocol --------------------------------------------------------------

    async def clock(self) -> datetime:
        (now,) = (await self._query(sql.CLOCK))[0]
        moment: datetime = now.replace(tzinfo=UTC) - _CLOCK_ALLOWANCE
        return moment

    async def databases(self, scope: Scope) -> pa.Table:
        rows = [{"database_name": DATABASE, "comment": None}] if scope.database(DATABASE) else []
        return rows_to_table("database", rows)

    async def schemas(self, databases: Sequence[str], scope: Scope) -> pa.Table:
        if DATABASE not in databases or not scope.database(DATABASE):
            return rows_to_table("schema", [])
        async with self._session() as connection:
            comment = "NULLIF(SCHEMA_COMMENT, '')" if self._mariadb else "NULL"
            found = await _fetch(connection, sql.SCHEMAS.format(comment=comment))
        rows = [
            {"database_name": DATABASE, "schema_name": name, "comment": comment}
            for name, comment in sorted(found)
            if name not in SYSTEM_SCHEMAS and scope.schema(DATABASE, name)
        ]
        return rows_to_table("schema", rows)

    async def tables(self, schemas: pa.Table, scope: Scope) -> pa.Table:
        rows: list[dict[str, Any]] = []
        for database, schema in sorted(
            zip(
                schemas.column("database_name").to_pylist(),
                schemas.column("schema_name").to_pylist(),
                strict=True,
            )
        ):
            if database == DATABASE and schema not in SYSTEM_SCHEMAS:
                rows += await self._tables_of(schema, scope)
        return scope.filter_tables(pa.Table.from_pylist(rows, schema=TABLE_SCHEMA))

    async def columns(self, tables: Sequence[TableKey]) -> ColumnsResult:
        per_schema: defaultdict[str, dict[str, None]] = defaultdict(dict)
        for database, schema, table in tables:
            if database == DATABASE:
                per_schema[schema][table] = None  # ordered and deduplicated
        parts = [COLUMN_SCHEMA.empty_table()]
        present: set[TableKey] = set()
        for schema in sorted(per_schema):
            found, columns = await self._columns_of(schema, list(per_schema[schema]))
            present.update((DATABASE, schema, table) for table in found)
            parts.append(columns)
        return ColumnsResult(
            columns=pa.concat_tables(parts).combine_chunks(), present=frozenset(present)
        )

    # -- queries -------------------------------------------------------------------------

    async def _tables_of(self, schema: str, scope: Scope) -> list[dict[str, Any]]:
        """The schema's relations in scope, each with its DDL time or fingerprint."""
        async with self._session() as connection:
            listed = await _fetch(connection, sql.TABLES, schema)
            relations = sorted(
                (name, kind, created, comment)
                for name, kind, created, comment in listed
                if scope.table(DATABASE, schema, name)
            )
            views: dict[str, str | None] = {}
            if any(kind == "VIEW" for _, kind, _, _ in relations):
                views = dict(await _fetch(connection, sql.VIEWS, schema))
            untimed = [name for name, _, created, _ in relations if created is None]
            hashes = await self._column_hashes(connection, schema, untimed)
            table_ids = await self._table_ids(connection, schema)
        rows = []
        for name, kind, created, comment in relations:
            table_type = _TABLE_TYPES.get(kind, kind)
            # A view's TABLE_COMMENT is the word VIEW, or why the view is broken.
            comment_text = None if kind == "VIEW" else comment or None
            definition = views.get(name) if kind == "VIEW" else None
            rows.append(
                {
                    "database_name": DATABASE,
                    "schema_name": schema,
                    "table_name": name,
                    "table_type": table_type,
                    "comment": comment_text,
                    "view_definition": definition,
                    "created_at": None,
                    "ddl_time": None if created is None else created.replace(tzinfo=UTC),
                    "fingerprint": None
                    if created is not None
                    else _fingerprint(table_type, comment_text, definition, hashes.get(name)),
                    "object_id": None if kind == "VIEW" else table_ids.get(name),
                }
            )
        return rows

    async def _table_ids(self, connection: Any, schema: str) -> dict[str, str]:
        """InnoDB table ids of the schema's plain-named tables (none without PROCESS)."""
        if not _PLAIN_NAME.match(schema) or self._table_ids_refused:
            return {}
        pattern = schema.replace("_", "\\_") + "/%"
        try:
            rows = await _fetch(connection, sql.INNODB_TABLE_IDS[self._mariadb], pattern)
        except driver.MySQLError as exc:
            if _code(exc) not in _NO_PRIVILEGE:
                raise
            self._table_ids_refused = True
            log.warning(
                "mysql_table_ids_unavailable",
                reason="the user lacks the PROCESS privilege; renamed tables show as a "
                "drop and a create",
            )
            return {}
        prefix = f"{schema}/"
        return {
            name[len(prefix) :]: str(table_id)
            for name, table_id in rows
            if name.startswith(prefix) and _PLAIN_NAME.match(name[len(prefix) :])
        }

    async def _column_hashes(
        self, connection: Any, schema: str, tables: list[str]
    ) -> dict[str, str | None]:
        """The in-server hash of each table's column fields, one lookup per table."""
        hashes: dict[str, str | None] = {}
        for start in range(0, len(tables), _LOOKUPS_PER_STATEMENT):
            chunk = tables[start : start + _LOOKUPS_PER_STATEMENT]
            statement, args = _lookups(sql.FINGERPRINT, "COLUMNS", schema, chunk)
            for position, digest in await _fetch(connection, statement, *args):
                hashes[chunk[position]] = digest
        return hashes

    async def _columns_of(self, schema: str, wanted: list[str]) -> tuple[list[str], pa.Table]:
        """The requested tables of one schema that exist, and their columns."""
        names: list[str] = []
        records: list[Any] = []
        async with self._session() as connection:
            if len(wanted) > _LOOKUP_LIMIT:  # one scan of the schema costs less
                names = [name for (name,) in await _fetch(connection, sql.SCHEMA_RELATIONS, schema)]
                records = await _fetch(connection, sql.SCHEMA_COLUMNS, schema)
            else:
                for start in range(0, len(wanted), _LOOKUPS_PER_STATEMENT):
                    chunk = wanted[start : start + _LOOKUPS_PER_STATEMENT]
                    statement, args = _lookups(
                        "c.TABLE_NAME", "TABLES", schema, chunk, sql.IS_RELATION
                    )
                    names += [name for _, name in await _fetch(connection, statement, *args)]
                    statement, args = _lookups(sql.TABLE_COLUMN_FIELDS, "COLUMNS", schema, chunk)
                    records += [rest for _, *rest in await _fetch(connection, statement, *args)]
        # information_schema may compare names without regard to case: exact matches only.
        found = set(names)
        present = [table for table in wanted if table in found]
        per_table: defaultdict[str, list[Any]] = defaultdict(list)
        for record in records:
            if record[0] in found:
                per_table[record[0]].append(record)
        ordered = [
            record
            for table in present
            for record in sorted(per_table[table], key=lambda record: record[2])
        ]
        return present, _column_table(schema, ordered)

    async def _query(self, statement: str, *args: Any) -> list[Any]:
        async with self._session() as connection:
            return await _fetch(connection, statement, *args)

    # -- the connection ------------------------------------------------------------------

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[Any]:
        """The connection, for one caller at a time; errors leave translated.

        A connection that failed or was interrupted is closed and forgotten: the next call
        opens a new one.
        """
        async with self._lock:
            if self._connection is None:
                self._connection = await self._connect()
            connection = self._connection
            try:
                with self._driver_errors():
                    yield connection
            except asyncio.CancelledError:
                self._connection = None
                connection.close()  # mid-statement: its state is unknown
                raise
            except SourceUnavailableError:
                self._connection = None
                await _close(connection)
                raise

    async def _connect(self) -> Any:
        """Open and pin a connection, retrying transient failures."""
        target = self._require_target()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(_CONNECT_ATTEMPTS),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            retry=retry_if_exception(_is_transient),
            reraise=True,
        )
        with self._driver_errors(connecting=True):
            connection: Any = await retrying(
                _open,
                host=target.host,
                port=target.port,
                user=target.user,
                password=target.password,
                database=target.database,
                charset="utf8mb4",
                connect_timeout=self._spec.connect_timeout_seconds,
                ssl=self._ssl,
                autocommit=True,
                program_name=_PROGRAM_NAME,
            )
            try:
                await _execute(connection, sql.PIN_SESSION)
            except BaseException:
                await _close(connection)
                raise
        self._mariadb = "mariadb" in str(connection.get_server_info()).lower()
        return connection

    def _require_target(self) -> _Target:
        if self._target is None:
            raise RuntimeError("use the source as `async with` before calling it")
        return self._target

    # -- the error boundary --------------------------------------------------------------

    @contextmanager
    def _driver_errors(self, *, connecting: bool = False) -> Iterator[None]:
        """Translate driver exceptions raised inside into metatide's (the one boundary)."""
        try:
            yield
        except _DRIVER_ERRORS as exc:
            error = self._translate(exc, connecting=connecting)
            if reveals_secret(exc, self._secrets()):
                raise error from None
            raise error from exc

    def _translate(self, exc: BaseException, *, connecting: bool) -> MetatideError:
        target = self._require_target()
        where = target.describe()
        reason = scrub(_reason(exc), self._secrets())
        code = _code(exc)
        env = self._spec.dsn_from.env
        tls = _tls_failure(exc)
        if isinstance(tls, ssl.SSLCertVerificationError):
            return SpecError(
                f"{where}: TLS verification failed ({reason}). Check source.tls.mode "
                f"({self._spec.tls.mode}) and the CA in source.tls.caFrom"
            )
        if code in _CREDENTIAL_CODES:
            secret = f"${self._spec.password_from.env}" if self._spec.password_from else f"${env}"
            return CredentialsError(
                f"{where} refused the login or the access ({reason}). Check the user and "
                f"password in {secret} and that the user may read information_schema"
            )
        if code == _UNKNOWN_DATABASE:
            return SpecError(
                f"{where}: the DSN's database {target.database!r} does not exist ({reason}). "
                f"Fix the database name in ${env} (it is only the session's default: "
                "leave it out to connect without one)"
            )
        if tls is not None or code in _TRANSIENT_CODES or isinstance(exc, (OSError, TimeoutError)):
            verb = "cannot connect to" if connecting else "reading the catalog failed on"
            hint = (
                " If the server offers no TLS, set source.tls.mode: disabled."
                if tls is not None and self._spec.tls.mode != "disabled"
                else ""
            )
            timeout = f", timeout {self._spec.connect_timeout_seconds:g}s" if connecting else ""
            return SourceUnavailableError(
                f"{verb} {where} ({reason}{timeout}). Check that the server is running and "
                f"reachable from here, then retry.{hint}"
            )
        if isinstance(exc, driver.InterfaceError):
            return SourceUnavailableError(f"the connection to {where} was lost ({reason})")
        return MetatideError(f"{where}: unexpected driver error ({reason})")

    def _secrets(self) -> list[str]:
        password = self._target.password if self._target else ""
        return [secret for secret in (password, quote(password)) if secret]


def _column_table(schema: str, records: list[Any]) -> pa.Table:
    """Column records (table, then `sql.COLUMN_FIELDS`) as a COLUMN_SCHEMA table."""
    if not records:
        return COLUMN_SCHEMA.empty_table()
    tables, names, ordinals, types, nullable, defaults, comments, primary = zip(
        *records, strict=True
    )
    count = len(records)
    arrays = [
        pa.repeat(pa.scalar(DATABASE, pa.string()), count),
        pa.repeat(pa.scalar(schema, pa.string()), count),
        pa.array(tables, pa.string()),
        pa.array(names, pa.string()),
        pa.array(ordinals, pa.int32()),
        pa.array(types, pa.string()),
        pa.array([bool(value) for value in nullable], pa.bool_()),
        pa.array(defaults, pa.string()),
        pa.array(comments, pa.string()),
        pa.array([bool(value) for value in primary], pa.bool_()),
    ]
    return pa.Table.from_arrays(arrays, schema=COLUMN_SCHEMA)


def _tls_context(spec: TlsSpec) -> ssl.SSLContext | None:
    """The SSL context of a TLS mode (None: plain TCP)."""
    if spec.mode == "disabled":
        return None
    cadata = spec.ca_from.resolve("the source's TLS CA certificate") if spec.ca_from else None
    context = ssl.create_default_context(cadata=cadata)
    if spec.mode == "required":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.check_hostname = spec.mode == "verify-identity"
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _lookups(
    select: str, view: str, schema: str, tables: list[str], extra: str = ""
) -> tuple[str, list[Any]]:
    """A statement returning (position in `tables`, `select`...), one lookup per table.

    A UNION ALL of `TABLE_SCHEMA = ? AND TABLE_NAME = ?` lookups, each name bound.
    """
    part = sql.LOOKUP.format(select=select, view=view, extra=extra)
    statement = " UNION ALL ".join([part] * len(tables))
    args: list[Any] = []
    for position, table in enumerate(tables):
        args += [position, schema, table]
    return statement, args


async def _open(**options: Any) -> Any:
    """One connection attempt (asyncmy.connect returns an awaitable, not a coroutine)."""
    return await asyncmy.connect(**options)


async def _fetch(connection: Any, statement: str, *args: Any) -> list[Any]:
    """The rows of one prepared statement (server-side binding)."""
    prepared = await connection.prepare(statement)
    try:
        result = await prepared.execute(args)
    finally:
        await prepared.close()
    return list(result.rows or ())


async def _execute(connection: Any, statement: str) -> None:
    async with connection.cursor() as cursor:
        await cursor.execute(statement)


def _fingerprint(
    table_type: str, comment: str | None, definition: str | None, columns: str | None
) -> str:
    payload = json.dumps([table_type, comment, definition, columns])
    return hashlib.sha256(payload.encode()).hexdigest()[:FINGERPRINT_HEX_DIGITS]


def _code(exc: BaseException) -> int | None:
    """The MySQL error code of a driver error, if it has one."""
    if isinstance(exc, driver.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def _reason(exc: BaseException) -> str:
    """What went wrong, from the driver's error and what caused it."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if cause is not None and str(cause) not in text:
        text += f"; {type(cause).__name__}: {cause}"
    return text


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a failed connection (asyncmy wraps it), if any."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _is_transient(exc: BaseException) -> bool:
    """Worth another connection attempt (a certificate that fails verification is not)."""
    if isinstance(_tls_failure(exc), ssl.SSLCertVerificationError):
        return False
    return _code(exc) in _TRANSIENT_CODES or isinstance(exc, (OSError, TimeoutError))


async def _close(connection: Any) -> None:
    """Close a connection, without waiting long on a server that no longer answers."""
    try:
        await asyncio.wait_for(connection.ensure_closed(), timeout=_CLOSE_TIMEOUT_S)
    except (*_DRIVER_ERRORS, RuntimeError):
        connection.close()
    except asyncio.CancelledError:
        connection.close()
        raise
