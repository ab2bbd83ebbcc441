"""`ExtractionSpec`: the one definition of what an extraction does.

The same model is the config file of ``metatide run`` (YAML or JSON), the ``spec`` of the
``IncrementalExtraction`` custom resource (the CRD schema is generated from it, so every field
carries a description and a default), and the input each phase Job receives. Field names are
camelCase on the wire, like every Kubernetes resource; snake_case is accepted too.

Secrets never appear in the spec: it names where they come from (an environment variable
locally; the operator fills that variable from a Kubernetes Secret key).
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict

from metatide.extractor.core.errors import CredentialsError, SpecError
from metatide.extractor.core.wire import camel_case_config

SEED_PREFIX_TEMPLATE = "persistent-artifacts/apps/{application_name}/connection/{connection_id}"
SEED_MARKER_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
SEED_DEFAULT_MARKER = "1970-01-01T00:00:00Z"
SEED_MAX_CONCURRENT_COLUMN_BATCHES = 3
SEED_COLUMN_BATCH_SIZE = 25_000
SEED_DUCKDB_MEMORY_LIMIT = "2GB"
SEED_DUCKDB_TEMP_DIRECTORY = "/tmp/metatide/duckdb"  # noqa: S108 - the seed's default; configurable

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
MARKER_FORMAT_PATTERN = r"^(%[YmdjHMSf]|[-:._/ TZ])+$"
"""A marker format is strftime directives and plain separators only: marker.txt is pasted
into SQL by older consumers, so nothing else (quotes, semicolons, letters) may appear in it."""
_MARKER_SAMPLES = (
    datetime(1970, 1, 1, 0, 0, 0),
    datetime(2024, 2, 29, 23, 59, 58),
    datetime(2031, 12, 31, 9, 8, 7),
)
_ENV_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


def crd_rule(rule: str, message: str) -> JsonDict:
    """A CEL rule for a field's ``json_schema_extra``: the CRD's approximation of a check the
    model makes in Python, so the API server rejects the obvious mistakes with `message`.

    The API server refuses a CRD whose rule may cost too much on an unbounded string, so a
    string field with a rule also needs a ``max_length``.
    """
    return {"x-kubernetes-validations": [{"rule": rule, "message": message}]}


class _Model(BaseModel):
    """Strict camelCase model: an unknown field is an error that names the field."""

    model_config = camel_case_config(extra="forbid")


class SecretKeyRef(_Model):
    """A key of a Kubernetes Secret (used by the operator only)."""

    name: str = Field(min_length=1, description="Name of the Secret in the resource's namespace.")
    key: str = Field(min_length=1, description="Key within the Secret.")


class SecretRef(_Model):
    """Where a secret comes from: an environment variable, filled from a Secret on Kubernetes."""

    env: str = Field(
        pattern=_ENV_PATTERN,
        description="Environment variable that holds the value when a phase runs.",
    )
    secret_key_ref: SecretKeyRef | None = Field(
        default=None,
        description="Kubernetes Secret key the operator injects into `env` for every Job pod.",
    )

    def resolve(self, what: str) -> str:
        """The secret's value; the error names the variable, never a value."""
        value = os.environ.get(self.env)
        if not value:
            state = "is empty" if value == "" else "is not set"
            raise CredentialsError(
                f"{what} is read from the environment variable {self.env}, which {state}; "
                f"export {self.env}=... (or set secretKeyRef on Kubernetes)"
            )
        return value


class ScopeRule(_Model):
    """A glob per level; a table matches when all three match (fnmatch, case-sensitive)."""

    database: str = Field(default="*", min_length=1, description="Glob on the database name.")
    schema_: str = Field(
        default="*", alias="schema", min_length=1, description="Glob on the schema name."
    )
    table: str = Field(default="*", min_length=1, description="Glob on the table or view name.")


class ScopeSpec(_Model):
    """Which databases, schemas and tables are extracted."""

    include: list[ScopeRule] = Field(
        default_factory=lambda: [ScopeRule()],
        description="A table is in scope when it matches at least one include rule and no "
        "exclude rule.",
    )
    exclude: list[ScopeRule] = Field(
        default_factory=list,
        description="Rules that remove tables from scope; one with table '*' removes the whole "
        "schema, one with schema and table '*' the whole database.",
    )


