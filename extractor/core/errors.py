"""The one exception hierarchy of metatide, and the exit codes that follow from it.

Every error the engine raises on purpose derives from :class:`MetatideError`. Whether a
failure is worth retrying is a *type*, not a message to parse: the CLI maps
:class:`RetryableError` and :class:`TerminalError` to distinct exit codes, so a Kubernetes
Job's ``podFailurePolicy`` can fail an index at once on a terminal error and let the Job
controller retry a transient one.

    MetatideError
    ├── TerminalError                 exit 3: retrying cannot help; a person must act
    │   ├── SpecError                 the spec or an input is invalid
    │   │   └── UnknownDatabaseError      (sources/postgres.py) a named database does not exist
    │   ├── CredentialsError          a referenced secret is missing or refused
    │   ├── StateCorruptError         the stored state fails its checksums or cannot be read
    │   ├── NewerStateFormatError     the state was written by a newer metatide (upgrade)
    │   ├── StateConflictError        another run committed since this run planned
    │   ├── LeaseLostError            another run took over this run's lease
    │   ├── MassDeleteRefusedError    the mass-delete guard stopped the run
    │   └── IncompleteRunError        a phase's inputs are missing (run the earlier phase)
    └── RetryableError                exit 75: transient; the same call may succeed later
        ├── SourceUnavailableError    the source database cannot be reached
        ├── StorageUnavailableError   the object store cannot be reached
        └── LeaseHeldError            another run of this connection holds the lease

Driver errors (asyncpg, asyncmy, SQLAlchemy, minio) are translated into these at the adapter
boundary with ``raise ... from exc``; nothing above the adapters sees a driver exception.
"""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_UNEXPECTED: Final = 1
EXIT_TERMINAL: Final = 3
EXIT_RETRYABLE: Final = 75  # EX_TEMPFAIL from sysexits.h


class MetatideError(Exception):
    """Base of every error metatide raises on purpose."""

    exit_code: int = EXIT_UNEXPECTED


class TerminalError(MetatideError):
    """Retrying cannot succeed: the spec, the credentials or the state need a person."""

    exit_code = EXIT_TERMINAL


class RetryableError(MetatideError):
    """A transient failure: the same call may succeed later (network, lease, server restart)."""

    exit_code = EXIT_RETRYABLE


class SpecError(TerminalError):
    """The extraction spec, or a command-line input, is invalid."""


class CredentialsError(TerminalError):
    """A secret the spec refers to is missing, or the server refused it."""


class StateCorruptError(TerminalError):
    """The committed state cannot be trusted: a checksum differs or a document does not parse."""


class NewerStateFormatError(TerminalError):
    """The committed state is in a format a newer metatide wrote: upgrade, never overwrite it."""


class StateConflictError(TerminalError):
    """The committed state moved under a run (another run committed after this one planned)."""


class LeaseLostError(TerminalError):
    """Another run took over this run's lease (it expired, or the run was declared dead)."""


class MassDeleteRefusedError(TerminalError):
    """The mass-delete guard refused to commit a run that would delete too much."""


class IncompleteRunError(TerminalError):
    """A phase found its inputs missing: an earlier phase did not finish for this run."""


class SourceUnavailableError(RetryableError):
    """The source database could not be reached or dropped the connection."""


class StorageUnavailableError(RetryableError):
    """The object store could not be reached or answered with a server error."""


class LeaseHeldError(RetryableError):
    """Another run of the same connection holds the run lease."""
