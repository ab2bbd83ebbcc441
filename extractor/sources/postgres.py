"""PostgreSQL through asyncpg: databases, schemas, tables and columns read from pg_catalog.

The engine calls this adapter through the `Source` protocol (plan lists tables, the column
batches read columns). PostgreSQL keeps no DDL times, so `tables()` returns a fingerprint per
relation computed inside the server: the first 128 bits of a sha256 over a JSON array of
the relation's kind, comment and view definition and, per column in attnum order, exactly
the fields `columns()` returns.
Both queries take the column fields from the same SQL fragment (see postgres_sql.py), so a change
to any returned field changes the fingerprint and makes the table UPDATED; a run where nothing
changed moves one short row per table over the network. JSON quoting keeps names with commas,
quotes or braces from colliding.

Choices worth knowing:
- Relations of kind table, partitioned table, view, materialized view and foreign table are
  listed, partitions included (they are relations users query directly). Sequences, indexes,
  composite types and TOAST tables are not. System schemas (pg_catalog, information_schema,
  pg_toast, pg_temp_N, pg_toast_temp_N) are left out.
- Every read runs in a read-only REPEATABLE READ transaction that first pins search_path to
  '' and every setting that changes how names and constants print (DateStyle,
  IntervalStyle, extra_float_digits, bytea_output, TimeZone, quote_all_identifiers,
  standard_conforming_strings, lc_monetary, lc_numeric) for that transaction only:
  `format_type`, `pg_get_expr` and `pg_get_viewdef` then print schema-qualified names and
  constants the same way whatever the role's settings, so fingerprints do not flip between
  sessions (tests/integration/test_session_settings.py sets each one on the reading role).
  (Per transaction rather than as startup parameters, so connection poolers such as
  PgBouncer accept it.)
- `tables()` reads `_RELATIONS_PER_READ` relations per transaction, because
  `pg_get_viewdef` holds a lock on every relation a view reads until the transaction ends
  and the server's lock table is shared and small. A relation dropped while a listing runs
  is left out; one created meanwhile is found by the next run.
- Names are only ever bound as parameters (`text[]` and `oid[]` arrays), never pasted
  into SQL.
- One connection per database, opened lazily; at most `_IDLE_CONNECTIONS` stay open, the
  least recently used one is closed beyond that. A call reads its databases one after the
  other; concurrent calls on the same database take turns on its connection (asyncpg runs
  one query per connection at a time). A large listing or column batch is spread over up to
  `source.readConnections` connections, the extra ones open only while it is read: the
  server then runs the catalog queries on several cores. A column batch's readers share
  one exported snapshot, so they see one catalog.
- A database that disappears after it was listed is skipped by `schemas()` and `tables()`,
  and its tables are reported absent by `columns()`; the DSN's own database or one named in
  `spec.databases` that does not exist is an `UnknownDatabaseError` (terminal).
- Driver errors are translated in one place (`_translate`, applied by `_driver_errors`):
  unreachable, restarting or overloaded servers and lock timeouts are
  `SourceUnavailableError` (retryable; connection attempts are also retried a few times
  with a short backoff), refused logins and missing privileges `CredentialsError`, a bad
  DSN `SpecError`. Messages name host:port, database and user and never contain the
  password or the DSN.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Self, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg  # type: ignore[import-untyped,unused-ignore]
import pyarrow as pa
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
from metatide.extractor.core.spec import PostgresSourceSpec
from metatide.extractor.sources import postgres_rows
from metatide.extractor.sources import postgres_sql as sql
from metatide.extractor.sources.base import (
    Capabilities,
    ClosingSource,
    ColumnsResult,
    reveals_secret,
    scrub,
)

_IDLE_CONNECTIONS: Final = 4
_CONNECT_ATTEMPTS: Final = 3
# pg_get_viewdef keeps a lock on every relation a view reads until the transaction ends, and
# the server's lock table, shared by all sessions, holds max_locks_per_transaction x
# max_connections entries (about 6,400 by default): tables() reads at most this many per
# transaction, and its readers together at most _RELATIONS_LISTED_AT_ONCE at a time.
_RELATIONS_PER_READ: Final = 500
_RELATIONS_LISTED_AT_ONCE: Final = 1_000
# A column batch is split over several readers only in shares of at least this many
# relations: below it, opening a connection costs more than the share saves.
_RELATIONS_PER_COLUMN_READER: Final = 1_000
_SNAPSHOT_ID: Final = re.compile(r"[0-9A-F]+(-[0-9A-F]+)+")
_CLOSE_TIMEOUT_S: Final = 5.0
_APPLICATION_NAME: Final = "metatide"

_T = TypeVar("_T")
_P = TypeVar("_P")

_CREDENTIAL_ERRORS = (
    asyncpg.InvalidAuthorizationSpecificationError,  # includes InvalidPasswordError
    asyncpg.InsufficientPrivilegeError,
)
_TRANSIENT_ERRORS = (
    OSError,  # refused, unreachable, reset; includes ConnectionError
    TimeoutError,
    asyncpg.PostgresConnectionError,  # includes ConnectionDoesNotExistError
    asyncpg.OperatorInterventionError,  # CannotConnectNow, AdminShutdown, QueryCanceled
    asyncpg.InsufficientResourcesError,  # includes TooManyConnectionsError
    asyncpg.TransactionRollbackError,  # serialization failure, deadlock
    asyncpg.LockNotAvailableError,  # lock_timeout behind a DDL in progress
)
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class UnknownDatabaseError(SpecError):
    """The DSN or `source.databases` names a database the server does not have."""

    def __init__(self, message: str, database: str) -> None:
        super().__init__(message)
        self.database = database


@dataclass(frozen=True, slots=True)
class _Target:
    """Where the DSN points, for messages: host:port, user, database; never the password."""

    hosts: str
    user: str | None
    database: str | None

    @classmethod
    def parse(cls, dsn: str, env: str) -> _Target:
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgresql", "postgres"):
            raise SpecError(
                f"the source DSN in ${env} must be a URI like "
                f"postgresql://user@host:5432/dbname, not a {parts.scheme or 'scheme-less'} "
                "string; fix the value of that variable"
            )
        userinfo, _, hostspec = parts.netloc.rpartition("@")
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        hostspec = unquote(hostspec) or query.get("host", "localhost")
        if ":" not in hostspec.rsplit("]", 1)[-1] and not hostspec.startswith("/"):
            hostspec = f"{hostspec}:{query.get('port', '5432')}"
        user = unquote(userinfo.partition(":")[0]) or query.get("user")
        database = unquote(parts.path.lstrip("/")) or query.get("dbname")
        return cls(hosts=hostspec, user=user, database=database)

    def describe(self, database: str | None) -> str:
        name = database or self.database or "(the user's default database)"
        user = f" as user {self.user!r}" if self.user else ""
        return f"PostgreSQL at {self.hosts}, database {name!r}{user}"


class PostgresSource(ClosingSource):
    """A `Source` over one PostgreSQL server (one or many databases)."""

    capabilities = Capabilities(ddl_time=False, creation_time=False, fingerprint=True)

    def __init__(self, spec: PostgresSourceSpec) -> None:
        self._spec = spec
        self._dsn: str | None = None
        self._password: str | None = None
        self._target = _Target(hosts="?", user=None, database=None)
        self._home: str | None = None
        self._home_lock = asyncio.Lock()
        self._open: OrderedDict[str, Any] = OrderedDict()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def __aenter__(self) -> Self:
        self._dsn = self._spec.dsn_from.resolve("the source DSN")
        self._target = _Target.parse(self._dsn, self._spec.dsn_from.env)
        if self._spec.password_from is not None:
            self._password = self._spec.password_from.resolve("the source password")
        return self

    async def close(self) -> None:
        connections = list(self._open.values())
        self._open.clear()
        self._dsn = self._password = self._home = None
        await asyncio.gather(*(_close(conn) for conn in connections))

    # -- the Source protocol -------------------------------------------------------------

    async def clock(self) -> datetime:
        async with self._session(await self._home_database()) as conn:
            moment: datetime = await conn.fetchval(sql.CLOCK)
        return moment.astimezone(UTC)

    async def databases(self, scope: Scope) -> pa.Table:
        wanted = list(dict.fromkeys(self._spec.databases)) or None
        async with self._session(await self._home_database()) as conn:
            rows = await conn.fetch(sql.DATABASES, wanted)
        found = {row[0]: row[1] for row in rows}
        missing = [name for name in wanted or () if name not in found]
        if missing:
            raise UnknownDatabaseError(
                f"source.databases names {missing!r}, but PostgreSQL at {self._target.hosts} "
                "has no database of that name. Fix source.databases (names are "
                "case-sensitive) or create the database",
                missing[0],
            )
        rows_out = [
            {"database_name": name, "comment": found[name]}
            for name in sorted(found)
            if scope.database(name)
        ]
        return rows_to_table("database", rows_out)

    async def schemas(self, databases: Sequence[str], scope: Scope) -> pa.Table:
        rows: list[dict[str, Any]] = []
        for database in sorted(set(databases)):
            if not scope.database(database):
                continue
            try:
                async with self._session(database) as conn:
                    listed = await self._fetch(conn, sql.SCHEMAS)
            except UnknownDatabaseError:
                continue  # dropped since it was listed
            rows.extend(
                {"database_name": database, "schema_name": name, "comment": comment}
                for name, comment in listed
                if scope.schema(database, name)
            )
        return rows_to_table("schema", rows)

    async def tables(self, schemas: pa.Table, scope: Scope) -> pa.Table:
        per_database: defaultdict[str, list[str]] = defaultdict(list)
        for database, schema in zip(
            schemas.column("database_name").to_pylist(),
            schemas.column("schema_name").to_pylist(),
            strict=True,
        ):
            per_database[database].append(schema)
        parts = [TABLE_SCHEMA.empty_table()]
        for database in sorted(per_database):
            try:
                parts.append(await self._tables_of(database, per_database[database]))
            except UnknownDatabaseError:
                continue  # dropped since it was listed
        return scope.filter_tables(pa.concat_tables(parts))

    async def columns(self, tables: Sequence[TableKey]) -> ColumnsResult:
        per_database: defaultdict[str, dict[tuple[str, str], None]] = defaultdict(dict)
        for database, schema, table in tables:
            per_database[database][(schema, table)] = None  # ordered and deduplicated
        parts = [COLUMN_SCHEMA.empty_table()]
        present: set[TableKey] = set()
        for database in sorted(per_database):
            try:
                found, columns = await self._columns_of(database, list(per_database[database]))
            except UnknownDatabaseError:
                continue  # dropped: none of its tables is present
            present.update((database, schema, table) for schema, table in found)
            parts.append(columns)
        return ColumnsResult(
            columns=pa.concat_tables(parts).combine_chunks(), present=frozenset(present)
        )

    # -- queries -------------------------------------------------------------------------

    async def _tables_of(self, database: str, schemas: list[str]) -> pa.Table:
        """Table rows of the database's schemas, read in parts of `_RELATIONS_PER_READ`
        relations (smaller with many readers: together they list at most
        `_RELATIONS_LISTED_AT_ONCE` at a time, each holding its part's view locks).

        Each part is a transaction of its own anyway, so the parts are spread over the
        readers: the server's cost (the fingerprints, pg_get_viewdef) runs on several cores.
        """
        async with self._session(database) as conn:
            found = await self._fetch(conn, sql.RELATIONS, schemas)
            oids = [row[0] for row in found]
            per_read = max(
                1,
                min(_RELATIONS_PER_READ, _RELATIONS_LISTED_AT_ONCE // self._spec.read_connections),
            )
            parts = [oids[start : start + per_read] for start in range(0, len(oids), per_read)]
            async with self._readers(database, conn, len(parts)) as readers:
                records = await _spread(
                    readers, parts, lambda reader, part: self._fetch(reader, sql.TABLES, part)
                )
        return postgres_rows.table_rows(database, [row for part in records for row in part])

    async def _columns_of(
        self, database: str, wanted: list[tuple[str, str]]
    ) -> tuple[list[tuple[str, str]], pa.Table]:
        schema_names = [schema for schema, _ in wanted]
        table_names = [table for _, table in wanted]

        async def read(conn: Any) -> tuple[list[tuple[str, str]], pa.Table]:
            found = await conn.fetch(sql.PRESENT, schema_names, table_names)
            present = [(row[1], row[2]) for row in found]
            oids = [row[0] for row in found]
            names = postgres_rows.ColumnNames(
                database=database,
                oids=pa.array(oids, type=pa.int64()),
                schemas=pa.array([schema for schema, _ in present], type=pa.string()),
                tables=pa.array([table for _, table in present], type=pa.string()),
            )
            shares = math.ceil(len(oids) / _RELATIONS_PER_COLUMN_READER)
            async with self._readers(database, conn, shares) as readers:
                snapshot = await _export_snapshot(conn) if len(readers) > 1 else None
                share = max(1, math.ceil(len(oids) / len(readers)))
                parts = [oids[start : start + share] for start in range(0, len(oids), share)]

                async def copy(reader: Any, part: list[int]) -> bytes:
                    if reader is conn:
                        return await _copy_columns(reader, part)
                    async with reader.transaction(isolation="repeatable_read", readonly=True):
                        await reader.execute(sql.IMPORT_SNAPSHOT.format(snapshot))
                        await _pin_settings(reader)
                        return await _copy_columns(reader, part)

                texts = await _spread(readers, parts, copy)
            return present, names.column_batch(postgres_rows.read_csv(b"".join(texts)))

        async with self._session(database) as conn:
            return await self._read(conn, read)

    async def _fetch(self, conn: Any, query: str, *args: Any) -> list[Any]:
        """The rows of one query, read by `_read`."""
        rows: list[Any] = await self._read(conn, lambda c: c.fetch(query, *args))
        return rows

    async def _read(self, conn: Any, work: Callable[[Any], Awaitable[_T]]) -> _T:
        """Run `work(conn)` in a read-only snapshot with the output settings pinned."""
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await _pin_settings(conn)
            return await work(conn)

    # -- connections ---------------------------------------------------------------------

    @asynccontextmanager
    async def _readers(self, database: str, conn: Any, parts: int) -> AsyncIterator[list[Any]]:
        """`conn` and the extra connections that a read of `parts` parts spreads over
        (`source.readConnections` in all at most), opened for this read and closed after it.

        An extra connection the server refuses (max_connections reached, a pooler's limit)
        is done without, with a warning: `conn` alone can always do the read.
        """
        wanted = min(parts, self._spec.read_connections)
        readers = [conn]
        try:
            for _ in range(wanted - 1):
                try:
                    readers.append(await self._connect(database))
                except SourceUnavailableError as exc:
                    log.warning(
                        "postgres_read_connections_limited",
                        database=database,
                        wanted=wanted,
                        opened=len(readers),
                        reason=str(exc),
                    )
                    break
            yield readers
        finally:
            await asyncio.gather(*(_close(reader) for reader in readers[1:]))

    async def _home_database(self) -> str:
        """The name of the DSN's database, connecting once to learn it."""
        async with self._home_lock:
            if self._home is None:
                conn = await self._connect(None)
                try:
                    with self._driver_errors(None):
                        name: str = await conn.fetchval(sql.CURRENT_DATABASE)
                except BaseException:
                    await _close(conn)
                    raise
                self._home = name
                if name in self._open:  # someone named it explicitly meanwhile
                    await _close(conn)
                else:
                    self._open[name] = conn
            return self._home

    @asynccontextmanager
    async def _session(self, database: str) -> AsyncIterator[Any]:
        """The database's connection, for one caller at a time; errors leave translated.

        A connection that failed or was interrupted is closed and forgotten: the next call
        opens a new one.
        """
        async with self._locks[database]:
            conn = self._open.pop(database, None)
            if conn is None or conn.is_closed():
                conn = await self._connect(database)
            self._open[database] = conn  # most recently used last
            try:
                with self._driver_errors(database, conn=conn):
                    yield conn
            except asyncio.CancelledError:
                self._open.pop(database, None)
                conn.terminate()  # mid-query: its state is unknown
                raise
            except SourceUnavailableError:
                self._open.pop(database, None)
                await _close(conn)
                raise
        await self._close_idle()

    async def _close_idle(self) -> None:
        for name in list(self._open):
            if len(self._open) <= _IDLE_CONNECTIONS:
                return
            conn = None if self._locks[name].locked() else self._open.pop(name, None)
            if conn is not None:
                await _close(conn)

    async def _connect(self, database: str | None) -> Any:
        """Open a connection (None: the DSN's database), retrying transient failures."""
        if self._dsn is None:
            raise RuntimeError("use the source as `async with` before calling it")
        retrying = AsyncRetrying(
            stop=stop_after_attempt(_CONNECT_ATTEMPTS),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            retry=retry_if_exception(lambda exc: isinstance(exc, _TRANSIENT_ERRORS)),
            reraise=True,
        )
        with self._driver_errors(database, connecting=True):
            return await retrying(
                asyncpg.connect,
                self._dsn,
                database=database,
                password=self._password,
                timeout=self._spec.connect_timeout_seconds,
                server_settings={"application_name": _APPLICATION_NAME},
            )

    # -- the error boundary --------------------------------------------------------------

    @contextmanager
    def _driver_errors(
        self, database: str | None, *, connecting: bool = False, conn: Any = None
    ) -> Iterator[None]:
        """Translate driver exceptions raised inside into metatide's (the one boundary)."""
        # While connecting, a ValueError is asyncpg failing to parse the DSN.
        caught = (*_DRIVER_ERRORS, ValueError) if connecting else _DRIVER_ERRORS
        try:
            yield
        except caught as exc:
            lost = conn is not None and conn.is_closed()
            error = self._translate(_original(exc), database, connecting=connecting, lost=lost)
            if reveals_secret(exc, self._secrets()):
                raise error from None
            raise error from exc

    def _translate(
        self, exc: BaseException, database: str | None, *, connecting: bool, lost: bool
    ) -> MetatideError:
        where = self._target.describe(database)
        name = database or self._target.database or "(default)"
        reason = scrub(f"{type(exc).__name__}: {exc}".rstrip(": "), self._secrets())
        env = self._spec.dsn_from.env
        if isinstance(exc, asyncpg.InvalidCatalogNameError):
            return UnknownDatabaseError(
                f"{where}: the database {name!r} does not exist ({reason}). Fix the database "
                f"name in ${env} or source.databases, or create the database",
                name,
            )
        if isinstance(exc, _CREDENTIAL_ERRORS):
            secret = f"${self._spec.password_from.env}" if self._spec.password_from else f"${env}"
            return CredentialsError(
                f"{where} refused the login or the access ({reason}). Check the user and "
                f"password in {secret} and that the user may connect to and read the "
                "database's catalog"
            )
        if lost or isinstance(exc, _TRANSIENT_ERRORS):
            verb = "cannot connect to" if connecting else "reading the catalog failed on"
            return SourceUnavailableError(
                f"{verb} {where} ({reason}"
                f"{f', timeout {self._spec.connect_timeout_seconds:g}s' if connecting else ''})."
                " Check that the server is running and reachable from here, then retry"
            )
        if isinstance(exc, ValueError):  # includes asyncpg.ClientConfigurationError
            return SpecError(f"the source DSN in ${env} is invalid ({reason}); fix that variable")
        return MetatideError(f"{where}: unexpected driver error ({reason})")

    def _secrets(self) -> list[str]:
        found = [self._password, self._dsn]
        if self._dsn is not None:
            userinfo = urlsplit(self._dsn).netloc.rpartition("@")[0]
            password = userinfo.partition(":")[2]
            found += [password, unquote(password)]
            found += parse_qs(urlsplit(self._dsn).query).get("password", [])
        return [secret for secret in found if secret]


async def _pin_settings(conn: Any) -> None:
    """Pin `sql.SESSION_SETTINGS` for the rest of `conn`'s transaction."""
    settings = sql.SESSION_SETTINGS
    await conn.execute(sql.PIN_SETTINGS, list(settings), list(settings.values()))


async def _spread(
    readers: Sequence[Any], parts: Sequence[_P], work: Callable[[Any, _P], Awaitable[_T]]
) -> list[_T]:
    """`work(reader, part)` for every part, in the parts' order; each reader takes the next
    part as soon as it is free.

    After a failure no reader takes another part, but the parts being read finish: no query
    is cut off, so every connection stays in a known state. The first failure is raised.
    """
    results: dict[int, _T] = {}
    failures: list[Exception] = []
    pending = iter(range(len(parts)))

    async def drain(reader: Any) -> None:
        for index in pending:  # one iterator shared by all readers: each part is read once
            if failures:
                return
            try:
                results[index] = await work(reader, parts[index])
            except Exception as exc:  # noqa: BLE001 (raised below, once every reader stopped)
                failures.append(exc)
                return

    await asyncio.gather(*(drain(reader) for reader in readers))
    if failures:
        raise failures[0]
    return [results[index] for index in range(len(parts))]


async def _export_snapshot(conn: Any) -> str:
    """The id of `conn`'s snapshot, for other connections to read the same catalog.

    SET TRANSACTION SNAPSHOT takes no bind parameter, so the id (made by the server) is
    written into the statement, and only after checking that it is hex digits and dashes.
    """
    snapshot: str = await conn.fetchval(sql.EXPORT_SNAPSHOT)
    if not _SNAPSHOT_ID.fullmatch(snapshot):
        raise MetatideError(f"PostgreSQL exported a snapshot id of an unknown form: {snapshot!r}")
    return snapshot


async def _copy_columns(conn: Any, oids: list[int]) -> bytes:
    """`sql.COLUMNS` of the oids as CSV, read in `conn`'s transaction.

    The caller parses it with Arrow (`postgres_rows.read_csv`). A batch is at most
    columns.batchSize tables, so the text fits in memory. The chunks go to a coroutine:
    given a file, asyncpg hands every chunk (about a thousand for 200,000 columns) to a
    thread of its own.
    """
    chunks: list[bytes] = []

    async def keep(chunk: bytes) -> None:
        chunks.append(chunk)

    await conn.copy_from_query(sql.COLUMNS, oids, output=keep, format="csv")
    return b"".join(chunks)


def _original(exc: BaseException) -> BaseException:
    """The error that matters: asyncpg, cleaning up on a dead connection, raises another."""
    context = exc.__context__
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(context, _DRIVER_ERRORS):
        return context
    return exc


async def _close(conn: Any) -> None:
    """Close a connection, without waiting long on a server that no longer answers."""
    try:
        await asyncio.wait_for(conn.close(), timeout=_CLOSE_TIMEOUT_S)
    except (*_DRIVER_ERRORS, RuntimeError):
        conn.terminate()
    except asyncio.CancelledError:
        conn.terminate()
        raise