class PostgresSourceSpec(_Model):
    """A PostgreSQL server, read through pg_catalog."""

    kind: Literal["postgresql"] = Field(
        default="postgresql", description="Source kind: postgresql (read through pg_catalog)."
    )
    dsn_from: SecretRef = Field(
        default_factory=lambda: SecretRef(env="METATIDE_SOURCE_DSN"),
        description="Where the libpq-style DSN (postgresql://user@host:port/dbname) comes from.",
    )
    password_from: SecretRef | None = Field(
        default=None, description="Optional separate source of the password, if not in the DSN."
    )
    databases: list[str] = Field(
        default_factory=list,
        description="Databases to connect to; empty means every database that allows "
        "connections, except templates. Scope rules filter further.",
    )
    connect_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Timeout of one connection attempt, in seconds."
    )
    read_connections: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Connections that one database's table listing, and one column batch, "
        "are read over at once: the server runs the catalog queries on that many cores. "
        "The extra connections are opened for that read and closed after it (a column batch "
        "shares one snapshot over them); one the server refuses is done without, with a "
        "warning. 1 reads over a single connection.",
    )
    scope: ScopeSpec = Field(default_factory=ScopeSpec, description="Include/exclude filters.")

    def secret_refs(self) -> list[SecretRef]:
        """The secrets this source reads: the DSN, and the password if it comes separately."""
        return [self.dsn_from, *([self.password_from] if self.password_from else [])]


class TlsSpec(_Model):
    """TLS between metatide and a MySQL/MariaDB server."""

    mode: Literal["disabled", "required", "verify-ca", "verify-identity"] = Field(
        default="required",
        description="disabled: plain TCP; required: encrypted, the server's certificate is not "
        "checked; verify-ca: encrypted, the certificate must be signed by a trusted CA "
        "(caFrom, else the system's trust store); verify-identity: verify-ca and the "
        "certificate must name the DSN's host.",
    )
    ca_from: SecretRef | None = Field(
        default=None,
        description="Where the PEM-encoded CA certificate(s) that sign the server's certificate "
        "come from (verify-ca and verify-identity); unset: the system's trust store.",
    )

    def secret_refs(self) -> list[SecretRef]:
        return [self.ca_from] if self.ca_from else []


class MysqlSourceSpec(_Model):
    """A MySQL 8 or MariaDB 10.6+ server, read through information_schema.

    MySQL has two levels, so each MySQL database is a metatide schema, and all of them sit
    in one metatide database named 'default' (OpenMetadata's convention).
    """

    kind: Literal["mysql"] = Field(
        default="mysql",
        description="Source kind: mysql (MySQL 8 or MariaDB 10.6+; its databases are schemas "
        "of one database named 'default').",
    )
    dsn_from: SecretRef = Field(
        default_factory=lambda: SecretRef(env="METATIDE_SOURCE_DSN"),
        description="Where the DSN (mysql://user:password@host:3306/database) comes from; the "
        "database part is optional and only the session's default (scope selects what is "
        "read).",
    )
    password_from: SecretRef | None = Field(
        default=None, description="Optional separate source of the password, if not in the DSN."
    )
    tls: TlsSpec = Field(default_factory=TlsSpec, description="TLS to the server.")
    connect_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Timeout of one connection attempt, in seconds."
    )
    scope: ScopeSpec = Field(
        default_factory=ScopeSpec,
        description="Include/exclude filters. The database level is always 'default'; the "
        "schema level is the MySQL database (mysql, information_schema, performance_schema "
        "and sys are never read).",
    )

    def secret_refs(self) -> list[SecretRef]:
        """The secrets this source reads: DSN, separate password, CA certificate."""
        refs = [self.dsn_from, *([self.password_from] if self.password_from else [])]
        return refs + self.tls.secret_refs()


class SqliteSourceSpec(_Model):
    """A SQLite database file (the embedded default, one database named 'main')."""

    kind: Literal["sqlite"] = Field(
        default="sqlite", description="Source kind: sqlite (one file, database 'main')."
    )
    path: str = Field(min_length=1, description="Path of the SQLite database file.")
    scope: ScopeSpec = Field(default_factory=ScopeSpec, description="Include/exclude filters.")

    def secret_refs(self) -> list[SecretRef]:
        """A file needs no secret."""
        return []


SourceSpec = Annotated[
    PostgresSourceSpec | MysqlSourceSpec | SqliteSourceSpec, Field(discriminator="kind")
]


class StorageSpec(_Model):
    """Where state, diffs and run files are written."""

    url: str = Field(
        description="file:///absolute/path or s3://bucket[/prefix]; the connection's prefix "
        "(see prefixTemplate) is appended.",
        pattern=r"^(file://|s3://)",
    )
    endpoint: str | None = Field(
        default=None, description="S3 endpoint host:port (e.g. minio.minio:9000); s3 only."
    )
    secure: bool = Field(default=True, description="Use HTTPS to the S3 endpoint.")
    region: str | None = Field(default=None, description="S3 region, if the server needs one.")
    access_key_from: SecretRef = Field(
        default_factory=lambda: SecretRef(env="AWS_ACCESS_KEY_ID"),
        description="Where the S3 access key comes from.",
    )
    secret_key_from: SecretRef = Field(
        default_factory=lambda: SecretRef(env="AWS_SECRET_ACCESS_KEY"),
        description="Where the S3 secret key comes from.",
    )
    prefix_template: str = Field(
        default=SEED_PREFIX_TEMPLATE,
        max_length=512,
        json_schema_extra=crd_rule(
            "self.findAll(r'\\{[^{}]*\\}').all(p, "
            "p == '{application_name}' || p == '{connection_id}')",
            "may contain only the placeholders {application_name} and {connection_id}",
        ),
        description="Per-connection key prefix; {application_name} and {connection_id} are "
        "replaced.",
    )

    def secret_refs(self) -> list[SecretRef]:
        """The S3 keys (the operator injects those with a secretKeyRef into every pod)."""
        return [self.access_key_from, self.secret_key_from]

    @field_validator("prefix_template")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        unknown = set(re.findall(r"{([^{}]*)}", value)) - {"application_name", "connection_id"}
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {sorted(unknown)}; use {{application_name}} and "
                "{connection_id} only"
            )
        return value


class ColumnsSpec(_Model):
    """How column extraction is split into batches."""

    batch_size: int = Field(
        default=SEED_COLUMN_BATCH_SIZE, ge=1, le=1_000_000, description="Tables per column batch."
    )
    parallelism: int = Field(
        default=SEED_MAX_CONCURRENT_COLUMN_BATCHES,
        ge=1,
        le=64,
        description="Column batches extracted at once (Indexed Job parallelism on Kubernetes).",
    )


class MarkerSpec(_Model):
    """The high-water mark that decides which DDL times count as changes."""

    prepone_hours: float = Field(
        default=3.0,
        ge=0,
        description="Hours subtracted from the stored marker before comparing DDL times, to "
        "absorb clock skew and long transactions (hours).",
    )
    format: str = Field(
        default=SEED_MARKER_FORMAT,
        min_length=2,
        max_length=64,
        json_schema_extra={
            "pattern": MARKER_FORMAT_PATTERN,
            **crd_rule(
                "self.contains('%Y') && self.contains('%H') && self.contains('%M') && "
                "self.contains('%S') && ((self.contains('%m') && self.contains('%d')) || "
                "self.contains('%j'))",
                "needs %Y, %m and %d (or %j), %H, %M and %S, so a marker reads back as the same "
                "UTC second, e.g. '%Y-%m-%dT%H:%M:%SZ'",
            ),
        },
        description="strftime format of marker.txt: only the directives %Y %m %d %j %H %M %S "
        "%f and the separators - : . _ / space T Z, and enough of them (%Y, %m and %d or %j, "
        "%H, %M, %S) that the text reads back as the same UTC second.",
    )
    default: str = Field(
        default=SEED_DEFAULT_MARKER,
        description="Marker assumed when no state exists yet (UTC, in `format`).",
    )

    @field_validator("format")
    @classmethod
    def _format_round_trips(cls, value: str) -> str:
        if not re.fullmatch(MARKER_FORMAT_PATTERN, value):
            raise ValueError(
                f"{value!r} may contain only the strftime directives %Y %m %d %j %H %M %S %f "
                "and the separators - : . _ / space T Z (older consumers paste marker.txt "
                "into SQL)"
            )
        missing = [d for d in ("%Y", "%H", "%M", "%S") if d not in value]
        if not (("%m" in value and "%d" in value) or "%j" in value):
            missing.append("%m and %d (or %j)")
        if missing:
            raise ValueError(
                f"{value!r} lacks {', '.join(missing)}: a marker must read back as the same "
                "UTC second (the seed's format is '%Y-%m-%dT%H:%M:%SZ')"
            )
        for moment in _MARKER_SAMPLES:
            try:
                back = datetime.strptime(moment.strftime(value), value)
            except ValueError:
                back = None
            if back != moment:
                raise ValueError(
                    f"{value!r} does not read back what it writes (for {moment.isoformat()} it "
                    f"writes {moment.strftime(value)!r}); separate the fields, e.g. "
                    "'%Y-%m-%dT%H:%M:%SZ'"
                )
        return value

    @model_validator(mode="after")
    def _default_matches_format(self) -> MarkerSpec:
        try:
            datetime.strptime(self.default, self.format)
        except ValueError:
            raise ValueError(
                f"default {self.default!r} does not match format {self.format!r}"
            ) from None
        return self


class MassDeleteGuardSpec(_Model):
    """Refuse to commit a run that would delete much of the state (a broken filter or grant)."""

    max_deleted_fraction: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Largest fraction of the previous state's tables one run may delete; 1 "
        "disables the guard.",
    )
    allow_empty_source: bool = Field(
        default=False,
        description="Allow a run where the source returns zero tables while the state has some.",
    )


class OutputSpec(_Model):
    """How the diff is written for consumers (the state is always Parquet)."""

    format: Literal["parquet", "jsonl"] = Field(
        default="parquet", description="File format of the incremental diff."
    )


class DuckDBSpec(_Model):
    """Limits of the embedded DuckDB that does the set work."""

    memory_limit: str = Field(
        default=SEED_DUCKDB_MEMORY_LIMIT,
        pattern=r"^[0-9]+(\.[0-9]+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="DuckDB memory_limit; work beyond it spills to tempDirectory.",
    )
    temp_directory: str = Field(
        default=SEED_DUCKDB_TEMP_DIRECTORY, min_length=1, description="DuckDB spill folder."
    )
    threads: int = Field(default=2, ge=1, le=64, description="DuckDB worker threads.")


class StateSpec(_Model):
    """Layout of the committed state."""

    tables_per_bucket: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Target tables per state bucket. The bucket count is fixed at a full run "
        "and kept while it fits (within a factor of 4).",
    )
    compaction_ratio: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="A bucket's changes accumulate in a small delta file; when the delta holds "
        "more than this fraction of the bucket's tables, the bucket is rewritten whole.",
    )
    keep_runs: int = Field(
        default=10,
        ge=1,
        description="Committed states kept, the newest included: their manifests, the state "
        "files they list and their runs/{id}/ folders (diffs); older ones are deleted after "
        "each commit.",
    )
    lease_seconds: int = Field(
        default=300,
        ge=10,
        le=86_400,
        description="How long the run lease lasts without renewal (seconds). Every phase renews "
        "it every third of this while it works, so a run keeps it however long it takes, and "
        "the lease of a run that died frees itself after at most this long.",
    )
    verify_every_runs: int = Field(
        default=24,
        ge=0,
        le=100_000,
        description="Every this many runs, plan reads and verifies (SHA-256) every file the "
        "committed manifest lists, not only the files the run needs, and fails the run if one "
        "is damaged; 0 never does (audit with `metatide verify`). Costs one read of the whole "
        "state per this many runs. Every run always verifies the files it reads.",
    )


class ExtractionSpec(_Model):
    """One incremental extraction of one connection."""

    application_name: str = Field(
        pattern=_NAME_PATTERN, description="Application the connection belongs to."
    )
    connection_id: str = Field(
        pattern=_NAME_PATTERN, description="Stable id of the connection (part of the prefix)."
    )
    source: SourceSpec = Field(description="The database to extract from.")
    storage: StorageSpec = Field(description="Where state and diffs are written.")
    columns: ColumnsSpec = Field(default_factory=ColumnsSpec, description="Column batching.")
    marker: MarkerSpec = Field(default_factory=MarkerSpec, description="Marker options.")
    force_full_extraction: bool = Field(
        default=False,
        description="Ignore the previous state and extract everything (also recovers a "
        "corrupted state).",
    )
    mass_delete_guard: MassDeleteGuardSpec = Field(
        default_factory=MassDeleteGuardSpec, description="Mass-delete guard."
    )
    output: OutputSpec = Field(default_factory=OutputSpec, description="Diff output.")
    duckdb: DuckDBSpec = Field(default_factory=DuckDBSpec, description="DuckDB limits.")
    state: StateSpec = Field(default_factory=StateSpec, description="State layout.")

    @property
    def connection_prefix(self) -> str:
        """The key prefix of this connection's files, below the storage URL."""
        return self.storage.prefix_template.replace(
            "{application_name}", self.application_name
        ).replace("{connection_id}", self.connection_id)

    def secret_refs(self) -> list[SecretRef]:
        """Every secret a run of this spec reads, storage's and the source's.

        The operator injects those with a `secretKeyRef` into each Job pod; it knows nothing
        else about sources, so a new source kind only has to list its own here.
        """
        return self.storage.secret_refs() + self.source.secret_refs()

    def to_json(self) -> str:
        """The spec as camelCase JSON, as Jobs receive it."""
        return self.model_dump_json(by_alias=True, exclude_none=True)


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(root)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def parse_spec(data: Any, origin: str = "spec") -> ExtractionSpec:
    """Validate a decoded spec; the error lists every bad field by its path."""
    if not isinstance(data, dict):
        raise SpecError(f"{origin} must be a mapping of fields, got {type(data).__name__}")
    try:
        return ExtractionSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{origin} is invalid:\n{_describe(exc)}") from None


def load_spec_file(path: Path) -> ExtractionSpec:
    """Read a YAML or JSON spec file (JSON is YAML, so one parser serves both)."""
    import yaml  # here: a Job's spec comes as JSON, and every phase process pays its imports

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read the spec file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"the spec file {path} is not valid YAML/JSON: {exc}") from exc
    return parse_spec(data, origin=str(path))


def load_spec_json(text: str, origin: str) -> ExtractionSpec:
    """Read a spec handed over as JSON (the METATIDE_SPEC environment variable of a Job)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{origin} is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    return parse_spec(data, origin=origin)
